"""``o2o ablate``: variants of one config, each trained with the same seeds, compared seed by seed.

An ablation asks what one setting adds. Every variant is a full :func:`experiments.evaluate.evaluate`
(its own ``runs/<name>-eval-<stamp>/`` folder), trained with the same seeds on the same data, so the
variants can be compared **paired**: for each seed, variant minus the reference variant (the first one).
A paired difference removes the part of the noise that comes from the data split and the seed, which is
what makes differences of a few thousandths readable at all. The baselines do not depend on the model's
settings, so they are fitted for the reference variant only.

The ablation folder ``runs/<name>-ablation-<stamp>/`` holds ``ablation.json``, ``ablation.md`` (one row
per variant: mean ± std of each headline metric, and the paired difference of the first metric) and
``ablation.png``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import yaml

from experiments.evaluate import EVALUATION_JSON, evaluate, min_max_bars
from training.config import RunConfig, SideFeature, with_overrides
from training.train import CONFIG_FILE, new_run_dir

ABLATION_JSON = "ablation.json"
ABLATION_MD = "ablation.md"
ABLATION_PNG = "ablation.png"
ALL_SIDE_FEATURES: tuple[str, ...] = get_args(SideFeature)


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Ablation:
    out_dir: Path
    summary: dict[str, Any]


def parse_variant(text: str) -> Variant:
    """``"NAME: key=value; key=value"`` → Variant (no overrides after the colon = the config as it is)."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"variant {text!r} is not of the form 'NAME: section.key=value; ...'")
    overrides = tuple(o.strip() for o in rest.split(";") if o.strip())
    return Variant(name.strip(), overrides)


def side_feature_variants(features: Sequence[str]) -> list[Variant]:
    """None (the reference), each feature alone, and all of them together (when more than one)."""
    unknown = sorted(set(features) - set(ALL_SIDE_FEATURES))
    if unknown or not features:
        raise ValueError(f"side features must be some of {list(ALL_SIDE_FEATURES)}, got {list(features)}")
    variants = [Variant("none", ("model.side_features=[]",))]
    variants += [Variant(f, (f"model.side_features=[{f}]",)) for f in features]
    if len(features) > 1:
        variants.append(
            Variant("all: " + ", ".join(features), (f"model.side_features=[{','.join(features)}]",))
        )
    return variants


# Settings that may differ between a reused evaluation's runs and the variant: they do not change the model.
REUSE_IGNORED = {("eval", "baselines"), ("train", "threads"), ("train", "num_workers")}


def reused_evaluation(eval_dir: Path, expected: RunConfig, seeds: Sequence[int]) -> dict[str, Any]:
    """The summary of a finished ``o2o evaluate`` folder, after checking that it ran ``seeds`` and that
    every run's resolved config is ``expected`` with that seed (threads and baselines aside).

    Its runs are looked up beside it (``eval_dir.parent/<run>/config.yaml``), where evaluate puts them.
    """
    path = eval_dir / EVALUATION_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{eval_dir} is not an evaluation folder (no {EVALUATION_JSON})")
    summary: dict[str, Any] = json.loads(path.read_text())
    if summary["seeds"] != list(seeds):
        raise ValueError(f"{eval_dir} ran seeds {summary['seeds']}, this ablation asks {list(seeds)}")
    want = json.loads(expected.model_dump_json())
    settings = [
        (section, key, value)
        for section, values in want.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if (section, key) not in REUSE_IGNORED | {("train", "seed")}
    ]
    for run, seed in zip(summary["runs"], summary["seeds"], strict=True):
        got = yaml.safe_load((eval_dir.parent / run / CONFIG_FILE).read_text())
        for section, key, value in [*settings, ("train", "seed", seed)]:
            if (found := got.get(section, {}).get(key)) != value:
                raise ValueError(
                    f"{eval_dir}: run {run} has {section}.{key} = {found!r}, the variant asks {value!r}"
                )
    return summary


def ablate(
    cfg: RunConfig,
    variants: Sequence[Variant],
    seeds: Sequence[int],
    runs_dir: Path = Path("runs"),
    progress: Callable[[str], None] = lambda _: None,
    reuse: Mapping[str, Path] | None = None,
) -> Ablation:
    """Evaluate every variant of ``cfg`` with ``seeds``; write the ablation folder; return it.

    ``reuse`` maps variant names to finished evaluation folders (an interrupted ablation, or variants
    evaluated on another core or machine): those variants are checked (:func:`reused_evaluation`) and
    read instead of trained.
    """
    if not variants:
        raise ValueError("give at least one variant")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must differ: {names}")
    reuse = dict(reuse or {})
    if unknown := sorted(set(reuse) - set(names)):
        raise ValueError(f"--reuse names variants that are not in the ablation: {unknown}; variants: {names}")
    configs = []  # validated up front: a typo in the last variant must not cost the first ones' training
    for i, v in enumerate(variants):
        extra = [] if i == 0 or cfg.task != "recommender" else ["eval.baselines=false"]
        configs.append(with_overrides(cfg, [*v.overrides, *extra]))
    reused = {
        v.name: reused_evaluation(reuse[v.name], c, seeds)
        for v, c in zip(variants, configs, strict=True)
        if v.name in reuse
    }
    evaluations = []
    for i, (v, c) in enumerate(zip(variants, configs, strict=True)):
        if v.name in reused:
            progress(f"variant {v.name!r} ({i + 1}/{len(variants)}): reusing {reuse[v.name]}")
            evaluations.append(reused[v.name])
            continue
        progress(f"variant {v.name!r} ({i + 1}/{len(variants)})")
        evaluations.append(evaluate(c, seeds, runs_dir, progress).summary)
    summary = summarise(variants, evaluations)
    summary["config"] = cfg.name
    out_dir = new_run_dir(runs_dir, f"{cfg.name}-ablation")
    (out_dir / ABLATION_JSON).write_text(json.dumps(summary, indent=2, default=float))
    _plot(summary, f"{cfg.name}: {len(variants)} variants × {len(seeds)} seeds", out_dir / ABLATION_PNG)
    (out_dir / ABLATION_MD).write_text(_markdown(out_dir, summary))
    return Ablation(out_dir, summary)


def summarise(variants: Sequence[Variant], evaluations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: test mean/std of every headline metric (ours), and the paired difference of the first
    metric against the reference variant; the reference's baselines beside them."""
    ref = evaluations[0]
    metric = next(iter(ref["test"]["ours"]))
    ref_vals = [s["model"]["test"][metric] for s in ref["per_seed"]]
    rows = []
    for v, ev in zip(variants, evaluations, strict=True):
        if ev["seeds"] != ref["seeds"]:
            raise ValueError(f"variant {v.name!r} ran seeds {ev['seeds']}, the reference {ref['seeds']}")
        vals = [s["model"]["test"][metric] for s in ev["per_seed"]]
        diff = [a - b for a, b in zip(vals, ref_vals, strict=True)]
        rows.append(
            {
                "variant": v.name,
                "overrides": list(v.overrides),
                "evaluation": ev["runs"],
                "test": ev["test"]["ours"],
                "val": ev["val"]["ours"],
                "per_seed": vals,
                "paired_diff": {
                    "mean": statistics.fmean(diff),
                    "std": statistics.stdev(diff) if len(diff) > 1 else 0.0,
                    "wins": sum(d > 0 for d in diff),
                    "n": len(diff),
                },
                "train_seconds": ev["train_seconds"],
            }
        )
    baselines = {name: res for name, res in ref["test"].items() if name != "ours"}
    return {
        "task": ref["task"],
        "protocol": ref["protocol"],
        "seeds": ref["seeds"],
        "metric": metric,
        "variants": rows,
        "baselines": baselines,
    }


def table(summary: dict[str, Any]) -> str:
    """Markdown: variants then baselines, ``mean ± std`` per metric, paired difference of the first."""
    metric = summary["metric"]
    names = list(summary["variants"][0]["test"])
    head = (
        "| variant | " + " | ".join(names) + f" | Δ{metric} vs {summary['variants'][0]['variant']} (wins) |"
    )
    lines = [head, "|---|" + "---|" * (len(names) + 1)]
    for r in summary["variants"]:
        cells = " | ".join(f"{r['test'][n]['mean']:.4f} ± {r['test'][n]['std']:.4f}" for n in names)
        d = r["paired_diff"]
        lines.append(
            f"| {r['variant']} | {cells} | {d['mean']:+.4f} ± {d['std']:.4f} ({d['wins']}/{d['n']}) |"
        )
    for b, res in summary["baselines"].items():
        cells = " | ".join(f"{res[n]['mean']:.4f} ± {res[n]['std']:.4f}" for n in names)
        lines.append(f"| baseline: {b} | {cells} | |")
    return "\n".join(lines)


def _markdown(out_dir: Path, summary: dict[str, Any]) -> str:
    runs = "\n".join(
        f"- **{r['variant']}** ({'; '.join(r['overrides']) or 'the config as it is'}): "
        + ", ".join(f"`{x}`" for x in r["evaluation"])
        for r in summary["variants"]
    )
    return f"""# Ablation `{out_dir.name}`

Config `{summary["config"]}`, task {summary["task"]}, protocol: {summary["protocol"]}.
Every variant trained with seeds {", ".join(map(str, summary["seeds"]))} on the same data. Test split,
mean ± standard deviation over seeds. The last column is the **paired** difference from the first variant
(the same seed's run): its mean ± std, and on how many seeds the variant was ahead. A difference smaller
than its spread is not shown to help or hurt.

{table(summary)}

![ablation]({ABLATION_PNG})

Runs per variant:

{runs}
"""


def _plot(summary: dict[str, Any], title: str, path: Path) -> None:
    metric = summary["metric"]
    rows = summary["variants"]
    labels = [r["variant"] for r in rows]
    mean = [r["test"][metric]["mean"] for r in rows]
    lo, hi = min_max_bars([r["test"][metric] for r in rows])
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    bars = ax.bar(labels, mean, yerr=[lo, hi], capsize=4, color="tab:green")
    ax.bar_label(bars, fmt="%.4f", padding=3)
    for i, (b, res) in enumerate(summary["baselines"].items()):
        ax.axhline(res[metric]["mean"], ls="--", lw=1, color=f"C{i}", label=f"{b} (baseline)")
    if summary["baselines"]:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_ylabel(f"test {metric} (mean, min–max)")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

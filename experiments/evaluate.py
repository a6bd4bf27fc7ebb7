"""``o2o evaluate``: one config trained with several seeds, summarised as mean ± spread beside the baselines.

Each seed is a full run (``runs/<name>-<stamp>/``); the evaluation folder ``runs/<name>-eval-<stamp>/``
holds ``evaluation.json`` (every seed's figures and the summary), ``evaluation.md`` (the table a person
reads) and ``evaluation.png`` (test headline metric, mean with min–max bars). Works for both tasks and
both next-item protocols: the protocol comes from the config (``eval.protocol``). On synthetic data with a
purchase intensity in its ground truth, a purchase-intent (I1) evaluation adds the oracle's row: the ceiling.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyarrow.parquet as pq
from scipy import stats

from data_prep import schema as S
from experiments.oracle import ORACLE, oracle_summary
from experiments.report import headline
from training.config import IntentRunConfig, RunConfig
from training.metrics import ndcg_gains
from training.train import TEST_RANKS_FILE, RunResult, new_run_dir, train

EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"
EVALUATION_PNG = "evaluation.png"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_LEVEL = 0.95


@dataclass(frozen=True)
class Evaluation:
    out_dir: Path
    summary: dict[str, Any]


def _with_seed(cfg: RunConfig, seed: int) -> RunConfig:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})


def summarise(runs: Sequence[dict[str, Any]], split: str = "test") -> dict[str, dict[str, dict[str, float]]]:
    """model name → metric → {mean, std, min, max, n} over the runs' ``split`` figures (ours + baselines)."""
    names = headline(runs[0])
    rows: dict[str, list[dict[str, float]]] = {}
    for m in runs:
        for model, res in [("ours", m["model"]), *m["baselines"].items()]:
            rows.setdefault(model, []).append(res[split])
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model, per_seed in rows.items():
        out[model] = {}
        for n in names:
            vals = [float(r[n]) for r in per_seed]
            out[model][n] = {
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "min": min(vals),
                "max": max(vals),
                "n": len(vals),
            }
    return out


def summary_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: one row per model, ``mean ± std`` per headline metric."""
    names = list(next(iter(summary.values())))
    lines = ["| model | " + " | ".join(names) + " | seeds |", "|---|" + "---|" * (len(names) + 1)]
    for model, metrics in summary.items():
        cells = " | ".join(f"{metrics[n]['mean']:.4f} ± {metrics[n]['std']:.4f}" for n in names)
        lines.append(f"| {model} | {cells} | {metrics[names[0]]['n']} |")
    return "\n".join(lines)


def min_max_bars(stats: Sequence[dict[str, float]]) -> tuple[list[float], list[float]]:
    """matplotlib ``yerr`` (below, above) spanning min–max around each mean. Clamped at 0: the mean of equal
    figures can come out one bit beyond them, and matplotlib refuses a negative error bar."""
    lo = [max(0.0, s["mean"] - s["min"]) for s in stats]
    hi = [max(0.0, s["max"] - s["mean"]) for s in stats]
    return lo, hi


def _plot(summary: dict[str, dict[str, dict[str, float]]], title: str, path: Path) -> None:
    name = next(iter(next(iter(summary.values()))))
    labels = list(summary)
    mean = [summary[m][name]["mean"] for m in labels]
    lo, hi = min_max_bars([summary[m][name] for m in labels])
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    bars = ax.bar(
        labels, mean, yerr=[lo, hi], capsize=4, color=["tab:green"] + ["tab:gray"] * (len(labels) - 1)
    )
    ax.bar_label(bars, fmt="%.4f", padding=3)
    ax.set_ylabel(f"test {name} (mean, min–max)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(
    cfg: RunConfig,
    seeds: Sequence[int],
    runs_dir: Path = Path("runs"),
    progress: Callable[[str], None] = lambda _: None,
    progress_bar: bool = False,
) -> Evaluation:
    """Train ``cfg`` once per seed; write the evaluation folder; return it with the summary."""
    if not seeds:
        raise ValueError("give at least one seed")
    results: list[RunResult] = []
    for i, seed in enumerate(seeds):
        progress(f"seed {seed} ({i + 1}/{len(seeds)})")
        results.append(train(_with_seed(cfg, seed), runs_dir, progress_bar))
    runs = [r.metrics for r in results]
    out_dir = new_run_dir(runs_dir, f"{cfg.name}-eval")
    summary = {
        "task": runs[0]["task"],
        "protocol": runs[0]["protocol"],
        "config": cfg.name,
        "seeds": list(seeds),
        "runs": [r.run_dir.name for r in results],
        "test": summarise(runs, "test"),
        "val": summarise(runs, "val"),
        "train_seconds": [m["train_seconds"] for m in runs],
        "per_seed": [
            {"seed": s, "model": m["model"], "baselines": m["baselines"]}
            for s, m in zip(seeds, runs, strict=True)
        ],
    }
    oracle_note = _add_oracle(cfg, summary)
    paired = paired_comparison([r.run_dir for r in results])
    if paired:
        summary["paired_bootstrap"] = paired
    (out_dir / EVALUATION_JSON).write_text(json.dumps(summary, indent=2, default=float))
    title = f"{cfg.name}: {len(seeds)} seeds"
    _plot(summary["test"], title, out_dir / EVALUATION_PNG)
    text = f"""# Evaluation `{out_dir.name}`

Config `{cfg.name}`, task {summary["task"]}, protocol: {summary["protocol"]}.
Seeds {", ".join(map(str, seeds))}; each is a full run: {", ".join(f"`{r}`" for r in summary["runs"])}.
Figures are mean ± standard deviation over the seeds, on the test split (validation chose the epoch and
the baselines' settings).

{summary_table(summary["test"])}
{oracle_note}{paired_table(paired)}
![test headline metric]({EVALUATION_PNG})

Validation split:

{summary_table(summary["val"])}

Training seconds per seed: {", ".join(f"{t:.1f}" for t in summary["train_seconds"])}.
"""
    (out_dir / EVALUATION_MD).write_text(text)
    return Evaluation(out_dir, summary)


def _add_oracle(cfg: RunConfig, summary: dict[str, Any]) -> str:
    """For an I1 purchase config on data whose ground truth holds the purchase intensity: the oracle's
    figures as a row of the test and validation tables (one value, no spread) and under ``summary["oracle"]``.
    Returns the line the report prints under the test table ("" when there is no oracle)."""
    if not (isinstance(cfg, IntentRunConfig) and cfg.target == "purchase"):
        return ""
    found = oracle_summary(cfg.data.features_dir)
    if found is None:
        return ""
    summary["oracle"] = found
    for split in ("test", "val"):
        names = list(next(iter(summary[split].values())))
        row = {n: float(found[split][n]) for n in names}
        summary[split][ORACLE] = {
            n: {"mean": v, "std": 0.0, "min": v, "max": v, "n": 1} for n, v in row.items()
        }
    return (
        "\nThe `oracle` row scores each example with its true chance of a purchase in the label window, from "
        "the generator's purchase intensity (`experiments/oracle.py`, docs/data.md): the ceiling.\n"
    )


def paired_comparison(run_dirs: Sequence[Path], seed: int = 0) -> dict[str, dict[str, float]]:
    """Ours against each baseline on the same test examples: NDCG@k ratio and difference with a paired
    bootstrap interval (:data:`BOOTSTRAP_LEVEL`, BCa, :data:`BOOTSTRAP_RESAMPLES` resamples of the examples).

    Each example's gain is averaged over the seeds first (the runs' ``test_ranks.parquet``, which must list
    the same customers in the same order), so the interval is over examples, the finite test set, and the
    seeds' spread is in the table beside it. {} when a run has no per-example ranks (an intent run, or an
    older recommender run)."""
    files = [d / TEST_RANKS_FILE for d in run_dirs]
    if not files or not all(f.is_file() for f in files):
        return {}
    tables = [pq.read_table(f) for f in files]
    customers = tables[0].column(S.CUSTOMER_ID)
    if any(not t.column(S.CUSTOMER_ID).equals(customers) for t in tables[1:]):
        raise ValueError(f"the runs' {TEST_RANKS_FILE} list different test examples: not one evaluation")

    def gains(name: str) -> np.ndarray:
        return np.mean([ndcg_gains(t.column(name).to_numpy()) for t in tables], axis=0)

    ours = gains("ours")
    out: dict[str, dict[str, float]] = {}
    for name in [c for c in tables[0].column_names if c not in (S.CUSTOMER_ID, "ours")]:
        base = gains(name)
        if base.mean() == 0.0:
            continue  # no hit at all: the ratio is undefined
        row: dict[str, float] = {"ours": float(ours.mean()), "baseline": float(base.mean()), "n": len(ours)}
        for stat, fn in (("ratio", _ratio_of_means), ("difference", _difference_of_means)):
            row[stat] = float(fn(ours, base))
            if np.array_equal(ours, base):  # every resample gives the point itself: no spread to estimate
                row[f"{stat}_low"] = row[f"{stat}_high"] = row[stat]
                continue
            res = stats.bootstrap(
                (ours, base),
                fn,
                paired=True,
                vectorized=True,
                n_resamples=BOOTSTRAP_RESAMPLES,
                confidence_level=BOOTSTRAP_LEVEL,
                method="BCa",
                rng=np.random.default_rng(seed),
            )
            row[f"{stat}_low"] = float(res.confidence_interval.low)
            row[f"{stat}_high"] = float(res.confidence_interval.high)
        out[name] = row
    return out


def _ratio_of_means(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) / np.mean(b, axis=axis)


def _difference_of_means(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def paired_table(paired: dict[str, dict[str, float]]) -> str:
    """Markdown: ours against each baseline, ratio and difference of test NDCG with their intervals."""
    if not paired:
        return ""
    pct = round(100 * BOOTSTRAP_LEVEL)
    lines = [
        "",
        f"Ours against each baseline on the same {next(iter(paired.values()))['n']:.0f} test examples (each "
        f"example's NDCG averaged over the seeds; {pct}% paired bootstrap interval, BCa, "
        f"{BOOTSTRAP_RESAMPLES:,} resamples):",
        "",
        f"| baseline | ours | baseline | ratio ours/baseline ({pct}% interval) | difference ({pct}% interval) |",
        "|---|---|---|---|---|",
    ]
    for name, r in paired.items():
        lines.append(
            f"| {name} | {r['ours']:.4f} | {r['baseline']:.4f} | {r['ratio']:.3f} "
            f"({r['ratio_low']:.3f} – {r['ratio_high']:.3f}) | {r['difference']:+.4f} "
            f"({r['difference_low']:+.4f} – {r['difference_high']:+.4f}) |"
        )
    return "\n".join(lines) + "\n"

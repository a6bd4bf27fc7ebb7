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

from experiments.oracle import ORACLE, oracle_summary
from experiments.report import headline
from training.config import IntentRunConfig, RunConfig
from training.train import RunResult, new_run_dir, train

EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"
EVALUATION_PNG = "evaluation.png"


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
    (out_dir / EVALUATION_JSON).write_text(json.dumps(summary, indent=2, default=float))
    title = f"{cfg.name}: {len(seeds)} seeds"
    _plot(summary["test"], title, out_dir / EVALUATION_PNG)
    text = f"""# Evaluation `{out_dir.name}`

Config `{cfg.name}`, task {summary["task"]}, protocol: {summary["protocol"]}.
Seeds {", ".join(map(str, seeds))}; each is a full run: {", ".join(f"`{r}`" for r in summary["runs"])}.
Figures are mean ± standard deviation over the seeds, on the test split (validation chose the epoch and
the baselines' settings).

{summary_table(summary["test"])}
{oracle_note}
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

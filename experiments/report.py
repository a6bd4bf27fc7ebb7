"""Run reports: ``runs/<id>/report.md`` with the metrics table beside the baselines and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from training.metrics import headline_metrics

REPORT_FILE = "report.md"
CURVE_FILE = "training_curve.png"
COMPARISON_FILE = "comparison.png"


def headline(metrics: dict[str, Any]) -> list[str]:
    """Columns of a run's metrics table (the same as in the model card)."""
    return headline_metrics(metrics["task"], int(metrics.get("k", 10)))


def monitored(metrics: dict[str, Any]) -> str:
    """The validation column of Lightning's log that early stopping watched."""
    return f"val_{headline(metrics)[0].replace('@', '')}"


def epoch_log(run_dir: Path) -> pd.DataFrame:
    """Per-epoch rows from Lightning's CSV log (train loss and validation metrics merged by epoch)."""
    path = run_dir / "logs" / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training log; is {run_dir} a finished run?")
    raw = pd.read_csv(path)
    log = raw.drop(columns=["step"], errors="ignore").groupby("epoch").max().reset_index()
    # validate()/test() after fit log at the epoch after the last one trained: not part of the curve
    return log[log["train_loss"].notna()] if "train_loss" in log else log


def plot_training_curve(log: pd.DataFrame, metrics: dict[str, Any], path: Path) -> None:
    task = metrics["task"]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    if "train_loss" in log:
        ax1.plot(log["epoch"], log["train_loss"], "o-", color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    monitor = monitored(metrics)
    if monitor in log:
        ax2 = ax1.twinx()
        ax2.plot(log["epoch"], log[monitor], "s-", color="tab:orange", label=monitor)
        ax2.set_ylabel(monitor, color="tab:orange")
    ax1.set_title(f"{task}: training curve")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_comparison(metrics: dict[str, Any], path: Path) -> None:
    """Bar chart of the headline metric on the test split: ours vs every baseline."""
    task = metrics["task"]
    name = headline(metrics)[0]
    rows = [(n, r) for n, r in [("ours", metrics["model"]), *metrics["baselines"].items()] if "test" in r]
    labels = [r[0] for r in rows]
    values = [r[1]["test"][name] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(labels, values, color=["tab:green"] + ["tab:gray"] * (len(rows) - 1))
    ax.bar_label(bars, fmt="%.4f")
    ax.set_ylabel(f"test {name}")
    ax.set_title(f"{task}: ours vs baselines (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def metrics_table(metrics: dict[str, Any]) -> str:
    names = headline(metrics)
    lines = ["| model | split | " + " | ".join(names) + " | n |", "|---|---|" + "---|" * (len(names) + 1)]
    for model, res in [("ours", metrics["model"]), *metrics["baselines"].items()]:
        for split in ("val", "test"):
            if split not in res:  # a tuning trial has no test split; a train+val retrain no validation
                continue
            r = res[split]
            vals = " | ".join(_fmt(r.get(n, float("nan"))) for n in names)
            lines.append(f"| {model} | {split} | {vals} | {r.get('n_examples', '')} |")
    return "\n".join(lines)


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` + PNG plots into the run directory; returns the report path."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    task = metrics["task"]
    plot_training_curve(epoch_log(run_dir), metrics, run_dir / CURVE_FILE)
    plot_comparison(metrics, run_dir / COMPARISON_FILE)
    config = (run_dir / "config.yaml").read_text()
    text = f"""# Run `{metrics["run_id"]}` — {task}

Protocol: {metrics["protocol"]}

Best epoch {metrics["best_epoch"] + 1} of {metrics["epochs_trained"]} (counting from 1); training took {metrics["train_seconds"]:.1f} s.

## Metrics beside the baselines

{metrics_table(metrics)}

![test metric: ours vs baselines]({COMPARISON_FILE})

## Training curve

![training curve]({CURVE_FILE})

## Resolved config

```yaml
{config.rstrip()}
```

Data manifest (04_features outputs, SHA-256): see `metrics.json` → `data_manifest`.
"""
    path = run_dir / REPORT_FILE
    path.write_text(text)
    return path

"""Runs side by side: ``o2o runs compare`` (metrics, seed, commit and the config keys that differ) and
``o2o runs list``.

A run folder is what :func:`training.train.train` leaves: ``config.yaml`` from the start, ``provenance.json``
(commit, packages, seed), and ``metrics.json`` once it finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from training.provenance import PROVENANCE_FILE
from training.resume import last_checkpoint
from training.train import CONFIG_FILE, METRICS_FILE

INTENT_COLUMNS = ("roc_auc", "pr_auc", "ece")
SPLITS = ("val", "test")
LEADING = ("run", "task")
TRAILING = ("best_epoch", "epochs", "global_step", "seed", "commit")
SKIPPED_KEYS = ("task", "train.seed")  # shown in their own columns


@dataclass(frozen=True)
class Comparison:
    """One row per run (column → value; None where a run has no such value) and the config keys that
    differ between the runs (they are columns too, after the fixed ones)."""

    columns: list[str]
    rows: list[dict[str, Any]]
    differing: list[str]


def read_run(run_dir: Path) -> dict[str, Any]:
    """``{"metrics", "config", "provenance"}`` of a finished run; ValueError for a folder that is not one."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise ValueError(f"{run_dir} is not a run folder (no {CONFIG_FILE}): give folders `o2o train` wrote")
    if not (run_dir / METRICS_FILE).is_file():
        task = (yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}).get("task", "TASK")
        raise ValueError(
            f"{run_dir} has not finished (no {METRICS_FILE}); if it was killed, continue it with "
            f"`o2o train {task} --resume {run_dir}`"
        )
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    path = run_dir / PROVENANCE_FILE
    provenance = metrics.get("provenance") or (json.loads(path.read_text()) if path.is_file() else {})
    return {
        "metrics": metrics,
        "config": yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {},
        "provenance": provenance,
    }


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config → ``{"train.lr": 0.001, ...}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def metric_names(metrics: dict[str, Any]) -> list[str]:
    """The headline metrics compared for a run's task: NDCG@k and HR@k, or ROC-AUC, PR-AUC and ECE."""
    if metrics.get("task") == "recommender":
        k = int(metrics.get("k", 10))
        return [f"ndcg@{k}", f"hr@{k}"]
    return list(INTENT_COLUMNS)


def compare_runs(run_dirs: list[Path]) -> Comparison:
    """Read every run (ValueError names the first folder that is not a finished run) and line them up."""
    runs = [(d, read_run(d)) for d in run_dirs]
    flat = [flatten(r["config"]) for _, r in runs]
    keys = sorted({k for f in flat for k in f} - set(SKIPPED_KEYS))
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    metric_columns: list[str] = []
    for _, r in runs:
        for name in metric_names(r["metrics"]):
            metric_columns += [c for c in (f"{s} {name}" for s in SPLITS) if c not in metric_columns]
    columns = [*LEADING, *metric_columns, *TRAILING, *differing]
    rows = [_row(d, r, f, differing) for (d, r), f in zip(runs, flat, strict=True)]
    return Comparison(columns, [{c: row.get(c) for c in columns} for row in rows], differing)


def _row(run_dir: Path, run: dict[str, Any], flat: dict[str, Any], differing: list[str]) -> dict[str, Any]:
    m, git = run["metrics"], run["provenance"].get("git", {})
    commit = git.get("commit")
    row: dict[str, Any] = {"run": m.get("run_id", run_dir.name), "task": m.get("task")}
    for split in SPLITS:
        for name in metric_names(m):
            row[f"{split} {name}"] = m.get("model", {}).get(split, {}).get(name)
    row |= {
        "best_epoch": m.get("best_epoch"),
        "epochs": m.get("epochs_trained"),
        "global_step": m.get("global_step"),
        "seed": flat.get("train.seed"),
        "commit": None if commit is None else commit[:10] + ("+dirty" if git.get("dirty") else ""),
    }
    return row | {k: flat.get(k) for k in differing}


def cell(value: Any) -> str:
    """A value as a table shows it: floats to 4 decimals, missing as blank."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "[]"
    return str(value)


def comparison_table(c: Comparison) -> Table:
    """One column per run and one row per field (runs have more fields than a terminal has width)."""
    table = Table(title="runs compared")
    table.add_column("")
    for row in c.rows:
        table.add_column(str(row["run"]), justify="right")
    for col in c.columns[1:]:
        table.add_row(col, *(cell(row.get(col)) for row in c.rows))
    return table


def comparison_markdown(c: Comparison) -> str:
    lines = [
        "# Runs compared",
        "",
        f"{len(c.rows)} runs; config keys that differ: {', '.join(c.differing) or 'none'}.",
        "",
        "| " + " | ".join(c.columns) + " |",
        "|" + "---|" * len(c.columns),
    ]
    lines += [
        "| " + " | ".join(cell(r.get(col)).replace("|", "\\|") for col in c.columns) + " |" for r in c.rows
    ]
    return "\n".join(lines) + "\n"


def default_compare_path(run_dirs: list[Path]) -> Path:
    """``<folder of the first run>/compare-<UTC time>.md`` (runs/compare-... for runs under runs/)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return run_dirs[0].parent / f"compare-{stamp}.md"


def write_comparison(c: Comparison, path: Path) -> list[Path]:
    """Write the markdown table to ``path`` and the rows as JSON beside it (same name, ``.json``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(comparison_markdown(c))
    doc = {"columns": c.columns, "differing_config_keys": c.differing, "runs": c.rows}
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(doc, indent=2, default=str))
    return [path, json_path]


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Every run folder under ``runs_dir``, newest first: id, task, status, headline validation metric,
    start time. Unfinished runs with a last checkpoint can be resumed (``o2o train --resume``)."""
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir} not found: no runs yet, or pass --runs-dir")
    out = []
    for d in (p for p in runs_dir.iterdir() if (p / CONFIG_FILE).is_file()):
        config = yaml.safe_load((d / CONFIG_FILE).read_text()) or {}
        started = datetime.fromtimestamp((d / CONFIG_FILE).stat().st_mtime, UTC)
        row: dict[str, Any] = {"run": d.name, "task": config.get("task"), "started": started}
        if (d / METRICS_FILE).is_file():
            metrics = json.loads((d / METRICS_FILE).read_text())
            name = metric_names(metrics)[0]
            row |= {"status": "finished", "val": f"{name} {cell(metrics['model'].get('val', {}).get(name))}"}
        else:
            resumable = last_checkpoint(d).is_file()
            row |= {"status": "unfinished (resumable)" if resumable else "unfinished", "val": None}
        out.append(row)
    return sorted(out, key=lambda r: r["started"], reverse=True)


def runs_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="runs, newest first")
    for col in ("run", "task", "status", "val", "started"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["run"], cell(r["task"]), r["status"], cell(r["val"]), f"{r['started']:%Y-%m-%d %H:%M}"
        )
    return table

"""Continue a killed run in its own folder from ``checkpoints/last.ckpt``, with the config it started with.

Lightning restores the weights, optimiser, loop counters and callback state (early stopping's patience,
the best checkpoint so far) from the checkpoint; this module checks the run may be resumed and keeps its
CSV log whole. Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts, so the rows of
the epochs the checkpoint holds are set aside first and put back in front of the new rows at the end (a
second kill before the end keeps them: the set-aside file is merged again on the next resume).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
import yaml

CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LOGS_DIR = "logs"
METRICS_LOG = "metrics.csv"  # Lightning's CSV logger writes LOGS_DIR/METRICS_LOG
EARLIER_LOG = "metrics-before-resume.csv"


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS_DIR / LAST_CHECKPOINT


def check_resumable(run_dir: Path, saved_config: str, config: str) -> int:
    """The epoch ``run_dir``'s last checkpoint ended (training goes on with the next one).

    Raises ValueError when ``config`` (YAML text) differs from the run's ``saved_config``: a resumed run
    must be the run that was started; and when the checkpoint is missing or unreadable.
    """
    changed = changed_keys(yaml.safe_load(saved_config) or {}, yaml.safe_load(config) or {})
    if changed:
        raise ValueError(
            f"the config differs from {run_dir}'s saved config.yaml in {', '.join(changed)}: a resumed run "
            "continues with the config it started with (leave out --config/--set, or start a new run)"
        )
    ckpt = last_checkpoint(run_dir)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt} not found: the run stopped before its first epoch ended")
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"])
    except Exception as e:  # a checkpoint cut short by the kill: pickle, zip and key errors alike
        raise ValueError(f"{ckpt} cannot be read ({e}); the run cannot be resumed") from e


def changed_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (a key missing on one side differs)."""
    out = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += changed_keys(x, y, f"{prefix}{key}.")
        elif x != y or (key in a) != (key in b):
            out.append(f"{prefix}{key}")
    return out


def set_aside_log(run_dir: Path, epoch: int) -> None:
    """Move the CSV rows of epochs ≤ ``epoch`` (those the checkpoint holds) to ``EARLIER_LOG``; rows of the
    epoch cut short by the kill are dropped (the resumed run trains and logs it again)."""
    logs = run_dir / LOGS_DIR
    rows = _read(logs / EARLIER_LOG) + _read(logs / METRICS_LOG)
    kept = [r for r in rows if r.get("epoch") not in (None, "") and float(r["epoch"]) <= epoch]
    _write(logs / EARLIER_LOG, kept)
    (logs / METRICS_LOG).unlink(missing_ok=True)


def merge_log(run_dir: Path) -> None:
    """Put the set-aside rows back in front of the resumed run's (nothing to do for a run never resumed)."""
    logs = run_dir / LOGS_DIR
    if not (logs / EARLIER_LOG).is_file():
        return
    _write(logs / METRICS_LOG, _read(logs / EARLIER_LOG) + _read(logs / METRICS_LOG))
    (logs / EARLIER_LOG).unlink()


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = sorted({k for r in rows for k in r})  # Lightning's own column order
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

"""File contract shared by the peer runners (``run_rectools.py``, ``run_recbole.py``).

Imported by the runners from their own directory (a script's directory is first on ``sys.path``), inside
the peer's venv; it needs pandas, numpy and torch only, each imported where used, so that
``thread_env`` can run before any of them is loaded.

Input (``--input DIR``), protocol R1:
  ``train.csv``   ``user_id,item_id,position``: the events the model may learn from (ids are strings,
                  ``position`` is an int, strictly increasing per user in time order; used as timestamp).
  ``val.csv``     same columns, one row per user: the event right after the user's train events.
  ``config.json`` seed, capacity (n_factors, n_blocks, n_heads, max_len, dropout), lr, batch_size,
                  max_epochs, k, threads; optional ``patience`` (epochs without validation improvement
                  that are tolerated; the next one stops training; default 10, RecBole's stopping_step).
Output (``--output DIR``):
  ``topk.csv``    ``user_id,rank,item_id``: for every user, the top k over all items of the train+val
                  catalogue, given the whole train+val history, with every item of that history removed.
  ``result.json`` library, versions, train_seconds (fit only), predict_seconds, epochs, best_epoch,
                  the effective config, and counts of users / items the peer could not serve.
No raw data rows are ever printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sys
from pathlib import Path
from typing import Any

REQUIRED_CONFIG = (
    "seed",
    "n_factors",
    "n_blocks",
    "n_heads",
    "max_len",
    "dropout",
    "lr",
    "batch_size",
    "max_epochs",
    "k",
    "threads",
)
COLUMNS = ["user_id", "item_id", "position"]
DEFAULT_PATIENCE = 10  # RecBole's stopping_step


def patience(config: dict[str, Any]) -> int:
    """Epochs without validation improvement a runner tolerates (the one after them stops training)."""
    value = int(config.get("patience", DEFAULT_PATIENCE))
    if value < 0:
        raise ValueError(f"config.json patience must be >= 0, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a peer SASRec on an R1 split and write its top-k.")
    parser.add_argument(
        "--input", type=Path, required=True, help="folder with train.csv, val.csv, config.json"
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for topk.csv, result.json")
    args = parser.parse_args(argv)
    args.input, args.output = args.input.resolve(), args.output.resolve()
    return args


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``run_peer``'s timeout) into SystemExit, so temporary work folders are removed."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def load_config(input_dir: Path) -> dict[str, Any]:
    config = json.loads((input_dir / "config.json").read_text())
    missing = [key for key in REQUIRED_CONFIG if key not in config]
    if missing:
        raise ValueError(f"config.json lacks {missing}")
    return config


def thread_env(argv: list[str] | None = None) -> dict[str, str]:
    """Thread-count variables for the native pools; to be set before numpy or torch is imported."""
    threads = str(int(load_config(parse_args(argv).input)["threads"]))
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    return dict.fromkeys(names, threads)


def seed_everything(seed: int, threads: int) -> None:
    """Seed python, numpy and torch; limit torch to ``threads`` intra-op threads and one inter-op thread."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set, or parallel work has started
        torch.set_num_interop_threads(1)


def read_split(input_dir: Path):
    """(train, val) frames with string ids and int64 positions, checked against the contract."""
    import pandas as pd

    frames = []
    for name in ("train.csv", "val.csv"):
        frame = pd.read_csv(input_dir / name, dtype={"user_id": str, "item_id": str, "position": "int64"})
        if list(frame.columns[:3]) != COLUMNS:
            raise ValueError(f"{name}: expected columns {COLUMNS}, got {list(frame.columns)}")
        frames.append(frame[COLUMNS])
    train, val = frames
    if val["user_id"].duplicated().any():
        raise ValueError("val.csv must hold exactly one row per user")
    train_users, val_users = set(train["user_id"]), set(val["user_id"])
    if train_users != val_users:
        raise ValueError(
            f"train/val users differ: {len(train_users - val_users)} without a val row, "
            f"{len(val_users - train_users)} val users without train events"
        )
    train = train.sort_values(["user_id", "position"], kind="stable").reset_index(drop=True)
    if (train.groupby("user_id")["position"].diff() <= 0).any():
        raise ValueError("train.csv positions must be strictly increasing per user")
    last = train.groupby("user_id")["position"].max()
    if (val.set_index("user_id")["position"] <= last.reindex(val["user_id"]).to_numpy()).any():
        raise ValueError("each val event must come after the user's train events (larger position)")
    return train, val.reset_index(drop=True)


def history(train, val):
    """Every user's train events followed by the val event, sorted by (user, position)."""
    import pandas as pd

    return pd.concat([train, val], ignore_index=True).sort_values(["user_id", "position"], kind="stable")


def write_outputs(output_dir: Path, topk, seen, result: dict[str, Any]) -> dict[str, Any]:
    """Check ``topk`` (user_id, rank, item_id) against the contract, write topk.csv and result.json.

    ``seen`` is the train+val history: a recommended item found in it is a bug in the runner and raises.
    Users with fewer than k items (cold users, a tiny catalogue) are counted in ``result.json``.
    """
    k = int(result["config"]["k"])
    topk = topk.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)
    if topk.duplicated(["user_id", "item_id"]).any() or topk.duplicated(["user_id", "rank"]).any():
        raise AssertionError("top-k lists repeat an item or a rank")
    if len(topk) and (topk["rank"].min() < 1 or topk["rank"].max() > k):
        raise AssertionError(f"ranks must lie in 1..{k}")
    leaked = topk.merge(seen[["user_id", "item_id"]].drop_duplicates(), on=["user_id", "item_id"])
    if len(leaked):
        raise AssertionError(f"{len(leaked)} recommended items are in the user's own history")
    users = seen["user_id"].unique()
    per_user = topk.groupby("user_id").size().reindex(users, fill_value=0)
    result = {
        **result,
        "n_users": len(users),
        "n_users_without_recs": int((per_user == 0).sum()),
        "n_users_short": int((per_user < k).sum()),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    topk[["user_id", "rank", "item_id"]].to_csv(output_dir / "topk.csv", index=False)
    (output_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"wrote {len(topk)} recommendations for {len(users) - result['n_users_without_recs']}/{len(users)} users",
        file=sys.stderr,
    )
    return result


def versions(*modules: str) -> dict[str, str]:
    """``{"torch": ..., "numpy": ..., ...}`` of already importable modules."""
    import importlib

    return {name: str(getattr(importlib.import_module(name), "__version__", "?")) for name in modules}

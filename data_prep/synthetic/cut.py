"""The same retailer's export as it stood earlier: a generated data folder without the records stamped at or
after a date. ``prep`` on the cut folder, then on the whole one, is "one more week of data" for the id
registry's stability figure (:mod:`data_prep.registry`): the generator itself is not prefix-stable (a longer
window draws different random numbers), so the earlier export is cut from the later one.

Records whose timestamp does not parse (the generator's injected faults) are kept: prep rejects them into
its ledger either way. JSON lines are copied byte for byte; CSV files are rewritten with the same columns,
every value as text.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd

from data_prep import schema as S

# raw file (relative to 01_raw) → its timestamp column
TIMESTAMPS = {
    f"{S.RAW_ONLINE_DIR}/{S.RAW_ONLINE_FILE}": S.ON_TS,
    f"{S.RAW_ONLINE_DIR}/{S.RAW_ACCOUNTS_FILE}": S.ACC_CREATED_TS,
    f"{S.RAW_POS_DIR}/{S.RAW_POS_FILE}": S.POS_TS,
    f"{S.RAW_CRM_DIR}/{S.RAW_CRM_FILE}": S.CRM_SIGNUP_TS,
}


def _before(values: pd.Series, before: pd.Timestamp) -> pd.Series:
    """True where the timestamp text is before ``before`` or does not parse (kept for prep to judge)."""
    ts = pd.to_datetime(values, utc=True, format="mixed", errors="coerce")
    return ts.isna() | (ts < before)


def _stamp(line: str, column: str) -> object:
    """The timestamp of a JSON line; None (kept) for a blank or malformed line or a non-object."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get(column) if isinstance(record, dict) else None


def cut_export(data: Path, out: Path, before: datetime) -> dict[str, int]:
    """Copy ``data`` (its 01_raw and ground_truth) to ``out`` without the records at or after ``before``
    (UTC); returns the records left out per raw file."""
    if out.exists():
        raise FileExistsError(f"{out} exists: give a new folder")
    cut = pd.Timestamp(before).tz_localize("UTC") if before.tzinfo is None else pd.Timestamp(before)
    shutil.copytree(data / S.RAW_DIR, out / S.RAW_DIR)
    truth = data / S.GROUND_TRUTH_DIR
    if truth.is_dir():
        shutil.copytree(truth, out / S.GROUND_TRUTH_DIR)
    dropped: dict[str, int] = {}
    for name, column in TIMESTAMPS.items():
        path = out / S.RAW_DIR / name
        if not path.is_file():
            continue
        if path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            stamps = pd.Series([_stamp(line, column) for line in lines])
            keep = _before(stamps, cut)
            path.write_text("".join(line for line, k in zip(lines, keep, strict=True) if k), encoding="utf-8")
        else:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
            keep = _before(table[column].replace("", None), cut)
            table[keep.to_numpy()].to_csv(path, index=False)
        dropped[name] = int((~keep).sum())
    return dropped

"""Right to erasure: remove a person from every file and store, keep them out of later runs, flag stale models.

``erase_person`` pseudonymises the identifier it is given, finds the resolved customer(s), and runs one
transaction that is safe to run again after a crash at any point:

1. **find and validate** — every Parquet file under the data folder (any depth: 02_events … 05_scores, the
   scorer's part folders and held-out sets, campaign targets) and under the model roots (runs' cached
   examples), the raw exports in 01_raw, the files an import read that lie in the data folder (a fetch's
   ``exports/``: :mod:`data_prep.import_record`) and the generator's ground truth; a file that cannot be read
   or cleaned stops the erasure before anything is changed, naming the file;
2. **journal** — ``$O2O_HOME/erasure_pending.json`` holds who is being erased, so that a rerun after a crash
   finishes the job even though the identity map no longer names them;
3. **delete** — their rows leave every file (atomic rewrites: :mod:`data_prep.purge`), then the caller's
   ``before_record`` deletes them from the service's history stores (data_prep does not open those);
4. **record** — their identifier keys go to the erasure registry (``$O2O_HOME/erasures.jsonl``, keys only:
   the registry holds no raw value and no customer id), so every later ``prep`` drops their rows at ingestion;
   manifests get their new hashes; ``RETRAIN_REQUIRED.json`` goes into every run and bundle built from the
   data before erasure; the journal is removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from data_prep import pii
from data_prep import schema as S
from data_prep.import_record import ImportedFile, read_record
from data_prep.manifest import file_sha256
from data_prep.purge import (
    Target,
    csv_header,
    purge_ground_truth,
    purge_parquet,
    purge_raw_csv,
    purge_raw_jsonl,
    purge_raw_parquet,
)

REGISTRY_FILE = "erasures.jsonl"
JOURNAL_FILE = "erasure_pending.json"
RETRAIN_MARKER = S.RETRAIN_MARKER
GROUND_TRUTH_DIR = "ground_truth"
TEMP_SUFFIX = ".erasing"  # a rewrite in progress (data_prep.purge); a crash may leave one behind
# raw column → identifier type, per raw file (relative to 01_raw)
RAW_IDENTIFIER_COLUMNS = {
    f"{S.RAW_ONLINE_DIR}/{S.RAW_ONLINE_FILE}": S.RAW_IDENTIFIER_COLUMNS["online"],
    f"{S.RAW_ONLINE_DIR}/{S.RAW_ACCOUNTS_FILE}": S.RAW_IDENTIFIER_COLUMNS["accounts"],
    f"{S.RAW_POS_DIR}/{S.RAW_POS_FILE}": S.RAW_IDENTIFIER_COLUMNS["pos"],
    f"{S.RAW_CRM_DIR}/{S.RAW_CRM_FILE}": S.RAW_IDENTIFIER_COLUMNS["crm"],
    f"{S.RAW_ORDERS_DIR}/{S.RAW_ORDERS_FILE}": S.RAW_IDENTIFIER_COLUMNS["orders"],
}


@dataclass(frozen=True)
class ErasureResult:
    customer_ids: list[str]
    n_identifiers: int
    rows_removed: dict[str, int]  # file → rows deleted
    marked_for_retraining: list[Path]
    already_erased: bool = False  # the identifier was erased before and nothing of it was left
    resumed: bool = False  # an erasure a crash interrupted was finished first
    # files an import read from outside the data folder, holding raw identifiers: the operator's to erase
    inputs_outside: tuple[Path, ...] = ()


def registry_path() -> Path:
    return pii.o2o_home() / REGISTRY_FILE


def erased_keys() -> pd.DataFrame:
    """(identifier_type, identifier_key) of every erased identifier (empty frame when none)."""
    path = registry_path()
    cols = [S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY]
    if not path.exists():
        return pd.DataFrame(columns=cols, dtype="string")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=[*cols, "erased_at"])[cols].drop_duplicates().astype("string")


def _record(keys: pd.DataFrame, when: str) -> None:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for t, k in zip(keys[S.IDENTIFIER_TYPE], keys[S.IDENTIFIER_KEY], strict=True):
            f.write(json.dumps({S.IDENTIFIER_TYPE: t, S.IDENTIFIER_KEY: k, "erased_at": when}) + "\n")


def customer_keys(data: Path, identifier_type: str, key: str) -> tuple[list[str], pd.DataFrame]:
    """The customers an identifier key belongs to, and every identifier key of those customers."""
    id_map = pd.read_parquet(data / S.CUSTOMERS_DIR / S.IDENTITY_MAP_FILE)
    hit = id_map[(id_map[S.IDENTIFIER_TYPE] == identifier_type) & (id_map[S.IDENTIFIER_KEY] == key)]
    customers = sorted(hit[S.CUSTOMER_ID].unique().tolist())
    keys = id_map[id_map[S.CUSTOMER_ID].isin(customers)][[S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY]]
    own = pd.DataFrame({S.IDENTIFIER_TYPE: [identifier_type], S.IDENTIFIER_KEY: [key]})
    return customers, pd.concat([keys, own]).drop_duplicates().reset_index(drop=True)


def _stale_markers(
    data: Path, old_hashes: set[str], roots: Iterable[Path], note: dict[str, Any]
) -> list[Path]:
    """Write a retrain marker into every run / bundle whose data manifest names a pre-erasure file.

    A root holds runs (``<root>/<id>/metrics.json``) or bundles (``<root>/o2o/<version>/bundle.json``), or is
    a bundle folder itself (a model-store copy: ``<root>/bundle.json``).
    """
    marked = []
    for root in roots:
        docs = [*root.glob("*/metrics.json"), *root.glob(f"o2o/*/{S.BUNDLE_FILE}"), *root.glob(S.BUNDLE_FILE)]
        for doc_path in docs:
            doc = json.loads(doc_path.read_text())
            hashes = {v.get("sha256") for v in doc.get("data_manifest", {}).values() if isinstance(v, dict)}
            if hashes & old_hashes:
                marker = doc_path.parent / RETRAIN_MARKER
                marker.write_text(json.dumps(note, indent=2))
                marked.append(doc_path.parent)
    return marked


def _refresh_manifests(data: Path, when: str, n_customers: int) -> None:
    """Every layer manifest (any depth) gets the new hashes of its outputs and a line saying when."""
    for path in sorted(data.rglob(S.MANIFEST_FILE)):
        if S.RAW_DIR in path.relative_to(data).parts:
            continue
        doc = json.loads(path.read_text())
        for name, entry in doc.get("outputs", {}).items():
            f = path.parent / name
            if f.is_file() and isinstance(entry, dict):
                entry["sha256"] = file_sha256(f)
        doc.setdefault("erasures", []).append({"at": when, "n_customers": n_customers})
        _write_json(path, doc)


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TEMP_SUFFIX)
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def journal_path() -> Path:
    return pii.o2o_home() / JOURNAL_FILE


def _pending(data: Path) -> dict[str, Any] | None:
    """The journal of an erasure of ``data`` that a crash interrupted (None when there is none)."""
    path = journal_path()
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return doc if doc.get("data") == str(data.resolve()) else None


def _tables(data: Path, roots: Iterable[Path]) -> list[Path]:
    """Every Parquet file a person may be in: under ``data`` (01_raw's too) and under the model roots."""
    files = [p for root in (data, *roots) if root.is_dir() for p in root.rglob("*.parquet") if p.is_file()]
    return sorted(set(files))


def _validate(tables: list[Path], raw: list[Path]) -> None:
    """Refuse before anything changes when a file cannot be read (and so cannot be cleaned)."""
    for path in tables:
        try:
            pq.read_schema(path)  # the footer: what every rewrite reads first
        except Exception as e:  # pyarrow raises several kinds for a damaged footer
            raise ValueError(
                f"{path}: not readable Parquet ({type(e).__name__}: {e}); nothing was erased: restore the "
                "file or delete it (a layer is rebuilt by `o2o prep`, scores by `o2o score --restart`), then "
                "run the erasure again"
            ) from None
    for path in raw:
        if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK):
            raise ValueError(f"{path}: cannot be read and rewritten; nothing was erased: fix its permissions")


def _import_inputs(data: Path) -> tuple[list[ImportedFile], list[Path]]:
    """The files the import into ``data`` read that hold identifiers and still exist: those inside ``data``
    (cleaned with 01_raw), and the paths of those outside it."""
    inside, outside = [], set()
    for f in read_record(data):
        if f.holds_identifiers and f.path.is_file():
            if f.path.resolve().is_relative_to(data.resolve()):
                inside.append(f)
            else:
                outside.add(f.path)
    return inside, sorted(outside)


def _validate_inputs(inputs: list[ImportedFile]) -> None:
    """Refuse before anything changes when an import's input in the data folder cannot be cleaned."""
    remedy = (
        "nothing was erased: delete the file (prep reads 01_raw, which the import wrote from it), then run "
        "the erasure again"
    )
    for f in inputs:
        if f.built_identifiers:
            raise ValueError(
                f"{f.path}: an import read it, and its mapping (source {f.source!r}) builds "
                f"{list(f.built_identifiers)} from templates or recoded values, so its rows cannot be matched "
                f"to a person; {remedy}"
            )
        if f.format == "jsonl":
            continue  # a JSON key may be missing from any record
        try:
            names = (
                pq.read_schema(f.path).names
                if f.format == "parquet"
                else csv_header(f.path, f.delimiter, f.quote, f.encoding)
            )
        except Exception as e:  # unreadable: pyarrow and codecs raise several kinds
            raise ValueError(f"{f.path}: cannot be read ({type(e).__name__}: {e}); {remedy}") from None
        missing = sorted({c for c, _t in f.identifiers} - set(names))
        if missing:
            raise ValueError(
                f"{f.path}: has no column(s) {missing}, which the import read identifiers from (the file "
                f"changed since); {remedy}"
            )


def _column_sets(identifiers: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """(column, identifier type) pairs as column → type maps, a column that holds two types in two maps."""
    sets: list[dict[str, str]] = []
    for col, id_type in identifiers:
        free = next((s for s in sets if col not in s), None)
        if free is None:
            free = {}
            sets.append(free)
        free[col] = id_type
    return sets


def _purge_input(f: ImportedFile, target: Target, key: bytes) -> int:
    n = 0
    for columns in _column_sets(f.identifiers):
        if f.format == "csv":
            n += purge_raw_csv(
                f.path, columns, target, key, delimiter=f.delimiter, quote=f.quote, encoding=f.encoding
            )
        elif f.format == "jsonl":
            n += purge_raw_jsonl(f.path, columns, target, key)
        else:
            n += purge_raw_parquet(f.path, columns, target, key)
    return n


def _remove_leftovers(roots: Iterable[Path]) -> None:
    """Half-written rewrites a crash left behind (they may hold other customers' rows, never cleaned)."""
    for root in roots:
        if root.is_dir():
            for p in root.rglob(f"*{TEMP_SUFFIX}"):
                if p.is_file():
                    p.unlink()


def find_person(data: Path, identifier_type: str, key: str) -> tuple[list[str], pd.DataFrame]:
    """The customers of an identifier key and all their keys; only the key itself without an identity map."""
    if (data / S.CUSTOMERS_DIR / S.IDENTITY_MAP_FILE).is_file():
        return customer_keys(data, identifier_type, key)
    return [], pd.DataFrame({S.IDENTIFIER_TYPE: [identifier_type], S.IDENTIFIER_KEY: [key]}, dtype="string")


def erase_person(
    data: Path,
    identifier_type: str,
    value: str,
    model_roots: Iterable[Path] = (),
    before_record: Callable[[list[str]], None] | None = None,
) -> ErasureResult:
    """Erase the person behind one raw identifier from ``data`` and the runs/bundles under ``model_roots``
    (see the module doc). ``before_record(customer_ids)`` runs after the files are clean and before the
    erasure is recorded (the service's history stores); if it raises, the journal stays and a rerun resumes."""
    if identifier_type not in S.IDENTIFIER_TYPES:
        raise ValueError(f"identifier type must be one of {S.IDENTIFIER_TYPES}, got {identifier_type!r}")
    key = pii.load_key()
    hashed = pii.pseudonymise(identifier_type, value, key)
    if hashed is None:
        raise ValueError(f"{identifier_type} value is empty or malformed after normalisation")
    roots = [r for r in model_roots if r.is_dir()]
    customers, keys = find_person(data, identifier_type, hashed)
    pending = _pending(data)
    if pending is not None:  # finish what a crash interrupted, together with this person
        customers = sorted(set(customers) | set(pending["customer_ids"]))
        old_keys = pd.DataFrame(
            pending["keys"], columns=[S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY], dtype="string"
        )
        keys = pd.concat([keys, old_keys]).drop_duplicates().reset_index(drop=True)
    target = Target(
        customers, keys, {value.strip()}
    )  # the value as typed: also found in unparseable raw rows
    tables = _tables(data, roots)
    raw = [p for rel in RAW_IDENTIFIER_COLUMNS if (p := data / S.RAW_DIR / rel).is_file()]
    inputs, outside = _import_inputs(data)
    _validate(tables, [*raw, *(f.path for f in inputs)])
    _validate_inputs(inputs)
    when = pending["erased_at"] if pending else datetime.now(UTC).isoformat(timespec="seconds")
    old_hashes = set(pending["old_hashes"]) if pending else {file_sha256(p) for p in tables}
    journal = {
        "data": str(data.resolve()),
        "erased_at": when,
        "customer_ids": customers,
        "keys": keys.to_numpy().tolist(),
        "old_hashes": sorted(old_hashes),
    }
    _write_json(journal_path(), journal)
    _remove_leftovers([data, *roots])
    removed = {str(p): n for p in tables if (n := purge_parquet(p, target))}
    removed |= _purge_raw(data, inputs, target, key)
    if before_record is not None:
        before_record(customers)
    already = not customers and not removed and _is_recorded(identifier_type, hashed)
    _record(keys, when)
    _refresh_manifests(data, when, len(customers))
    note = {
        "reason": "erasure",
        "erased_at": when,
        "n_customers": len(customers),
        "registry": str(registry_path()),
    }
    marked = _stale_markers(data, old_hashes, roots, note) if removed or pending else []
    journal_path().unlink()
    return ErasureResult(customers, len(keys), removed, marked, already, pending is not None, tuple(outside))


def _purge_raw(data: Path, inputs: list[ImportedFile], target: Target, key: bytes) -> dict[str, int]:
    """The raw exports (01_raw), the import's inputs in the data folder and the generator's ground truth,
    rewritten without the person."""
    removed: dict[str, int] = {}

    def count(path: Path, n: int) -> None:
        if n:
            removed[str(path)] = removed.get(str(path), 0) + n

    for _ in range(2):  # the second pass: unreadable rows holding a raw value the first pass found elsewhere
        for rel, columns in RAW_IDENTIFIER_COLUMNS.items():
            path = data / S.RAW_DIR / rel
            if path.is_file():
                purge = purge_raw_jsonl if path.suffix == ".jsonl" else purge_raw_csv
                count(path, purge(path, columns, target, key))
        for f in inputs:
            count(f.path, _purge_input(f, target, key))
    return removed | purge_ground_truth(data / GROUND_TRUTH_DIR, target, key)


def _is_recorded(identifier_type: str, key: str) -> bool:
    erased = erased_keys()
    return bool(((erased[S.IDENTIFIER_TYPE] == identifier_type) & (erased[S.IDENTIFIER_KEY] == key)).any())

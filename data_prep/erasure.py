"""Right to erasure: remove a person from every layer, keep them out of later runs, flag stale models.

``erase_person`` pseudonymises the identifier it is given, finds the resolved customer, and then:
1. records every identifier key of that customer in the erasure registry (``$O2O_HOME/erasures.jsonl``,
   keys only — the registry holds no raw value), so every later ``prep`` drops their rows at ingestion;
2. deletes their rows from every Parquet file of 02_events … 05_scores and from the raw exports in 01_raw;
3. writes ``RETRAIN_REQUIRED.json`` into every run and bundle that was built from the data before erasure.

Serving's customer-history stores are not data_prep's to open: ``o2o erase --history-url`` deletes the
returned ``customer_ids`` from them (``experiments/cli.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from data_prep import pii
from data_prep import schema as S
from data_prep.manifest import file_sha256

REGISTRY_FILE = "erasures.jsonl"
RETRAIN_MARKER = S.RETRAIN_MARKER
LAYERS = (S.EVENTS_DIR, S.CUSTOMERS_DIR, S.FEATURES_DIR, "05_scores")
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


def _where_erased(columns: Iterable[str]) -> str | None:
    """SQL predicate matching rows of the erased customers or carrying an erased identifier key."""
    cols = set(columns)
    terms = []
    if S.CUSTOMER_ID in cols:
        terms.append(f"{S.CUSTOMER_ID} IN (SELECT customer_id FROM erased_customers)")
    for id_type, col in S.IDENTIFIER_KEY_COLUMNS.items():
        if col in cols:
            terms.append(
                f"{col} IN (SELECT identifier_key FROM erased_keys WHERE identifier_type = '{id_type}')"
            )
    if {S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY} <= cols:
        terms.append(f"({S.IDENTIFIER_TYPE}, {S.IDENTIFIER_KEY}) IN (SELECT * FROM erased_keys)")
    if "node" in cols:
        terms.append("node IN (SELECT identifier_type || ':' || identifier_key FROM erased_keys)")
    return " OR ".join(f"coalesce({t}, false)" for t in terms) or None  # a NULL key matches nothing


def _purge_parquet(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    cols = [c[0] for c in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()]
    where = _where_erased(cols)
    if where is None:
        return 0
    n = con.execute(f"SELECT count(*) FROM read_parquet('{path}') WHERE {where}").fetchone()[0]  # type: ignore[index]
    if n:
        tmp = path.with_suffix(".erasing.parquet")
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{path}') WHERE NOT ({where})) TO '{tmp}' (FORMAT PARQUET)"
        )
        tmp.replace(path)
    return int(n)


def _purge_raw(
    con: duckdb.DuckDBPyConnection, raw_dir: Path, keys: pd.DataFrame, key: bytes
) -> dict[str, int]:
    """Delete raw rows whose identifiers hash to an erased key (the raw exports are ours to clean too)."""
    removed: dict[str, int] = {}
    erased = set(zip(keys[S.IDENTIFIER_TYPE], keys[S.IDENTIFIER_KEY], strict=True))
    for rel, columns in RAW_IDENTIFIER_COLUMNS.items():
        path = raw_dir / rel
        if not path.exists():
            continue
        is_json = path.suffix == ".jsonl"
        source = (
            f"read_json_auto('{path}', format='newline_delimited')"
            if is_json
            else f"read_csv('{path}', all_varchar=true, header=true)"
        )
        present = {c[0] for c in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        terms = []
        for col, id_type in columns.items():
            if col not in present:
                continue
            values = [
                r[0] for r in con.execute(f"SELECT DISTINCT CAST({col} AS VARCHAR) FROM {source}").fetchall()
            ]
            hits = [
                v for v in values if v is not None and (id_type, pii.pseudonymise(id_type, v, key)) in erased
            ]
            if hits:
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE hits_{col} AS SELECT unnest(?::VARCHAR[]) AS v", [hits]
                )
                terms.append(f"coalesce(CAST({col} AS VARCHAR) IN (SELECT v FROM hits_{col}), false)")
        if not terms:
            continue
        where = " OR ".join(terms)
        n = con.execute(f"SELECT count(*) FROM {source} WHERE {where}").fetchone()[0]  # type: ignore[index]
        tmp = path.with_name(path.name + ".erasing")
        fmt = "(FORMAT JSON)" if is_json else "(FORMAT CSV, HEADER)"
        con.execute(f"COPY (SELECT * FROM {source} WHERE NOT ({where})) TO '{tmp}' {fmt}")
        tmp.replace(path)
        removed[str(path)] = int(n)
    return removed


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
    for layer in LAYERS:
        path = data / layer / S.MANIFEST_FILE
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        for name, entry in doc.get("outputs", {}).items():
            f = data / layer / name
            if f.exists() and isinstance(entry, dict):
                entry["sha256"] = file_sha256(f)
        doc.setdefault("erasures", []).append({"at": when, "n_customers": n_customers})
        path.write_text(json.dumps(doc, indent=2))


def erase_person(
    data: Path, identifier_type: str, value: str, model_roots: Iterable[Path] = ()
) -> ErasureResult:
    """Erase the person behind one raw identifier from the prepared data under ``data`` (see module doc)."""
    if identifier_type not in S.IDENTIFIER_TYPES:
        raise ValueError(f"identifier type must be one of {S.IDENTIFIER_TYPES}, got {identifier_type!r}")
    key = pii.load_key()
    hashed = pii.pseudonymise(identifier_type, value, key)
    if hashed is None:
        raise ValueError(f"{identifier_type} value is empty or malformed after normalisation")
    customers, keys = customer_keys(data, identifier_type, hashed)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    _record(keys, when)
    files = [p for layer in LAYERS for p in sorted((data / layer).glob("*.parquet"))]
    old_hashes = {file_sha256(p) for p in files}
    con = duckdb.connect()
    con.register("erased_keys", keys)
    con.register("erased_customers", pd.DataFrame({S.CUSTOMER_ID: customers}, dtype="string"))
    removed = {str(p): n for p in files if (n := _purge_parquet(con, p))}
    removed |= _purge_raw(con, data / S.RAW_DIR, keys, key)
    _refresh_manifests(data, when, len(customers))
    note = {
        "reason": "erasure",
        "erased_at": when,
        "n_customers": len(customers),
        "registry": str(registry_path()),
    }
    marked = _stale_markers(data, old_hashes, model_roots, note)
    return ErasureResult(customers, len(keys), removed, marked)

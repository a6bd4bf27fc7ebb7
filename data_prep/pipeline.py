"""The prep pipeline: the only module in ``data_prep`` that reads and writes layers.

01_raw → 02_events (unified, pseudonymised, ledger + rejects) → 03_customers (identity) → 04_features
(vocabulary, sequences, R2 next-item examples, I1 intent examples, scoring snapshot, splits).
Steps are the pure Ibis functions of ``events``, ``identity`` and ``features``; each layer is written to
Parquet and read back, so the next layer starts from files exactly as a later run would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd

from data_prep import events as ev
from data_prep import features as fe
from data_prep import identity as idn
from data_prep import pii
from data_prep import schema as S
from data_prep.manifest import Manifest

Progress = Callable[[str], None]

ONLINE_COLUMNS = (
    S.ON_EVENT_ID,
    S.ON_TS,
    S.ON_CHANNEL,
    S.ON_DEVICE_ID,
    S.ON_ACCOUNT_ID,
    S.ON_SESSION_ID,
    S.ON_EVENT_TYPE,
    S.ON_ITEM_ID,
    S.ON_QUERY,
    S.ON_QUANTITY,
    S.ON_PRICE,
    S.ON_ORDER_ID,
    S.ON_EMAIL,
)
POS_COLUMNS = (
    S.POS_TRANSACTION_ID,
    S.POS_LINE_NO,
    S.POS_TS,
    S.POS_STORE_ID,
    S.POS_LOYALTY_CARD,
    S.POS_PHONE,
    S.POS_ITEM_ID,
    S.POS_QUANTITY,
    S.POS_UNIT_PRICE,
)
CRM_COLUMNS = (S.CRM_LOYALTY_CARD, S.CRM_PHONE, S.CRM_EMAIL, S.CRM_SIGNUP_TS, S.CRM_SIGNUP_STORE_ID)
# raw column → (identifier type, pseudonymised column), per source
ONLINE_IDENTIFIERS = {
    S.ON_DEVICE_ID: (S.ID_DEVICE, S.DEVICE_KEY),
    S.ON_ACCOUNT_ID: (S.ID_ACCOUNT, S.ACCOUNT_KEY),
    S.ON_EMAIL: (S.ID_EMAIL, S.EMAIL_KEY),
}
POS_IDENTIFIERS = {S.POS_LOYALTY_CARD: (S.ID_CARD, S.CARD_KEY), S.POS_PHONE: (S.ID_PHONE, S.PHONE_KEY)}
CRM_IDENTIFIERS = {
    S.CRM_LOYALTY_CARD: (S.ID_CARD, S.CARD_KEY),
    S.CRM_PHONE: (S.ID_PHONE, S.PHONE_KEY),
    S.CRM_EMAIL: (S.ID_EMAIL, S.EMAIL_KEY),
}


@dataclass(frozen=True)
class PrepResult:
    events_dir: Path
    customers_dir: Path
    features_dir: Path
    ledger: dict[str, Any]
    identity_metrics: dict[str, Any] | None
    splits: fe.TimeSplits


class RawInputError(ValueError):
    """A raw file is missing or lacks a required column; the message names the file and column."""


def connect() -> ibis.BaseBackend:
    con = ibis.duckdb.connect()
    con.raw_sql("SET TimeZone = 'UTC'")
    return con


def _require(path: Path) -> Path:
    if not path.exists():
        raise RawInputError(f"missing raw file: {path}")
    return path


def _read_csv(con: ibis.BaseBackend, path: Path, required: tuple[str, ...]) -> ir.Table:
    t = con.read_csv(_require(path), all_varchar=True, header=True)
    missing = [c for c in required if c not in t.columns]
    if missing:
        raise RawInputError(f"{path}: missing column(s) {missing}; found {list(t.columns)}")
    return t


def _read_online(con: ibis.BaseBackend, path: Path) -> ir.Table:
    return con.read_json(
        _require(path), format="newline_delimited", columns={c: "VARCHAR" for c in ONLINE_COLUMNS}
    )


def pseudonymise_columns(
    con: ibis.BaseBackend, t: ir.Table, columns: dict[str, tuple[str, str]], key: bytes
) -> ir.Table:
    """Replace each raw identifier column by its HMAC key column (one HMAC per distinct raw value)."""
    for raw_col, (id_type, key_col) in columns.items():
        distinct = t.select(raw_col).filter(t[raw_col].notnull()).distinct().to_pyarrow()
        values = distinct.column(0).to_pylist()
        mapping = pd.DataFrame({"_raw": values, key_col: pii.pseudonymise_many(id_type, values, key)})
        m = con.create_table(f"_map_{key_col}", mapping, overwrite=True)
        t = t.left_join(m, t[raw_col] == m["_raw"]).drop(raw_col, "_raw")
    return t


def _write(con: ibis.BaseBackend, expr: ir.Table, path: Path, manifest: Manifest) -> ir.Table:
    path.parent.mkdir(parents=True, exist_ok=True)
    con.to_parquet(expr, path)
    manifest.add_output(path)
    return con.read_parquet(path)


def build_ledger(counts: pd.DataFrame) -> dict[str, Any]:
    """Ledger document from (source, outcome, reason, n) counts; ``balanced`` checks in = out per source."""
    ledger: dict[str, Any] = {"sources": {}}
    for source, g in counts.groupby(S.SOURCE):
        by_outcome = g.groupby("outcome")["n"].sum().to_dict()
        rejected = g[g.outcome == "rejected"]
        reasons = {str(r): int(n) for r, n in zip(rejected[S.REJECT_REASON], rejected["n"], strict=True)}
        n_raw = int(g["n"].sum())
        entry: dict[str, Any] = {
            "n_raw": n_raw,
            "n_accepted": int(by_outcome.get("accepted", 0)),
            "n_merged_duplicate": int(by_outcome.get("merged_duplicate", 0)),
            "n_rejected": int(by_outcome.get("rejected", 0)),
            "rejected_by_reason": dict(sorted(reasons.items())),
        }
        n_out = int(
            by_outcome.get("accepted", 0)
            + by_outcome.get("merged_duplicate", 0)
            + by_outcome.get("rejected", 0)
        )
        entry["balanced"] = n_raw == n_out
        ledger["sources"][str(source)] = entry
    ledger["balanced"] = all(s["balanced"] for s in ledger["sources"].values())
    return ledger


def build_events_layer(
    con: ibis.BaseBackend, raw: Path, out: Path, key: bytes
) -> tuple[ir.Table, ir.Table, dict]:
    """Write ``02_events``: events.parquet, members.parquet, rejects.parquet, ledger.json, manifest."""
    raw_dir, out_dir = raw / S.RAW_DIR, out / S.EVENTS_DIR
    m = Manifest(S.EVENTS_DIR)
    online_path = raw_dir / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE
    pos_path = raw_dir / S.RAW_POS_DIR / S.RAW_POS_FILE
    crm_path = raw_dir / S.RAW_CRM_DIR / S.RAW_CRM_FILE
    items_path = raw_dir / S.RAW_CATALOG_DIR / S.RAW_ITEMS_FILE
    stores_path = raw_dir / S.RAW_CATALOG_DIR / S.RAW_STORES_FILE
    for p in (online_path, pos_path, crm_path, items_path, stores_path):
        m.add_input(_require(p))
    items = _read_csv(con, items_path, (S.CAT_ITEM_ID, S.CAT_CATEGORY, S.CAT_PRICE))
    stores = _read_csv(con, stores_path, (S.CAT_STORE_ID, S.CAT_CITY))
    online = pseudonymise_columns(con, _read_online(con, online_path), ONLINE_IDENTIFIERS, key)
    pos = pseudonymise_columns(con, _read_csv(con, pos_path, POS_COLUMNS), POS_IDENTIFIERS, key)
    crm = pseudonymise_columns(con, _read_csv(con, crm_path, CRM_COLUMNS), CRM_IDENTIFIERS, key)

    unified = ibis.union(ev.unify_online_events(online, items), ev.unify_pos_lines(pos, items, stores))
    marked = ev.mark_duplicates(unified).cache()
    members = ev.mark_duplicates(ev.clean_members(crm)).cache()
    events = _write(con, ev.accepted_events(marked), out_dir / S.EVENTS_FILE, m)
    keep_members = members.filter(members[S.REJECT_REASON].isnull() & ~members[ev.IS_DUPLICATE])
    members_out = _write(
        con, keep_members.drop(S.REJECT_REASON, ev.IS_DUPLICATE), out_dir / "members.parquet", m
    )
    rejects = ibis.union(
        ev.rejected_rows(marked).select(S.SOURCE, S.EVENT_ID, S.TS, S.REJECT_REASON),
        ev.rejected_rows(members).select(S.SOURCE, S.EVENT_ID, S.TS, S.REJECT_REASON),
    )
    _write(con, rejects, out_dir / S.REJECTS_FILE, m)
    counts = pd.concat([ev.count_outcomes(marked).to_pandas(), ev.count_outcomes(members).to_pandas()])
    ledger = build_ledger(counts)
    (out_dir / S.LEDGER_FILE).write_text(json.dumps(ledger, indent=2))
    m.extra["ledger"] = ledger
    m.write(out_dir)
    _write_catalog(con, items, out_dir)
    return events, members_out, ledger


def _write_catalog(con: ibis.BaseBackend, items: ir.Table, out_dir: Path) -> None:
    cat = items.select(S.CAT_ITEM_ID, S.CAT_CATEGORY, **{S.CAT_PRICE: items[S.CAT_PRICE].try_cast("float64")})
    con.to_parquet(cat, out_dir / "catalog.parquet")


def build_customers_layer(
    con: ibis.BaseBackend, events: ir.Table, members: ir.Table, raw: Path, out: Path, key: bytes
) -> tuple[ir.Table, dict[str, Any] | None]:
    """Write ``03_customers``: identity map, customer table, events with customer_id, identity metrics."""
    out_dir = out / S.CUSTOMERS_DIR
    m = Manifest(S.CUSTOMERS_DIR)
    links = idn.identifier_links([events, members]).cache()
    nodes = links.select(idn.NODE).distinct()
    labels = idn.propagate_labels(nodes, idn.identifier_edges(links))
    id_map = _write(con, idn.identity_map(labels), out_dir / S.IDENTITY_MAP_FILE, m)
    resolved = _write(con, idn.attach_customers(events, id_map), out_dir / "events.parquet", m)
    _write(con, idn.customer_table(resolved, id_map), out_dir / S.CUSTOMERS_FILE, m)
    metrics = identity_metrics(raw, id_map.to_pandas(), key)
    if metrics is not None:
        (out_dir / S.IDENTITY_METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        m.extra["identity_metrics"] = metrics
    m.write(out_dir)
    return resolved, metrics


def identity_metrics(raw: Path, id_map: pd.DataFrame, key: bytes) -> dict[str, Any] | None:
    """Score the resolution against ``ground_truth/`` when it exists (its raw values are hashed first)."""
    path = raw / S.GROUND_TRUTH_DIR / S.GT_IDENTIFIERS_FILE
    if not path.exists():
        return None
    gt = pd.read_csv(path, dtype=str, keep_default_na=False)
    keys = [
        pii.pseudonymise(t, v, key) for t, v in zip(gt[S.IDENTIFIER_TYPE], gt[S.GT_IDENTIFIER], strict=True)
    ]
    truth = pd.DataFrame(
        {S.IDENTIFIER_TYPE: gt[S.IDENTIFIER_TYPE], S.IDENTIFIER_KEY: keys, S.GT_PERSON_ID: gt[S.GT_PERSON_ID]}
    ).dropna()
    return idn.pairwise_metrics(id_map, truth)


def build_features_layer(
    con: ibis.BaseBackend, events: ir.Table, out: Path, horizon_days: int, progress: Progress
) -> fe.TimeSplits:
    """Write ``04_features``: vocabulary, R2 rec_{train,val,test}, I1 intent_{train,val,test}, snapshot."""
    out_dir = out / S.FEATURES_DIR
    m = Manifest(S.FEATURES_DIR)
    span = events.aggregate(lo=events[S.TS].min(), hi=events[S.TS].max()).to_pandas().iloc[0]
    splits = fe.plan_splits(span.lo.to_pydatetime(), span.hi.to_pydatetime(), horizon_days)
    (out_dir).mkdir(parents=True, exist_ok=True)
    (out_dir / S.SPLITS_FILE).write_text(splits.to_json())
    catalog = con.read_parquet(out / S.EVENTS_DIR / "catalog.parquet")
    _write(con, fe.item_vocabulary(events, catalog, splits.val), out_dir / S.ITEMS_FILE, m)
    progress("next-item examples (R2)")
    train_seq = fe.customer_sequences(events, splits.val)
    _write(con, train_seq.filter(train_seq[S.ITEMS].length() >= 2), out_dir / S.split_file("rec", "train"), m)
    for split, cutoff in ((S.SPLIT_VAL, splits.val), (S.SPLIT_TEST, splits.test)):
        _write(
            con, fe.next_item_examples(events, cutoff, horizon_days), out_dir / S.split_file("rec", split), m
        )
    progress("intent examples (I1)")
    train = ibis.union(*[fe.intent_examples(events, c, horizon_days) for c in splits.train_cutoffs])
    _write(con, train, out_dir / S.split_file("intent", S.SPLIT_TRAIN), m)
    for split, cutoff in ((S.SPLIT_VAL, splits.val), (S.SPLIT_TEST, splits.test)):
        _write(
            con, fe.intent_examples(events, cutoff, horizon_days), out_dir / S.split_file("intent", split), m
        )
    progress("scoring snapshot")
    _write(con, fe.customer_snapshot(events, splits.data_end), out_dir / S.SNAPSHOT_FILE, m)
    m.extra["splits"] = json.loads(splits.to_json())
    m.write(out_dir)
    return splits


def run_prep(raw: Path, out: Path, horizon_days: int = 14, progress: Progress | None = None) -> PrepResult:
    """Run every prep layer from ``raw/01_raw`` into ``out``; returns the ledger, metrics and splits."""
    say = progress or (lambda _msg: None)
    key = pii.load_key()
    con = connect()
    say("unify + clean + pseudonymise (02_events)")
    events, members, ledger = build_events_layer(con, raw, out, key)
    say("resolve identities (03_customers)")
    resolved, metrics = build_customers_layer(con, events, members, raw, out, key)
    say("features, labels and splits (04_features)")
    splits = build_features_layer(con, resolved, out, horizon_days, say)
    return PrepResult(
        out / S.EVENTS_DIR, out / S.CUSTOMERS_DIR, out / S.FEATURES_DIR, ledger, metrics, splits
    )

"""The prep pipeline: the only module in ``data_prep`` that reads and writes layers.

01_raw → 02_events (unified, pseudonymised, ledger + rejects) → 03_customers (identity) → 04_features
(vocabulary, sequences, R2 next-item examples, I1 intent examples, scoring snapshot, splits).
Steps are the pure Ibis functions of ``events``, ``identity`` and ``features``; each layer is written to
Parquet and read back, so the next layer starts from files exactly as a later run would.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep import audit, clusters, engine, erasure, matching, pii, segments, sessions
from data_prep import events as ev
from data_prep import features as fe
from data_prep import identity as idn
from data_prep import registry as reg
from data_prep import schema as S
from data_prep.manifest import Manifest
from data_prep.raw import (
    CATALOGUE,
    RawSource,
    empty_source,
    parse_reject_counts,
    parse_rejects,
    read_source,
    relative_name,
    require,
)
from data_prep.raw import RawInputError as RawInputError  # re-exported: callers catch it here
from data_prep.report import data_warnings, write_data_report
from data_prep.screening import FileFormat

Progress = Callable[[str], None]


class PrepStepError(RuntimeError):
    """A prep step ran out of memory or disk, or failed in the engine; the message names step and remedy."""


CHURN_HORIZON_DAYS = S.CHURN_HORIZON_DAYS
SESSION_CHUNK_DAYS = 7  # I2 examples are built this many days of add-to-carts at a time
# per-customer steps run for a share of the customers with about this many events (their sequence lists stay
# in memory: at 4M events per piece prep peaked at 2.19 GB on 104,500 customers)
EVENTS_PER_PIECE = 1_000_000


@dataclass(frozen=True)
class PrepResult:
    events_dir: Path
    customers_dir: Path
    features_dir: Path
    ledger: dict[str, Any]
    identity_metrics: dict[str, Any] | None
    splits: fe.TimeSplits
    report: Path
    warnings: list[str] = field(default_factory=list)


def _replace_by_keys(
    con: ibis.BaseBackend,
    t: ir.Table,
    raw: ir.Table,
    raw_col: str,
    key_cols: tuple[str, ...],
    keys_of: Callable[[list[str]], list[tuple[str | None, ...]]],
) -> ir.Table:
    """``t`` with ``raw_col`` replaced by ``key_cols``, computed by ``keys_of`` once per distinct value of
    ``raw`` (the raw rows, not through the joins already added).

    Each lookup is a session table with a name of its own: the engine resolves tables by name when the query
    runs, so a shared name would let one source's expression read another source's lookup.
    """
    distinct = raw.select(raw_col).filter(raw[raw_col].notnull()).distinct().to_pyarrow()
    values = distinct.column(0).to_pylist()
    keys = keys_of(values)
    mapping = pa.table(
        {
            "_raw": pa.array(values, pa.string()),
            **{c: pa.array([k[i] for k in keys], pa.string()) for i, c in enumerate(key_cols)},
        }
    )
    m = engine.temp_table(con, mapping)
    return t.left_join(m, t[raw_col] == m["_raw"]).drop(raw_col, "_raw")


def pseudonymise_columns(con: ibis.BaseBackend, t: ir.Table, columns: dict[str, str], key: bytes) -> ir.Table:
    """Replace each raw identifier column by its HMAC key column (one HMAC per distinct raw value)."""
    raw = t
    for raw_col, id_type in columns.items():

        def keys_of(values: list[str], id_type: str = id_type) -> list[tuple[str | None, ...]]:
            return [(k,) for k in pii.pseudonymise_many(id_type, values, key)]

        t = _replace_by_keys(con, t, raw, raw_col, (S.KEY_COLUMNS[id_type],), keys_of)
    return t


def pseudonymise_attributes(con: ibis.BaseBackend, t: ir.Table, key: bytes) -> ir.Table:
    """Replace each profile attribute column (name, birth date, postcode) by its keyed-hash columns
    (:func:`pii.attribute_keys`, one computation per distinct raw value)."""
    raw = t
    for raw_col, key_cols in S.ATTRIBUTE_KEY_COLUMNS.items():
        if raw_col in raw.columns:

            def keys_of(values: list[str], col: str = raw_col) -> list[tuple[str | None, ...]]:
                return [pii.attribute_keys(col, v, key) for v in values]

            t = _replace_by_keys(con, t, raw, raw_col, key_cols, keys_of)
    return t


def _write(con: ibis.BaseBackend, expr: ir.Table, path: Path, manifest: Manifest) -> ir.Table:
    engine.write_parquet(con, expr, path)
    manifest.add_output(path)
    return engine.read_parquet(con, path)


def build_ledger(counts: pd.DataFrame, raw_rows: dict[str, int]) -> dict[str, Any]:
    """Ledger from outcome counts (source, outcome, reason, n) and the raw row count of every source.

    ``balanced`` holds when each source's raw rows equal accepted + merged duplicates + rejected.
    """
    ledger: dict[str, Any] = {"sources": {}}
    for source, n_raw in raw_rows.items():
        g = counts[counts[S.SOURCE] == source]
        by_outcome = {k: int(v) for k, v in g.groupby("outcome")["n"].sum().items()}
        rejected = g[g.outcome == "rejected"]
        reasons = {str(r): int(n) for r, n in zip(rejected[S.REJECT_REASON], rejected["n"], strict=True)}
        entry: dict[str, Any] = {
            "n_raw": int(n_raw),
            "n_accepted": by_outcome.get("accepted", 0),
            "n_merged_duplicate": by_outcome.get("merged_duplicate", 0),
            "n_rejected": by_outcome.get("rejected", 0),
            "n_erased": by_outcome.get("erased", 0),
            "rejected_by_reason": dict(sorted(reasons.items())),
        }
        entry["balanced"] = entry["n_raw"] == sum(by_outcome.values())
        ledger["sources"][str(source)] = entry
    ledger["balanced"] = all(s["balanced"] for s in ledger["sources"].values())
    return ledger


RAW_SOURCES: dict[str, tuple[str, str, FileFormat, tuple[str, ...], tuple[str, ...]]] = {
    # name: (folder, file, format, columns, optional columns: absent from older layouts, read as null)
    "online": (S.RAW_ONLINE_DIR, S.RAW_ONLINE_FILE, "jsonl", S.RAW_ONLINE_COLUMNS, ()),
    "pos": (S.RAW_POS_DIR, S.RAW_POS_FILE, "csv", S.RAW_POS_COLUMNS, S.POS_OPTIONAL_COLUMNS),
    "crm": (S.RAW_CRM_DIR, S.RAW_CRM_FILE, "csv", S.RAW_CRM_COLUMNS, S.CRM_OPTIONAL_COLUMNS),
    "items": (S.RAW_CATALOG_DIR, S.RAW_ITEMS_FILE, "csv", S.RAW_ITEM_COLUMNS, ()),
    "stores": (S.RAW_CATALOG_DIR, S.RAW_STORES_FILE, "csv", S.RAW_STORE_COLUMNS, ()),
    "accounts": (
        S.RAW_ONLINE_DIR,
        S.RAW_ACCOUNTS_FILE,
        "csv",
        S.RAW_ACCOUNT_COLUMNS,
        S.ACCOUNT_OPTIONAL_COLUMNS,
    ),
    "orders": (S.RAW_ORDERS_DIR, S.RAW_ORDERS_FILE, "csv", S.RAW_ORDER_COLUMNS, S.ORDER_OPTIONAL_COLUMNS),
}
OPTIONAL_SOURCES = ("accounts", "orders")  # not every retailer exports them


def _read_sources(con: ibis.BaseBackend, raw: Path, m: Manifest, work: Path) -> dict[str, RawSource]:
    """Every raw source by name (items and stores included), screened and counted (see :mod:`raw`).

    An absent optional source reads as accounts with no rows; orders absent or header-only are left out.
    Screened copies go to ``work``.
    """
    sources: dict[str, RawSource] = {}
    for name, (folder, file, fmt, columns, optional) in RAW_SOURCES.items():
        path = raw / S.RAW_DIR / folder / file
        if name in OPTIONAL_SOURCES and not path.exists():
            if name == "accounts":
                sources[name] = empty_source(con, columns)
            continue
        m.add_input(require(path))
        sources[name] = read_source(con, name, path, fmt, columns, work, optional)
    if "orders" in sources and not sources["orders"].n_raw:  # header only (an import with no such source)
        sources.pop("orders")
    return sources


def build_events_layer(
    con: ibis.BaseBackend, raw: Path, out: Path, key: bytes
) -> tuple[ir.Table, ir.Table, dict[str, Any]]:
    """Write ``02_events``: events (online, POS and, when exported, order-level records), profiles (CRM
    members + online accounts), catalog, rejects (Parquet), ledger.json and the manifest."""
    out_dir = out / S.EVENTS_DIR
    m = Manifest(S.EVENTS_DIR)
    with tempfile.TemporaryDirectory(prefix="o2o-screened-") as work:
        sources = _read_sources(con, raw, m, Path(work))
        events, profiles, ledger = _unify_and_clean(con, sources, raw, out_dir, key, m)
    (out_dir / S.LEDGER_FILE).write_text(json.dumps(ledger, indent=2))
    m.extra["ledger"] = ledger
    m.write(out_dir)
    if not ledger["balanced"]:
        raise RuntimeError(f"ledger does not balance: {json.dumps(ledger['sources'])}")
    return events, profiles, ledger


def _unify_and_clean(
    con: ibis.BaseBackend, sources: dict[str, RawSource], raw: Path, out_dir: Path, key: bytes, m: Manifest
) -> tuple[ir.Table, ir.Table, dict[str, Any]]:
    """Events, profiles, catalog and rejects written (every query that reads the raw files runs here)."""
    raw_tables = {name: src.table for name, src in sources.items()}
    items, stores = raw_tables["items"], raw_tables["stores"]
    columns = {**S.RAW_IDENTIFIER_COLUMNS, "online": {**S.RAW_IDENTIFIER_COLUMNS["online"], S.ON_IP: S.ID_IP}}
    online, pos, crm, accounts = (
        pseudonymise_columns(con, raw_tables[name], columns[name], key)
        for name in ("online", "pos", "crm", "accounts")
    )
    crm, accounts = (pseudonymise_attributes(con, t, key) for t in (crm, accounts))

    parts = [ev.unify_online_events(online, items), ev.unify_pos_lines(pos, items, stores)]
    if "orders" in raw_tables:
        orders = pseudonymise_columns(con, raw_tables["orders"], columns["orders"], key)
        parts.append(ev.unify_orders(orders, stores))
    erased = engine.temp_table(con, erasure.erased_keys())
    unified = ev.verify_returns(ibis.union(*parts))
    marked = engine.materialize(con, ev.mark_duplicates(ev.mark_erased(unified, erased)))
    profiles = ibis.union(ev.clean_members(crm), ev.clean_accounts(accounts))
    profiles = engine.materialize(con, ev.mark_duplicates(ev.mark_erased(profiles, erased)))
    events = _write(con, ev.accepted_events(marked), out_dir / S.EVENTS_FILE, m)
    keep = profiles.filter(profiles[S.REJECT_REASON].isnull() & ~profiles[ev.IS_DUPLICATE])
    profiles_out = _write(con, keep.drop(S.REJECT_REASON, ev.IS_DUPLICATE), out_dir / S.PROFILES_FILE, m)
    _write(con, _rejects(con, marked, profiles, sources, raw), out_dir / S.REJECTS_FILE, m)
    price = items[S.CAT_PRICE].try_cast("float64")
    _write(
        con, items.select(S.CAT_ITEM_ID, S.CAT_CATEGORY, **{S.CAT_PRICE: price}), out_dir / S.CATALOG_FILE, m
    )
    audit_cleaning(con, raw, marked, profiles, key, out_dir, m)
    counts = pd.concat(
        [
            ev.count_outcomes(marked).to_pandas(),
            ev.count_outcomes(profiles).to_pandas(),
            parse_reject_counts(sources),
        ]
    )
    ledger_sources = [name for name in sources if name not in CATALOGUE]
    ledger = build_ledger(counts, {name: sources[name].n_raw for name in ledger_sources})
    engine.release([marked, profiles])
    return events, profiles_out, ledger


def _rejects(
    con: ibis.BaseBackend, marked: ir.Table, profiles: ir.Table, sources: dict[str, RawSource], raw: Path
) -> ir.Table:
    """Rejected rows (source, event_id, ts, reason, raw_file) and the lines that could not be read (with
    ``raw_line`` too; catalogue files included)."""
    files = {name: relative_name(src.path, raw) for name, src in sources.items() if src.path is not None}
    cols = (S.SOURCE, S.EVENT_ID, S.TS, S.REJECT_REASON)
    rows = ibis.union(ev.rejected_rows(marked).select(*cols), ev.rejected_rows(profiles).select(*cols))
    file = ibis.cases(*[(rows[S.SOURCE] == n, f) for n, f in files.items()], else_=ibis.null("string"))
    rows = rows.mutate(**{S.RAW_FILE: file, S.RAW_LINE: ibis.null("int64")})
    unread = parse_rejects(con, sources, raw)
    if unread is None:
        return rows
    unread = unread.mutate(**{S.TS: unread[S.TS].cast(rows.schema()[S.TS])})  # null ts, same type
    return ibis.union(rows, unread.select(*rows.columns))


def audit_cleaning(
    con: ibis.BaseBackend,
    raw: Path,
    marked: ir.Table,
    profiles: ir.Table,
    key: bytes,
    out_dir: Path,
    m: Manifest,
) -> None:
    """With ``ground_truth/faults.csv`` (synthetic data), write ``cleaning_metrics.json``: each injected
    fault's outcome against the intended policy (events, and CRM rows through their hashed card)."""
    path = raw / S.GROUND_TRUTH_DIR / S.GT_FAULTS_FILE
    if not path.exists():
        return
    faults = pd.read_csv(path, dtype=str).fillna({S.GT_FAULT_ORIGINAL_KEY: ""})
    crm = faults[S.GT_FAULT_SOURCE] == "crm"
    cards = faults.loc[crm, S.GT_FAULT_ROW_KEY]
    faults.loc[crm, S.GT_FAULT_ROW_KEY] = [pii.pseudonymise(S.ID_CARD, v, key) or "" for v in cards]
    ids = pd.concat([audit.fault_event_ids(faults), "online:" + faults[S.GT_FAULT_ORIGINAL_KEY]]).dropna()
    wanted = engine.temp_table(con, pd.DataFrame({S.EVENT_ID: ids.drop_duplicates().astype("string")}))
    cols = [S.EVENT_ID, S.REJECT_REASON, ev.IS_DUPLICATE]
    rows = ibis.union(
        marked.select(*cols, S.EVENT_TYPE),
        profiles.select(*cols, **{S.EVENT_TYPE: ibis.literal("profile")}),
    )
    outcomes = rows.semi_join(wanted, S.EVENT_ID).to_pandas()
    metrics = audit.score_cleaning(faults, outcomes)
    (out_dir / S.CLEANING_METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    m.extra["cleaning"] = {
        "share_as_intended": metrics["share_as_intended"],
        "n_faults_scored": metrics["n_faults_scored"],
    }


def _materializer(con: ibis.BaseBackend) -> idn.Materialize:
    return lambda t: engine.materialize(con, t)


def _components(con: ibis.BaseBackend) -> idn.Components | None:
    """On DuckDB, connected components in memory (SciPy) instead of rounds of label propagation: the graph
    is one integer pair per edge, small beside the events. Spark keeps the distributed propagation."""
    if engine.engine_name(con) != engine.DUCKDB:
        return None

    def run(nodes: ir.Table, edges: ir.Table) -> ir.Table:
        e = edges.to_pyarrow()
        labels = idn.label_components(
            nodes.to_pyarrow().column(idn.NODE), e.column(idn.SRC), e.column(idn.DST)
        )
        return engine.temp_table(con, labels)

    return run


def _resolve(con: ibis.BaseBackend, evidence: idn.Evidence, **kwargs: Any) -> tuple[ir.Table, ir.Table]:
    return idn.resolve_identities(
        evidence, materialize=_materializer(con), components=_components(con), **kwargs
    )


def build_customers_layer(
    con: ibis.BaseBackend,
    events: ir.Table,
    profiles: ir.Table,
    raw: Path,
    out: Path,
    key: bytes,
    consent_default: bool = False,
    profile_matching: bool = True,
) -> tuple[ir.Table, ir.Table, dict[str, Any] | None]:
    """Write ``03_customers``: timed evidence (identifiers, identifier pairs, device networks, and the
    account-member links of the probabilistic step unless ``profile_matching`` is off), identity map (all
    records), shared identifiers, events with customer_id, customer table (with consent) and identity
    metrics.

    Returns (events, identity evidence, metrics)."""
    out_dir = out / S.CUSTOMERS_DIR
    m = Manifest(S.CUSTOMERS_DIR)
    records = [events, profiles]
    links = reg.online_links_path(out)
    if links.is_file():  # identifiers the service linked online (`o2o identity pull`): prep adopts them
        records.append(engine.read_parquet(con, links))
    deterministic = idn.Evidence(
        _write(con, idn.identifier_nodes(records), out_dir / S.NODES_FILE, m),
        _write(con, idn.identifier_pairs(records), out_dir / S.PAIRS_FILE, m),
        _write(con, idn.device_networks(events), out_dir / S.NETWORKS_FILE, m),
    )
    det_labels, det_shared = _resolve(con, deterministic)  # the steps' metrics below reuse them
    labels, shared, matched = det_labels, det_shared, None
    if profile_matching:
        matched = _match_profiles(con, profiles, det_labels, out_dir, m)
        labels, shared = _resolve(con, _with_matched(deterministic, matched))
    else:  # a previous run's links are no evidence of this one
        for name in (S.MATCHED_PAIRS_FILE, S.MATCH_MODEL_FILE):
            (out_dir / name).unlink(missing_ok=True)
    ids, m.extra["registry"] = assign_registry_ids(con, labels, out)
    id_map = _write(con, idn.identity_map(ids), out_dir / S.IDENTITY_MAP_FILE, m)
    write_registry(con, id_map, out)
    shared = _write(con, shared.order_by(idn.NODE), out_dir / S.SHARED_IDENTIFIERS_FILE, m)
    resolved = idn.attach_customers(events, id_map).order_by([S.TS, S.EVENT_ID])
    resolved = _write(con, resolved, out_dir / S.EVENTS_FILE, m)
    consent = idn.customer_consent(profiles, id_map, consent_default)
    customers = idn.customer_table(resolved, id_map)
    customers = customers.join(consent, S.CUSTOMER_ID).select(
        *customers.columns, S.CONSENT_ANALYTICS, S.CONSENT_MARKETING
    )
    _write(con, customers.order_by(S.CUSTOMER_ID), out_dir / S.CUSTOMERS_FILE, m)
    m.extra["consent_default"] = consent_default
    metrics = None
    if (raw / S.GROUND_TRUTH_DIR / S.GT_IDENTIFIERS_FILE).exists():
        unprotected_labels, _ = _resolve(con, deterministic, max_anchors=None, networks=False)
        protected_labels, _ = _resolve(con, deterministic, networks=False)
        det_shared_pd = det_shared.to_pandas()
        steps = {
            "deterministic links": idn.identity_map(unprotected_labels).to_pandas(),
            "+ merge protection": with_singletons(
                idn.identity_map(protected_labels).to_pandas(), det_shared_pd
            ),
            "+ home-network devices": with_singletons(
                idn.identity_map(det_labels).to_pandas(), det_shared_pd
            ),
        }
        if matched is not None:
            steps["+ probabilistic profiles"] = with_singletons(id_map.to_pandas(), shared.to_pandas())
        metrics = identity_metrics(raw, steps, key)
        (out_dir / S.IDENTITY_METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        m.extra["identity_metrics"] = metrics
    m.write(out_dir)
    return resolved, read_evidence(con, out), metrics  # with the registry: the as-of maps use its ids


def _match_profiles(
    con: ibis.BaseBackend, profiles: ir.Table, labels: ir.Table, out_dir: Path, m: Manifest
) -> ir.Table:
    """The probabilistic step (:mod:`data_prep.matching`) on the profiles against the deterministic
    ``labels``: its links written to ``matched_pairs.parquet`` (read back) and its model to
    ``match_model.json``."""
    columns = [S.SOURCE, S.TS, S.ACCOUNT_KEY, S.CARD_KEY, *matching.COMPARED]
    result = matching.match_profiles(profiles.select(*columns).to_pandas(), labels.to_pandas())
    (out_dir / S.MATCH_MODEL_FILE).write_text(json.dumps(result.model, indent=2))
    m.extra["profile_matching"] = result.model.get("counts", {})
    table = pa.Table.from_pandas(result.links, preserve_index=False)
    table = table.cast(
        pa.schema(
            [
                (idn.SRC, pa.string()),
                (idn.DST, pa.string()),
                (idn.PROFILE, pa.bool_()),
                (S.TS, pa.timestamp("us", tz="UTC")),
                ("match_probability", pa.float64()),
                ("match_weight", pa.float64()),
            ]
        )
    )
    path = out_dir / S.MATCHED_PAIRS_FILE
    pq.write_table(table, path)  # written as Arrow: both engines read it back with its types
    m.add_output(path)
    return engine.read_parquet(con, path)


def _with_matched(evidence: idn.Evidence, matched: ir.Table) -> idn.Evidence:
    """``evidence`` whose pairs include the probabilistic links (timed like any pair)."""
    cols = (idn.SRC, idn.DST, idn.PROFILE, S.TS)
    extra = matched.select(*cols).mutate(**{S.TS: matched[S.TS].cast(evidence.pairs.schema()[S.TS])})
    pairs = ibis.union(evidence.pairs.select(*cols), extra)
    return idn.Evidence(evidence.nodes, pairs, evidence.networks, evidence.registry, evidence.retired)


def assign_registry_ids(
    con: ibis.BaseBackend, labels: ir.Table, out: Path
) -> tuple[ir.Table, dict[str, int]]:
    """(node, customer_id) for the components ``labels``, stable against the registry of ``out`` (the first
    run: ids derived from the labels), materialized; the changes are appended to the registry's log (see
    :mod:`data_prep.registry`). Returns the ids and counts for the manifest."""
    previous, log = _read_registry(con, out)
    retired = None if log is None else reg.retired_ids(log)
    assignment = reg.assign_ids(labels, previous, retired)
    ids = engine.materialize(con, assignment.ids)
    changes = engine.materialize(con, assignment.changes)
    n_ids = int(ids[S.CUSTOMER_ID].nunique().execute())
    n_components = int(labels[idn.LABEL].nunique().execute())
    if n_ids != n_components:  # a salted new id collided too: astronomically unlikely, never silent
        raise RuntimeError(f"id registry: {n_components} customers got {n_ids} distinct ids; report this")
    kept = (
        0 if previous is None else ids.semi_join(previous, S.CUSTOMER_ID)[S.CUSTOMER_ID].nunique().execute()
    )
    counts = {
        "customers": n_components,
        "ids_kept": int(kept),
        "merged_identifiers": int(changes.filter(changes[reg.CHANGE] == reg.MERGE).count().execute()),
        "split_identifiers": int(changes.filter(changes[reg.CHANGE] == reg.SPLIT).count().execute()),
    }
    if counts["merged_identifiers"] or counts["split_identifiers"]:
        rows = reg.log_rows(changes, datetime.now(UTC))
        _replace_parquet(con, rows if log is None else ibis.union(log, rows), reg.registry_paths(out)[1])
    return ids, counts


def _read_registry(con: ibis.BaseBackend, out: Path) -> tuple[ir.Table | None, ir.Table | None]:
    """The registry of ``out`` as (node, customer_id) and its log; None for a file not written yet."""
    ids_path, log_path = reg.registry_paths(out)
    previous = reg.as_nodes(engine.read_parquet(con, ids_path)) if ids_path.is_file() else None
    return previous, engine.read_parquet(con, log_path) if log_path.is_file() else None


def write_registry(con: ibis.BaseBackend, id_map: ir.Table, out: Path) -> None:
    """The registry of ``out`` becomes this run's identity map (read by the next run and the as-of maps)."""
    _replace_parquet(con, reg.registry_ids(id_map), reg.registry_paths(out)[0])


def _replace_parquet(con: ibis.BaseBackend, expr: ir.Table, path: Path) -> None:
    """Write ``expr`` next to ``path`` and move it into place: ``expr`` may read ``path`` itself."""
    tmp = path.with_name(path.name + ".new")
    engine.write_parquet(con, expr, tmp)
    tmp.replace(path)


def with_singletons(id_map: pd.DataFrame, shared: pd.DataFrame) -> pd.DataFrame:
    """The identity map plus each shared identifier as a customer of its own (how it is scored)."""
    parts = shared[idn.NODE].drop_duplicates().str.split(":", n=1, expand=True)
    if parts.empty:
        return id_map
    alone = pd.DataFrame(
        {S.IDENTIFIER_TYPE: parts[0], S.IDENTIFIER_KEY: parts[1], S.CUSTOMER_ID: "shared:" + parts[1]}
    )
    return pd.concat([id_map, alone], ignore_index=True)


def truth_identifiers(raw: Path, key: bytes) -> pd.DataFrame:
    """identifier_type, identifier_key, person_id: every identifier value of ``ground_truth/`` hashed as prep
    hashes it (values that do not parse are left out), with the person behind it (several for a shared one)."""
    gt = pd.read_csv(raw / S.GROUND_TRUTH_DIR / S.GT_IDENTIFIERS_FILE, dtype=str, keep_default_na=False)
    region = pii.phone_region()
    keys = [
        pii.pseudonymise(t, v, key, region)
        for t, v in zip(gt[S.IDENTIFIER_TYPE], gt[S.GT_IDENTIFIER], strict=True)
    ]
    return pd.DataFrame(
        {S.IDENTIFIER_TYPE: gt[S.IDENTIFIER_TYPE], S.IDENTIFIER_KEY: keys, S.GT_PERSON_ID: gt[S.GT_PERSON_ID]}
    ).dropna()


def identity_metrics(raw: Path, steps: dict[str, pd.DataFrame], key: bytes) -> dict[str, Any]:
    """Pairwise metrics of each resolution step against ``ground_truth/`` (raw values hashed first).

    The last step is the one prep uses; its figures are also at the top level of the result.
    """
    truth = truth_identifiers(raw, key)
    by_step = {name: idn.pairwise_metrics(resolved, truth) for name, resolved in steps.items()}
    return {**list(by_step.values())[-1], "steps": by_step}


def read_evidence(con: ibis.BaseBackend, out: Path) -> idn.Evidence:
    """The timed identity evidence that :func:`build_customers_layer` wrote to ``out/03_customers``."""
    folder = out / S.CUSTOMERS_DIR
    files = (S.NODES_FILE, S.PAIRS_FILE, S.NETWORKS_FILE)
    registry, log = _read_registry(con, out)
    retired = None if log is None else reg.retired_ids(log)
    nodes, pairs, networks = (engine.read_parquet(con, folder / f) for f in files)
    evidence = idn.Evidence(nodes, pairs, networks, registry, retired)
    matched = folder / S.MATCHED_PAIRS_FILE
    return _with_matched(evidence, engine.read_parquet(con, matched)) if matched.is_file() else evidence


def identity_map_as_of(con: ibis.BaseBackend, evidence: idn.Evidence, cutoff: datetime) -> ir.Table:
    """identifier_type, identifier_key, customer_id as resolved from the evidence before ``cutoff``: the
    customers that the examples of that cutoff are about."""
    labels, _ = _resolve(con, evidence, cutoff=cutoff)
    if evidence.registry is None:
        return idn.identity_map(labels)
    # the registry's ids: one person has one id in every layer; a component that has split by now keeps
    # its id on its larger part, as in a prep run (nothing is logged: no run's ids changed)
    return idn.identity_map(reg.assign_ids(labels, evidence.registry, evidence.retired).ids)


def events_as_of(
    con: ibis.BaseBackend,
    events: ir.Table,
    evidence: idn.Evidence,
    cutoff: datetime,
    until: datetime | None = None,
) -> ir.Table:
    """Events before ``until`` (all when None) attributed to the customers that the evidence before
    ``cutoff`` resolves (materialized). Examples for a cutoff read nothing after its label window, so
    ``until`` = cutoff + horizon keeps the early cutoffs' copies small."""
    id_map = identity_map_as_of(con, evidence, cutoff)
    window = events if until is None else events.filter(events[S.TS] < ibis.literal(until, type=ev.UTC_TS))
    return engine.materialize(con, idn.attach_customers(window.drop(S.CUSTOMER_ID), id_map))


def per_customer(con: ibis.BaseBackend, build: Callable[[ir.Table], ir.Table], events: ir.Table) -> ir.Table:
    """``build(events)`` for a step whose rows depend on each customer's own events only (sequences,
    examples), computed for one share of the customers at a time and materialized when the events are many.

    Sequence lists are aggregated in memory (DuckDB cannot spill them): at 18M events, every customer's at
    once outgrows the memory cap. Up to :data:`EVENTS_PER_PIECE` events it is one lazy query, as before.
    """
    n_pieces = -(-int(events.count().execute()) // EVENTS_PER_PIECE)
    if n_pieces <= 1:
        return build(events)
    bucket = (events[S.CUSTOMER_ID].fill_null("").hash() % n_pieces + n_pieces) % n_pieces
    pieces = [engine.materialize(con, build(events.filter(bucket == b))) for b in range(n_pieces)]
    return ibis.union(*pieces)


def build_features_layer(
    con: ibis.BaseBackend,
    events: ir.Table,
    evidence: idn.Evidence,
    out: Path,
    horizon_days: int,
    progress: Progress,
    n_train_cutoffs: int = S.N_TRAIN_CUTOFFS,
    test_date: date | None = None,
) -> fe.TimeSplits:
    """Write ``04_features``: vocabulary, R2 rec_{train,val,test}, R1 sequences, I1 intent_{train,val,test}, I2 sessions,
    snapshot, RFM, churn and clusters.

    Everything that trains a model uses only the events of customers with analytics consent; examples for a
    cutoff use identities resolved from links before that cutoff (:func:`events_as_of`). The scoring
    snapshot covers every customer and carries both consent flags (scorers filter on them).
    """
    customers = engine.read_parquet(con, out / S.CUSTOMERS_DIR / S.CUSTOMERS_FILE)
    granted = customers.filter(customers[S.CONSENT_ANALYTICS]).select(S.CUSTOMER_ID)
    everyone, events = events, events.semi_join(granted, S.CUSTOMER_ID)
    out_dir = out / S.FEATURES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    m = Manifest(S.FEATURES_DIR)
    span = events.aggregate(lo=events[S.TS].min(), hi=events[S.TS].max()).to_pandas().iloc[0]
    if span.isna().any():
        raise ValueError(
            "no events of a customer with analytics consent: nothing to build features from. Data without "
            "recorded consent (public research sets) needs `--consent-default grant`"
        )
    splits = fe.plan_splits(
        span.lo.to_pydatetime(), span.hi.to_pydatetime(), horizon_days, n_train_cutoffs, test_date=test_date
    )
    (out_dir / S.SPLITS_FILE).write_text(splits.to_json())
    catalog = engine.read_parquet(con, out / S.EVENTS_DIR / S.CATALOG_FILE)
    _write(con, fe.item_vocabulary(events, catalog, splits.val), out_dir / S.ITEMS_FILE, m)
    # serving fallbacks and filters, from the same training window as the vocabulary
    segmented = segments.rfm_segments(events, splits.val)
    seg_pop = fe.segment_popularity(events, segmented, splits.val)
    _write(con, seg_pop, out_dir / S.SEGMENT_POPULARITY_FILE, m)
    _write(con, fe.store_assortment(everyone, splits.data_end), out_dir / S.ASSORTMENT_FILE, m)
    progress("identities as of each cutoff")
    horizon = timedelta(days=horizon_days)
    as_of = {
        c: events_as_of(con, events, evidence, c, c + horizon)
        for c in (*splits.train_cutoffs, splits.val, splits.test)
    }
    progress("next-item examples (R2)")
    train_seq = per_customer(con, lambda e: fe.customer_sequences(e, splits.val), as_of[splits.val])
    train_seq = train_seq.filter(train_seq[S.ITEMS].length() >= 2)
    _write(con, train_seq, out_dir / S.split_file("rec", S.SPLIT_TRAIN), m)
    for split, c in ((S.SPLIT_VAL, splits.val), (S.SPLIT_TEST, splits.test)):
        build = partial(fe.next_item_examples, cutoff=c, horizon_days=horizon_days)
        examples = per_customer(con, build, as_of[c])
        _write(con, examples, out_dir / S.split_file("rec", split), m)
    # protocol R1 (leave-one-out) input: each consented customer's whole history, with side information
    sequences = per_customer(con, lambda e: fe.customer_sequences(e, splits.data_end), events)
    _write(con, sequences, out_dir / S.SEQUENCES_FILE, m)
    progress("intent examples (I1)")

    # One cutoff at a time (each computed and spilled before the next): their sequence lists, built
    # together in one query, would not fit DuckDB's memory cap at 10M events.
    def intent(c: datetime) -> ir.Table:
        examples = per_customer(con, lambda e: fe.intent_examples(e, c, horizon_days), as_of[c])
        return segments.with_segment(examples, as_of[c], c)

    train = ibis.union(*[engine.materialize(con, intent(c)) for c in splits.train_cutoffs])
    _write(con, train, out_dir / S.split_file("intent", S.SPLIT_TRAIN), m)
    for split, c in ((S.SPLIT_VAL, splits.val), (S.SPLIT_TEST, splits.test)):
        _write(con, intent(c), out_dir / S.split_file("intent", split), m)
    engine.release(list(as_of.values()))  # the per-cutoff copies of the events: done with them
    progress("session intent examples (I2)")
    session_windows = {
        S.SPLIT_TRAIN: (splits.data_start, splits.val),
        S.SPLIT_VAL: (splits.val, splits.test),
        S.SPLIT_TEST: (splits.test, splits.data_end),
    }
    for split, (lo, hi) in session_windows.items():
        # a week of add-to-carts at a time: the history of every session at once outgrows the memory cap
        chunks = sessions.time_chunks(lo, hi, SESSION_CHUNK_DAYS)
        parts = (sessions.session_intent_examples(events, lo, hi, part=c) for c in chunks)
        engine.write_parquet_parts(con, parts, out_dir / S.split_file("session", split))
        m.add_output(out_dir / S.split_file("session", split))
    progress("scoring snapshot, RFM segments, churn labels, clusters")
    end = splits.data_end
    aggregates = engine.materialize(con, fe.intent_aggregates(everyone, end))  # each on its own: together
    sequences = engine.materialize(  # they outgrow the memory cap
        con, per_customer(con, lambda e: fe.customer_sequences(e, end), everyone)
    )
    snapshot = fe.join_snapshot(aggregates, sequences, end)
    flags = customers.select(S.CUSTOMER_ID, S.CONSENT_ANALYTICS, S.CONSENT_MARKETING)
    rfm = engine.materialize(con, segments.rfm_segments(everyone, splits.data_end))
    snapshot = snapshot.join(flags, S.CUSTOMER_ID).select(
        *snapshot.columns, S.CONSENT_ANALYTICS, S.CONSENT_MARKETING
    )
    snapshot = snapshot.left_join(rfm.select(S.CUSTOMER_ID, S.SEGMENT), S.CUSTOMER_ID)
    snapshot = snapshot.select(*[c for c in snapshot.columns if not c.endswith("_right")])
    _write(con, snapshot.order_by(S.CUSTOMER_ID), out_dir / S.SNAPSHOT_FILE, m)
    _write(con, rfm, out_dir / S.RFM_FILE, m)
    churn_cutoff = splits.data_end - timedelta(days=CHURN_HORIZON_DAYS)
    if churn_cutoff > splits.data_start:
        _write(
            con, segments.churn_labels(events, churn_cutoff, CHURN_HORIZON_DAYS), out_dir / S.CHURN_FILE, m
        )
        m.extra["churn"] = {"cutoff": churn_cutoff.isoformat(), "horizon_days": CHURN_HORIZON_DAYS}
    m.extra["churn_splits"] = write_churn_examples(con, events, evidence, splits, out_dir, m, progress)
    m.extra["clusters"] = write_clusters(out_dir, m)
    m.extra["splits"] = json.loads(splits.to_json())
    m.write(out_dir)
    return splits


def write_churn_examples(
    con: ibis.BaseBackend,
    events: ir.Table,
    evidence: idn.Evidence,
    splits: fe.TimeSplits,
    out_dir: Path,
    m: Manifest,
    progress: Progress,
) -> dict[str, Any]:
    """churn_{train,val,test}.parquet at cutoffs planned like the intent ones but with the churn horizon
    (each split's cutoff later than the previous split's label window ends). Data too short for three
    non-overlapping 60-day windows gets none, and the manifest says why."""
    try:
        plan = fe.plan_splits(
            splits.data_start, splits.data_end - timedelta(days=1), CHURN_HORIZON_DAYS, min_history_days=28
        )
    except ValueError as e:
        return {"skipped": f"no churn examples: {e}"}
    progress("churn examples")
    horizon = timedelta(days=CHURN_HORIZON_DAYS)
    as_of = {
        c: events_as_of(con, events, evidence, c, c + horizon)
        for c in (*plan.train_cutoffs, plan.val, plan.test)
    }

    def churn(c: datetime) -> ir.Table:  # segments.churn_examples, a share of the customers at a time
        build = partial(segments.labelled_snapshots, cutoff=c, horizon_days=CHURN_HORIZON_DAYS)
        return segments.with_segment(per_customer(con, build, as_of[c]), as_of[c], c)

    train = ibis.union(*[engine.materialize(con, churn(c)) for c in plan.train_cutoffs])
    _write(con, train, out_dir / S.split_file(S.CHURN_PREFIX, S.SPLIT_TRAIN), m)
    for split, c in ((S.SPLIT_VAL, plan.val), (S.SPLIT_TEST, plan.test)):
        _write(con, churn(c), out_dir / S.split_file(S.CHURN_PREFIX, split), m)
    engine.release(list(as_of.values()))
    return json.loads(plan.to_json())


def write_clusters(out_dir: Path, m: Manifest) -> dict[str, Any]:
    """Fit KMeans on the intent training rows, assign every snapshot customer, save profiles."""
    train = pd.read_parquet(
        out_dir / S.split_file("intent", S.SPLIT_TRAIN), columns=[S.CUSTOMER_ID, *S.AGGREGATE_FEATURES]
    )
    snapshot = pd.read_parquet(out_dir / S.SNAPSHOT_FILE, columns=[S.CUSTOMER_ID, *S.AGGREGATE_FEATURES])
    model = clusters.fit_clusters(train)
    assigned = clusters.assign_clusters(model, snapshot)
    assigned.to_parquet(out_dir / S.CLUSTERS_FILE, index=False)
    m.add_output(out_dir / S.CLUSTERS_FILE)
    profiles = clusters.cluster_profiles(snapshot, assigned)
    (out_dir / S.CLUSTER_PROFILES_FILE).write_text(json.dumps(profiles, indent=2))
    return {"n_clusters": len(profiles), "fit_on": S.split_file("intent", S.SPLIT_TRAIN)}


def run_prep(
    raw: Path,
    out: Path,
    horizon_days: int = 14,
    progress: Progress | None = None,
    engine_name: str = engine.DUCKDB,
    consent_default: bool = False,
    n_train_cutoffs: int = S.N_TRAIN_CUTOFFS,
    test_date: date | None = None,
    profile_matching: bool = True,
) -> PrepResult:
    """Run every prep layer from ``raw/01_raw`` into ``out`` on ``engine_name`` (duckdb | spark).

    ``test_date`` sets the test cutoff of the I1 and R2 splits (validation and training cutoffs follow it);
    by default it is the end of the data less the horizon. ``profile_matching`` runs the probabilistic
    account-member step (:mod:`data_prep.matching`).

    A step that runs out of memory or disk, or fails inside DuckDB, raises :class:`PrepStepError`: one line
    naming the step (the last progress message) and the remedy.
    """
    steps = [""]
    started: list[tuple[str, float]] = []  # (step, when it began), for the step times

    def say(msg: str) -> None:
        steps[0] = msg
        started.append((msg, time.perf_counter()))
        (progress or (lambda _msg: None))(msg)

    try:
        result = _run_prep(
            raw,
            out,
            horizon_days,
            say,
            engine_name,
            consent_default,
            n_train_cutoffs,
            test_date,
            profile_matching,
        )
    except Exception as e:
        message = engine.failure_message(steps[0] or "start", e)
        if message is None:
            raise
        raise PrepStepError(message) from e
    ends = [t for _, t in started[1:]] + [time.perf_counter()]
    seconds = {name: round(end - t, 2) for (name, t), end in zip(started, ends, strict=True)}
    (out / S.PREP_STEPS_FILE).write_text(json.dumps(seconds, indent=2))
    return result


def _run_prep(
    raw: Path,
    out: Path,
    horizon_days: int,
    say: Progress,
    engine_name: str,
    consent_default: bool,
    n_train_cutoffs: int,
    test_date: date | None = None,
    profile_matching: bool = True,
) -> PrepResult:
    key = pii.load_key()
    con = engine.connect(engine_name)
    say("unify + clean + pseudonymise (02_events)")
    events, profiles, ledger = build_events_layer(con, raw, out, key)
    say("resolve identities (03_customers)")
    resolved, evidence, metrics = build_customers_layer(
        con, events, profiles, raw, out, key, consent_default, profile_matching
    )
    say("features, labels and splits (04_features)")
    splits = build_features_layer(con, resolved, evidence, out, horizon_days, say, n_train_cutoffs, test_date)
    say("data report")
    report = write_data_report(out)
    return PrepResult(
        out / S.EVENTS_DIR,
        out / S.CUSTOMERS_DIR,
        out / S.FEATURES_DIR,
        ledger,
        metrics,
        splits,
        report,
        data_warnings(out),
    )

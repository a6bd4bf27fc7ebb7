"""Stable customer ids: a registry carried from prep run to prep run, and a log of every merge and split.

Identity resolution (:mod:`data_prep.identity`) finds components of the identifier graph afresh on every
run. Naming a component after its smallest identifier would change its id whenever it gains or loses a
member, orphaning everything keyed by yesterday's id (events appended through the API, campaign lists). The
registry (``registry/customer_ids.parquet``: identifier_type, identifier_key, customer_id) remembers which id
each identifier had, and :func:`assign_ids` gives the new components ids by these rules:

- **persist**: a component keeps the id its identifiers had;
- **merge**: a component holding identifiers of several ids keeps one of them (the *survivor*: the id with
  the most identifiers there; ties: the smaller id) and the others are recorded as merged into it;
- **split**: an id whose identifiers now lie in several components stays with the part holding most of them
  (ties: the smaller component label); each other part gets the id of whatever it joined or a new id;
- **new**: a component with no registered identifier gets ``c`` + 16 hex digits of SHA-256 of its smallest
  identifier, as before the registry (the first run's ids are those of earlier versions), or of that
  identifier and ``#1`` when that id is already taken (an id is never reused, not even a merged-away one).

Every identifier that changes id appends one row to ``registry/identity_log.parquet``: when, ``merge`` or
``split``, its new ``customer_id``, its ``previous_customer_id`` and the identifier itself (``node``) — the
evidence of the change, row by row, so that erasure (which removes every row naming an erased customer or
identifier, :mod:`data_prep.purge`) leaves no trace of a person in it.

Everything here is Ibis, so the same rules run on DuckDB and on Spark.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd

from data_prep import schema as S
from data_prep.identity import LABEL, NODE, derived_id

OLD, N, HOME_RANK, SURVIVOR_RANK, CHANGE = "_old", "_n", "_home_rank", "_survivor_rank", "change"
MERGE, SPLIT = "merge", "split"


@dataclass(frozen=True)
class Assignment:
    """``ids`` (node, customer_id) for every node of the components, and ``changes`` (change, customer_id,
    previous_customer_id, node): each node whose id changed by a merge or a split."""

    ids: ir.Table
    changes: ir.Table


def assign_ids(labels: ir.Table, previous: ir.Table | None, retired: ir.Table | None = None) -> Assignment:
    """Ids for the components ``labels`` (node, label) given the ``previous`` registry (node, customer_id;
    None on the first run) and ``retired`` ids (customer_id) no longer in use but never to be given again
    (the log's previous ids). See the module doc for the rules."""
    components = labels.select(LABEL).distinct()
    if previous is None:
        ids = labels.select(NODE, **{S.CUSTOMER_ID: derived_id(labels[LABEL])})
        empty = ids.select(
            **{
                CHANGE: ibis.literal("", "string"),
                S.CUSTOMER_ID: ids[S.CUSTOMER_ID],
                S.PREVIOUS_CUSTOMER_ID: ids[S.CUSTOMER_ID],
                NODE: ids[NODE],
            }
        ).limit(0)
        return Assignment(ids, empty)
    prev = previous.select(NODE, **{OLD: previous[S.CUSTOMER_ID]})
    known = labels.join(prev, NODE)  # node, label, _old
    overlap = known.group_by([LABEL, OLD]).aggregate(**{N: known.count()})
    # each old id's home: the component holding most of its identifiers (ties: the smaller label)
    overlap = overlap.mutate(
        **{
            HOME_RANK: ibis.row_number().over(
                group_by=overlap[OLD], order_by=[overlap[N].desc(), overlap[LABEL]]
            )
        }
    )
    homes = overlap.filter(overlap[HOME_RANK] == 0)
    # each component's survivor among the old ids at home there: the most identifiers (ties: the smaller id)
    homes = homes.mutate(
        **{
            SURVIVOR_RANK: ibis.row_number().over(
                group_by=homes[LABEL], order_by=[homes[N].desc(), homes[OLD]]
            )
        }
    )
    kept = homes.filter(homes[SURVIVOR_RANK] == 0).select(LABEL, **{S.CUSTOMER_ID: homes[OLD]})
    fresh = components.anti_join(kept, LABEL)
    taken = prev.select(**{S.CUSTOMER_ID: prev[OLD]})
    if retired is not None:
        taken = ibis.union(taken, retired.select(S.CUSTOMER_ID))
    taken = ibis.union(taken, kept.select(S.CUSTOMER_ID)).distinct()
    first = fresh.mutate(_id=derived_id(fresh[LABEL]))
    clash = first.semi_join(taken, first._id == taken[S.CUSTOMER_ID]).select(LABEL, _clash=ibis.literal(True))
    first = first.left_join(clash, LABEL).select(LABEL, "_id", "_clash")
    new = first.select(
        LABEL,
        **{S.CUSTOMER_ID: first._clash.notnull().ifelse(derived_id(first[LABEL], "#1"), first._id)},
    )
    by_component = ibis.union(kept, new)
    ids = labels.join(by_component, LABEL).select(NODE, S.CUSTOMER_ID)
    moved = known.join(ids, NODE)
    moved = moved.filter(moved[OLD] != moved[S.CUSTOMER_ID])
    # a node changed id: merged when its old id is at home in its component, else split off from it
    home_of = homes.select(**{"_home_label": homes[LABEL], "_home_old": homes[OLD]})
    moved = moved.left_join(
        home_of, (moved[OLD] == home_of._home_old) & (moved[LABEL] == home_of._home_label)
    )
    changes = moved.select(
        **{
            CHANGE: moved._home_old.notnull().ifelse(ibis.literal(MERGE), ibis.literal(SPLIT)),
            S.CUSTOMER_ID: moved[S.CUSTOMER_ID],
            S.PREVIOUS_CUSTOMER_ID: moved[OLD],
            NODE: moved[NODE],
        }
    )
    return Assignment(ids, changes)


def online_links_path(out: Path) -> Path:
    """Where ``o2o identity pull`` writes the service's links and the next prep reads them."""
    return out / S.REGISTRY_DIR / S.ONLINE_LINKS_FILE


def retired_ids(log: ir.Table) -> ir.Table:
    """(customer_id) every id the log records as given up (merged away or split from): never given again."""
    return log.select(**{S.CUSTOMER_ID: log[S.PREVIOUS_CUSTOMER_ID]}).distinct()


def registry_paths(out: Path) -> tuple[Path, Path]:
    """(customer ids, change log) of the data folder ``out``."""
    folder = out / S.REGISTRY_DIR
    return folder / S.REGISTRY_IDS_FILE, folder / S.REGISTRY_LOG_FILE


def registry_ids(id_map: ir.Table) -> ir.Table:
    """The registry's rows (identifier_type, identifier_key, customer_id) from an identity map."""
    return id_map.select(S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY, S.CUSTOMER_ID)


def as_nodes(registry: ir.Table) -> ir.Table:
    """node, customer_id of registry rows."""
    node = registry[S.IDENTIFIER_TYPE] + ibis.literal(":") + registry[S.IDENTIFIER_KEY]
    return registry.select(**{NODE: node, S.CUSTOMER_ID: registry[S.CUSTOMER_ID]})


def log_rows(changes: ir.Table, logged_at: datetime) -> ir.Table:
    """The log's rows for ``changes``: logged_at, change, customer_id, previous_customer_id, node."""
    return changes.select(
        **{S.LOGGED_AT: ibis.literal(logged_at, type="timestamp('UTC')")},
        **{c: changes[c] for c in (CHANGE, S.CUSTOMER_ID, S.PREVIOUS_CUSTOMER_ID, NODE)},
    )


def id_stability(before: pd.DataFrame, after: pd.DataFrame, log: pd.DataFrame | None) -> dict[str, Any]:
    """How ids held between two runs' identity maps (identifier_type, identifier_key, customer_id) and
    whether the log accounts for every change. Customers are *unchanged* when the later run has a customer
    with exactly the same identifiers, *grown* when one holds all of them and more."""

    def members(m: pd.DataFrame) -> dict[str, frozenset[str]]:
        nodes = m[S.IDENTIFIER_TYPE] + ":" + m[S.IDENTIFIER_KEY]
        return {c: frozenset(g) for c, g in nodes.groupby(m[S.CUSTOMER_ID])}

    old, new = members(before), members(after)
    by_members = {m: c for c, m in new.items()}
    unchanged = [c for c, m in old.items() if m in by_members]
    grown = [c for c, m in old.items() if m not in by_members and c in new and m < new[c]]
    node = "node"
    b = before.assign(**{node: before[S.IDENTIFIER_TYPE] + ":" + before[S.IDENTIFIER_KEY]}).set_index(node)
    a = after.assign(**{node: after[S.IDENTIFIER_TYPE] + ":" + after[S.IDENTIFIER_KEY]}).set_index(node)
    both = b[[S.CUSTOMER_ID]].join(a[[S.CUSTOMER_ID]], lsuffix="_before", rsuffix="_after", how="inner")
    changed = set(both.index[both[f"{S.CUSTOMER_ID}_before"] != both[f"{S.CUSTOMER_ID}_after"]])
    logged = set() if log is None else set(log[node])
    kept = sum(by_members[old[c]] == c for c in unchanged)
    return {
        "customers_before": len(old),
        "customers_after": len(new),
        "unchanged": len(unchanged),
        "unchanged_keeping_id": int(kept),
        "unchanged_share_keeping_id": kept / len(unchanged) if unchanged else 1.0,
        "grown_keeping_id": len(grown),
        "identifiers_changing_id": len(changed),
        "changes_in_log": len(changed & logged),
        "log_rows_without_a_change": len(logged - changed),
        "merge_rows": 0 if log is None else int((log[CHANGE] == MERGE).sum()),
        "split_rows": 0 if log is None else int((log[CHANGE] == SPLIT).sum()),
    }


def online_link_records(links: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The service's link log (:meth:`serving.identity.IdentityStore.link_log`) as identity records prep
    reads beside its events and profiles (``registry/online_links.parquet``): one row per link and each of
    its identifiers after the first, with ``event_id`` ``link:<n>``, ``ts`` (UTC) and the two identifiers in
    their key columns, so that :func:`data_prep.identity.identifier_pairs` sees them as seen together
    (merge protection included: a refused link is evidence too). Two identifiers of one type cannot share a
    row and are left out."""
    rows: list[dict[str, Any]] = []
    for n, link in enumerate(links):
        nodes = [str(x).split(":", 1) for x in link.get("nodes", [])]
        if not nodes:
            continue
        first, *others = nodes
        ts = pd.Timestamp(int(link.get("ts", 0)), unit="s", tz="UTC")
        # a single identifier is a record of its own: the pair below writes one column twice
        for other in [o for o in others if o[0] != first[0]] if others else [first]:
            row = {S.EVENT_ID: f"link:{n}", S.TS: ts}
            row |= {S.IDENTIFIER_KEY_COLUMNS[t]: key for t, key in (first, other)}
            rows.append(row)
    columns = [S.EVENT_ID, S.TS, *S.IDENTIFIER_KEY_COLUMNS.values()]
    frame = pd.DataFrame(rows, columns=columns)
    frame[S.TS] = pd.to_datetime(frame[S.TS], utc=True).astype("datetime64[us, UTC]")
    return frame.astype({c: "string" for c in columns if c != S.TS})

"""Resolve pseudonymised identifiers (device, account, email, phone, card) into customers.

Deterministic linking: two identifiers belong to one customer when they appear on the same record (an
event carrying a device and a logged-in account, an order with its checkout email, a loyalty member with
card, phone and email). Customers are the connected components of that identifier graph, found by
min-label propagation expressed in Ibis (so the same code runs on DuckDB and on Spark).

Merge protection: an account or a loyalty card stands for one person's relationship with the retailer (an
*anchor*). A device, phone or email seen with more than ``max_anchors`` distinct accounts, or more than that
many cards, is *shared* — a store kiosk, a family phone, a recycled number — and links nobody: it is left out
of the graph, and records that carry only shared identifiers stay anonymous. So is an identifier seen with
anchors whose own profiles register different emails (a household phone that joins the owner's account to a
family member's loyalty card).

Resolution is point-in-time: :func:`resolve_identities` with a cutoff uses only link records strictly
before it, so a link that appears later (say the checkout email of a purchase inside a label window) cannot
merge histories for features computed at that cutoff.

Home-network matching (after the deterministic graph): a device that never logged in forms a component of
its own. When it was used, on at least ``min_days`` distinct days, from client addresses that exactly one
resolved customer (a component with an identifier other than devices) uses, and from no address of another
customer, it joins that customer. A carrier NAT address, a shop's Wi-Fi or a household's router is used by
several customers and so is no evidence; the evidence is point-in-time like the links.

A node is the text ``"<identifier type>:<identifier key>"``; the keys are already HMAC pseudonyms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from data_prep import schema as S
from data_prep.events import UTC_TS

ANCHOR_TYPES = (S.ID_ACCOUNT, S.ID_CARD)
DEFAULT_MAX_ANCHORS = 1
DEFAULT_MIN_NETWORK_DAYS = 2
NODE = "node"
LABEL = "label"
DAY = "day"


SRC, DST, PROFILE = "src", "dst", "profile"
PROFILE_SOURCES = ("crm", "accounts")  # profile records are ``"<source>:<anchor key>"`` (events.clean_*)


@dataclass(frozen=True)
class Evidence:
    """What identities are resolved from, each row timed by when it first appeared (``ts``):

    - ``nodes`` (node, ts): every identifier;
    - ``pairs`` (src, dst, profile, ts): two identifiers seen on one record; ``profile`` when that record
      is a CRM member or an online account (a registration, not a transaction);
    - ``networks`` (node, ip_key, day, ts): devices' client addresses per day (:func:`device_networks`).

    Pairs are built row by row (every two identifier columns of a record), so nothing groups by record:
    the evidence of 10M events is a few hundred thousand distinct pairs.
    """

    nodes: ir.Table
    pairs: ir.Table
    networks: ir.Table | None = None
    # the id registry after this run (node, customer_id) and the ids retired by merges (customer_id): the
    # point-in-time maps take their ids from them (data_prep.registry); None = ids derived from each label
    registry: ir.Table | None = None
    retired: ir.Table | None = None


def _node(id_type: str, key: ir.StringValue) -> ir.StringValue:
    return ibis.literal(f"{id_type}:") + key


def _key_columns(t: ir.Table) -> list[tuple[str, str]]:
    return [(id_type, col) for id_type, col in S.IDENTIFIER_KEY_COLUMNS.items() if col in t.columns]


def _is_profile(record: ir.StringValue) -> ir.BooleanValue:
    return ibis.or_(*[record.startswith(f"{src}:") for src in PROFILE_SOURCES])


def identifier_nodes(records: list[ir.Table]) -> ir.Table:
    """(node, ts): every identifier on any record of the tables, with the time it first appeared.

    Each table needs ``event_id``, ``ts`` (when the record came into being) and any ``*_key`` columns."""
    parts = [
        t.filter(t[col].notnull()).select(**{NODE: _node(id_type, t[col]), S.TS: t[S.TS]})
        for t in records
        for id_type, col in _key_columns(t)
    ]
    u = ibis.union(*parts)
    return u.group_by(NODE).aggregate(**{S.TS: u[S.TS].min()})


def identifier_pairs(records: list[ir.Table]) -> ir.Table:
    """(src, dst, profile, ts): every two identifiers present on one record (src < dst), whether a profile
    record carried them, and when they were first seen together."""
    parts = []
    for t in records:
        cols = _key_columns(t)
        for i, (type_a, col_a) in enumerate(cols):
            for type_b, col_b in cols[i + 1 :]:
                r = t.filter(t[col_a].notnull() & t[col_b].notnull())
                a, b = _node(type_a, r[col_a]), _node(type_b, r[col_b])
                parts.append(
                    r.select(
                        **{
                            SRC: ibis.least(a, b),
                            DST: ibis.greatest(a, b),
                            PROFILE: _is_profile(r[S.EVENT_ID]),
                            S.TS: r[S.TS],
                        }
                    )
                )
    if not parts:  # no record carries two identifier columns
        empty = records[0].select(
            **{
                SRC: ibis.literal("", "string"),
                DST: ibis.literal("", "string"),
                PROFILE: ibis.literal(False),
            },
            **{S.TS: records[0][S.TS]},
        )
        return empty.limit(0)
    u = ibis.union(*parts)
    return u.group_by([SRC, DST, PROFILE]).aggregate(**{S.TS: u[S.TS].min()})


def collect_evidence(records: list[ir.Table], online: ir.Table | None = None) -> Evidence:
    """Nodes and pairs of the records (events, profiles) and, from ``online`` events, device networks."""
    networks = None if online is None else device_networks(online)
    return Evidence(identifier_nodes(records), identifier_pairs(records), networks)


def undirected(edges: ir.Table) -> ir.Table:
    """Edges (src, dst) in both directions."""
    back = edges.select(**{SRC: edges[DST], DST: edges[SRC]})
    return ibis.union(edges.select(SRC, DST), back, distinct=True)


Materialize = Callable[[ir.Table], ir.Table]
# (nodes with NODE, edges with src and dst, one direction) → labels (NODE, LABEL); see propagate_labels
Components = Callable[[ir.Table, ir.Table], ir.Table]


def label_components(nodes: pa.Array, src: pa.Array, dst: pa.Array) -> pa.Table:
    """(node, label) with the smallest node of each connected component as label — what
    :func:`propagate_labels` computes, in one pass of SciPy's connected components over integer-coded
    edges.

    ``nodes`` are distinct; every ``src`` and ``dst`` is one of them. Nodes are sorted first, so a smaller
    index is a smaller text and each component's first index is its smallest node.
    """
    nodes = nodes.take(pc.sort_indices(nodes))
    n = len(nodes)
    s = pc.index_in(src, value_set=nodes).to_numpy(zero_copy_only=False)
    d = pc.index_in(dst, value_set=nodes).to_numpy(zero_copy_only=False)
    graph = coo_matrix((np.ones(s.size, np.int8), (s, d)), shape=(n, n))
    _, component = connected_components(graph, directed=True, connection="weak")
    _, first = np.unique(component, return_index=True)  # index of each component's smallest node
    return pa.table({NODE: nodes, LABEL: nodes.take(pa.array(first[component]))})


def _cache(t: ir.Table) -> ir.Table:
    return t.cache()


def propagate_labels(
    nodes: ir.Table, edges: ir.Table, max_iter: int = 100, materialize: Materialize = _cache
) -> ir.Table:
    """Connected components: every node gets the smallest node of its component as ``label``.

    Each round gives a node the minimum label among itself and its neighbours, materialised with
    ``cache()``; it stops when a round changes nothing (rounds ≈ component diameter, a handful here).
    """
    labels = materialize(nodes.select(NODE, **{LABEL: nodes[NODE]}))
    for _ in range(max_iter):
        offered = edges.join(labels, edges.dst == labels[NODE]).select(
            **{NODE: edges.src, LABEL: labels[LABEL]}
        )
        both = ibis.union(labels, offered)
        new = materialize(both.group_by(NODE).aggregate(**{LABEL: both[LABEL].min()}))
        joined = new.join(labels, NODE)
        n_changed = joined.filter(joined[LABEL] != joined[f"{LABEL}_right"]).count().execute()
        labels = new
        if n_changed == 0:
            return labels
    raise RuntimeError(f"identity resolution did not converge in {max_iter} rounds")


def _node_type(node: ir.StringValue) -> ir.StringValue:
    return node.split(":")[0]


EXCLUSIVE_TYPES = (S.ID_EMAIL,)  # one person's own: families share phones and devices, not mailboxes
REASON_ANCHORS = "several_anchors"
REASON_REGISTRATIONS = "conflicting_registrations"


def shared_identifiers(pairs: ir.Table, max_anchors: int = DEFAULT_MAX_ANCHORS) -> ir.Table:
    """(node, reason, anchor_type, n_anchors): non-anchor identifiers that must link nobody (one row per
    reason and anchor type), from identifier ``pairs`` (src, dst, profile).

    ``several_anchors``: seen on records with more than ``max_anchors`` distinct anchors of one type
    (accounts or cards). ``conflicting_registrations``: seen with anchors whose own profiles register
    different emails — the household phone that the owner registered with the account and a family member
    gave the CRM with their own email.
    """
    both = ibis.union(
        pairs.select(**{NODE: pairs[SRC], "anchor": pairs[DST], "_profile": pairs[PROFILE]}),
        pairs.select(**{NODE: pairs[DST], "anchor": pairs[SRC], "_profile": pairs[PROFILE]}),
    )
    typed = both.mutate(_t=_node_type(both[NODE]), anchor_type=_node_type(both.anchor))
    co = typed.filter(~typed._t.isin(ANCHOR_TYPES) & typed.anchor_type.isin(ANCHOR_TYPES))
    per = co.select(NODE, "anchor", "anchor_type").distinct()
    counts = per.group_by([NODE, "anchor_type"]).aggregate(n_anchors=ibis._.count())
    several = counts.filter(counts.n_anchors > max_anchors).mutate(reason=ibis.literal(REASON_ANCHORS))
    mine = co.filter(co._profile & co._t.isin(EXCLUSIVE_TYPES))
    registered = mine.select("anchor", _value=mine[NODE]).distinct()
    reg = per.join(registered, "anchor")
    conflict = reg.group_by(NODE).aggregate(
        anchor_type=reg.anchor_type.min(), n_anchors=reg.anchor.nunique(), _n=reg._value.nunique()
    )
    conflict = conflict.filter(conflict._n > 1).mutate(reason=ibis.literal(REASON_REGISTRATIONS))
    columns = (NODE, "reason", "anchor_type", "n_anchors")
    return ibis.union(several.select(*columns), conflict.select(*columns))


def device_networks(events: ir.Table) -> ir.Table:
    """(node, ip_key, day, ts): each device's client addresses per UTC day, ``ts`` the first event of the
    day from that address (when the evidence came into being)."""
    e = events.filter(events[S.DEVICE_KEY].notnull() & events[S.IP_KEY].notnull())
    e = e.select(
        **{NODE: _node(S.ID_DEVICE, e[S.DEVICE_KEY]), S.IP_KEY: e[S.IP_KEY], DAY: e[S.TS].date()}, _ts=e[S.TS]
    )
    return e.group_by([NODE, S.IP_KEY, DAY]).aggregate(**{S.TS: e._ts.min()})


def match_devices_by_network(
    labels: ir.Table, networks: ir.Table, min_days: int = DEFAULT_MIN_NETWORK_DAYS
) -> ir.Table:
    """``labels`` with each device-only component moved into the one customer whose addresses it used
    (see the module docstring); everything else unchanged."""
    typed = labels.mutate(_other=(_node_type(labels[NODE]) != S.ID_DEVICE).cast("int8"))
    kind = typed.group_by(LABEL).aggregate(_anchored=typed._other.max() == 1)
    lab = labels.join(kind, LABEL)
    seen = networks.join(lab, NODE).select(NODE, S.IP_KEY, DAY, LABEL, "_anchored")
    owned = seen.filter(seen._anchored)
    owners = owned.group_by(S.IP_KEY).aggregate(_n=owned[LABEL].nunique(), _owner=owned[LABEL].min())
    anon = seen.filter(~seen._anchored)
    cand = anon.join(owners, S.IP_KEY)
    per = cand.group_by(NODE).aggregate(
        _n_owners=cand._owner.nunique(),
        _max_n=cand._n.max(),
        _owner=cand._owner.min(),
        _days=cand[DAY].nunique(),
    )
    matched = per.filter((per._n_owners == 1) & (per._max_n == 1) & (per._days >= min_days))
    j = labels.left_join(matched.select(NODE, "_owner"), NODE)
    return j.select(NODE, **{LABEL: j._owner.fill_null(j[LABEL])})


def resolve_identities(
    evidence: Evidence,
    cutoff: datetime | None = None,
    max_anchors: int | None = DEFAULT_MAX_ANCHORS,
    materialize: Materialize = _cache,
    networks: bool = True,
    min_network_days: int = DEFAULT_MIN_NETWORK_DAYS,
    components: Components | None = None,
) -> tuple[ir.Table, ir.Table]:
    """Component labels (node, label) from the evidence before ``cutoff`` (all when None), and the shared
    identifiers left out of the graph (none when ``max_anchors`` is None: no merge protection). With
    ``networks`` (and network evidence), anonymous devices are then matched by home network.

    ``components`` finds the connected components (default: :func:`propagate_labels` in Ibis, which runs
    on any engine; the DuckDB pipeline passes an in-memory union-find with the same result)."""
    before = None if cutoff is None else ibis.literal(cutoff, type=UTC_TS)

    def visible(t: ir.Table) -> ir.Table:
        return t if before is None else t.filter(t[S.TS] < before)

    pairs = visible(evidence.pairs).select(SRC, DST, PROFILE)
    if max_anchors is None:
        shared = pairs.select(
            **{NODE: pairs[SRC]},
            reason=ibis.literal("", "string"),
            anchor_type=ibis.literal("", "string"),
            n_anchors=ibis.literal(0, "int64"),
        ).limit(0)
    else:
        shared = materialize(shared_identifiers(pairs, max_anchors))
    out_a, out_b = shared.select(_a=shared[NODE]), shared.select(_b=shared[NODE])
    edges = pairs.anti_join(out_a, pairs[SRC] == out_a._a)
    edges = edges.anti_join(out_b, edges[DST] == out_b._b).select(SRC, DST).distinct()
    nodes = visible(evidence.nodes).select(NODE).anti_join(shared, NODE)
    if components is None:
        labels = propagate_labels(nodes, undirected(edges), materialize=materialize)
    else:
        labels = components(nodes, edges)
    if networks and evidence.networks is not None:
        labels = materialize(match_devices_by_network(labels, visible(evidence.networks), min_network_days))
    return labels, shared


def derived_id(label: ir.StringValue, salt: str = "") -> ir.StringValue:
    """``c`` + 16 hex digits of SHA-256 of a component label (its smallest node), optionally salted: the id
    of a component the id registry has not seen (:mod:`data_prep.registry`)."""
    text = label if not salt else label + ibis.literal(salt)
    return ibis.literal("c") + text.hexdigest("sha256").substr(0, 16)


def identity_map(labels: ir.Table) -> ir.Table:
    """identifier_type, identifier_key, customer_id of ``labels`` (node and either customer_id, the ids the
    registry assigned, or label, whose :func:`derived_id` is then the id)."""
    parts = labels[NODE].split(":")
    cid = labels[S.CUSTOMER_ID] if S.CUSTOMER_ID in labels.columns else derived_id(labels[LABEL])
    return labels.select(
        **{S.IDENTIFIER_TYPE: parts[0], S.IDENTIFIER_KEY: parts[1], S.CUSTOMER_ID: cid}
    ).order_by([S.CUSTOMER_ID, S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY])


def attach_customers(events: ir.Table, id_map: ir.Table) -> ir.Table:
    """Events with the ``customer_id`` that ``id_map`` gives any of their identifiers (the smallest, when
    they name several), joined column by column, so nothing groups by record.

    With a point-in-time map, events after its cutoff belong to the customer known at the cutoff when one
    of their identifiers was already known, and are anonymous (null) otherwise, as are rows with no
    identifier at all (unidentified store baskets). Should a later record join two customers that were
    separate at the cutoff, it goes to the smaller id.
    """
    t, found = events, list[str]()
    for i, (id_type, col) in enumerate(_key_columns(events)):
        m = id_map.filter(id_map[S.IDENTIFIER_TYPE] == id_type)
        m = m.select(**{f"_k{i}": m[S.IDENTIFIER_KEY], f"_c{i}": m[S.CUSTOMER_ID]})
        t = t.left_join(m, t[col] == m[f"_k{i}"]).select(*events.columns, *found, f"_c{i}")
        found.append(f"_c{i}")
    cols = [t[c] for c in found]
    customer = ibis.least(*cols) if len(cols) > 1 else cols[0] if cols else ibis.null("string")
    return t.select(*events.columns, **{S.CUSTOMER_ID: customer})


def customer_table(events: ir.Table, id_map: ir.Table) -> ir.Table:
    """One row per resolved customer: identifier counts by type, events, first and last event time."""
    by_type = id_map.group_by(S.CUSTOMER_ID).aggregate(
        **{S.N_IDENTIFIERS: id_map.count()},
        **{f"n_{t}": (id_map[S.IDENTIFIER_TYPE] == t).sum().cast("int64") for t in S.IDENTIFIER_TYPES},
    )
    known = events.filter(events[S.CUSTOMER_ID].notnull())
    activity = known.group_by(S.CUSTOMER_ID).aggregate(
        n_events=known.count(), **{S.FIRST_SEEN: known[S.TS].min(), S.LAST_SEEN: known[S.TS].max()}
    )
    return by_type.left_join(activity, S.CUSTOMER_ID).drop(f"{S.CUSTOMER_ID}_right").order_by(S.CUSTOMER_ID)


def customer_consent(profiles: ir.Table, id_map: ir.Table, default: bool = False) -> ir.Table:
    """customer_id, consent_analytics, consent_marketing for every resolved customer.

    A purpose is granted only when every recorded choice among the customer's profiles (CRM members, online
    accounts) says yes; a customer with no recorded choice gets ``default`` (privacy by default: False).
    """
    nodes = []
    for id_type in ANCHOR_TYPES:
        col = S.IDENTIFIER_KEY_COLUMNS[id_type]
        p = profiles.filter(profiles[col].notnull())
        nodes.append(
            p.select(
                **{
                    NODE: _node(id_type, p[col]),
                    S.CONSENT_ANALYTICS: p[S.CONSENT_ANALYTICS],
                    S.CONSENT_MARKETING: p[S.CONSENT_MARKETING],
                }
            )
        )
    choices = ibis.union(*nodes)
    keyed = id_map.select(
        **{
            NODE: id_map[S.IDENTIFIER_TYPE] + ":" + id_map[S.IDENTIFIER_KEY],
            S.CUSTOMER_ID: id_map[S.CUSTOMER_ID],
        }
    )
    j = keyed.join(choices, NODE)
    agg = j.group_by(S.CUSTOMER_ID).aggregate(
        **{c: j[c].cast("int8").min() for c in (S.CONSENT_ANALYTICS, S.CONSENT_MARKETING)}
    )
    everyone = id_map.select(S.CUSTOMER_ID).distinct()
    k = everyone.left_join(agg, S.CUSTOMER_ID)
    return k.select(
        S.CUSTOMER_ID,
        **{c: (k[c] == 1).fill_null(default) for c in (S.CONSENT_ANALYTICS, S.CONSENT_MARKETING)},
    ).order_by(S.CUSTOMER_ID)


def pairwise_metrics(resolved: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float | int]:
    """Pairwise precision / recall / F1 of a clustering of identifiers against the true persons.

    ``resolved`` has (identifier_type, identifier_key, customer_id); ``truth`` has (identifier_type,
    identifier_key, person_id). Only identifiers present in both are scored; an identifier that truly belongs
    to several persons (a recycled number, a shared phone) cannot be right in any partition and is counted
    apart (``n_identifiers_ambiguous``). A pair of identifiers is a true positive when both the resolution and
    the truth put them together.
    """
    key = [S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY]
    truth = truth.drop_duplicates()
    n_persons = truth.groupby(key)[S.GT_PERSON_ID].transform("nunique")
    ambiguous = truth[n_persons > 1].drop_duplicates(key)
    both = resolved.merge(truth[n_persons == 1], on=key, how="inner")

    def n_pairs(sizes: pd.Series) -> int:
        return int((sizes * (sizes - 1) // 2).sum())

    tp = n_pairs(both.groupby([S.CUSTOMER_ID, S.GT_PERSON_ID]).size())
    pred = n_pairs(both.groupby(S.CUSTOMER_ID).size())
    true = n_pairs(both.groupby(S.GT_PERSON_ID).size())
    precision = tp / pred if pred else 1.0
    recall = tp / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "pairwise_precision": precision,
        "pairwise_recall": recall,
        "pairwise_f1": f1,
        "n_identifiers_scored": len(both),
        "n_identifiers_ambiguous": len(ambiguous),
        "n_true_persons": int(both[S.GT_PERSON_ID].nunique()),
        "n_resolved_customers": int(both[S.CUSTOMER_ID].nunique()),
    }

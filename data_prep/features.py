"""Sequences, item vocabulary, next-item targets, point-in-time intent features and labels.

Leakage rule (shared/ARCHITECTURE.md): everything computed *for* a cutoff uses only events with
``ts < cutoff``; labels and targets use only the window ``[cutoff, cutoff + horizon)``. Every function
takes the cutoff explicitly, and the tests build events after a cutoff to prove they reach nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

import ibis
import ibis.expr.types as ir

from data_prep import schema as S
from data_prep.events import UTC_TS, epoch_seconds

SECONDS_PER_DAY = 86_400.0
NO_PURCHASE_DAYS = 365.0  # days_since_purchase for a customer who never bought before the cutoff


@dataclass(frozen=True)
class TimeSplits:
    """Global time cutoffs (UTC). Intent train cutoffs end their label window no later than ``val``."""

    data_start: datetime
    data_end: datetime  # exclusive: midnight after the last event
    train_cutoffs: tuple[datetime, ...]
    val: datetime
    test: datetime
    horizon_days: int

    def to_json(self) -> str:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, datetime):
                d[k] = v.isoformat()
        d["train_cutoffs"] = [c.isoformat() for c in self.train_cutoffs]
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TimeSplits:
        d = json.loads(text)
        ts = datetime.fromisoformat
        return cls(
            data_start=ts(d["data_start"]),
            data_end=ts(d["data_end"]),
            train_cutoffs=tuple(ts(c) for c in d["train_cutoffs"]),
            val=ts(d["val"]),
            test=ts(d["test"]),
            horizon_days=int(d["horizon_days"]),
        )


def plan_splits(
    first_ts: datetime,
    last_ts: datetime,
    horizon_days: int = 14,
    n_train_cutoffs: int = S.N_TRAIN_CUTOFFS,
    stride_days: int = 7,
    min_history_days: int = 14,
    test_date: date | None = None,
) -> TimeSplits:
    """Cutoffs at midnights: test = end − h (or ``test_date``), val = test − h, train = val − h − k·stride
    (k < n).

    ``test_date`` evaluates the data as of a date a study needs (a season, before a campaign): its label
    window must end within the data. Train cutoffs with less than ``min_history_days`` of data before them
    are dropped; at least one must remain, else the data is too short for the horizon.
    """
    start = datetime(first_ts.year, first_ts.month, first_ts.day, tzinfo=UTC)
    end = datetime(last_ts.year, last_ts.month, last_ts.day, tzinfo=UTC) + timedelta(days=1)
    h = timedelta(days=horizon_days)
    test = end - h
    if test_date is not None:
        asked = datetime(test_date.year, test_date.month, test_date.day, tzinfo=UTC)
        if asked > test:
            raise ValueError(
                f"test date {test_date} is too late: its {horizon_days}-day label window must end by the "
                f"end of the data ({end.date()}), so the latest test date is {test.date()}"
            )
        test = asked
    val = test - h
    train = tuple(
        c
        for k in range(n_train_cutoffs)
        if (c := val - h - timedelta(days=k * stride_days)) >= start + timedelta(days=min_history_days)
    )
    if not train and test_date is not None:
        raise ValueError(
            f"test date {test_date} is too early: the data starts {start.date()}, and a test date needs "
            f"{2 * horizon_days + min_history_days} days of data before it"
        )
    if not train:
        span = (end - start).days
        raise ValueError(
            f"data spans {span} days: too short for horizon {horizon_days} d (needs at least "
            f"{3 * horizon_days + min_history_days} days)"
        )
    return TimeSplits(start, end, tuple(sorted(train)), val, test, horizon_days)


def _at(t: datetime) -> ir.TimestampScalar:
    return ibis.literal(t, type=UTC_TS)


def _before(events: ir.Table, cutoff: datetime) -> ir.Table:
    return events.filter(events[S.CUSTOMER_ID].notnull() & (events[S.TS] < _at(cutoff)))


def _window(events: ir.Table, start: datetime, end: datetime) -> ir.Table:
    known = events[S.CUSTOMER_ID].notnull()
    return events.filter(known & (events[S.TS] >= _at(start)) & (events[S.TS] < _at(end)))


BASKET = "_basket"  # column set by :func:`mark_baskets`: the event is one line of a basket of several


def mark_baskets(events: ir.Table, group: str = S.CUSTOMER_ID) -> ir.Table:
    """``events`` with :data:`BASKET`: true for the lines of an order that holds two or more of ``group``'s
    events (a POS transaction, an online order of several products), false for an event alone in its order
    (a MovieLens rating, which its mapping gives an order of its own) and for events without an order."""
    lines = events[S.EVENT_ID].count().over(group_by=[events[group], events[S.ORDER_ID]])
    return events.mutate(**{BASKET: events[S.ORDER_ID].notnull() & (lines > 1)})


def event_order(events: ir.Table) -> list[ir.Value]:
    """Sort keys that put a customer's events in time order, ties broken reproducibly (``events`` passed
    through :func:`mark_baskets`).

    Lines of one basket share a timestamp and carry no order among themselves: sorting them by ``event_id``
    would sort them by product id, so "the first item of the next basket" (protocol R2's target) would be the
    product with the smallest id and every sequence would list a basket in id order. Their tie order is an
    MD5 of the event id instead: fixed, but unrelated to the item. Every other tie (ratings in the same second,
    each an order of its own) keeps the ``event_id`` order, which mappings set to the source's row order, as
    protocol R1 requires.
    """
    in_basket = events[BASKET]
    tie = ibis.ifelse(in_basket, events[S.EVENT_ID].hexdigest("md5"), events[S.EVENT_ID])
    return [events[S.TS], in_basket, tie]


def item_events(events: ir.Table) -> ir.Table:
    """The events that name an item and can be in a sequence (views, cart changes, orders, purchases)."""
    return events.filter(events[S.ITEM_ID].notnull() & events[S.EVENT_TYPE].isin(S.ITEM_EVENT_TYPES))


def item_vocabulary(events: ir.Table, catalog_items: ir.Table, cutoff: datetime) -> ir.Table:
    """Items seen in item events before ``cutoff``: item_id, item_idx (1-based, by popularity), category.

    Index 0 is reserved for padding. Items first seen after the cutoff are unknown to the model.
    """
    seen = item_events(events.filter(events[S.TS] < _at(cutoff)))
    pop = seen.group_by(S.ITEM_ID).aggregate(**{S.POPULARITY: seen.count()})
    ranked = pop.mutate(
        **{S.ITEM_IDX: ibis.row_number().over(order_by=[ibis.desc(S.POPULARITY), S.ITEM_ID]) + 1}
    )
    cat = catalog_items.select(S.CAT_ITEM_ID, S.CAT_CATEGORY)
    return (
        ranked.left_join(cat, ranked[S.ITEM_ID] == cat[S.CAT_ITEM_ID])
        .select(S.ITEM_ID, S.ITEM_IDX, S.CATEGORY, S.POPULARITY)
        .order_by(S.ITEM_IDX)
    )


def store_assortment(events: ir.Table, cutoff: datetime, days: int = 90) -> ir.Table:
    """store_id, item_id, n_sold, last_sold: items a store sold (till purchases) in the ``days`` before
    ``cutoff`` — the assortment a store-restricted recommendation may choose from."""
    start = _at(cutoff - timedelta(days=days))
    e = events.filter(
        (events[S.EVENT_TYPE] == S.EV_PURCHASE)
        & events[S.STORE_ID].notnull()
        & events[S.ITEM_ID].notnull()
        & (events[S.TS] >= start)
        & (events[S.TS] < _at(cutoff))
    )
    agg = e.group_by([S.STORE_ID, S.ITEM_ID]).aggregate(**{S.N_SOLD: e.count(), S.LAST_SOLD: e[S.TS].max()})
    return agg.order_by([S.STORE_ID, ibis.desc(S.N_SOLD), S.ITEM_ID])


def segment_popularity(events: ir.Table, segments: ir.Table, cutoff: datetime) -> ir.Table:
    """segment, item_id, popularity: item events before ``cutoff`` by the customers of each segment (as
    segmented at ``cutoff``), the cold-start fallback's "popular in the customer's segment"."""
    e = item_events(_before(events, cutoff))
    j = e.join(segments.select(S.CUSTOMER_ID, S.SEGMENT), S.CUSTOMER_ID)
    agg = j.group_by([S.SEGMENT, S.ITEM_ID]).aggregate(**{S.POPULARITY: j.count()})
    return agg.order_by([S.SEGMENT, ibis.desc(S.POPULARITY), S.ITEM_ID])


SEQUENCE = "_sequence"


def collect_sequence(t: ir.Table, position: ir.IntegerValue, detail: bool = True) -> ir.ArrayValue:
    """Aggregate: the rows' (position, item, event type[, channel, epoch seconds]) as an array of structs,
    for :func:`unpack`. ``position`` orders the rows: a column computed beforehand with a window ``row_number``
    over :func:`event_order` (an aggregate cannot hold a window).

    Ordered aggregation (``collect(order_by=...)``) is not available on every engine (Spark); sorting an
    array of structs is. The position (a spillable window sort) stands in for ts and event_id inside the
    structs: list aggregates stay in memory, and 10M events of (ts, event_id, item, type) do not fit in 1 GB.
    """
    fields = {"pos": position, "item": t[S.ITEM_ID], "type": t[S.EVENT_TYPE]}
    if detail:
        fields |= {"channel": t[S.CHANNEL], "epoch": epoch_seconds(t[S.TS]).cast("int64")}
    return ibis.struct(fields).collect()


def unpack(t: ir.Table, column: str = SEQUENCE, detail: bool = True) -> ir.Table:
    """Replace a :func:`collect_sequence` column by ``items`` and ``event_types`` lists, oldest first, and with
    ``detail`` the aligned ``channels`` and ``timestamps`` (whole epoch seconds)."""
    ordered = t[column].sort()
    lists = {S.ITEMS: ordered.map(lambda v: v["item"]), S.EVENT_TYPES_COL: ordered.map(lambda v: v["type"])}
    if detail:
        lists[S.CHANNELS_COL] = ordered.map(lambda v: v["channel"])
        lists[S.TIMESTAMPS_COL] = ordered.map(lambda v: v["epoch"])
    return t.mutate(**lists).drop(column)


def customer_sequences(events: ir.Table, cutoff: datetime, detail: bool = True) -> ir.Table:
    """customer_id, items, event_types: every item event before ``cutoff``, oldest first.

    Ties in time are broken by :func:`event_order` so the order is reproducible. ``detail`` (default) adds the
    aligned ``channels`` and ``timestamps`` (whole epoch seconds) lists that side-information inputs need.
    """
    e = mark_baskets(item_events(_before(events, cutoff)))
    e = e.mutate(_pos=ibis.row_number().over(group_by=S.CUSTOMER_ID, order_by=event_order(e)))
    seqs = e.group_by(S.CUSTOMER_ID).aggregate(**{SEQUENCE: collect_sequence(e, e._pos, detail)})
    return unpack(seqs, detail=detail)


def next_item_targets(events: ir.Table, start: datetime, end: datetime) -> ir.Table:
    """customer_id, target_item: the first add-to-cart / order / store purchase in ``[start, end)``."""
    e = _window(events, start, end)
    e = mark_baskets(e.filter(e[S.ITEM_ID].notnull() & e[S.EVENT_TYPE].isin(S.TARGET_EVENT_TYPES)))
    rank = ibis.row_number().over(group_by=S.CUSTOMER_ID, order_by=event_order(e))
    first = e.mutate(_rank=rank).filter(ibis._["_rank"] == 0)
    return first.select(S.CUSTOMER_ID, **{S.TARGET_ITEM: first[S.ITEM_ID]})


def next_item_examples(events: ir.Table, cutoff: datetime, horizon_days: int) -> ir.Table:
    """Protocol R2 examples: sequence before ``cutoff`` and first target item in the horizon after it.

    Customers with no item history before the cutoff are left out (they are cold-start cases).
    """
    seqs = customer_sequences(events, cutoff)
    targets = next_item_targets(events, cutoff, cutoff + timedelta(days=horizon_days))
    return seqs.join(targets, S.CUSTOMER_ID).order_by(S.CUSTOMER_ID)


def intent_aggregates(events: ir.Table, cutoff: datetime) -> ir.Table:
    """One row per customer with any event before ``cutoff``: the :data:`schema.INTENT_FEATURES`.

    Activity counts and recency come from every event; purchase timing (first and last order, by channel,
    the gaps between consecutive orders, recent orders and spend) from the customer's orders, one row per
    order id, so an export of order totals without items feeds them as fully as item lines do. Channels
    decide online or store, not the source. A customer without an order gets :data:`NO_PURCHASE_DAYS` for
    every "days since" and for the mean gap, 0 for the spread. The weekly activity calendar
    (:func:`activity_calendar`) follows the aggregates. Every value is ≥ 0 (the models take log1p of them)."""
    e = _before(events, cutoff)
    age_days = (epoch_seconds(_at(cutoff)) - epoch_seconds(e[S.TS])) / SECONDS_PER_DAY
    e = e.mutate(_age=age_days)
    is_purchase = e[S.EVENT_TYPE].isin(S.PURCHASE_EVENT_TYPES)
    purchase_order = ibis.ifelse(is_purchase, e[S.ORDER_ID], ibis.null("string"))
    last7, last30, last90 = e._age < 7, e._age < 30, e._age < 90
    in_store = e[S.CHANNEL] == S.CHANNEL_STORE
    spend = e[S.EVENT_TYPE].isin(S.SPEND_EVENT_TYPES)
    day = e._age.floor()
    agg = e.group_by(S.CUSTOMER_ID).aggregate(
        **{
            S.F_RECENCY_DAYS: e._age.min(),
            S.F_TENURE_DAYS: e._age.max(),
            S.F_N_EVENTS_7D: last7.sum().cast("float64"),
            S.F_N_EVENTS_30D: last30.sum().cast("float64"),
            S.F_N_VIEWS_7D: (last7 & (e[S.EVENT_TYPE] == S.EV_VIEW)).sum().cast("float64"),
            S.F_N_CARTS_7D: (last7 & (e[S.EVENT_TYPE] == S.EV_ADD_TO_CART)).sum().cast("float64"),
            S.F_N_PURCHASES_30D: purchase_order.nunique(where=last30).cast("float64"),
            S.F_N_PURCHASES_ALL: purchase_order.nunique().cast("float64"),
            S.F_MONETARY_ALL: ibis.greatest(e[S.AMOUNT].sum(where=spend).fill_null(0.0), 0.0),
            # by channel, not by source: order-level rows (source "orders") are online orders or store visits
            S.F_N_ONLINE_ALL: (~in_store).sum().cast("float64"),
            S.F_N_STORE_ALL: e[S.ORDER_ID].nunique(where=in_store).cast("float64"),
            S.F_DAYS_SINCE_PURCHASE: e._age.min(where=is_purchase).fill_null(NO_PURCHASE_DAYS),
            S.F_N_PURCHASES_90D: purchase_order.nunique(where=last90).cast("float64"),
            # net of returns, floored at 0: a window can hold the return of something bought before it
            S.F_MONETARY_90D: ibis.greatest(e[S.AMOUNT].sum(where=spend & last90).fill_null(0.0), 0.0),
            S.F_ACTIVE_DAYS_30D: day.nunique(where=last30).cast("float64"),
            S.F_ACTIVE_DAYS_90D: day.nunique(where=last90).cast("float64"),
        }
    )
    timing = _purchase_timing(e.filter(is_purchase & e[S.ORDER_ID].notnull()))
    j = agg.left_join(timing, S.CUSTOMER_ID)
    j = j.left_join(activity_calendar(e), S.CUSTOMER_ID)
    never = ibis.literal(NO_PURCHASE_DAYS)
    fills = {
        S.F_DAYS_SINCE_FIRST_PURCHASE: never,
        S.F_DAYS_SINCE_ONLINE_PURCHASE: never,
        S.F_DAYS_SINCE_STORE_PURCHASE: never,
        S.F_PURCHASE_GAP_MEAN: never,
        S.F_PURCHASE_GAP_STD: ibis.literal(0.0),
    } | dict.fromkeys(S.ACTIVITY_FEATURES, ibis.literal(0.0))
    return j.select(
        S.CUSTOMER_ID, **{c: j[c].fill_null(fills[c]) if c in fills else j[c] for c in S.INTENT_FEATURES}
    )


def activity_calendar(e: ir.Table) -> ir.Table:
    """customer_id and the :data:`schema.ACTIVITY_FEATURES`: per 7-day span back from the cutoff (week 0 the
    newest, :data:`schema.ACTIVITY_WEEKS` of them) the online and store orders (distinct order ids of
    purchases, order-level rows included), net spend floored at 0, days with any event and add-to-cart
    events. ``e`` holds the events before the cutoff with their ``_age`` in days. Customers with no event in
    the calendar's span have no row (the caller fills 0).

    Two steps so the wide pivot runs over one row per customer and active week, not over the events."""
    e = e.filter(e._age < S.ACTIVITY_WEEKS * 7).mutate(_week=(e._age / 7).floor().cast("int16"))
    purchase = e[S.EVENT_TYPE].isin(S.PURCHASE_EVENT_TYPES)
    store = e[S.CHANNEL] == S.CHANNEL_STORE
    weekly = e.group_by([S.CUSTOMER_ID, "_week"]).aggregate(
        online_orders=e[S.ORDER_ID].nunique(where=purchase & ~store).cast("float64"),
        store_orders=e[S.ORDER_ID].nunique(where=purchase & store).cast("float64"),
        # to the cent: a float sum's last bits depend on the order rows arrive in (prep in pieces, threads)
        spend=ibis.greatest(
            e[S.AMOUNT].sum(where=e[S.EVENT_TYPE].isin(S.SPEND_EVENT_TYPES)).fill_null(0.0), 0.0
        ).round(2),
        active_days=e._age.floor().nunique().cast("float64"),
        carts=(e[S.EVENT_TYPE] == S.EV_ADD_TO_CART).sum().cast("float64"),
    )
    cells = {
        f"wk{w:02d}_{m}": weekly[m].sum(where=weekly._week == w).fill_null(0.0)
        for w in range(S.ACTIVITY_WEEKS)
        for m in S.ACTIVITY_MEASURES
    }
    return weekly.group_by(S.CUSTOMER_ID).aggregate(**cells)


def _purchase_timing(purchases: ir.Table) -> ir.Table:
    """Per customer, from one row per order (its earliest line): days since the first order and since the
    last online and store order, and the mean and spread of the days between consecutive orders (null
    where undefined)."""
    orders = purchases.group_by([S.CUSTOMER_ID, S.ORDER_ID]).aggregate(
        _age=purchases._age.max(), _store=(purchases[S.CHANNEL] == S.CHANNEL_STORE).any()
    )
    newer = ibis.window(group_by=S.CUSTOMER_ID, order_by=[ibis.desc("_age"), S.ORDER_ID])
    orders = orders.mutate(_gap=orders._age - orders._age.lead().over(newer))
    return orders.group_by(S.CUSTOMER_ID).aggregate(
        **{
            S.F_DAYS_SINCE_FIRST_PURCHASE: orders._age.max(),
            S.F_DAYS_SINCE_ONLINE_PURCHASE: orders._age.min(where=~orders._store),
            S.F_DAYS_SINCE_STORE_PURCHASE: orders._age.min(where=orders._store),
            S.F_PURCHASE_GAP_MEAN: orders._gap.mean(),
            S.F_PURCHASE_GAP_STD: orders._gap.std(how="pop"),
        }
    )


def purchase_labels(events: ir.Table, cutoff: datetime, horizon_days: int) -> ir.Table:
    """customer_id, label = 1 for customers who purchase (any channel) in ``[cutoff, cutoff + horizon)``."""
    e = _window(events, cutoff, cutoff + timedelta(days=horizon_days))
    e = e.filter(e[S.EVENT_TYPE].isin(S.PURCHASE_EVENT_TYPES))
    return e.select(S.CUSTOMER_ID).distinct().mutate(**{S.LABEL: ibis.literal(1, "int8")})


def customer_snapshot(events: ir.Table, cutoff: datetime) -> ir.Table:
    """Aggregates and item sequence of every customer active before ``cutoff`` (empty lists when none)."""
    return join_snapshot(intent_aggregates(events, cutoff), customer_sequences(events, cutoff), cutoff)


def join_snapshot(agg: ir.Table, seqs: ir.Table, cutoff: datetime) -> ir.Table:
    """:func:`customer_snapshot` from its two parts (:func:`intent_aggregates`, :func:`customer_sequences`),
    so a pipeline can compute each on its own."""
    j = agg.left_join(seqs, S.CUSTOMER_ID)
    empty = ibis.literal([], type="array<string>")
    lists = {S.ITEMS: j[S.ITEMS].fill_null(empty), S.EVENT_TYPES_COL: j[S.EVENT_TYPES_COL].fill_null(empty)}
    if S.CHANNELS_COL in seqs.columns:
        lists[S.CHANNELS_COL] = j[S.CHANNELS_COL].fill_null(empty)
        lists[S.TIMESTAMPS_COL] = j[S.TIMESTAMPS_COL].fill_null(ibis.literal([], type="array<int64>"))
    return j.select(S.CUSTOMER_ID, *S.INTENT_FEATURES, **lists, **{S.CUTOFF: _at(cutoff)})


def intent_examples(events: ir.Table, cutoff: datetime, horizon_days: int) -> ir.Table:
    """Protocol I1 examples at one cutoff: the snapshot before it plus the purchase label after it."""
    snap = customer_snapshot(events, cutoff)
    labels = purchase_labels(events, cutoff, horizon_days)
    j = snap.left_join(labels, S.CUSTOMER_ID)
    return j.select(*snap.columns, **{S.LABEL: j[S.LABEL].fill_null(0).cast("int8")}).order_by(S.CUSTOMER_ID)

"""Protocol I2 examples: online sessions with an add-to-cart, scored at their first add-to-cart.

A session's inputs are what the platform knows at that add-to-cart: the session's own events up to and
including it (the session aggregates), and the customer's history before it — the item events of the
last :data:`schema.SESSION_HISTORY_DAYS` days in any channel, up to the add-to-cart (the input sequence,
with channels and timestamps for side information), their other recent sessions and their purchases so
far (the customer aggregates). A session no resolved customer owns has only itself as history. The label
is 1 when the session later contains an order. Sessions are split by the time of the add-to-cart. No event
after the add-to-cart reaches an input column.

Customers are the identity graph's as of the end of the data (``03_customers``), so a device first linked
to an account after the session already counts as that customer's here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import ibis
import ibis.expr.types as ir

from data_prep import features as fe
from data_prep import schema as S
from data_prep.events import UTC_TS, epoch_seconds

ATC_TS = "atc_ts"
ATC_EVENT = "_atc_event"
_KEY = "_history_key"  # the customer id, or the session id of a session no customer owns


def _history_key(t: ir.Table) -> ir.StringValue:
    return t[S.CUSTOMER_ID].fill_null("session:" + t[S.SESSION_ID].fill_null(""))


def _at(t: datetime) -> ir.TimestampScalar:
    return ibis.literal(t, type=UTC_TS)


def _first_add_to_cart(online: ir.Table, start: datetime, end: datetime) -> ir.Table:
    lo, hi = _at(start), _at(end)
    atc = online.filter(
        (online[S.EVENT_TYPE] == S.EV_ADD_TO_CART) & (online[S.TS] >= lo) & (online[S.TS] < hi)
    )
    rank = ibis.row_number().over(group_by=S.SESSION_ID, order_by=[S.TS, S.EVENT_ID])
    first = atc.mutate(_rank=rank).filter(ibis._["_rank"] == 0)
    return first.select(
        S.SESSION_ID,
        S.CUSTOMER_ID,
        **{
            ATC_TS: first[S.TS],
            ATC_EVENT: first[S.EVENT_ID],
            S.SI_CART_PRICE: first[S.PRICE],
            _KEY: _history_key(first),
        },
    )


def _up_to(t: ir.Table, ts: ir.Column, event_id: ir.Column) -> ir.BooleanValue:
    """Rows at or before the add-to-cart: earlier in time, or at its time with an event id up to its own."""
    return (ts < t[ATC_TS]) | ((ts == t[ATC_TS]) & (event_id <= t[ATC_EVENT]))


def _session_aggregates(online: ir.Table, first: ir.Table) -> tuple[ir.Table, ir.Table]:
    """(the session aggregates up to the add-to-cart, the sessions that order after it)."""
    j = online.join(first, S.SESSION_ID).select(
        online[S.SESSION_ID],
        online[S.TS],
        online[S.EVENT_ID],
        online[S.EVENT_TYPE],
        online[S.ITEM_ID],
        first[ATC_TS],
        first[ATC_EVENT],
    )
    upto = _up_to(j, j[S.TS], j[S.EVENT_ID])
    before, after = j.filter(upto), j.filter(~upto)
    inputs = before.group_by(S.SESSION_ID).aggregate(
        **{
            S.SI_N_EVENTS: before.count().cast("float64"),
            S.SI_N_VIEWS: (before[S.EVENT_TYPE] == S.EV_VIEW).sum().cast("float64"),
            S.SI_N_ITEMS: before[S.ITEM_ID].nunique().cast("float64"),
            S.SI_SECONDS: epoch_seconds(before[ATC_TS].max()) - epoch_seconds(before[S.TS].min()),
        }
    )
    bought = after.filter(after[S.EVENT_TYPE] == S.EV_ORDER).select(S.SESSION_ID).distinct()
    return inputs, bought.mutate(_bought=ibis.literal(1, "int8"))


def _customer_history(
    events: ir.Table, first: ir.Table, history_days: int, start: datetime, end: datetime
) -> ir.Table:
    """Per session: the history sequence (items, event_types, channels, timestamps, oldest first, ties
    broken by :func:`features.event_order`), and the customer's item events outside the session (last
    ``history_days``) and other online sessions (last 7 days) before the add-to-cart.

    Only events from ``history_days`` before ``start`` to ``end`` can be inputs of a session whose
    add-to-cart is in ``[start, end)``: the join reads no others (it would hold every pair otherwise)."""
    e = fe.item_events(events)
    e = e.mutate(**{_KEY: _history_key(e)})
    e = e.filter(e[S.TS].between(_at(start - timedelta(days=history_days)), _at(end)))  # no later input
    h = e.join(first, e[_KEY] == first[_KEY]).select(
        e[S.TS],
        e[S.EVENT_ID],
        e[S.ORDER_ID],
        e[S.ITEM_ID],
        e[S.EVENT_TYPE],
        e[S.CHANNEL],
        sid=first[S.SESSION_ID],
        own_session=e[S.SESSION_ID],
        online=e[S.SOURCE] == "online",
        **{ATC_TS: first[ATC_TS], ATC_EVENT: first[ATC_EVENT]},
    )
    since = h[ATC_TS] - ibis.interval(days=history_days)
    h = h.filter((h[S.TS] >= since) & _up_to(h, h[S.TS], h[S.EVENT_ID]))
    other = h.own_session.isnull() | (h.own_session != h.sid)
    last7 = h[S.TS] >= h[ATC_TS] - ibis.interval(days=7)
    h = fe.mark_baskets(h, group="sid")
    h = h.mutate(_pos=ibis.row_number().over(group_by=h.sid, order_by=fe.event_order(h)))
    agg = h.group_by(h.sid).aggregate(
        **{
            fe.SEQUENCE: fe.collect_sequence(h, h._pos),
            S.SI_EVENTS_28D: other.sum().cast("float64"),
            S.SI_SESSIONS_7D: h.own_session.nunique(where=other & last7 & h.online).cast("float64"),
        }
    )
    return fe.unpack(agg).rename({S.SESSION_ID: "sid"})


def _purchases_before(events: ir.Table, first: ir.Table, end: datetime) -> ir.Table:
    """Per session: the customer's distinct orders / baskets before the add-to-cart and days since the last.

    Events from ``end`` on are left out: an order's first event is before the add-to-cart or it does not count.
    """
    p = events.filter(events[S.EVENT_TYPE].isin(S.PURCHASE_EVENT_TYPES) & (events[S.TS] < _at(end)))
    p = p.mutate(**{_KEY: _history_key(p), "_order": p[S.ORDER_ID].fill_null(p[S.EVENT_ID])})
    orders = p.group_by([_KEY, "_order"]).aggregate(_ts=p[S.TS].min())
    j = orders.join(first, (orders[_KEY] == first[_KEY]) & (orders._ts < first[ATC_TS]))
    j = j.select(sid=first[S.SESSION_ID], ts=orders._ts, atc=first[ATC_TS])
    agg = j.group_by(j.sid).aggregate(n=j.count(), last=j.ts.max(), atc=j.atc.max())
    return agg.select(
        **{
            S.SESSION_ID: agg.sid,
            S.SI_PURCHASES: agg.n.cast("float64"),
            S.SI_DAYS_SINCE_PURCHASE: (epoch_seconds(agg.atc) - epoch_seconds(agg.last)) / fe.SECONDS_PER_DAY,
        }
    )


def time_chunks(start: datetime, end: datetime, days: int) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut into consecutive windows of ``days`` (the last one shorter), oldest first.

    Examples built window by window and concatenated in this order are the examples of the whole window,
    in the same row order (they are sorted by add-to-cart time)."""
    step = timedelta(days=days)
    bounds = [start]
    while bounds[-1] + step < end:
        bounds.append(bounds[-1] + step)
    return list(zip(bounds, [*bounds[1:], end], strict=True))


def session_intent_examples(
    events: ir.Table,
    start: datetime,
    end: datetime,
    history_days: int = S.SESSION_HISTORY_DAYS,
    part: tuple[datetime, datetime] | None = None,
) -> ir.Table:
    """One row per session whose first add-to-cart in ``[start, end)`` falls in ``[start, end)``, or with
    ``part`` in that sub-window of it (examples built piece by piece, see :func:`time_chunks`).

    Columns: session_id, customer_id (may be null), atc_ts, the history sequence (items, event_types,
    channels, timestamps), :data:`schema.SESSION_FEATURES` and ``label`` (an order after the add-to-cart in
    the same session).
    """
    lo, hi = part or (start, end)
    online = events.filter((events[S.SOURCE] == "online") & events[S.SESSION_ID].notnull())
    first = _first_add_to_cart(online, start, end)
    first = first.filter((first[ATC_TS] >= _at(lo)) & (first[ATC_TS] < _at(hi))) if part else first
    inputs, bought = _session_aggregates(online, first)
    history = _customer_history(events, first, history_days, lo, hi)
    purchases = _purchases_before(events, first, hi)
    out = (
        first.join(inputs, S.SESSION_ID)
        .left_join(history, S.SESSION_ID)
        .left_join(purchases, S.SESSION_ID)
        .left_join(bought, S.SESSION_ID)
    )
    empty = ibis.literal([], type="array<string>")
    zero = ibis.literal(0.0)
    return out.select(
        S.SESSION_ID,
        S.CUSTOMER_ID,
        ATC_TS,
        **{
            S.ITEMS: out[S.ITEMS].fill_null(empty),
            S.EVENT_TYPES_COL: out[S.EVENT_TYPES_COL].fill_null(empty),
            S.CHANNELS_COL: out[S.CHANNELS_COL].fill_null(empty),
            S.TIMESTAMPS_COL: out[S.TIMESTAMPS_COL].fill_null(ibis.literal([], type="array<int64>")),
            S.SI_N_EVENTS: out[S.SI_N_EVENTS],
            S.SI_N_VIEWS: out[S.SI_N_VIEWS],
            S.SI_N_ITEMS: out[S.SI_N_ITEMS],
            S.SI_SECONDS: out[S.SI_SECONDS],
            S.SI_CART_PRICE: out[S.SI_CART_PRICE],
            S.SI_EVENTS_28D: out[S.SI_EVENTS_28D].fill_null(zero),
            S.SI_SESSIONS_7D: out[S.SI_SESSIONS_7D].fill_null(zero),
            S.SI_PURCHASES: out[S.SI_PURCHASES].fill_null(zero),
            S.SI_DAYS_SINCE_PURCHASE: out[S.SI_DAYS_SINCE_PURCHASE].fill_null(fe.NO_PURCHASE_DAYS),
            S.LABEL: out._bought.fill_null(0).cast("int8"),
        },
    ).order_by([ATC_TS, S.SESSION_ID])

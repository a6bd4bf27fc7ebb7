"""Protocol I2 examples: online sessions with an add-to-cart, scored at their first add-to-cart.

Inputs are the session's own events up to and including that add-to-cart (ordered by time, then event id);
the label is 1 when the session later contains an order. Sessions are split by the time of the
add-to-cart. No event after the add-to-cart reaches an input column.
"""

from __future__ import annotations

from datetime import datetime

import ibis
import ibis.expr.types as ir

from data_prep import features as fe
from data_prep import schema as S
from data_prep.events import UTC_TS, epoch_seconds

ATC_TS = "atc_ts"
ATC_EVENT = "_atc_event"


def _first_add_to_cart(online: ir.Table, start: datetime, end: datetime) -> ir.Table:
    lo, hi = ibis.literal(start, type=UTC_TS), ibis.literal(end, type=UTC_TS)
    atc = online.filter(
        (online[S.EVENT_TYPE] == S.EV_ADD_TO_CART) & (online[S.TS] >= lo) & (online[S.TS] < hi)
    )
    rank = ibis.row_number().over(group_by=S.SESSION_ID, order_by=[S.TS, S.EVENT_ID])
    first = atc.mutate(_rank=rank).filter(ibis._["_rank"] == 0)
    return first.select(
        S.SESSION_ID,
        S.CUSTOMER_ID,
        **{ATC_TS: first[S.TS], ATC_EVENT: first[S.EVENT_ID], S.SI_CART_PRICE: first[S.PRICE]},
    )


def session_intent_examples(events: ir.Table, start: datetime, end: datetime) -> ir.Table:
    """One row per session whose first add-to-cart falls in ``[start, end)``.

    Columns: session_id, customer_id (may be null), atc_ts, items / event_types up to the add-to-cart,
    session aggregates (events, views, distinct items, seconds since the session began, cart price) and
    ``label`` (an order after the add-to-cart in the same session).
    """
    online = events.filter((events[S.SOURCE] == "online") & events[S.SESSION_ID].notnull())
    first = _first_add_to_cart(online, start, end)
    j = online.join(first, S.SESSION_ID).select(
        online[S.SESSION_ID],
        online[S.TS],
        online[S.EVENT_ID],
        online[S.EVENT_TYPE],
        online[S.ITEM_ID],
        first[ATC_TS],
        first[ATC_EVENT],
    )
    upto = (j[S.TS] < j[ATC_TS]) | ((j[S.TS] == j[ATC_TS]) & (j[S.EVENT_ID] <= j[ATC_EVENT]))
    before, after = j.filter(upto), j.filter(~upto)
    inputs = before.group_by(S.SESSION_ID).aggregate(
        **{
            fe.SEQUENCE: fe.ordered_collect(before, where=before[S.ITEM_ID].notnull()),
            S.SI_N_EVENTS: before.count().cast("float64"),
            S.SI_N_VIEWS: (before[S.EVENT_TYPE] == S.EV_VIEW).sum().cast("float64"),
            S.SI_N_ITEMS: before[S.ITEM_ID].nunique().cast("float64"),
            S.SI_SECONDS: epoch_seconds(before[ATC_TS].max()) - epoch_seconds(before[S.TS].min()),
        }
    )
    inputs = fe.unpack(inputs)
    bought = after.filter(after[S.EVENT_TYPE] == S.EV_ORDER).select(S.SESSION_ID).distinct()
    bought = bought.mutate(_bought=ibis.literal(1, "int8"))
    out = first.join(inputs, S.SESSION_ID).left_join(bought, S.SESSION_ID)
    return out.select(
        S.SESSION_ID,
        S.CUSTOMER_ID,
        ATC_TS,
        S.ITEMS,
        S.EVENT_TYPES_COL,
        *S.SESSION_FEATURES,
        **{S.LABEL: out._bought.fill_null(0).cast("int8")},
    ).order_by([ATC_TS, S.SESSION_ID])

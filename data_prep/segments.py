"""RFM scores, named RFM segments and churn labels, for one cutoff (Ibis, pure table → table).

Recency, frequency and monetary value use purchases (online orders and store purchases, net of returns)
strictly before the cutoff. Scores are quintiles 1..5 among customers who have purchased (5 = most recent,
most frequent, highest spend); ties are broken by customer id so the scores are reproducible. Segments
follow the common recency × frequency grid used by CRM teams.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import ibis
import ibis.expr.types as ir

from data_prep import features as fe
from data_prep import schema as S
from data_prep.events import UTC_TS, epoch_seconds

SECONDS_PER_DAY = 86_400.0

# (segment, recency scores, frequency scores): first match wins; together they cover the 5 × 5 grid.
RFM_GRID: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = (
    ("champions", (5, 4), (5, 4)),
    ("loyal", (3,), (5, 4)),
    ("potential loyalist", (5, 4), (3, 2)),
    ("new customer", (5,), (1,)),
    ("promising", (4,), (1,)),
    ("need attention", (3,), (3, 2)),
    ("about to sleep", (3,), (1,)),
    ("cannot lose them", (2, 1), (5,)),
    ("at risk", (2, 1), (4, 3)),
    ("hibernating", (2,), (2, 1)),
    ("lost", (1,), (2, 1)),
)


def _purchases_before(
    events: ir.Table, cutoff: datetime, kinds: tuple[str, ...] = S.PURCHASE_EVENT_TYPES
) -> ir.Table:
    return events.filter(
        events[S.CUSTOMER_ID].notnull()
        & (events[S.TS] < ibis.literal(cutoff, type=UTC_TS))
        & events[S.EVENT_TYPE].isin(kinds)
    )


def rfm_values(events: ir.Table, cutoff: datetime) -> ir.Table:
    """customer_id, recency_days (since the last purchase), frequency (distinct orders), monetary (net
    spend: returns subtract). Customers whose only spend events are returns are left out."""
    e = _purchases_before(events, cutoff, S.SPEND_EVENT_TYPES)
    age = epoch_seconds(ibis.literal(cutoff, type=UTC_TS)) - epoch_seconds(e[S.TS])
    bought = e[S.EVENT_TYPE] != S.EV_RETURN
    values = e.group_by(S.CUSTOMER_ID).aggregate(
        **{
            S.RFM_RECENCY: age.min(where=bought) / SECONDS_PER_DAY,
            S.RFM_FREQUENCY: e[S.ORDER_ID].nunique(where=bought).cast("float64"),
            S.RFM_MONETARY: e[S.AMOUNT].sum().fill_null(0.0),
        }
    )
    return values.filter(values[S.RFM_FREQUENCY] > 0)


def _quintile(value: ir.NumericColumn, customer: ir.StringColumn, ascending: bool) -> ir.IntegerValue:
    order = [value if ascending else ibis.desc(value), customer]
    return (5 - ibis.ntile(5).over(order_by=order)).cast("int8")  # ntile is 0-based: best fifth → 5


def segment_of(r: ir.IntegerValue, f: ir.IntegerValue) -> ir.StringValue:
    cases = [(r.isin(rs) & f.isin(fs), name) for name, rs, fs in RFM_GRID]
    return ibis.cases(*cases, else_="lost")


def rfm_segments(events: ir.Table, cutoff: datetime) -> ir.Table:
    """RFM values, R/F/M quintile scores, ``rfm_score`` ("R F M" digits) and ``segment`` per purchaser."""
    v = rfm_values(events, cutoff)
    scored = v.mutate(
        **{
            S.RFM_R: _quintile(v[S.RFM_RECENCY], v[S.CUSTOMER_ID], ascending=True),
            S.RFM_F: _quintile(v[S.RFM_FREQUENCY], v[S.CUSTOMER_ID], ascending=False),
            S.RFM_M: _quintile(v[S.RFM_MONETARY], v[S.CUSTOMER_ID], ascending=False),
        }
    )
    code = scored[S.RFM_R].cast("string") + scored[S.RFM_F].cast("string") + scored[S.RFM_M].cast("string")
    return scored.mutate(
        **{S.RFM_CODE: code, S.SEGMENT: segment_of(scored[S.RFM_R], scored[S.RFM_F])}
    ).order_by(S.CUSTOMER_ID)


def churn_labels(events: ir.Table, cutoff: datetime, horizon_days: int = 60) -> ir.Table:
    """customer_id, churn: among customers who purchased before ``cutoff``, 1 when they make no purchase
    (any channel) in ``[cutoff, cutoff + horizon)``, else 0."""
    buyers = _purchases_before(events, cutoff).select(S.CUSTOMER_ID).distinct()
    end = ibis.literal(cutoff + timedelta(days=horizon_days), type=UTC_TS)
    start = ibis.literal(cutoff, type=UTC_TS)
    later = events.filter(
        (events[S.TS] >= start) & (events[S.TS] < end) & events[S.EVENT_TYPE].isin(S.PURCHASE_EVENT_TYPES)
    )
    returning = later.select(S.CUSTOMER_ID).distinct().mutate(_back=ibis.literal(1))
    j = buyers.left_join(returning, S.CUSTOMER_ID)
    churn = ibis.ifelse(j._back.isnull(), 1, 0).cast("int8")
    return j.select(S.CUSTOMER_ID, **{S.CHURN: churn}).order_by(S.CUSTOMER_ID)


def churn_examples(events: ir.Table, cutoff: datetime, horizon_days: int = 60) -> ir.Table:
    """Churn examples at one cutoff: the snapshot (aggregates and sequence before ``cutoff``) of every
    customer who purchased before it, and ``label`` = :func:`churn_labels` (1 = no purchase in the horizon)."""
    return with_segment(labelled_snapshots(events, cutoff, horizon_days), events, cutoff)


def labelled_snapshots(events: ir.Table, cutoff: datetime, horizon_days: int = 60) -> ir.Table:
    """:func:`churn_examples` without the segment: each row depends on its customer's events only."""
    snap = fe.customer_snapshot(events, cutoff)
    j = snap.join(churn_labels(events, cutoff, horizon_days), S.CUSTOMER_ID)
    return j.select(*snap.columns, **{S.LABEL: j[S.CHURN]})


def with_segment(examples: ir.Table, events: ir.Table, cutoff: datetime) -> ir.Table:
    """``examples`` (one row per customer at ``cutoff``) plus ``segment``: the RFM segment as of the cutoff
    (:data:`schema.NO_PURCHASE_SEGMENT` for customers with no purchase before it). For analysis (campaign
    breakdowns), so it must be point-in-time like every other column."""
    seg = rfm_segments(events, cutoff).select(S.CUSTOMER_ID, _seg=ibis._[S.SEGMENT])
    j = examples.left_join(seg, S.CUSTOMER_ID)
    return j.select(*examples.columns, **{S.SEGMENT: j._seg.fill_null(S.NO_PURCHASE_SEGMENT)}).order_by(
        S.CUSTOMER_ID
    )

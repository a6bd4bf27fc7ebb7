"""Property: for random event streams, nothing at or after a cutoff reaches a feature or sequence for it.

Hypothesis draws events on both sides of a cutoff; the events at or after it are then replaced by other
random events. Every table computed *for* the cutoff (aggregates, sequences, RFM) must not change.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import hypothesis.strategies as st
import ibis
import pandas as pd
from hypothesis import HealthCheck, given, settings

from data_prep import features as fe
from data_prep import schema as S
from data_prep import segments as sg

CUTOFF = datetime(2026, 3, 1, tzinfo=UTC)
TYPES = [S.EV_VIEW, S.EV_SEARCH, S.EV_ADD_TO_CART, S.EV_ORDER, S.EV_PURCHASE, S.EV_RETURN]

event = st.tuples(
    st.sampled_from(["c1", "c2", "c3"]),
    st.integers(min_value=-60 * 24 * 3600, max_value=-1),  # seconds before the cutoff
    st.sampled_from(TYPES),
    st.sampled_from(["A", "B", "C", None]),
    st.floats(min_value=-5, max_value=50, allow_nan=False),
)
later = st.tuples(
    st.sampled_from(["c1", "c2", "c3", "c4"]),
    st.integers(min_value=0, max_value=30 * 24 * 3600),  # at or after the cutoff
    st.sampled_from(TYPES),
    st.sampled_from(["A", "B", "D", None]),
    st.floats(min_value=-5, max_value=50, allow_nan=False),
)


def table(rows: list[tuple]) -> ibis.Table:
    df = pd.DataFrame(
        {
            S.EVENT_ID: [f"e{i:04d}" for i in range(len(rows))],
            S.CUSTOMER_ID: [r[0] for r in rows],
            S.TS: [CUTOFF + timedelta(seconds=r[1]) for r in rows],
            S.EVENT_TYPE: [r[2] for r in rows],
            S.ITEM_ID: [r[3] if r[2] != S.EV_SEARCH else None for r in rows],
            S.SOURCE: ["pos" if r[2] in (S.EV_PURCHASE, S.EV_RETURN) else "online" for r in rows],
            S.CHANNEL: ["store" if r[2] in (S.EV_PURCHASE, S.EV_RETURN) else "app" for r in rows],
            S.AMOUNT: [r[4] for r in rows],
            S.ORDER_ID: [f"o{i % 7}" for i in range(len(rows))],
        }
    )
    schema = {c: "string" for c in df.columns} | {S.TS: "timestamp('UTC')", S.AMOUNT: "float64"}
    return ibis.memtable(df, schema=schema)


def computed_for_cutoff(events: ibis.Table) -> list[pd.DataFrame]:
    frames = [
        fe.intent_aggregates(events, CUTOFF).to_pandas(),
        fe.customer_sequences(events, CUTOFF).to_pandas(),
        fe.customer_snapshot(events, CUTOFF).drop(S.CUTOFF).to_pandas(),
        sg.rfm_segments(events, CUTOFF).to_pandas(),
    ]
    out = []
    for f in frames:
        for c in f.columns:
            if f[c].map(lambda v: hasattr(v, "__len__") and not isinstance(v, str)).any():
                f[c] = f[c].map(tuple)
        out.append(f.sort_values(S.CUSTOMER_ID).reset_index(drop=True))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    past=st.lists(event, min_size=1, max_size=25),
    future_a=st.lists(later, max_size=15),
    future_b=st.lists(later, max_size=15),
)
def test_events_at_or_after_the_cutoff_never_reach_cutoff_features(past, future_a, future_b) -> None:  # type: ignore[no-untyped-def]
    a = computed_for_cutoff(table(past + future_a))
    b = computed_for_cutoff(table(past + future_b))
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y, check_dtype=False)

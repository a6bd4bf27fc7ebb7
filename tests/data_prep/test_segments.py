"""RFM scores and segments, churn labels: exact values on hand-written purchases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import ibis
import pandas as pd

from data_prep import schema as S
from data_prep import segments as sg

CUTOFF = datetime(2026, 3, 1, tzinfo=UTC)


def purchases(rows: list[tuple[str, float, str, float]]) -> ibis.Table:
    """(customer, day relative to the cutoff, order id, amount) → purchase events."""
    df = pd.DataFrame(
        {
            S.EVENT_ID: [f"e{i}" for i in range(len(rows))],
            S.CUSTOMER_ID: [r[0] for r in rows],
            S.TS: [CUTOFF + timedelta(days=r[1]) for r in rows],
            S.EVENT_TYPE: [S.EV_PURCHASE] * len(rows),
            S.ORDER_ID: [r[2] for r in rows],
            S.AMOUNT: [r[3] for r in rows],
        }
    )
    return ibis.memtable(
        df,
        schema={
            S.EVENT_ID: "string",
            S.CUSTOMER_ID: "string",
            S.TS: "timestamp('UTC')",
            S.EVENT_TYPE: "string",
            S.ORDER_ID: "string",
            S.AMOUNT: "float64",
        },
    )


def test_rfm_values_and_quintiles() -> None:
    rows = [(f"c{i}", -(i + 1.0), f"o{i}", 10.0 * (i + 1)) for i in range(10)]  # c0 most recent, least spend
    rows += [("c9", -30.0, "o9b", 5.0), ("c9", 3.0, "future", 999.0)]  # c9 buys twice before, once after
    out = sg.rfm_segments(purchases(rows), CUTOFF).to_pandas().set_index(S.CUSTOMER_ID)
    assert out.loc["c9", S.RFM_FREQUENCY] == 2 and out.loc["c9", S.RFM_MONETARY] == 105.0
    assert out.loc["c0", S.RFM_RECENCY] == 1.0 and out.loc["c9", S.RFM_RECENCY] == 10.0
    assert out.loc["c0", S.RFM_R] == 5 and out.loc["c9", S.RFM_R] == 1
    assert out.loc["c9", S.RFM_M] == 5 and out.loc["c0", S.RFM_M] == 1
    assert sorted(out[S.RFM_R].value_counts().tolist()) == [2, 2, 2, 2, 2]
    assert out.loc["c0", S.RFM_CODE] == f"5{out.loc['c0', S.RFM_F]}1"


def test_segment_grid_covers_every_cell_once() -> None:
    seen = {}
    for r in range(1, 6):
        for f in range(1, 6):
            names = [n for n, rs, fs in sg.RFM_GRID if r in rs and f in fs]
            assert names, (r, f)
            seen[(r, f)] = names[0]
    assert seen[(5, 5)] == "champions" and seen[(1, 1)] == "lost" and seen[(5, 1)] == "new customer"
    t = ibis.memtable(pd.DataFrame({"r": [5, 1, 2], "f": [5, 5, 1]}))
    assert sg.segment_of(t.r, t.f).to_pandas().tolist() == ["champions", "cannot lose them", "hibernating"]


def test_churn_labels_use_only_the_horizon() -> None:
    rows = [
        ("stay", -5, "a", 1.0),
        ("stay", 20, "b", 1.0),
        ("gone", -5, "c", 1.0),
        ("late", -5, "d", 1.0),
        ("late", 60, "e", 1.0),
        ("new", 3, "f", 1.0),
    ]
    out = sg.churn_labels(purchases(rows), CUTOFF, 60).to_pandas().set_index(S.CUSTOMER_ID)[S.CHURN].to_dict()
    assert out == {
        "gone": 1,
        "late": 1,
        "stay": 0,
    }  # day 60 is outside [cutoff, cutoff + 60 d); "new" not a buyer yet

"""I2 session examples: inputs stop at the first add-to-cart; the label is a later order in the session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import ibis
import pandas as pd

from data_prep import schema as S
from data_prep.sessions import session_intent_examples

T0 = datetime(2026, 3, 1, 10, tzinfo=UTC)


def events(rows: list[tuple[str, int, str, str | None]]) -> ibis.Table:
    """(session, minute, event type, item) → online events."""
    df = pd.DataFrame(
        {
            S.EVENT_ID: [f"e{i:02d}" for i in range(len(rows))],
            S.SOURCE: "online",
            S.SESSION_ID: [r[0] for r in rows],
            S.CUSTOMER_ID: "c1",
            S.TS: [T0 + timedelta(minutes=r[1]) for r in rows],
            S.EVENT_TYPE: [r[2] for r in rows],
            S.ITEM_ID: [r[3] for r in rows],
            S.PRICE: [9.5 if r[2] == S.EV_ADD_TO_CART else None for r in rows],
        }
    )
    schema = {c: "string" for c in df.columns} | {S.TS: "timestamp('UTC')", S.PRICE: "float64"}
    return ibis.memtable(df, schema=schema)


ROWS = [
    ("s1", 0, S.EV_VIEW, "A"),
    ("s1", 1, S.EV_SEARCH, None),
    ("s1", 2, S.EV_ADD_TO_CART, "A"),
    ("s1", 3, S.EV_VIEW, "B"),  # after the add-to-cart: must not reach the inputs
    ("s1", 4, S.EV_ADD_TO_CART, "B"),
    ("s1", 5, S.EV_ORDER, "A"),
    ("s2", 0, S.EV_VIEW, "C"),
    ("s2", 1, S.EV_ADD_TO_CART, "C"),
    ("s2", 2, S.EV_REMOVE_FROM_CART, "C"),  # abandoned
    ("s3", 0, S.EV_VIEW, "D"),  # no add-to-cart: not an I2 session
]


def test_inputs_stop_at_first_add_to_cart_and_label_is_a_later_order() -> None:
    out = (
        session_intent_examples(events(ROWS), T0, T0 + timedelta(days=1)).to_pandas().set_index(S.SESSION_ID)
    )
    assert sorted(out.index) == ["s1", "s2"]
    s1 = out.loc["s1"]
    assert list(s1[S.ITEMS]) == ["A", "A"] and list(s1[S.EVENT_TYPES_COL]) == ["view", "add_to_cart"]
    assert (s1[S.SI_N_EVENTS], s1[S.SI_N_VIEWS], s1[S.SI_N_ITEMS], s1[S.SI_SECONDS]) == (3, 1, 1, 120)
    assert s1[S.SI_CART_PRICE] == 9.5 and s1[S.LABEL] == 1
    assert out.loc["s2", S.LABEL] == 0


def test_window_is_by_add_to_cart_time() -> None:
    late = session_intent_examples(
        events(ROWS), T0 + timedelta(minutes=2), T0 + timedelta(days=1)
    ).to_pandas()
    assert set(late[S.SESSION_ID]) == {"s1"}  # s2's add-to-cart (minute 1) is before the window


def test_events_after_the_add_to_cart_do_not_change_inputs() -> None:
    short = [r for r in ROWS if not (r[0] == "s1" and r[1] >= 3)]
    a = session_intent_examples(events(ROWS), T0, T0 + timedelta(days=1)).to_pandas()
    b = session_intent_examples(events(short), T0, T0 + timedelta(days=1)).to_pandas()
    cols = [S.SESSION_ID, S.SI_N_EVENTS, S.SI_N_VIEWS, S.SI_N_ITEMS, S.SI_SECONDS]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert a[S.ITEMS].map(list).tolist() == b[S.ITEMS].map(list).tolist()

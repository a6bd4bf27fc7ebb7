"""I2 session examples: inputs stop at the first add-to-cart; the history is the customer's, in any channel;
the label is a later order in the session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import ibis
import pandas as pd
import pytest

from data_prep import schema as S
from data_prep.sessions import session_intent_examples, time_chunks

T0 = datetime(2026, 3, 1, 10, tzinfo=UTC)


def events(rows: list[tuple[str, int, str, str | None]], customer: str | None = "c1") -> ibis.Table:
    """(session, minute, event type, item) → online events of ``customer``; session "pos" rows are store
    purchases (one basket per minute)."""
    store = [r[0] == "pos" for r in rows]
    df = pd.DataFrame(
        {
            S.EVENT_ID: [f"e{i:02d}" for i in range(len(rows))],
            S.SOURCE: ["pos" if p else "online" for p in store],
            S.CHANNEL: ["store" if p else "web" for p in store],
            S.SESSION_ID: [None if p else r[0] for p, r in zip(store, rows, strict=True)],
            S.ORDER_ID: [
                f"b{r[1]}" if p else (f"o-{r[0]}" if r[2] == S.EV_ORDER else None)
                for p, r in zip(store, rows, strict=True)
            ],
            S.CUSTOMER_ID: customer,
            S.TS: [T0 + timedelta(minutes=r[1]) for r in rows],
            S.EVENT_TYPE: [r[2] for r in rows],
            S.ITEM_ID: [r[3] for r in rows],
            S.PRICE: [9.5 if r[2] == S.EV_ADD_TO_CART else None for r in rows],
        }
    )
    schema = {c: "string" for c in df.columns} | {S.TS: "timestamp('UTC')", S.PRICE: "float64"}
    return ibis.memtable(df, schema=schema)


def examples(rows: list[tuple[str, int, str, str | None]], customer: str | None = "c1") -> pd.DataFrame:
    return (
        session_intent_examples(events(rows, customer), T0 - timedelta(days=40), T0 + timedelta(days=1))
        .to_pandas()
        .set_index(S.SESSION_ID)
    )


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
    out = examples(ROWS, customer=None)  # sessions no customer owns: each is its own history
    assert sorted(out.index) == ["s1", "s2"]
    s1 = out.loc["s1"]
    assert list(s1[S.ITEMS]) == ["A", "A"] and list(s1[S.EVENT_TYPES_COL]) == ["view", "add_to_cart"]
    assert list(s1[S.CHANNELS_COL]) == ["web", "web"]
    assert list(s1[S.TIMESTAMPS_COL]) == [int(T0.timestamp()), int(T0.timestamp()) + 120]
    assert (s1[S.SI_N_EVENTS], s1[S.SI_N_VIEWS], s1[S.SI_N_ITEMS], s1[S.SI_SECONDS]) == (3, 1, 1, 120)
    assert s1[S.SI_CART_PRICE] == 9.5 and s1[S.LABEL] == 1
    assert (s1[S.SI_EVENTS_28D], s1[S.SI_SESSIONS_7D], s1[S.SI_PURCHASES]) == (0, 0, 0)
    assert s1[S.SI_DAYS_SINCE_PURCHASE] == 365.0
    assert out.loc["s2", S.LABEL] == 0


def test_the_history_is_the_customers_in_every_channel_before_the_add_to_cart() -> None:
    day = 24 * 60
    out = examples(
        [
            ("old", -40 * day, S.EV_VIEW, "X"),  # older than the 28-day history: not in the sequence
            ("pos", -10 * day, S.EV_PURCHASE, "P"),  # a store basket of two lines
            ("pos", -10 * day, S.EV_PURCHASE, "Q"),
            ("s0", -3 * day, S.EV_VIEW, "A"),  # research the days before
            ("s0", -3 * day + 1, S.EV_ADD_TO_CART, "A"),
            *ROWS,
        ]
    )
    s1 = out.loc["s1"]
    items = list(s1[S.ITEMS])
    assert sorted(items[:2]) == ["P", "Q"] and list(s1[S.CHANNELS_COL][:2]) == ["store", "store"]
    # then s0, then minute 0 of s1, s2 and s3 (the same customer in three tabs), s2's cart, s1's cart
    assert items[2:] == ["A", "A", "A", "C", "D", "C", "A"] and "X" not in items
    assert s1[S.SI_EVENTS_28D] == 7 and s1[S.SI_SESSIONS_7D] == 3  # s0, s2, s3; store lines are no session
    assert s1[S.SI_PURCHASES] == 1  # one basket (two lines), 10 days and 2 minutes before the cart
    assert s1[S.SI_DAYS_SINCE_PURCHASE] == pytest.approx(10 + 2 / day)
    assert (s1[S.SI_N_EVENTS], s1[S.SI_N_VIEWS]) == (3, 1)  # the session aggregates stay the session's
    s2 = out.loc["s2"]  # nothing after s2's cart (minute 1) reaches it: not s1's cart, view of B or order
    assert list(s2[S.ITEMS])[2:] == ["A", "A", "A", "C", "D", "C"] and s2[S.SI_PURCHASES] == 1


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


def test_examples_built_week_by_week_are_the_examples_of_the_whole_window() -> None:
    """Prep builds I2 examples a week of add-to-carts at a time (memory): concatenated, the pieces are the
    whole window's examples, rows in the same order, history reaching back before each piece included; a
    session whose add-to-carts straddle a piece boundary counts once, at its first add-to-cart."""
    day = 24 * 60
    rows = [
        ("old", -20 * day, S.EV_VIEW, "X"),  # history from before the window
        ("pos", -9 * day, S.EV_PURCHASE, "P"),
        ("w0", -8 * day, S.EV_ADD_TO_CART, "A"),
        ("edge", -1, S.EV_ADD_TO_CART, "B"),  # the last minute of one week ...
        ("edge", 1, S.EV_ADD_TO_CART, "C"),  # ... and the first of the next
        ("edge", 2, S.EV_ORDER, "B"),
        *ROWS,
        ("late", 9 * day, S.EV_VIEW, "D"),
        ("late", 9 * day + 1, S.EV_ADD_TO_CART, "D"),
    ]
    t = events(rows)
    start, end = T0 - timedelta(days=14), T0 + timedelta(days=14)
    chunks = time_chunks(start, end, 7)
    assert chunks[2] == (T0, T0 + timedelta(days=7)) and len(chunks) == 4
    whole = session_intent_examples(t, start, end).to_pandas()
    pieces = [session_intent_examples(t, start, end, part=c).to_pandas() for c in chunks]
    assert [len(p) for p in pieces] == [1, 1, 2, 1]  # w0 | edge | s2, s1 | late
    pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), whole)
    assert list(whole[S.SESSION_ID]) == ["w0", "edge", "s2", "s1", "late"]

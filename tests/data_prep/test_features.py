"""Point-in-time features: exact values on a tiny table, and nothing at or after a cutoff leaks in."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import ibis
import pandas as pd
import pytest

from data_prep import features as fe
from data_prep import schema as S

CUTOFF = datetime(2026, 3, 1, tzinfo=UTC)


def ev(
    cust: str,
    day: float,
    etype: str,
    item: str | None = "A",
    amount: float | None = None,
    order: str | None = None,
) -> dict:
    return {
        S.EVENT_ID: f"{cust}-{day}-{etype}-{item}",
        S.CUSTOMER_ID: cust,
        S.TS: CUTOFF + timedelta(days=day),
        S.EVENT_TYPE: etype,
        S.ITEM_ID: item,
        S.SOURCE: "pos" if etype == S.EV_PURCHASE else "online",
        S.CHANNEL: S.CHANNEL_STORE if etype == S.EV_PURCHASE else S.CHANNEL_WEB,
        S.AMOUNT: amount,
        S.ORDER_ID: order,
    }


def table(rows: list[dict]) -> ibis.Table:
    df = pd.DataFrame(rows)
    df[S.TS] = pd.to_datetime(df[S.TS], utc=True)
    return ibis.memtable(
        df,
        schema={
            S.EVENT_ID: "string",
            S.CUSTOMER_ID: "string",
            S.TS: "timestamp('UTC')",
            S.EVENT_TYPE: "string",
            S.ITEM_ID: "string",
            S.SOURCE: "string",
            S.CHANNEL: "string",
            S.AMOUNT: "float64",
            S.ORDER_ID: "string",
        },
    )


PAST = [
    ev("c1", -40, S.EV_PURCHASE, "A", 10.0, "t1"),
    ev("c1", -5, S.EV_VIEW, "B"),
    ev("c1", -2, S.EV_ADD_TO_CART, "C"),
    ev("c1", -1, S.EV_ORDER, "C", 4.0, "o1"),
    ev("c2", -20, S.EV_SEARCH, None),
]
FUTURE = [
    ev("c1", 0, S.EV_ORDER, "Z", 99.0, "o2"),  # exactly at the cutoff: future
    ev("c2", 3, S.EV_PURCHASE, "Y", 5.0, "t2"),
    ev("c3", 1, S.EV_VIEW, "X"),  # a customer who only exists after the cutoff
]


def test_aggregates_exact() -> None:
    agg = fe.intent_aggregates(table(PAST), CUTOFF).to_pandas().set_index(S.CUSTOMER_ID)
    c1 = agg.loc["c1"]
    assert c1[S.F_RECENCY_DAYS] == pytest.approx(1.0)
    assert c1[S.F_TENURE_DAYS] == pytest.approx(40.0)
    assert (c1[S.F_N_EVENTS_7D], c1[S.F_N_EVENTS_30D], c1[S.F_N_VIEWS_7D], c1[S.F_N_CARTS_7D]) == (3, 3, 1, 1)
    assert (c1[S.F_N_PURCHASES_30D], c1[S.F_N_PURCHASES_ALL], c1[S.F_MONETARY_ALL]) == (1, 2, 14.0)
    assert (c1[S.F_N_ONLINE_ALL], c1[S.F_N_STORE_ALL], c1[S.F_DAYS_SINCE_PURCHASE]) == (
        3,
        1,
        pytest.approx(1.0),
    )
    assert agg.loc["c2", S.F_DAYS_SINCE_PURCHASE] == fe.NO_PURCHASE_DAYS


def test_aggregates_count_order_level_rows_by_channel() -> None:
    """An export of order totals (source ``orders``, no items): online orders and store visits count as such."""
    rows = [
        {**ev("c1", -5, S.EV_ORDER, None, 30.0, "w1"), S.SOURCE: "orders", S.CHANNEL: "web"},
        {**ev("c1", -3, S.EV_ORDER, None, 20.0, "a1"), S.SOURCE: "orders", S.CHANNEL: "app"},
        {**ev("c1", -2, S.EV_PURCHASE, None, 9.0, "s1"), S.SOURCE: "orders", S.CHANNEL: S.CHANNEL_STORE},
    ]
    c1 = fe.intent_aggregates(table(rows), CUTOFF).to_pandas().set_index(S.CUSTOMER_ID).loc["c1"]
    assert (c1[S.F_N_ONLINE_ALL], c1[S.F_N_STORE_ALL], c1[S.F_N_PURCHASES_ALL]) == (2, 1, 3)
    assert c1[S.F_MONETARY_ALL] == pytest.approx(59.0)


def test_purchase_timing_aggregates_exact() -> None:
    rows = [
        ev("c1", -40, S.EV_PURCHASE, "A", 10.0, "t1"),  # store, 40 days before the cutoff
        ev("c1", -20, S.EV_ORDER, "B", 5.0, "o1"),  # online
        ev("c1", -5, S.EV_ORDER, "C", 2.0, "o2"),  # online, two lines
        {**ev("c1", -5, S.EV_ORDER, "D", 3.0, "o2"), S.EVENT_ID: "o2-D"},
        ev("c1", -1.2, S.EV_VIEW, "E"),
        ev("c1", -1.5, S.EV_VIEW, "F"),  # same day back from the cutoff as the view above
        ev("c2", -3, S.EV_VIEW, "A"),  # never bought
    ]
    agg = fe.intent_aggregates(table(rows), CUTOFF).to_pandas().set_index(S.CUSTOMER_ID)
    c1, c2 = agg.loc["c1"], agg.loc["c2"]
    assert c1[S.F_DAYS_SINCE_FIRST_PURCHASE] == pytest.approx(40.0)
    assert c1[S.F_DAYS_SINCE_ONLINE_PURCHASE] == pytest.approx(5.0)
    assert c1[S.F_DAYS_SINCE_STORE_PURCHASE] == pytest.approx(40.0)
    assert c1[S.F_PURCHASE_GAP_MEAN] == pytest.approx(17.5)  # gaps of 20 and 15 days
    assert c1[S.F_PURCHASE_GAP_STD] == pytest.approx(2.5)
    assert (c1[S.F_N_PURCHASES_90D], c1[S.F_MONETARY_90D]) == (3, pytest.approx(20.0))
    assert (c1[S.F_ACTIVE_DAYS_30D], c1[S.F_ACTIVE_DAYS_90D]) == (3, 4)  # days 1, 5, 20; and 40
    returned = [*rows, {**ev("c1", -2, S.EV_RETURN, "A", -50.0, "r1"), S.SOURCE: "pos", S.CHANNEL: "store"}]
    again = fe.intent_aggregates(table(returned), CUTOFF).to_pandas().set_index(S.CUSTOMER_ID)
    assert again.loc["c1", [S.F_MONETARY_90D, S.F_MONETARY_ALL]].tolist() == [0.0, 0.0]  # net < 0: floored
    assert (again.to_numpy() >= 0).all()
    never = fe.NO_PURCHASE_DAYS
    assert c2[S.F_DAYS_SINCE_FIRST_PURCHASE] == c2[S.F_PURCHASE_GAP_MEAN] == never
    assert (c2[S.F_PURCHASE_GAP_STD], c2[S.F_N_PURCHASES_90D], c2[S.F_ACTIVE_DAYS_30D]) == (0, 0, 1)
    assert list(agg.columns) == list(S.INTENT_FEATURES)


def test_activity_calendar_counts_each_week_back_from_the_cutoff() -> None:
    """Week w holds ages [7w, 7w + 7) days: orders by channel (distinct ids), net spend floored at 0,
    active days and carts; a week with nothing is 0, and events older than the calendar reach no cell."""
    rows = [
        ev("c1", -1, S.EV_ORDER, "A", 4.0, "o1"),  # week 0, online, two lines of one order
        {**ev("c1", -1, S.EV_ORDER, "B", 6.0, "o1"), S.EVENT_ID: "o1-B"},
        ev("c1", -2, S.EV_ADD_TO_CART, "A"),  # week 0
        ev("c1", -9, S.EV_PURCHASE, "C", 7.0, "t1"),  # week 1, store
        {**ev("c1", -10, S.EV_RETURN, "C", -9.0, "r1"), S.SOURCE: "pos", S.CHANNEL: "store"},  # week 1
        ev("c1", -7 * S.ACTIVITY_WEEKS - 1, S.EV_ORDER, "D", 50.0, "old"),  # before the calendar
        ev("c2", -3, S.EV_VIEW, "A"),
    ]
    agg = fe.intent_aggregates(table(rows), CUTOFF).to_pandas().set_index(S.CUSTOMER_ID)
    c1 = agg.loc["c1"]
    assert [c1[f"wk00_{m}"] for m in S.ACTIVITY_MEASURES] == [1, 0, pytest.approx(10.0), 2, 1]
    assert [c1[f"wk01_{m}"] for m in S.ACTIVITY_MEASURES] == [0, 1, 0.0, 2, 0]  # 7 - 9 < 0: floored
    calendar = agg[list(S.ACTIVITY_FEATURES)]
    assert calendar.loc["c1"].sum() == pytest.approx(1 + 10 + 2 + 1 + 1 + 2)  # nothing from "old"
    assert calendar.loc["c2", "wk00_active_days"] == 1  # a view: an active day, nothing else
    assert calendar.loc["c2"].sum() == 1


def test_future_events_reach_no_feature_or_sequence() -> None:
    before = fe.intent_examples(table(PAST), CUTOFF, 14).to_pandas().drop(columns=[S.LABEL])
    after = fe.intent_examples(table(PAST + FUTURE), CUTOFF, 14).to_pandas().drop(columns=[S.LABEL])
    pd.testing.assert_frame_equal(before.reset_index(drop=True), after.reset_index(drop=True))
    seq_before = fe.customer_sequences(table(PAST), CUTOFF).to_pandas().sort_values(S.CUSTOMER_ID)
    seq_after = fe.customer_sequences(table(PAST + FUTURE), CUTOFF).to_pandas().sort_values(S.CUSTOMER_ID)
    assert (
        seq_before[S.ITEMS].map(list).tolist()
        == seq_after[S.ITEMS].map(list).tolist()
        == [["A", "B", "C", "C"]]
    )
    assert "c3" not in set(after[S.CUSTOMER_ID])


def test_labels_and_targets_come_only_from_the_horizon() -> None:
    ex = fe.intent_examples(table(PAST + FUTURE), CUTOFF, 14).to_pandas().set_index(S.CUSTOMER_ID)
    assert ex[S.LABEL].to_dict() == {"c1": 1, "c2": 1}
    short = fe.intent_examples(table(PAST + FUTURE), CUTOFF, 2).to_pandas().set_index(S.CUSTOMER_ID)
    assert short[S.LABEL].to_dict() == {"c1": 1, "c2": 0}  # c2 buys on day 3, outside a 2-day horizon
    t = fe.next_item_examples(table(PAST + FUTURE), CUTOFF, 14).to_pandas()
    assert t[[S.CUSTOMER_ID, S.TARGET_ITEM]].values.tolist() == [["c1", "Z"]]  # c2 has no item history


def test_basket_lines_are_not_ordered_by_product_id() -> None:
    """Lines of one basket share a timestamp: their order (and so R2's target) must not follow the ids."""
    items = [f"P{i:02d}" for i in range(12)]
    basket = [ev("c1", -3, S.EV_PURCHASE, it, 1.0, "t1") for it in items]
    nxt = [ev("c1", 2, S.EV_PURCHASE, it, 1.0, "t2") for it in items]
    seq = list(fe.customer_sequences(table(basket), CUTOFF).to_pandas()[S.ITEMS].iloc[0])
    assert sorted(seq) == items and seq != items  # all lines kept, not in id order
    again = list(fe.customer_sequences(table(basket[::-1]), CUTOFF).to_pandas()[S.ITEMS].iloc[0])
    assert again == seq  # reproducible whatever the input order
    target = fe.next_item_examples(table(basket + nxt), CUTOFF, 14).to_pandas()[S.TARGET_ITEM].iloc[0]
    assert target != "P00"
    # ties outside a basket (e.g. two views in the same second) keep the event_id order
    views = [ev("c2", -1, S.EV_VIEW, it) for it in items]
    seq2 = list(fe.customer_sequences(table(views[::-1]), CUTOFF).to_pandas()[S.ITEMS].iloc[0])
    assert seq2 == items


def test_orders_of_one_event_sharing_a_second_keep_the_source_row_order() -> None:
    """Protocol R1: a MovieLens rating is an order of its own; ratings in the same second keep the row order
    (their event ids), so the last and second-to-last events are the source's, not an MD5's."""
    rows = []
    for i, item in enumerate(["M9", "M3", "M7", "M1", "M5", "M2"]):  # row order, not id order
        r = ev("c1", -2, S.EV_ORDER, item, 1.0, f"o{i}")
        rows.append({**r, S.EVENT_ID: f"ml-{i:06d}"})
    seq = fe.customer_sequences(table(rows[::-1]), CUTOFF).to_pandas()[S.ITEMS].iloc[0]
    assert list(seq) == ["M9", "M3", "M7", "M1", "M5", "M2"]
    later = [{**ev("c1", 1, S.EV_ORDER, it, 1.0, f"n{i}"), S.EVENT_ID: f"ml-{10 + i:06d}"} for i, it in
             enumerate(["M8", "M4"])]  # fmt: skip
    target = fe.next_item_examples(table(rows + later[::-1]), CUTOFF, 14).to_pandas()[S.TARGET_ITEM].iloc[0]
    assert target == "M8"


def test_vocabulary_ignores_items_first_seen_after_cutoff() -> None:
    cat = ibis.memtable(pd.DataFrame({S.CAT_ITEM_ID: list("ABCXYZ"), S.CAT_CATEGORY: ["k"] * 6}))
    vocab = fe.item_vocabulary(table(PAST + FUTURE), cat, CUTOFF).to_pandas()
    assert vocab[S.ITEM_ID].tolist() == ["C", "A", "B"]  # by popularity, then id
    assert vocab[S.ITEM_IDX].tolist() == [1, 2, 3]


def test_plan_splits_windows_do_not_overlap() -> None:
    s = fe.plan_splits(datetime(2026, 1, 5, 3, tzinfo=UTC), datetime(2026, 5, 4, 22, tzinfo=UTC), 14)
    assert s.data_end == datetime(2026, 5, 5, tzinfo=UTC)
    assert s.test == s.data_end - timedelta(days=14) and s.val == s.test - timedelta(days=14)
    assert all(c + timedelta(days=14) <= s.val for c in s.train_cutoffs)
    assert fe.TimeSplits.from_json(s.to_json()) == s
    many = fe.plan_splits(datetime(2026, 1, 5, 3, tzinfo=UTC), datetime(2026, 5, 4, 22, tzinfo=UTC), 14, 30)
    gaps = {(b - a).days for a, b in zip(many.train_cutoffs, many.train_cutoffs[1:], strict=False)}
    assert gaps == {7} and many.train_cutoffs[-1] == s.train_cutoffs[-1]  # weekly, newest unchanged
    assert len(many.train_cutoffs) == 10  # older ones with < 14 days of history before them dropped
    with pytest.raises(ValueError, match="too short"):
        fe.plan_splits(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 20, tzinfo=UTC), 14)


def test_a_chosen_test_date_moves_every_cutoff_and_is_checked() -> None:
    lo, hi = datetime(2026, 1, 5, 3, tzinfo=UTC), datetime(2026, 5, 4, 22, tzinfo=UTC)  # end 2026-05-05
    s = fe.plan_splits(lo, hi, 14, test_date=date(2026, 3, 2))
    assert (s.test, s.val) == (datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 2, 16, tzinfo=UTC))
    assert s.train_cutoffs[-1] == datetime(2026, 2, 2, tzinfo=UTC) and s.data_end == datetime(
        2026, 5, 5, tzinfo=UTC
    )
    assert fe.plan_splits(lo, hi, 14, test_date=date(2026, 4, 21)) == fe.plan_splits(lo, hi, 14)  # the latest
    with pytest.raises(ValueError, match=r"too late: .* latest test date is 2026-04-21"):
        fe.plan_splits(lo, hi, 14, test_date=date(2026, 4, 22))
    with pytest.raises(ValueError, match="too early"):
        fe.plan_splits(lo, hi, 14, test_date=date(2026, 1, 30))


def test_label_window_end_is_exclusive() -> None:
    at_end = [*PAST, ev("c2", 14, S.EV_PURCHASE, "Y", 5.0, "t9")]  # exactly cutoff + horizon: outside
    ex = fe.intent_examples(table(at_end), CUTOFF, 14).to_pandas().set_index(S.CUSTOMER_ID)
    assert ex.loc["c2", S.LABEL] == 0
    just_inside = [*PAST, ev("c2", 13.999, S.EV_PURCHASE, "Y", 5.0, "t9")]
    assert (
        fe.intent_examples(table(just_inside), CUTOFF, 14)
        .to_pandas()
        .set_index(S.CUSTOMER_ID)
        .loc["c2", S.LABEL]
        == 1
    )


def test_churn_examples_are_earlier_buyers_with_point_in_time_features() -> None:
    from data_prep import segments as sg

    rows = [
        *PAST,
        ev("c4", -30, S.EV_PURCHASE, "A", 3.0, "t4"),  # bought before, never again: churns
        ev("c5", -10, S.EV_PURCHASE, "B", 3.0, "t5"),
        ev("c5", 59, S.EV_ORDER, "B", 3.0, "o5"),  # back on day 59: inside the 60-day window
        ev("c6", -10, S.EV_PURCHASE, "B", 3.0, "t6"),
        ev("c6", 60, S.EV_ORDER, "B", 3.0, "o6"),  # day 60 is outside [cutoff, cutoff + 60 d)
        *FUTURE,
    ]
    ex = sg.churn_examples(table(rows), CUTOFF, 60).to_pandas().set_index(S.CUSTOMER_ID)
    # c2 never bought before the cutoff, c3 only exists after it: neither is a churn example
    assert ex[S.LABEL].to_dict() == {"c1": 0, "c4": 1, "c5": 0, "c6": 1}
    snap = fe.customer_snapshot(table([r for r in rows if r[S.TS] < CUTOFF]), CUTOFF).to_pandas()
    same = snap.set_index(S.CUSTOMER_ID).loc[ex.index, list(S.INTENT_FEATURES)]
    pd.testing.assert_frame_equal(ex[list(S.INTENT_FEATURES)], same)  # nothing after the cutoff leaks in

"""Unify/clean on hand-written rows: every reject reason, duplicates, and a ledger that balances."""

from __future__ import annotations

import ibis
import ibis.expr.types as ir
import pandas as pd
import pytest

from data_prep import engine
from data_prep import events as ev
from data_prep import schema as S
from data_prep.pipeline import build_ledger

CATALOG = pd.DataFrame({S.CAT_ITEM_ID: ["A", "B"], S.CAT_CATEGORY: ["c1", "c2"], S.CAT_PRICE: ["1.0", "2.0"]})
STORES = pd.DataFrame({S.CAT_STORE_ID: ["ST1"], S.CAT_CITY: ["X"]})


def online_row(**kw: str | None) -> dict[str, str | None]:
    row: dict[str, str | None] = {
        S.ON_EVENT_ID: "e1",
        S.ON_TS: "2026-01-05T10:00:00.000Z",
        S.ON_CHANNEL: "web",
        S.DEVICE_KEY: "dk",
        S.ACCOUNT_KEY: None,
        S.ON_SESSION_ID: "s1",
        S.ON_EVENT_TYPE: "view",
        S.ON_ITEM_ID: "A",
        S.ON_QUERY: None,
        S.ON_QUANTITY: None,
        S.ON_PRICE: None,
        S.ON_ORDER_ID: None,
        S.EMAIL_KEY: None,
    }
    row.update(kw)
    return row


def pos_row(**kw: str | None) -> dict[str, str | None]:
    row: dict[str, str | None] = {
        S.POS_TRANSACTION_ID: "T1",
        S.POS_LINE_NO: "1",
        S.POS_TS: "2026-01-05 12:00:00",
        S.POS_STORE_ID: "ST1",
        S.CARD_KEY: "ck",
        S.PHONE_KEY: None,
        S.POS_ITEM_ID: "B",
        S.POS_QUANTITY: "2",
        S.POS_UNIT_PRICE: "2.5",
    }
    row.update(kw)
    return row


def run_online(rows: list[dict]) -> pd.DataFrame:
    raw = ibis.memtable(pd.DataFrame(rows).astype("string"))
    out = ev.mark_duplicates(ev.unify_online_events(raw, ibis.memtable(CATALOG)))
    return out.to_pandas().sort_values(S.EVENT_ID).reset_index(drop=True)


def run_pos(rows: list[dict]) -> pd.DataFrame:
    raw = ibis.memtable(pd.DataFrame(rows).astype("string"))
    out = ev.mark_duplicates(ev.unify_pos_lines(raw, ibis.memtable(CATALOG), ibis.memtable(STORES)))
    return out.to_pandas()


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (online_row(event_id=None), ev.R_MISSING_ID),
        (online_row(ts="yesterday"), ev.R_BAD_TIMESTAMP),
        (online_row(ts=None), ev.R_BAD_TIMESTAMP),
        (online_row(event_type="teleport"), ev.R_UNKNOWN_EVENT_TYPE),
        (online_row(channel="fax"), ev.R_UNKNOWN_CHANNEL),
        (online_row(device_key=None), ev.R_MISSING_IDENTIFIER),
        (online_row(item_id=None), ev.R_MISSING_ITEM),
        (online_row(item_id="ZZZ"), ev.R_UNKNOWN_ITEM),
        (online_row(event_type="add_to_cart", quantity="0"), ev.R_BAD_QUANTITY),
        (online_row(event_type="add_to_cart", quantity="two"), ev.R_BAD_QUANTITY),
        (online_row(event_type="order", quantity="1", price="-3", order_id="o1"), ev.R_BAD_PRICE),
    ],
)
def test_online_reject_reasons(row: dict, reason: str) -> None:
    out = run_online([row])
    assert out[S.REJECT_REASON].tolist() == [reason]
    assert not out[ev.IS_DUPLICATE].any()


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (pos_row(transaction_id=None), ev.R_MISSING_ID),
        (pos_row(ts="31/02/2026"), ev.R_BAD_TIMESTAMP),
        (pos_row(item_id=None), ev.R_MISSING_ITEM),
        (pos_row(item_id="nope"), ev.R_UNKNOWN_ITEM),
        (pos_row(store_id="ST9"), ev.R_UNKNOWN_STORE),
        (pos_row(quantity="0"), ev.R_BAD_QUANTITY),
        (pos_row(unit_price="0"), ev.R_BAD_PRICE),
        (pos_row(unit_price="20.5"), ev.R_BAD_PRICE),
    ],
)
def test_pos_reject_reasons(row: dict, reason: str) -> None:
    assert run_pos([row])[S.REJECT_REASON].tolist() == [reason]


def test_valid_rows_are_typed_exactly() -> None:
    order = online_row(
        event_id="o", event_type="ORDER", quantity="2", price="3.5", order_id="o1", email_key="ek"
    )
    out = run_online([online_row(), order])
    assert out[S.REJECT_REASON].isna().all()
    o = out.set_index(S.EVENT_ID).loc["online:o"]
    assert o[S.EVENT_TYPE] == "order" and o[S.QUANTITY] == 2 and o[S.AMOUNT] == pytest.approx(7.0)
    assert o[S.TS] == pd.Timestamp("2026-01-05T10:00:00", tz="UTC")
    p = run_pos([pos_row()]).iloc[0]
    assert (p[S.EVENT_ID], p[S.EVENT_TYPE], p[S.CHANNEL]) == ("pos:T1:1", "purchase", "store")
    assert p[S.AMOUNT] == pytest.approx(5.0) and p[S.CARD_KEY] == "ck"


def test_exact_duplicates_are_merged_once() -> None:
    out = run_online([online_row(), online_row(), online_row(), online_row(event_id="e2", item_id="B")])
    assert out[ev.IS_DUPLICATE].sum() == 2
    accepted = ev.accepted_events(
        ev.mark_duplicates(
            ev.unify_online_events(
                ibis.memtable(
                    pd.DataFrame([online_row(), online_row(), online_row(event_id="e2", item_id="B")]).astype(
                        "string"
                    )
                ),
                ibis.memtable(CATALOG),
            )
        )
    ).to_pandas()
    assert sorted(accepted[S.EVENT_ID]) == ["online:e1", "online:e2"]


def test_rejected_copy_is_not_a_duplicate() -> None:
    out = run_online([online_row(), online_row(ts="bad")])
    assert out[S.REJECT_REASON].tolist().count(ev.R_BAD_TIMESTAMP) == 1
    assert out[ev.IS_DUPLICATE].sum() == 0


def test_ledger_balances_and_counts_by_reason() -> None:
    rows = [
        online_row(),
        online_row(),
        online_row(event_id="x", ts="bad"),
        online_row(event_id="y", item_id="ZZ"),
    ]
    marked = ev.mark_duplicates(
        ev.unify_online_events(ibis.memtable(pd.DataFrame(rows).astype("string")), ibis.memtable(CATALOG))
    )
    counts = ev.count_outcomes(marked).to_pandas()
    ledger = build_ledger(counts, {"online": 4})
    src = ledger["sources"]["online"]
    assert (src["n_raw"], src["n_accepted"], src["n_merged_duplicate"], src["n_rejected"]) == (4, 1, 1, 2)
    assert src["rejected_by_reason"] == {ev.R_BAD_TIMESTAMP: 1, ev.R_UNKNOWN_ITEM: 1}
    assert ledger["balanced"]
    assert not build_ledger(counts, {"online": 5})["balanced"]  # a row lost on the way is caught
    empty = build_ledger(counts.iloc[0:0], {"online": 0})
    assert empty["balanced"] and empty["sources"]["online"]["n_accepted"] == 0


def test_resent_online_event_with_new_id_is_merged_but_pos_twins_are_not() -> None:
    base = online_row(event_type="add_to_cart", quantity="1", price="1.0")
    rows = [base, {**base, S.ON_EVENT_ID: "e1-resent"}, base]  # original, re-sent copy, exact copy
    out = run_online(rows)
    assert out[ev.IS_DUPLICATE].sum() == 2 and (~out[ev.IS_DUPLICATE]).sum() == 1
    twins = [pos_row(), pos_row(line_no="2")]  # the same item scanned twice in one basket
    assert not run_pos(twins)[ev.IS_DUPLICATE].any()


def test_prices_far_above_the_catalogue_are_rejected() -> None:
    ok = online_row(event_type="order", quantity="1", price="9.5", order_id="o1")  # catalogue A = 1.0
    too_high = online_row(event_id="e2", event_type="order", quantity="1", price="10.5", order_id="o2")
    cart = online_row(event_id="e3", event_type="add_to_cart", quantity="1", price="0")
    reasons = run_online([ok, too_high, cart]).set_index(S.EVENT_ID)[S.REJECT_REASON]
    assert pd.isna(reasons["online:e1"])
    assert reasons["online:e2"] == reasons["online:e3"] == ev.R_BAD_PRICE
    assert run_pos([pos_row(unit_price="25.0")])[S.REJECT_REASON].tolist() == [ev.R_BAD_PRICE]  # B = 2.0


def test_returns_need_an_earlier_purchase_by_the_same_customer() -> None:
    buy = pos_row()
    back = pos_row(transaction_id="T2", ts="2026-01-08 12:00:00", quantity="-2")
    stranger = pos_row(transaction_id="T3", ts="2026-01-08 13:00:00", quantity="-1", card_key="other")
    before = pos_row(transaction_id="T0", ts="2026-01-01 09:00:00", quantity="-1")  # before the purchase
    zero = pos_row(transaction_id="T4", quantity="0")
    raw = ibis.memtable(pd.DataFrame([buy, back, stranger, before, zero]).astype("string"))
    out = ev.verify_returns(ev.unify_pos_lines(raw, ibis.memtable(CATALOG), ibis.memtable(STORES)))
    got = out.to_pandas().set_index(S.EVENT_ID)
    assert got.loc["pos:T2:1", S.EVENT_TYPE] == S.EV_RETURN and pd.isna(got.loc["pos:T2:1", S.REJECT_REASON])
    assert got.loc["pos:T2:1", S.AMOUNT] == pytest.approx(-5.0)
    assert got.loc["pos:T3:1", S.REJECT_REASON] == ev.R_UNMATCHED_RETURN
    assert got.loc["pos:T0:1", S.REJECT_REASON] == ev.R_UNMATCHED_RETURN
    assert got.loc["pos:T4:1", S.REJECT_REASON] == ev.R_BAD_QUANTITY


def test_anonymous_returns_match_on_the_receipt_they_show() -> None:
    buy = pos_row(card_key=None)  # an anonymous basket T1 with item B
    kw = {"card_key": None, "ts": "2026-01-09 10:00:00", "quantity": "-1"}
    with_receipt = pos_row(transaction_id="R1", original_transaction_id="T1", **kw)
    wrong_item = pos_row(transaction_id="R2", original_transaction_id="T1", item_id="A", **kw)
    no_receipt = pos_row(transaction_id="R3", **kw)
    later = pos_row(transaction_id="T9", ts="2026-01-20 10:00:00", card_key=None)
    refunds_later = pos_row(transaction_id="R4", original_transaction_id="T9", **kw)
    raw = ibis.memtable(
        pd.DataFrame([buy, with_receipt, wrong_item, no_receipt, later, refunds_later]).astype("string")
    )
    out = ev.verify_returns(ev.unify_pos_lines(raw, ibis.memtable(CATALOG), ibis.memtable(STORES)))
    reason = out.to_pandas().set_index(S.EVENT_ID)[S.REJECT_REASON]
    assert pd.isna(reason["pos:R1:1"])
    assert reason[["pos:R2:1", "pos:R3:1", "pos:R4:1"]].tolist() == [ev.R_UNMATCHED_RETURN] * 3


def order_row(**kw: str | None) -> dict[str, str | None]:
    row: dict[str, str | None] = {
        S.ORD_ORDER_ID: "O1",
        S.ORD_TS: "2026-01-05 12:00:00",
        S.ORD_CHANNEL: "store",
        S.ORD_STORE_ID: "ST1",
        S.CARD_KEY: "ck",
        S.PHONE_KEY: None,
        S.ACCOUNT_KEY: None,
        S.EMAIL_KEY: None,
        S.ORD_TOTAL: "42.5",
    }
    row.update(kw)
    return row


def run_orders(rows: list[dict]) -> pd.DataFrame:
    raw = ibis.memtable(pd.DataFrame(rows).astype("string"))
    return ev.mark_duplicates(ev.unify_orders(raw, ibis.memtable(STORES))).to_pandas()


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (order_row(order_id=None), ev.R_MISSING_ID),
        (order_row(ts="soon"), ev.R_BAD_TIMESTAMP),
        (order_row(channel="fax"), ev.R_UNKNOWN_CHANNEL),
        (order_row(store_id="NOPE"), ev.R_UNKNOWN_STORE),
        (order_row(store_id=None), ev.R_UNKNOWN_STORE),
        (order_row(total="0"), ev.R_BAD_PRICE),
        (order_row(total="-5"), ev.R_BAD_PRICE),
        (order_row(total="a lot"), ev.R_BAD_PRICE),
    ],
)
def test_order_level_reject_reasons(row: dict, reason: str) -> None:
    assert run_orders([row])[S.REJECT_REASON].tolist() == [reason]


def test_order_level_rows_are_purchases_without_items() -> None:
    out = run_orders(
        [
            order_row(),
            order_row(
                order_id="O2", channel="App", store_id=None, card_key=None, account_key="ak", total="10"
            ),
            order_row(),  # the same order exported twice: merged
        ]
    ).sort_values([S.EVENT_ID, ev.IS_DUPLICATE])
    valid = out[out[S.REJECT_REASON].isna()]
    assert valid[S.EVENT_ID].tolist() == ["orders:O1", "orders:O1", "orders:O2"]
    assert valid[ev.IS_DUPLICATE].tolist() == [False, True, False]
    kept = valid[~valid[ev.IS_DUPLICATE]].set_index(S.EVENT_ID)
    assert kept[S.EVENT_TYPE].to_dict() == {"orders:O1": S.EV_PURCHASE, "orders:O2": S.EV_ORDER}
    assert kept[S.CHANNEL].to_dict() == {"orders:O1": "store", "orders:O2": "app"}
    assert kept.loc["orders:O1", S.STORE_ID] == "ST1" and pd.isna(kept.loc["orders:O2", S.STORE_ID])
    assert kept[S.AMOUNT].tolist() == [42.5, 10.0]
    assert kept[S.ITEM_ID].isna().all() and kept[S.QUANTITY].isna().all()
    assert kept.loc["orders:O2", S.ACCOUNT_KEY] == "ak"


@pytest.mark.parametrize(
    ("total", "zero_total", "reason"),
    [
        ("0", S.ZERO_TOTAL_KEEP, None),
        ("0.00", " Keep ", None),  # the column is read trimmed, in any case
        ("0", S.ZERO_TOTAL_REJECT, ev.R_BAD_PRICE),
        ("0", "", ev.R_BAD_PRICE),  # no rule written: the default
        ("0", "kept", ev.R_BAD_PRICE),  # only 'keep' keeps (the mapping checks its option's spelling)
        ("-5", S.ZERO_TOTAL_KEEP, ev.R_BAD_PRICE),  # a negative total is never kept
        ("a lot", S.ZERO_TOTAL_KEEP, ev.R_BAD_PRICE),
        ("", S.ZERO_TOTAL_KEEP, ev.R_BAD_PRICE),
        ("0", None, ev.R_BAD_PRICE),
    ],
)
def test_a_zero_total_is_kept_only_where_its_row_says_keep(
    total: str, zero_total: str | None, reason: str | None
) -> None:
    out = run_orders([order_row(total=total, zero_total=zero_total)])
    assert out[S.REJECT_REASON].fillna("accepted").tolist() == [reason or "accepted"]
    if reason is None:  # kept as a store purchase with spend 0
        assert out[[S.EVENT_TYPE, S.AMOUNT]].values.tolist() == [[S.EV_PURCHASE, 0.0]]


# Spellings that both engines parse into NaN or ±infinity ('1e999' overflows); each must be rejected, never
# summed into a spend (one NaN or infinity poisons every monetary aggregate of its customer).
NOT_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "1e999", "-1e999", " +INF "]
UNPRICED = pd.DataFrame({S.CAT_ITEM_ID: ["C"], S.CAT_CATEGORY: ["c3"], S.CAT_PRICE: [""]})


def not_finite_rows(spelling: str) -> dict[str, list[dict]]:
    """One row per amount column, each with ``spelling`` as its amount, on an item with no catalogue price
    (so no ratio check can catch it)."""
    online = {"item_id": "C", "quantity": "1", "price": spelling}
    return {
        "orders": [order_row(total=spelling), order_row(order_id="O2", total=spelling, zero_total="keep")],
        "pos": [pos_row(item_id="C", unit_price=spelling)],
        "online": [
            online_row(event_id="o", event_type="order", order_id="o1", **online),
            online_row(event_id="c", event_type="add_to_cart", **online),
            online_row(event_id="r", event_type="remove_from_cart", **online),
        ],
    }


def unify_all(rows: dict[str, list[dict]], con: ibis.BaseBackend | None = None) -> ir.Table:
    """Every source's rows unified and duplicate-marked, on ``con`` (an in-memory DuckDB when None)."""

    def table(frame: pd.DataFrame) -> ir.Table:
        return ibis.memtable(frame) if con is None else engine.temp_table(con, frame)

    catalog, stores = table(pd.concat([CATALOG, UNPRICED])), table(STORES)
    parts = [
        ev.unify_orders(table(pd.DataFrame(rows["orders"]).astype("string")), stores),
        ev.unify_pos_lines(table(pd.DataFrame(rows["pos"]).astype("string")), catalog, stores),
        ev.unify_online_events(table(pd.DataFrame(rows["online"]).astype("string")), catalog),
    ]
    return ev.mark_duplicates(ibis.union(*parts))


@pytest.mark.parametrize("spelling", NOT_FINITE)
def test_amounts_that_are_not_finite_are_bad_price(spelling: str) -> None:
    out = unify_all(not_finite_rows(spelling)).to_pandas().sort_values([S.SOURCE, S.EVENT_ID])
    assert out[S.REJECT_REASON].tolist() == [ev.R_BAD_PRICE] * 6, out[[S.EVENT_ID, S.REJECT_REASON]]


def every_not_finite_row_and_fine_ones() -> dict[str, list[dict]]:
    """Every spelling in every amount column (ids of their own, so nothing merges), plus one row per source
    whose amount is fine, the order's total large but finite (ids ``fine``)."""
    rows: dict[str, list[dict]] = {"orders": [], "pos": [], "online": []}
    key = {"orders": S.ORD_ORDER_ID, "pos": S.POS_TRANSACTION_ID, "online": S.ON_EVENT_ID}
    for i, spelling in enumerate(NOT_FINITE):
        for source, source_rows in not_finite_rows(spelling).items():
            for j, row in enumerate(source_rows):
                rows[source].append({**row, key[source]: f"{row[key[source]]}-{i}-{j}"})
    rows["orders"].append(order_row(order_id="fine", total="1e308"))
    rows["pos"].append(pos_row(transaction_id="fine", item_id="C", unit_price="3.25"))
    rows["online"].append(
        online_row(event_id="fine", event_type="order", order_id="f", item_id="C", quantity="2", price="1.5")
    )
    return rows


def assert_only_fine_rows_pass(rows: dict[str, list[dict]], marked: ir.Table) -> None:
    """Every not-finite amount is ``bad_price``, the ledger balances, the fine rows keep their amounts."""
    ledger = build_ledger(ev.count_outcomes(marked).to_pandas(), {k: len(v) for k, v in rows.items()})
    assert ledger["balanced"]
    for source, n_bad in (("orders", 2), ("pos", 1), ("online", 3)):
        src = ledger["sources"][source]
        assert src["rejected_by_reason"] == {ev.R_BAD_PRICE: n_bad * len(NOT_FINITE)}, source
        assert (src["n_accepted"], src["n_merged_duplicate"]) == (1, 0), source
    kept = ev.accepted_events(marked).to_pandas().set_index(S.SOURCE)[S.AMOUNT]
    assert kept.to_dict() == {"orders": 1e308, "pos": 6.5, "online": 3.0}


def test_not_finite_amounts_keep_the_ledger_balanced_and_normal_amounts_pass() -> None:
    rows = every_not_finite_row_and_fine_ones()
    assert_only_fine_rows_pass(rows, unify_all(rows))

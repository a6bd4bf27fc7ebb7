"""Prep on awkward inputs: a missing column stops with the column named, empty sources work (rows that
cannot be read are rejects: test_raw_screening.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_prep import schema as S
from data_prep.generate import RetailerSpec, generate_retailer
from data_prep.pipeline import RawInputError, run_prep


@pytest.fixture(scope="module")
def raw_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate_retailer(root, RetailerSpec(n_customers=120, seed=3, n_days=120))
    return root


def copy_of(template: Path, tmp_path: Path) -> Path:
    shutil.copytree(template, tmp_path / "d")
    return tmp_path / "d"


def test_missing_column_is_named(raw_template: Path, tmp_path: Path) -> None:
    d = copy_of(raw_template, tmp_path)
    crm = d / S.RAW_DIR / S.RAW_CRM_DIR / S.RAW_CRM_FILE
    text = crm.read_text().replace(S.CRM_PHONE, "mobile", 1)
    crm.write_text(text)
    with pytest.raises(RawInputError, match=r"missing column\(s\) \['phone'\]"):
        run_prep(d, d)


def test_empty_identifier_columns_and_empty_sources(raw_template: Path, tmp_path: Path) -> None:
    """A retailer with no store data and no CRM members still preps (identifier columns all empty)."""
    d = copy_of(raw_template, tmp_path)
    for sub, name in ((S.RAW_POS_DIR, S.RAW_POS_FILE), (S.RAW_CRM_DIR, S.RAW_CRM_FILE)):
        path = d / S.RAW_DIR / sub / name
        path.write_text(path.read_text().splitlines()[0] + "\n")  # header only
    result = run_prep(d, d)
    assert result.ledger["sources"]["pos"]["n_raw"] == 0 and result.ledger["balanced"]
    ledger = json.loads((d / S.EVENTS_DIR / S.LEDGER_FILE).read_text())
    assert ledger["sources"]["online"]["n_accepted"] > 0


def test_order_level_source_feeds_intent_rfm_and_churn_not_the_recommender(
    raw_template: Path, tmp_path: Path
) -> None:
    """A retailer whose stores export receipt totals only (no item lines): members' orders become item-less
    purchases of their customers, counted by intent, RFM and churn; the item vocabulary never sees them."""
    import pandas as pd

    d = copy_of(raw_template, tmp_path)
    pos = d / S.RAW_DIR / S.RAW_POS_DIR / S.RAW_POS_FILE
    pos.write_text(pos.read_text().splitlines()[0] + "\n")  # no item-level store data at all
    members = pd.read_csv(d / S.RAW_DIR / S.RAW_CRM_DIR / S.RAW_CRM_FILE, dtype=str).dropna(
        subset=["loyalty_card"]
    )
    cards = members[S.CRM_LOYALTY_CARD].drop_duplicates().head(10).tolist()
    store = pd.read_csv(d / S.RAW_DIR / S.RAW_CATALOG_DIR / S.RAW_STORES_FILE, dtype=str)[S.CAT_STORE_ID][0]
    days = pd.date_range("2026-01-20 10:00", periods=8, freq="11D")
    rows = [
        {S.ORD_ORDER_ID: f"R{i}-{j}", S.ORD_TS: f"{day:%Y-%m-%d %H:%M:%S}", S.ORD_CHANNEL: "store",
         S.ORD_STORE_ID: store, S.ORD_LOYALTY_CARD: card, S.ORD_TOTAL: "25.5"}
        for i, card in enumerate(cards) for j, day in enumerate(days)
    ]  # fmt: skip
    rows.append({S.ORD_ORDER_ID: "BAD", S.ORD_TS: "2026-02-01 10:00:00", S.ORD_CHANNEL: "store",
                 S.ORD_STORE_ID: store, S.ORD_TOTAL: "-3"})  # fmt: skip
    orders = d / S.RAW_DIR / S.RAW_ORDERS_DIR / S.RAW_ORDERS_FILE
    orders.parent.mkdir(parents=True)
    pd.DataFrame(rows, columns=list(S.RAW_ORDER_COLUMNS)).to_csv(orders, index=False)

    result = run_prep(d, d)
    ledger = result.ledger["sources"]["orders"]
    assert ledger["n_raw"] == len(rows) and ledger["n_accepted"] == len(rows) - 1 and ledger["balanced"]
    assert ledger["rejected_by_reason"] == {"bad_price": 1}
    events = pd.read_parquet(d / S.CUSTOMERS_DIR / S.EVENTS_FILE)
    receipts = events[events[S.SOURCE] == "orders"]
    assert receipts[S.ITEM_ID].isna().all() and receipts[S.CUSTOMER_ID].notna().all()
    buyers = set(receipts[S.CUSTOMER_ID])
    assert len(buyers) == len(cards)
    rfm = pd.read_parquet(d / S.FEATURES_DIR / S.RFM_FILE).set_index(S.CUSTOMER_ID)
    assert buyers <= set(rfm.index) and (rfm.loc[list(buyers), S.RFM_MONETARY] >= 25.5).all()
    intent = pd.read_parquet(d / S.FEATURES_DIR / S.split_file("intent", S.SPLIT_TEST))
    scored = intent[intent[S.CUSTOMER_ID].isin(buyers)]
    assert len(scored) and (scored[S.F_N_PURCHASES_ALL] > 0).all()
    churn = pd.read_parquet(d / S.FEATURES_DIR / S.CHURN_FILE)
    assert buyers & set(churn[S.CUSTOMER_ID])
    vocabulary = pd.read_parquet(d / S.FEATURES_DIR / S.ITEMS_FILE)
    assert vocabulary[S.ITEM_ID].notna().all()

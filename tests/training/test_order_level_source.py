"""A retailer that exports only order-level records (receipt totals, no item ids) still gets intent and
churn scores: prep, training, export and scoring all work without a single item id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from data_prep.generate import RetailerSpec, generate_retailer
from data_prep.pipeline import run_prep
from serving.artifact import load_bundle
from serving.batch import CHURN_RISK, INTENT_PROBABILITY, score_snapshot
from training.config import load_config
from training.export import export_bundle
from training.train import train


@pytest.fixture(scope="module")
def orders_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("orders_only")
    generate_retailer(d, RetailerSpec(n_customers=400, seed=9, n_days=240))
    raw = d / S.RAW_DIR
    (raw / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE).write_text("")  # no online events
    pos = raw / S.RAW_POS_DIR / S.RAW_POS_FILE
    pos.write_text(pos.read_text().splitlines()[0] + "\n")  # no item lines from the stores
    members = pd.read_csv(raw / S.RAW_CRM_DIR / S.RAW_CRM_FILE, dtype=str).dropna(subset=[S.CRM_LOYALTY_CARD])
    cards = members[S.CRM_LOYALTY_CARD].drop_duplicates().tolist()
    store = pd.read_csv(raw / S.RAW_CATALOG_DIR / S.RAW_STORES_FILE, dtype=str)[S.CAT_STORE_ID][0]
    rng = np.random.default_rng(0)
    rows = []
    for i, card in enumerate(cards):  # each member shops at their own rhythm, some stop for good
        every, stop = rng.uniform(4, 40), rng.uniform(10, 400)
        for j, day in enumerate(np.arange(rng.uniform(0, 20), min(stop, 239), every)):
            ts = pd.Timestamp("2026-01-05") + pd.Timedelta(days=float(day))
            rows.append({S.ORD_ORDER_ID: f"R{i}-{j}", S.ORD_TS: f"{ts:%Y-%m-%d %H:%M:%S}", S.ORD_CHANNEL: "store",
                         S.ORD_STORE_ID: store, S.ORD_LOYALTY_CARD: card, S.ORD_TOTAL: f"{rng.uniform(5, 80):.2f}"})  # fmt: skip
    orders = raw / S.RAW_ORDERS_DIR / S.RAW_ORDERS_FILE
    orders.parent.mkdir(parents=True)
    pd.DataFrame(rows, columns=list(S.RAW_ORDER_COLUMNS)).to_csv(orders, index=False)
    run_prep(d, d)
    return d


def test_intent_and_churn_are_trained_exported_and_scored_without_item_ids(
    orders_only: Path, tmp_path: Path
) -> None:
    features = orders_only / S.FEATURES_DIR
    assert pq.read_metadata(features / S.ITEMS_FILE).num_rows == 0
    base = [f"data.features_dir={features}", "train.max_epochs=2", "model.d_model=16", "model.hidden=8"]
    intent = train(load_config("intent", None, base), tmp_path / "runs", progress_bar=False)
    churn = train(load_config("intent", None, [*base, "target=churn"]), tmp_path / "runs", progress_bar=False)
    for m in (intent.metrics, churn.metrics):
        assert 0.5 < m["baselines"]["gradient_boosting"]["test"]["roc_auc"] <= 1.0
        assert 0.0 <= m["model"]["test"]["roc_auc"] <= 1.0
    bundle = load_bundle(export_bundle([intent.run_dir, churn.run_dir], tmp_path / "artifacts", version="o"))
    scores = pq.read_table(
        score_snapshot(bundle, features / S.SNAPSHOT_FILE, tmp_path / "scores")
    ).to_pandas()
    assert len(scores) > 0
    assert scores[INTENT_PROBABILITY].between(0, 1).all() and scores[CHURN_RISK].between(0, 1).all()


def test_the_recommender_says_why_it_cannot_train_on_it(orders_only: Path, tmp_path: Path) -> None:
    cfg = load_config("recommender", None, [f"data.features_dir={orders_only / S.FEATURES_DIR}"])
    with pytest.raises(ValueError, match="no item-level events"):
        train(cfg, tmp_path / "runs", progress_bar=False)


def test_prep_warns_that_there_are_no_items_and_counts_the_orders(orders_only: Path) -> None:
    from data_prep.report import REPORT_FILE, data_warnings

    (warning,) = data_warnings(orders_only)
    assert "no item events" in warning
    assert f"**Warning:** {warning}" in (orders_only / REPORT_FILE).read_text()
    snap = pd.read_parquet(orders_only / S.FEATURES_DIR / S.SNAPSHOT_FILE)
    buyers = snap[snap[S.F_N_PURCHASES_ALL] > 0]
    assert len(buyers) > 0 and (buyers[S.F_N_STORE_ALL] == buyers[S.F_N_PURCHASES_ALL]).all()

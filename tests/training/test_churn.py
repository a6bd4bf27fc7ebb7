"""Churn risk end to end on the default-length retailer (240 days: three 60-day label windows fit): prep
writes leak-free churn examples, the model trains beside its baselines, and the bundle serves churn risk
and RFM segment. A retailer too short for churn says so."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

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

TINY = ["train.max_epochs=1", "model.d_model=16", "model.hidden=8"]


def test_churn_examples_are_buyers_labelled_after_their_cutoff(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    plan = json.loads((tiny_pipeline.features / S.MANIFEST_FILE).read_text())["churn_splits"]
    assert plan["horizon_days"] == S.CHURN_HORIZON_DAYS
    ts = datetime.fromisoformat
    cutoffs = {
        "train": [ts(c) for c in plan["train_cutoffs"]],
        "val": [ts(plan["val"])],
        "test": [ts(plan["test"])],
    }
    horizon = timedelta(days=S.CHURN_HORIZON_DAYS)
    # each split's label windows end before the next split's cutoff, the last one with the data
    assert (
        max(cutoffs["train"]) + horizon <= cutoffs["val"][0]
        and cutoffs["val"][0] + horizon <= cutoffs["test"][0]
    )
    assert cutoffs["test"][0] + horizon == ts(plan["data_end"])
    for split, cuts in cutoffs.items():
        ex = pd.read_parquet(tiny_pipeline.features / S.split_file(S.CHURN_PREFIX, split))
        assert 0 < ex[S.LABEL].sum() < len(ex), split  # both classes at every split
        assert set(ex[S.CUTOFF]) == {pd.Timestamp(c) for c in cuts}


def test_a_short_retailer_gets_no_churn_examples_and_says_why(tmp_path: Path) -> None:
    generate_retailer(tmp_path, RetailerSpec(n_customers=80, seed=3, n_days=120))
    features = run_prep(tmp_path, tmp_path).features_dir
    extra = json.loads((features / S.MANIFEST_FILE).read_text())
    assert "too short" in extra["churn_splits"]["skipped"]
    cfg = load_config("intent", None, [f"data.features_dir={features}", "target=churn", *TINY])
    with pytest.raises(FileNotFoundError, match="churn examples need"):
        train(cfg, tmp_path / "runs-churn", progress_bar=False)


def test_the_bundle_serves_churn_risk_and_segment_beside_intent(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = [f"data.features_dir={tiny_pipeline.features}", *TINY]
    churn = train(load_config("intent", None, [*base, "target=churn"]), tmp_path / "runs", progress_bar=False)
    m = churn.metrics
    assert m["protocol"].startswith("churn") and m["target"] == "churn"
    assert {"logistic_regression", "gradient_boosting"} <= set(m["baselines"])
    intent = train(load_config("intent", None, base), tmp_path / "runs", progress_bar=False)
    bundle_dir = export_bundle([churn.run_dir, intent.run_dir], tmp_path / "artifacts", version="t")
    assert (bundle_dir / "churn" / "model.onnx").is_file()
    assert "## churn" in (bundle_dir / "model_card.md").read_text()
    bundle = load_bundle(bundle_dir)
    assert bundle.churn is not None and bundle.intent is not None
    out = score_snapshot(bundle, tiny_pipeline.features / S.SNAPSHOT_FILE, tmp_path / "scores")
    scores = pq.read_table(out).to_pandas()
    assert scores[CHURN_RISK].between(0, 1).all() and scores[INTENT_PROBABILITY].between(0, 1).all()
    assert not scores[CHURN_RISK].equals(scores[INTENT_PROBABILITY])
    snap = pd.read_parquet(
        tiny_pipeline.features / S.SNAPSHOT_FILE, columns=[S.CUSTOMER_ID, S.SEGMENT, S.CONSENT_MARKETING]
    )
    merged = scores.merge(snap, on=S.CUSTOMER_ID, suffixes=("", "_snap"))
    assert (
        len(merged) == len(scores)
        and (merged[S.SEGMENT].fillna("") == merged[f"{S.SEGMENT}_snap"].fillna("")).all()
    )
    assert merged[S.CONSENT_MARKETING].fillna(False).all()  # campaign output: marketing consent only

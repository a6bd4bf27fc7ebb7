"""Intent targets: I1 (customer purchase) and I2 (session at add-to-cart), F1 at the validation threshold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from training.config import load_config
from training.export import export_bundle
from training.metrics import f1_threshold, with_f1
from training.train import train

TINY = ["train.max_epochs=1", "model.d_model=16", "model.hidden=8"]


def test_session_intent_trains_on_i2_examples_beside_both_baselines(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(
        "intent", None, [f"data.features_dir={tiny_pipeline.features}", "target=session", *TINY]
    )
    result = train(cfg, tmp_path / "runs", progress_bar=False)
    m = result.metrics
    assert m["protocol"].startswith("I2") and m["target"] == "session"
    n_test = pq.read_table(tiny_pipeline.features / S.split_file("session", "test")).num_rows
    assert m["model"]["test"]["n_examples"] == n_test
    for res in (m["model"], *m["baselines"].values()):
        assert res["test"]["threshold"] == res["val"]["threshold"]  # chosen on validation, applied to test
        assert 0.0 <= res["test"]["f1"] <= 1.0
    assert set(m["baselines"]) == {"logistic_regression", "gradient_boosting"}
    doc = json.loads((result.run_dir / "model.json").read_text())
    assert doc["feature_names"] == list(S.SESSION_FEATURES)
    with pytest.raises(ValueError, match="'session' intent model"):
        export_bundle([result.run_dir], tmp_path / "artifacts")


def test_a_split_without_both_classes_is_a_clear_error(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    features = tmp_path / "features"
    shutil.copytree(tiny_pipeline.features, features)
    path = features / S.split_file("session", "train")
    pq.write_table(pq.read_table(path).slice(0, 0), path)  # e.g. a grocery source with no online sessions
    cfg = load_config("intent", None, [f"data.features_dir={features}", "target=session", *TINY])
    with pytest.raises(ValueError, match="0 examples and 0 positives"):
        train(cfg, tmp_path / "runs", progress_bar=False)


def test_f1_threshold_comes_from_validation() -> None:
    y_val, p_val = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.9])
    assert f1_threshold(y_val, p_val) == pytest.approx(0.3)
    got = with_f1((y_val, p_val), (np.array([1, 0, 1]), np.array([0.35, 0.31, 0.1])))
    assert got["val"]["f1"] == 1.0
    assert got["test"]["threshold"] == pytest.approx(0.3)
    assert got["test"]["f1"] == pytest.approx(2 * 0.5 * 0.5 / 1.0)  # one hit, one false alarm, one miss

"""Export: ONNX Runtime matches torch (batch 1 and length 1 included); a mismatch fails the export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from data_prep import schema as S
from serving.artifact import BundleError, load_bundle
from training import export as ex


@pytest.mark.parametrize("task", ["recommender", "intent"])
def test_onnx_parity_on_random_batches(tiny_pipeline, tmp_path: Path, task: str) -> None:  # type: ignore[no-untyped-def]
    run = tiny_pipeline.rec_run if task == "recommender" else tiny_pipeline.intent_run
    e = ex.rebuild(run)
    path = tmp_path / "m.onnx"
    ex.to_onnx(e, path)
    report = ex.check_parity(e, path, seed=123)
    assert report["max_abs_diff"] <= ex.PARITY_ATOL


def test_parity_failure_fails_the_export(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Failure injection: perturb ONNX Runtime's output; the export must raise and leave no bundle."""
    real_run = ex.ort.InferenceSession.run

    def skewed(self, names, feeds):  # type: ignore[no-untyped-def]
        out = real_run(self, names, feeds)
        return [out[0] + 1e-2, *out[1:]]

    with mock.patch.object(ex.ort.InferenceSession, "run", skewed), pytest.raises(ex.ExportParityError):
        ex.export_bundle([tiny_pipeline.rec_run], tmp_path, version="bad")
    assert not (tmp_path / "o2o" / "bad").exists()


def test_bundle_layout_and_model_card(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    b = tiny_pipeline.bundle
    for rel in [
        "bundle.json",
        "model_card.md",
        "checksums.json",
        "recommender/model.onnx",
        "intent/model.onnx",
        "recommender/config.json",
        "recommender/items.parquet",
        f"recommender/{S.ITEM_EMBEDDINGS_FILE}",
    ]:
        assert (b / rel).is_file(), rel
    card = (b / "model_card.md").read_text()
    assert "most_popular" in card and "logistic_regression" in card and "Parity" in card
    meta = json.loads((b / "bundle.json").read_text())
    assert set(meta["models"]) == {"recommender", "intent"}


def test_tampered_bundle_is_refused(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "b"
    shutil.copytree(tiny_pipeline.bundle, copy)
    load_bundle(copy)
    onnx = copy / "intent" / "model.onnx"
    original = onnx.read_bytes()
    onnx.write_bytes(original[:-10])
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(copy)
    onnx.write_bytes(original)
    (copy / "recommender" / "items.parquet").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(copy)


def test_trained_metrics_are_recorded_beside_baselines(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    rec = json.loads((tiny_pipeline.rec_run / "metrics.json").read_text())
    assert {"val", "test"} <= set(rec["model"]) and "most_popular" in rec["baselines"]
    assert 0.0 <= rec["model"]["test"]["ndcg@10"] <= rec["model"]["test"]["hr@10"] <= 1.0
    intent = json.loads((tiny_pipeline.intent_run / "metrics.json").read_text())
    assert 0.5 < intent["model"]["test"]["roc_auc"] <= 1.0
    for name in ("logistic_regression", "gradient_boosting"):
        assert np.isfinite(intent["baselines"][name]["test"]["log_loss"])
    # the served (calibrated) figures, and how the map was chosen, beside the raw network's
    cal = intent["calibration"]
    assert cal["method"] in {"none", "temperature", "isotonic"} and cal["reason"]
    assert set(cal["uncalibrated"]) == {"val", "test"}
    # a monotone map keeps the ranking: ROC-AUC moves only by ties that clipping or isotonic steps create
    assert intent["model"]["test"]["roc_auc"] == pytest.approx(
        cal["uncalibrated"]["test"]["roc_auc"], abs=0.05
    )


def test_the_bundle_carries_the_calibration_it_serves(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    bundle = load_bundle(tiny_pipeline.bundle)
    assert bundle.intent is not None
    metrics = json.loads((tiny_pipeline.intent_run / "metrics.json").read_text())
    assert bundle.intent.calibration.method == metrics["calibration"]["method"]
    assert "Probability calibration" in (tiny_pipeline.bundle / "model_card.md").read_text()


def test_the_bundle_carries_the_recommender_item_table(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    """Row i of ``item_embeddings.npy`` is the trained embedding of item index i, checksummed like the rest."""
    rel = f"recommender/{S.ITEM_EMBEDDINGS_FILE}"
    assert rel in json.loads((tiny_pipeline.bundle / "checksums.json").read_text())
    table = np.load(tiny_pipeline.bundle / rel)
    weights = ex.rebuild(tiny_pipeline.rec_run).item_embeddings
    assert table.dtype == np.float32 and weights is not None
    np.testing.assert_array_equal(table, weights)
    rec = load_bundle(tiny_pipeline.bundle).recommender
    assert rec is not None and rec.item_embeddings is not None
    assert rec.item_embeddings.shape == (rec.vocab.n_items + 1, table.shape[1])
    assert not (tiny_pipeline.bundle / "intent" / S.ITEM_EMBEDDINGS_FILE).exists()


def test_a_run_whose_model_json_is_not_a_spec_is_refused_before_any_work(
    tiny_pipeline, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A run from before the typed contract (its model.json has no spec_version) is retrained, not guessed at."""
    run = tmp_path / "old-run"
    shutil.copytree(tiny_pipeline.intent_run, run)
    doc = json.loads((run / "model.json").read_text())
    del doc["spec_version"]
    (run / "model.json").write_text(json.dumps(doc))
    with pytest.raises(
        ValueError, match=r"model\.json: not a model spec this code reads \(no spec_version.*retrain"
    ):
        ex.export_bundle([run], tmp_path / "out", version="old")
    assert not (tmp_path / "out").exists()

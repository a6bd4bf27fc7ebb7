"""`o2o export --int8`: the recommender is served as an int8 graph and what that costs in NDCG@10 is measured
through the serving scorer and written into the bundle and its model card."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from data_prep import schema as S
from experiments.quantize import quantize_bundle
from serving.artifact import load_bundle
from training.export import export_bundle


def test_int8_bundle_records_its_ndcg_and_still_loads(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle = export_bundle([tiny_pipeline.rec_run, tiny_pipeline.intent_run], tmp_path, version="q1")
    record = quantize_bundle(bundle)

    run = json.loads((tiny_pipeline.rec_run / "metrics.json").read_text())["model"]
    for split in (S.SPLIT_VAL, S.SPLIT_TEST):
        f = record["served_by_scorer"][split]
        # the fp32 graph through the scorer reproduces the run's own figure: the measurement is the protocol's
        assert f["ndcg@10_fp32"] == pytest.approx(run[split]["ndcg@10"], abs=1e-9)
        assert f["ndcg@10_change"] == pytest.approx(f["ndcg@10_int8"] - f["ndcg@10_fp32"])
        assert 0.0 <= f["ndcg@10_int8"] <= 1.0
    ops = {n.op_type for n in onnx.load(bundle / "recommender" / S.ONNX_FILE).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops  # the served graph is the int8 one
    loaded = load_bundle(bundle)  # checksums rewritten: the bundle verifies and scores
    assert loaded.recommender is not None
    assert json.loads((bundle / "recommender" / S.MODEL_CONFIG_FILE).read_text())["quantization"] == record
    assert "int8 quantisation" in (bundle / S.MODEL_CARD_FILE).read_text()

"""The repeat-aware head: trains, exports to ONNX with parity, and is refused where repeats are filtered."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from training import export as ex
from training.config import load_config
from training.train import train


def test_repeat_head_needs_repeats_allowed() -> None:
    with pytest.raises(ValidationError, match=r"eval\.exclude_seen"):
        load_config("recommender", None, ["model.repeat_head=true", "eval.exclude_seen=true"])


def test_repeat_head_trains_and_exports_with_parity(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    overrides = [
        f"data.features_dir={tiny_pipeline.features}",
        "train.max_epochs=1",
        "model.d_model=16",
        "model.repeat_head=true",
        "eval.exclude_seen=false",
        "eval.baselines=false",
    ]
    run = train(load_config("recommender", None, overrides), tmp_path / "runs", progress_bar=False)
    assert run.metrics["model"]["test"]["ndcg@10"] >= 0.0
    e = ex.rebuild(run.run_dir)
    assert e.module.model.cfg.repeat_head is True  # type: ignore[union-attr]
    path = tmp_path / "m.onnx"
    ex.to_onnx(e, path)
    assert ex.check_parity(e, path, seed=5)["max_abs_diff"] <= ex.PARITY_ATOL

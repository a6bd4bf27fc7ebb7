"""The repeat-aware head: trains, exports to ONNX with parity, and is refused where repeats are filtered."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import onnx
import pytest
import torch
from pydantic import ValidationError

from models.sasrec import REPEAT_AGE_INIT, SASRec
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
    e = ex.rebuild(run.run_dir)
    model = cast(SASRec, e.module.model)
    assert model.cfg.repeat_head is True
    assert not torch.allclose(model.repeat_age, torch.full_like(model.repeat_age, REPEAT_AGE_INIT))  # learned
    path = tmp_path / "m.onnx"
    ex.to_onnx(e, path)
    ex.check_parity(e, path, seed=5)  # raises on a mismatch
    adds = [
        n
        for n in onnx.load(str(path)).graph.node
        if n.op_type == "ScatterElements"
        and any(a.name == "reduction" and a.s == b"add" for a in n.attribute)
    ]
    assert adds  # the bonus is inside the graph, not left to the caller

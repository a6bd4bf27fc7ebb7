"""Data-parallel training is configuration: ``train.strategy=ddp train.devices=2`` runs two CPU processes
(gloo) that shard the training data, agree on every validation figure, and leave one run folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.config import load_config


def _train(tiny_pipeline, runs: Path, task: str, *extra: str) -> dict:
    o2o = str(Path(sys.executable).with_name("o2o"))
    cmd = [o2o, "train", task, "--features", str(tiny_pipeline.features), "--runs-dir", str(runs)]
    for o in ("train.max_epochs=2", "model.d_model=16", "train.threads=1", *extra):
        cmd += ["--set", o]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs_made = [p for p in runs.iterdir() if p.is_dir()]
    assert len(runs_made) == 1, runs_made  # the second process wrote no run of its own
    return json.loads((runs_made[0] / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("task", ["intent", "recommender"])
def test_ddp_on_two_cpu_processes_synchronises_metrics(tmp_path: Path, tiny_pipeline, task: str) -> None:
    ddp = _train(tiny_pipeline, tmp_path / "ddp", task, "train.strategy=ddp", "train.devices=2")
    one = _train(tiny_pipeline, tmp_path / "one", task)

    d = ddp["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo"
    assert d["val_by_rank"][0] == d["val_by_rank"][1]  # both ranks saw the same weights and the same figure
    # ... and it is the figure the run reports (intent: the network's own, before selection and calibration)
    reported = ddp["network"]["val"]["roc_auc"] if task == "intent" else ddp["model"]["val"]["ndcg@10"]
    assert d["val_by_rank"][0] == pytest.approx(reported)
    # the training data was split between the two processes: half the optimiser steps each
    assert d["train_batches_by_rank"][0] == d["train_batches_by_rank"][1]
    assert ddp["global_step"] < one["global_step"] <= 2 * ddp["global_step"]
    assert one["distributed"] is None


def test_several_processes_need_ddp() -> None:
    with pytest.raises(ValueError, match="strategy=ddp"):
        load_config("intent", None, ["train.devices=2"])

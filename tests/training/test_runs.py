"""Runs researchers can trust: provenance in every run folder, same seed → same metrics, resume after
kill -9 with the same number of steps, and ``o2o runs compare`` / ``o2o runs list``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from typer.testing import CliRunner

from experiments.cli import app
from experiments.runs import compare_runs, list_runs
from training.config import RunConfig, dump_config, load_config
from training.provenance import PROJECT_ROOT, PROVENANCE_FILE, git_state, package_versions
from training.resume import LOGS_DIR, METRICS_LOG, last_checkpoint
from training.train import CONFIG_FILE, METRICS_FILE, TENSORBOARD_DIR, train

runner = CliRunner()


def _config(features: Path, task: str, *extra: str) -> RunConfig:
    overrides = [f"data.features_dir={features}", "train.max_epochs=2", "model.d_model=16", *extra]
    if task == "intent":
        overrides.append("model.hidden=8")
    return load_config(task, None, overrides)


def test_every_run_records_its_provenance(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    run = tiny_pipeline.intent_run
    doc = json.loads((run / PROVENANCE_FILE).read_text())
    assert doc["seed"] == yaml.safe_load((run / CONFIG_FILE).read_text())["train"]["seed"] == 0
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert doc["git"]["commit"] == (head.stdout.strip() if (PROJECT_ROOT / ".git").exists() else None)
    assert doc["packages"]["torch"] == torch.__version__
    assert doc["packages"]["lightning"] == L.__version__
    assert {"python", "numpy", "pyarrow", "onnxruntime"} <= doc["packages"].keys()
    assert doc["host"]["cpu_count"] == os.cpu_count()
    assert json.loads((run / METRICS_FILE).read_text())["provenance"] == doc
    # Lightning's logs: the CSV where reports read it, and TensorBoard event files
    assert (run / LOGS_DIR / METRICS_LOG).is_file()
    assert any((run / TENSORBOARD_DIR).glob("events.out.tfevents.*"))


def test_provenance_fails_soft(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not a git checkout
    assert package_versions(("numpy", "no-such-package-o2o")).keys() == {"python", "numpy"}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["recommender", "intent"])
def test_same_config_and_seed_give_the_same_metrics(tiny_pipeline, tmp_path: Path, task: str) -> None:  # type: ignore[no-untyped-def]
    cfg = _config(tiny_pipeline.features, task)
    runs = []
    for c in (cfg, cfg, _config(tiny_pipeline.features, task, "train.seed=1")):
        result = train(c, tmp_path, progress_bar=False, evaluate_test=False)
        with (result.run_dir / LOGS_DIR / METRICS_LOG).open() as f:
            losses = [r["train_loss"] for r in csv.DictReader(f) if r.get("train_loss")]
        runs.append((result.metrics["model"]["val"], losses))  # the figures and the training trace
    assert runs[0] == runs[1]  # exactly: deterministic mode on CPU
    # and the seed matters (the check above could not pass by accident; on a tiny world the validation
    # figures alone can tie at 0, the training losses do not)
    assert runs[0] != runs[2]


# Stands in for a long training: a few steps into epoch 2 (epoch 1 is checkpointed when it ends) it says
# so and waits to be killed.
KILLED_TRAINING = """
import sys, time
from pathlib import Path
import lightning as L
from training.config import load_config
from training.train import train

class StallInEpoch2(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == 2 and batch_idx == 2:
            Path(sys.argv[2]).touch()
            time.sleep(600)

runs_dir, marker, config = map(Path, sys.argv[1:])
train(load_config("intent", config), runs_dir, progress_bar=False, callbacks=[StallInEpoch2()])
"""


def _start_and_kill(config: Path, runs_dir: Path) -> Path:
    """Run training in a real process, SIGKILL it in epoch 2 (epoch 1 checkpointed); its run folder."""
    marker = runs_dir.parent / "in-epoch-2"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_TRAINING, str(runs_dir), str(marker), str(config)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before epoch 2: {proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("training did not reach epoch 2 in 300 s")
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (run_dir,) = runs_dir.iterdir()
    return run_dir


def _logged_epochs(run_dir: Path, column: str) -> list[int]:
    with (run_dir / LOGS_DIR / METRICS_LOG).open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r.get(column)]


@pytest.mark.slow
def test_training_resumes_after_kill_and_finishes_with_the_same_steps(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    max_epochs = 4
    cfg = _config(tiny_pipeline.features, "intent", f"train.max_epochs={max_epochs}", "train.patience=100")
    config = tmp_path / "intent.yaml"
    config.write_text(dump_config(cfg))
    run_dir = _start_and_kill(config, tmp_path / "runs")
    assert not (run_dir / METRICS_FILE).exists()
    assert torch.load(last_checkpoint(run_dir), weights_only=False)["epoch"] == 1

    # a resumed run is the run that was started: another config is refused, the folder left as it was
    r = runner.invoke(app, ["train", "intent", "--resume", str(run_dir), "--set", "train.lr=0.5"])
    assert r.exit_code == 2 and "train.lr" in r.output and "Traceback" not in r.output, r.output
    r = runner.invoke(app, ["train", "intent", "--resume", str(run_dir)])
    assert r.exit_code == 0, r.output
    resumed = json.loads((run_dir / METRICS_FILE).read_text())
    reference = train(cfg, tmp_path / "reference", progress_bar=False).metrics

    assert resumed["epochs_trained"] == reference["epochs_trained"] == max_epochs
    assert resumed["global_step"] == reference["global_step"] > 0
    assert [r["from_epoch"] for r in resumed["provenance"]["resumes"]] == [1]
    # the CSV log is whole: every epoch's validation and training loss once, those before the kill kept
    assert _logged_epochs(run_dir, "val_roc_auc") == [
        *range(max_epochs),
        max_epochs,
    ]  # + validate() after fit
    assert _logged_epochs(run_dir, "train_loss") == list(range(max_epochs))

    r = runner.invoke(app, ["train", "intent", "--resume", str(run_dir)])
    assert r.exit_code == 2 and "finished" in r.output


def _copy_run(run: Path, dest: Path, **train_changes: object) -> Path:
    shutil.copytree(run, dest)
    config = yaml.safe_load((dest / CONFIG_FILE).read_text())
    config["train"] |= train_changes
    (dest / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def test_runs_compare_writes_the_table_with_the_differing_key(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = _copy_run(tiny_pipeline.intent_run, tmp_path / "runs" / "a")
    b = _copy_run(tiny_pipeline.intent_run, tmp_path / "runs" / "b", lr=0.01)
    out = tmp_path / "cmp.md"
    r = runner.invoke(app, ["runs", "compare", str(a), str(b), "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "config keys that differ: train.lr." in text
    header = next(line for line in text.splitlines() if line.startswith("| run"))
    assert header.split(" | ")[-1] == "train.lr |"
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["differing_config_keys"] == ["train.lr"]
    assert [row["train.lr"] for row in doc["runs"]] == [0.001, 0.01]
    val_auc = json.loads((a / METRICS_FILE).read_text())["model"]["val"]["roc_auc"]
    assert doc["runs"][0]["val roc_auc"] == val_auc
    assert f"{val_auc:.4f}" in text


def test_runs_of_different_tasks_leave_blanks(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    c = compare_runs([tiny_pipeline.rec_run, tiny_pipeline.intent_run])
    rec, intent = c.rows
    assert rec["val ndcg@10"] is not None and rec["val roc_auc"] is None
    assert intent["val roc_auc"] is not None and intent["test ndcg@10"] is None
    assert "model.hidden" in c.differing and "task" not in c.differing


def test_runs_compare_refuses_a_folder_that_is_not_a_finished_run(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = runner.invoke(app, ["runs", "compare", str(tiny_pipeline.intent_run), str(tmp_path)])
    said = " ".join(r.output.split())  # Rich wraps long lines
    assert r.exit_code == 2 and "is not a run folder" in said and "Traceback" not in said, said
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(tiny_pipeline.intent_run / CONFIG_FILE, killed / CONFIG_FILE)
    r = runner.invoke(app, ["runs", "compare", str(killed)])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "has not finished" in said and "--resume" in said, said


def test_runs_list_newest_first(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    rows = list_runs(tiny_pipeline.intent_run.parent)
    names = [r["run"] for r in rows]
    assert names.index(tiny_pipeline.intent_run.name) < names.index(tiny_pipeline.rec_run.name)
    assert {r["status"] for r in rows if r["run"] in (names[0], tiny_pipeline.rec_run.name)} == {"finished"}
    r = runner.invoke(app, ["runs", "list", "--runs-dir", str(tiny_pipeline.intent_run.parent)])
    assert r.exit_code == 0, r.output

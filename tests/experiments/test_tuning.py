"""`o2o tune`: pruning really happens, a wrong metric is an error, a killed worker's trial is failed and
retried, and two workers share one PostgreSQL study without losing or duplicating trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from experiments.cli import app
from experiments.tuning import BEST_CONFIG, STUDY_MD, open_storage, storage_url, tune
from training.config import load_config

PG_URL = os.environ.get("O2O_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
GOOD_LR, BAD_LR = 0.003, 1e-9  # a learning rate of 1e-9 leaves the network where it started


def _config(tmp_path: Path, features: Path, **tune_extra: object) -> Path:
    doc = {
        "task": "recommender",
        "name": "tune-test",
        "data": {"features_dir": str(features)},
        "model": {"d_model": 16, "max_len": 20, "n_layers": 1},
        "train": {"max_epochs": 3, "patience": 3, "threads": 1},
        "tune": {
            "pruner": "median",
            "startup_trials": 1,
            "warmup_epochs": 0,
            "space": {
                "train.lr": {"type": "categorical", "choices": [GOOD_LR, BAD_LR]},
                "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
            },
            **tune_extra,
        },
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _o2o() -> str:
    return str(Path(sys.executable).with_name("o2o"))


def test_bad_trials_are_pruned(tmp_path: Path, tiny_pipeline) -> None:
    cfg = load_config("recommender", _config(tmp_path, tiny_pipeline.features))
    runs = tmp_path / "runs"
    storage = open_storage(storage_url(None, runs), cfg.tune.heartbeat_seconds)
    study = optuna.create_study(storage=storage, study_name="prune", direction="maximize")
    # one good trial first, so the median pruner has something to compare the bad ones with
    study.enqueue_trial({"train.lr": GOOD_LR, "model.dropout": 0.1})
    for _ in range(3):
        study.enqueue_trial({"train.lr": BAD_LR, "model.dropout": 0.1})
    result = tune(cfg, 5, runs, study_name="prune", progress=lambda _: None)

    trials = optuna.load_study(study_name="prune", storage=storage_url(None, runs)).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert result.summary["trials"]["pruned"] == len(pruned)
    assert trials[0].state == TrialState.COMPLETE
    for t in trials[1:4]:  # every bad trial stopped early: fewer reported epochs than max_epochs
        assert t.params["train.lr"] == BAD_LR
        assert t.state == TrialState.PRUNED and len(t.intermediate_values) < cfg.train.max_epochs
    best = yaml.safe_load((result.out_dir / BEST_CONFIG).read_text())
    assert best["train"]["lr"] == GOOD_LR and best["name"] == "tune-test-tuned"
    assert (result.out_dir / STUDY_MD).is_file() and (result.out_dir / "optimization_history.png").is_file()
    # trials select on validation only: no trial run holds test figures
    for t in trials:
        if t.state == TrialState.COMPLETE:
            metrics = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
            assert "test" not in metrics["model"] and metrics["baselines"] == {}


def test_wrong_metric_and_space_are_errors_before_any_trial(tmp_path: Path, tiny_pipeline) -> None:
    runs = tmp_path / "runs"
    wrong_metric = _config(tmp_path, tiny_pipeline.features, metric="ndcg@5")  # eval.k is 10
    r = CliRunner().invoke(
        app, ["tune", "recommender", "--config", str(wrong_metric), "--runs-dir", str(runs)]
    )
    assert r.exit_code == 2 and "ndcg@5" in r.output and "ndcg@10" in r.output, r.output
    space = 'tune.space={"train.lrate": {type: float, low: 0.1, high: 1}}'
    args = ["tune", "recommender", "--config", str(wrong_metric), "--runs-dir", str(runs)]
    r = CliRunner().invoke(app, [*args, "--set", "tune.metric=ndcg@10", "--set", space])
    assert r.exit_code == 2 and "train.lrate" in r.output and "Traceback" not in r.output, r.output
    assert not (runs / "optuna.db").exists()  # nothing was started


def test_retrain_on_train_and_validation(tmp_path: Path, tiny_pipeline) -> None:
    cfg = load_config("recommender", _config(tmp_path, tiny_pipeline.features))
    result = tune(cfg, 2, tmp_path / "runs", study_name="retrain", retrain=True, progress=lambda _: None)
    assert result.retrained is not None
    metrics = yaml.safe_load((result.retrained / "metrics.json").read_text())
    assert set(metrics["model"]) == {"test"} and "train + validation" in metrics["protocol"]
    assert metrics["baselines"]  # the retrained winner is reported beside the baselines
    best_epoch = result.summary["best"]["best_epoch"]
    assert metrics["epochs_trained"] == best_epoch + 1


@pytest.mark.slow
def test_killed_worker_trial_is_failed_and_retried(tmp_path: Path, tiny_pipeline) -> None:
    # long enough trials to kill one in the middle; heartbeat every second, stale after 3
    path = _config(tmp_path, tiny_pipeline.features, heartbeat_seconds=1)
    doc = yaml.safe_load(path.read_text())
    doc["train"].update(max_epochs=40, patience=40)
    doc["tune"]["pruner"] = "none"
    path.write_text(yaml.safe_dump(doc))
    runs = tmp_path / "runs"
    url = storage_url(None, runs)
    cmd = [_o2o(), "tune", "recommender", "--config", str(path), "--runs-dir", str(runs), "--trials", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait until trial 0 has reported two epochs
            time.sleep(0.5)
            try:
                trials = optuna.load_study(study_name="tune-test", storage=url).trials
            except (KeyError, Exception):
                continue
            if trials and trials[0].state == TrialState.RUNNING and len(trials[0].intermediate_values) >= 2:
                break
        else:
            pytest.fail("trial 0 never got two epochs in")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = optuna.load_study(study_name="tune-test", storage=url).trials[0]
    assert killed.state == TrialState.RUNNING  # nobody has noticed yet
    time.sleep(4)  # past the grace period (3 heartbeats)

    cfg = load_config("recommender", path)
    result = tune(cfg, 2, runs, progress=lambda _: None)  # the rerun continues the study

    trials = optuna.load_study(study_name="tune-test", storage=url).trials
    assert trials[0].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].params == killed.params
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert result.summary["trials"]["complete"] == 2


@pytest.mark.slow
def test_two_workers_share_a_postgres_study(tmp_path: Path, tiny_pipeline) -> None:
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as e:  # the server runs on every session's machine and in CI
        pytest.skip(f"PostgreSQL at {PG_URL} not reachable: {e}")
    path = _config(tmp_path, tiny_pipeline.features)
    study = f"o2o-test-{uuid.uuid4().hex[:8]}"
    n = 6
    base = [_o2o(), "tune", "recommender", "--config", str(path), "--trials", str(n)]
    base += ["--storage", PG_URL, "--study", study]
    procs = [
        subprocess.Popen(
            [*base, "--worker", str(w), "--runs-dir", str(tmp_path / f"runs{w}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for w in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    url = storage_url(PG_URL, tmp_path)
    try:
        assert [p.returncode for p in procs] == [0, 0], outputs
        trials = optuna.load_study(study_name=study, storage=url).trials
        numbers = sorted(t.number for t in trials)
        assert numbers == list(range(len(trials)))  # none lost, none recorded twice
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        assert n <= len(trials) <= n + 1  # each worker may finish the trial it had started
        assert len({t.user_attrs["run_dir"] for t in trials if "run_dir" in t.user_attrs}) == sum(
            t.state == TrialState.COMPLETE for t in trials
        )
        assert {t.user_attrs["worker"] for t in trials} == {0, 1}  # both really worked on it
    finally:
        optuna.delete_study(study_name=study, storage=url)


def test_a_worker_that_loses_the_schema_race_opens_the_storage_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers started together on an empty database race to create Optuna's schema; the loser's
    IntegrityError (failure injection: the first open raises it) is followed by a successful open."""
    from sqlalchemy.exc import IntegrityError

    from experiments import tuning

    calls = []
    real = tuning.RDBStorage

    def racing(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("duplicate key"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tuning, "RDBStorage", racing)
    monkeypatch.setattr(tuning.time, "sleep", lambda s: None)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", 10)
    assert len(calls) == 2 and storage.get_all_studies() == []
    calls.clear()
    monkeypatch.setattr(tuning, "STORAGE_OPEN_TRIES", 1)  # with no try left, the error reaches the caller
    with pytest.raises(IntegrityError):
        open_storage(f"sqlite:///{tmp_path / 'other.db'}", 10)

"""The peer benchmark's own arithmetic (no peer is installed or run here): what peers are given, how their
top-k lists are scored, and the time-to-quality figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from data_prep import schema as S
from experiments.peer_bench import DEFAULT_CONFIG, ours_config, score_lists, time_to_reach, write_peer_input
from training.config import RecommenderRunConfig
from training.protocols import leave_one_out


def r1():  # type: ignore[no-untyped-def]
    return leave_one_out(
        pa.table(
            {
                S.CUSTOMER_ID: ["u1", "u2"],
                S.ITEMS: [["a", "b", "c", "d"], ["c", "a", "e"]],
                S.EVENT_TYPES_COL: [["order"] * 4, ["order"] * 3],
            }
        )
    )


def test_peers_see_train_and_validation_but_never_the_test_targets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    inp = write_peer_input(r1(), tmp_path, {"seed": 3})
    train = pd.read_csv(tmp_path / "train.csv", dtype=str)
    val = pd.read_csv(tmp_path / "val.csv", dtype=str)
    assert train.to_dict("list") == {
        "user_id": ["u1", "u1", "u2"],
        "item_id": ["a", "b", "c"],
        "position": ["0", "1", "0"],
    }
    assert val.to_dict("list") == {"user_id": ["u1", "u2"], "item_id": ["c", "a"], "position": ["2", "1"]}
    assert json.loads((tmp_path / "config.json").read_text()) == {"seed": 3}
    assert list(inp.targets) == ["d", "e"]
    assert "d" not in set(train.item_id) | set(val.item_id)


def test_score_lists_uses_our_metric_definitions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    inp = write_peer_input(r1(), tmp_path, {})
    topk = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "rank": [2, 1, 1], "item_id": ["d", "x", "y"]})
    m = score_lists(topk, inp, k=10)
    assert m["hr@10"] == pytest.approx(0.5)  # u1 hit at rank 2, u2 missed
    assert m["ndcg@10"] == pytest.approx(0.5 / 1.5849625, rel=1e-6)
    assert m["mrr@10"] == pytest.approx(0.25)
    # a user the peer left out scores 0, it is not dropped from the average
    assert score_lists(topk[topk.user_id == "u1"], inp, k=10)["hr@10"] == pytest.approx(0.5)


def test_ours_in_the_bench_is_the_network_alone_at_the_shipped_capacity(tmp_path: Path) -> None:
    cfg = ours_config(DEFAULT_CONFIG, tmp_path, threads=1, patience=10, max_epochs=200)
    assert cfg.model.knn_neighbours == 0  # the peers have no neighbour blend: equal capacity only
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads, cfg.model.max_len) == (64, 2, 2, 50)
    assert (cfg.train.patience, cfg.train.max_epochs, cfg.data.features_dir) == (11, 200, tmp_path)


def test_time_to_reach() -> None:
    curve = [(5.0, 0.02), (9.0, 0.05), (14.0, 0.04)]
    assert time_to_reach(curve, 0.05) == 9.0
    assert time_to_reach(curve, 0.06) is None


def test_core_groups_split_the_cpus_without_overlap() -> None:
    import os

    from experiments.peer_bench import core_groups

    cpus = sorted(os.sched_getaffinity(0))
    groups = core_groups(len(cpus))
    assert sorted(c for g in groups for c in g) == cpus and all(len(g) == 1 for g in groups)
    assert core_groups(1) == [tuple(cpus)]
    with pytest.raises(ValueError, match="jobs must be in"):
        core_groups(len(cpus) + 1)


def test_resume_reuses_only_jobs_finished_with_the_same_settings(tmp_path: Path) -> None:
    from experiments.peer_bench import OURS, Job, plan_jobs
    from training.config import load_config

    cfg = load_config("recommender")
    assert isinstance(cfg, RecommenderRunConfig)
    pythons = {"recbole": tmp_path / "py", "rectools": tmp_path / "py", OURS: None}

    def plan(base: dict[str, Any], resume: bool) -> tuple[list[Job], dict[Job, dict[str, Any]]]:
        return plan_jobs(
            r1(), tmp_path, [0, 1], ["rectools", "recbole"], pythons, cfg, tmp_path, base, resume
        )

    todo, done = plan({"lr": 0.001}, resume=False)
    assert not done
    assert [(j.library, j.seed) for j in todo] == [
        ("recbole", 0), ("recbole", 1), (OURS, 0), ("rectools", 0), (OURS, 1), ("rectools", 1)
    ]  # fmt: skip
    finished = next(j for j in todo if j.library == "rectools" and j.seed == 1)
    finished.result_file.write_text(json.dumps({"test": {"ndcg@10": 0.5}}))
    todo, done = plan({"lr": 0.001}, resume=True)
    assert [(j.library, j.seed, r["test"]["ndcg@10"], r["reused"]) for j, r in done.items()] == [
        ("rectools", 1, 0.5, True)
    ]
    assert len(todo) == 5
    todo, done = plan({"lr": 0.002}, resume=True)  # other settings: nothing is reused, stale result gone
    assert not done and len(todo) == 6 and not finished.result_file.exists()


def test_a_job_survives_the_trip_to_a_worker_process(tmp_path: Path) -> None:
    import pickle

    from experiments.peer_bench import OURS, Job
    from training.config import load_config

    inp = write_peer_input(r1(), tmp_path, {"seed": 0})
    cfg = load_config("recommender")
    assert isinstance(cfg, RecommenderRunConfig)
    job = Job(OURS, 0, inp, tmp_path / "o2o", None, cfg, tmp_path, cores=(0,))
    back = pickle.loads(pickle.dumps(job))
    assert (back.library, back.cores, back.cfg, list(back.inp.targets)) == (OURS, (0,), job.cfg, ["d", "e"])

"""The paired comparison of `o2o evaluate`: per-example test ranks written by every recommender run, and
ours against each baseline as a ratio of NDCG with a paired bootstrap interval over the test examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from experiments.evaluate import paired_comparison, paired_table
from training.metrics import ndcg_gains, ranking_metrics, target_ranks
from training.train import METRICS_FILE, TEST_RANKS_FILE


def _run(root: Path, name: str, customers: list[str], **ranks: list[int]) -> Path:
    run = root / name
    run.mkdir()
    cols = {S.CUSTOMER_ID: pa.array(customers), **{k: pa.array(v, pa.int16()) for k, v in ranks.items()}}
    pq.write_table(pa.table(cols), run / TEST_RANKS_FILE)
    return run


def test_target_ranks_and_gains_agree_with_the_metrics() -> None:
    topk = np.array([[5, 3, 9], [1, 2, 3], [7, 8, 9], [4, 0, 0]])
    target = np.array([3, 1, 6, 0])  # rank 2, rank 1, miss, unknown target (0) never a hit
    ranks = target_ranks(topk, target, k=3)
    assert ranks.tolist() == [2, 1, 0, 0]
    assert ndcg_gains(ranks).tolist() == pytest.approx([1 / np.log2(3), 1.0, 0.0, 0.0])
    assert ndcg_gains(ranks).mean() == pytest.approx(ranking_metrics(topk, target, k=3)["ndcg@3"])


def test_ratio_is_of_the_seed_averaged_means_with_an_interval_around_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 400
    customers = [f"c{i}" for i in range(n)]
    base = np.where(rng.random(n) < 0.2, rng.integers(1, 11, n), 0)
    # ours finds every target the baseline finds, at rank 1, and 20 % more besides
    extra = np.where(rng.random(n) < 0.2, rng.integers(1, 11, n), 0)
    ours_a = np.where(base > 0, 1, extra)
    ours_b = np.where(base > 0, 2, extra)  # a second seed, rank 2 on the shared hits
    runs = [
        _run(tmp_path, "s0", customers, ours=ours_a.tolist(), item_knn=base.tolist(), empty=[0] * n),
        _run(tmp_path, "s1", customers, ours=ours_b.tolist(), item_knn=base.tolist(), empty=[0] * n),
    ]
    out = paired_comparison(runs)
    assert set(out) == {"item_knn"}  # a baseline with no hit has no ratio
    row = out["item_knn"]
    ours_mean = (ndcg_gains(ours_a) + ndcg_gains(ours_b)).mean() / 2
    assert row["ours"] == pytest.approx(ours_mean)
    assert row["baseline"] == pytest.approx(ndcg_gains(base).mean())
    assert row["ratio"] == pytest.approx(ours_mean / ndcg_gains(base).mean())
    assert row["difference"] == pytest.approx(ours_mean - ndcg_gains(base).mean())
    assert row["n"] == n
    assert 1.0 < row["ratio_low"] < row["ratio"] < row["ratio_high"]  # a clear win: the interval is above 1
    assert 0.0 < row["difference_low"] < row["difference"] < row["difference_high"]
    assert "| item_knn |" in paired_table(out)


def test_a_tie_has_a_point_interval_and_a_coin_flip_straddles_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 300
    customers = [f"c{i}" for i in range(n)]
    a = np.where(rng.random(n) < 0.3, rng.integers(1, 11, n), 0)
    b = np.where(rng.random(n) < 0.3, rng.integers(1, 11, n), 0)  # same skill, independent hits
    out = paired_comparison(
        [_run(tmp_path, "s0", customers, ours=a.tolist(), same=a.tolist(), other=b.tolist())]
    )
    assert out["same"]["ratio"] == out["same"]["ratio_low"] == out["same"]["ratio_high"] == 1.0
    assert out["other"]["ratio_low"] < 1.0 < out["other"]["ratio_high"]


def test_runs_of_different_test_examples_are_refused_and_rankless_runs_skipped(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", ["c1", "c2"], ours=[1, 0], item_knn=[0, 1])
    b = _run(tmp_path, "b", ["c2", "c1"], ours=[1, 0], item_knn=[0, 1])
    with pytest.raises(ValueError, match="different test examples"):
        paired_comparison([a, b])
    (tmp_path / "old").mkdir()
    assert paired_comparison([a, tmp_path / "old"]) == {}  # a run from before the file existed
    assert paired_table({}) == ""


def test_a_recommender_run_writes_ranks_that_give_its_published_figures(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    run = tiny_pipeline.rec_run
    metrics = json.loads((run / METRICS_FILE).read_text())
    k = metrics["k"]
    table = pq.read_table(run / TEST_RANKS_FILE)
    assert table.num_rows == metrics["model"]["test"]["n_examples"]
    assert table.column(S.CUSTOMER_ID).null_count == 0
    assert ndcg_gains(table.column("ours").to_numpy()).mean() == pytest.approx(
        metrics["model"]["test"][f"ndcg@{k}"]
    )
    for name, res in metrics["baselines"].items():
        got = ndcg_gains(table.column(name).to_numpy()).mean()
        assert got == pytest.approx(res["test"][f"ndcg@{k}"]), name

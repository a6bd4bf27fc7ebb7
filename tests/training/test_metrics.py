"""Metric definitions on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.baselines import MostPopular
from training.metrics import binary_metrics, expected_calibration_error, ranking_metrics


def test_ranking_metrics_exact() -> None:
    topk = np.array([[5, 3, 9], [1, 2, 3], [7, 8, 9], [4, 0, 0]])
    target = np.array([3, 1, 6, 0])  # rank 2, rank 1, miss, unknown target (0) never a hit
    m = ranking_metrics(topk, target, k=3)
    assert m["hr@3"] == pytest.approx(2 / 4)
    assert m["ndcg@3"] == pytest.approx((1 / np.log2(3) + 1) / 4)
    assert m["mrr@3"] == pytest.approx((1 / 2 + 1) / 4)
    assert ranking_metrics(topk, target, k=1)["hr@1"] == pytest.approx(1 / 4)


def test_binary_metrics_and_ece() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.8, 0.9])
    m = binary_metrics(y, p)
    assert m["roc_auc"] == 1.0 and m["positive_rate"] == 0.5
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert expected_calibration_error(np.array([1, 0]), np.array([0.5, 0.5]), n_bins=2) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1, 1]), np.array([0.0, 0.0])) == pytest.approx(1.0)


def test_most_popular_excludes_seen_and_padding() -> None:
    pop = MostPopular(k=2, exclude_seen=True).fit(np.array([5.0, 3.0, 1.0, 0.0]))  # items 1..4
    assert pop.recommend(np.array([[0, 0, 0, 1], [0, 0, 0, 0]])).tolist() == [[2, 3], [1, 2]]
    keep_seen = MostPopular(k=2, exclude_seen=False).fit(np.array([5.0, 3.0, 1.0, 0.0]))
    assert keep_seen.recommend(np.array([[0, 1]])).tolist() == [[1, 2]]
    with pytest.raises(RuntimeError):
        MostPopular().recommend(np.zeros((1, 2), dtype=int))

"""Simple baselines every results table carries (shared/PROTOCOLS.md), fit on the training split only."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler


class MostPopular:
    """Recommends the most frequent items of the training sequences, minus seen items if asked."""

    def __init__(self, k: int = 10, exclude_seen: bool = True) -> None:
        self.k, self.exclude_seen = k, exclude_seen
        self.scores_: np.ndarray | None = None

    def fit(self, train_item_idx: np.ndarray, n_items: int) -> MostPopular:
        """``train_item_idx`` (N, T) left-padded indices; counts every non-padding occurrence."""
        counts = np.bincount(train_item_idx.ravel(), minlength=n_items + 1).astype(np.float64)
        counts[0] = -np.inf  # padding is never recommended
        self.scores_ = counts
        return self

    def recommend(self, item_idx: np.ndarray) -> np.ndarray:
        """Top-k item indices (N, k) for left-padded histories (N, T)."""
        if self.scores_ is None:
            raise RuntimeError("MostPopular is not fitted: call fit() first")
        scores = np.broadcast_to(self.scores_, (len(item_idx), len(self.scores_))).copy()
        if self.exclude_seen:
            rows = np.repeat(np.arange(len(item_idx)), item_idx.shape[1])
            scores[rows, item_idx.ravel()] = -np.inf
        k = min(self.k, len(self.scores_) - 1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)


def logistic_regression_baseline(seed: int = 0) -> Pipeline:
    """log1p → standardise → logistic regression, on the point-in-time aggregate features."""
    return make_pipeline(
        FunctionTransformer(np.log1p),  # aggregates are counts and day spans, all ≥ 0
        StandardScaler(),
        LogisticRegression(max_iter=2000, random_state=seed),
    )

"""Simple baselines every results table carries (shared/PROTOCOLS.md), fit on the training split only."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler


class MostPopular:
    """Recommends the most frequent items of the training window, minus seen items if asked.

    Fit on the vocabulary's popularity (every item event before the validation cutoff), the same counts the
    serving layer's cold-start fallback uses.
    """

    def __init__(self, k: int = 10, exclude_seen: bool = True) -> None:
        self.k, self.exclude_seen = k, exclude_seen
        self.scores_: np.ndarray | None = None

    def fit(self, popularity: np.ndarray) -> MostPopular:
        """``popularity`` (n_items,) event counts by 1-based item index order (index 1 first)."""
        self.scores_ = np.concatenate([[-np.inf], np.asarray(popularity, dtype=np.float64)])  # padding never
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

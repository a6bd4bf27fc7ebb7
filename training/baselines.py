"""Simple baselines every results table carries (shared/PROTOCOLS.md), fit on the training split only."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from data_prep import schema as S


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
        return top_k(scores, item_idx, self.k, self.exclude_seen)


class RepeatHistory:
    """Recommends the customer's own items again, the most frequent first, each occurrence weighted
    ``decay`` per newer event (1 = plain counts), then the overall popular items.

    The honest baseline for grocery-like data where repeat purchases are allowed (seen filter off);
    with the seen filter on it can only fall back on popularity.
    """

    def __init__(self, k: int = 10, exclude_seen: bool = False, decay: float = 0.9) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.k, self.exclude_seen, self.decay = k, exclude_seen, decay
        self.prior_: np.ndarray | None = None

    def fit(self, popularity: np.ndarray) -> RepeatHistory:
        """``popularity`` (n_items,) training counts by item index order: the fallback after the history."""
        pop = np.asarray(popularity, dtype=np.float64)
        self.prior_ = np.concatenate([[0.0], pop / max(pop.max(initial=0.0), 1.0)])  # (V+1,) in [0, 1]
        return self

    def recommend(self, item_idx: np.ndarray) -> np.ndarray:
        """Top-k item indices (N, k) for left-padded histories (N, T)."""
        if self.prior_ is None:
            raise RuntimeError("RepeatHistory is not fitted: call fit() first")
        n, T = item_idx.shape
        weight = self.decay ** np.arange(T - 1, -1, -1, dtype=np.float64)  # (T,) newest weighs 1
        scores = np.zeros((n, len(self.prior_)))
        rows = np.repeat(np.arange(n), T)
        np.add.at(scores, (rows, item_idx.ravel()), np.tile(weight, n))
        # popularity only orders the items the history does not hold: below the smallest history weight
        scores += np.where(scores > 0, 0.0, 0.5 * weight[0] * self.prior_)
        return top_k(scores, item_idx, self.k, self.exclude_seen)


def recent_popularity(item: np.ndarray, timestamp: np.ndarray, n_items: int, days: float) -> np.ndarray:
    """(n_items,) counts of the events in the last ``days`` before the newest ``timestamp`` (epoch
    seconds), by 1-based item index; ties are later broken by all-time popularity (index order)."""
    if len(item) == 0:
        return np.zeros(n_items)
    recent = timestamp >= timestamp.max() - days * 86_400
    counts = np.bincount(item[recent], minlength=n_items + 1)[1:].astype(np.float64)
    return counts + 1e-6 * (n_items - np.arange(n_items)) / n_items


def top_k(scores: np.ndarray, item_idx: np.ndarray, k: int, exclude_seen: bool) -> np.ndarray:
    """Best ``k`` columns of ``scores`` (N, V+1) per row, best first; padding (column 0) never, seen items
    of the left-padded ``item_idx`` (N, T) not when ``exclude_seen``. Modifies ``scores``."""
    scores[:, 0] = -np.inf
    if exclude_seen:
        rows = np.repeat(np.arange(len(item_idx)), item_idx.shape[1])
        scores[rows, item_idx.ravel()] = -np.inf
    k = min(k, scores.shape[1] - 1)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def drop_older_seen(top: np.ndarray, older_idx: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` entries of each row of ranked ``top`` (N, k') that are not in that row of
    ``older_idx`` (N, S) (history items before the input window; 0 = none), order kept. k' ≥ k + S."""
    n_items = int(max(top.max(initial=0), older_idx.max(initial=0))) + 1
    seen = np.zeros((len(top), n_items), dtype=bool)
    seen[np.repeat(np.arange(len(top)), older_idx.shape[1]), older_idx.ravel()] = True
    seen[:, 0] = False
    drop = np.take_along_axis(seen, top, axis=1)
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(top, order, axis=1)


class ItemKNN:
    """Item-to-item co-occurrence neighbours (cosine with shrinkage), scored from the customer's history.

    Fit: co-occurrence counts of the training sequences; similarity of items i, j =
    |both| / (sqrt(|i| |j|) + shrink), keeping each item's ``neighbours`` most similar items. With
    ``window`` None, "both" means the same customer's history (a binary customer × item matrix); with
    ``window`` w, it counts pairs of events at most w positions apart in a history, so items bought or
    watched close together weigh more than items years apart. Recommend: Σ over the history's items of
    their similarity rows, the newest item weighted 1 and each older one ``decay`` times less (decay 1 =
    a bag of items, < 1 = the session-aware variant).
    """

    def __init__(
        self,
        k: int = 10,
        exclude_seen: bool = True,
        neighbours: int = 100,
        shrink: float = 10.0,
        decay: float = 1.0,
        window: int | None = None,
    ) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be ≥ 1 or None, got {window}")
        self.k, self.exclude_seen = k, exclude_seen
        self.neighbours, self.shrink, self.decay, self.window = neighbours, shrink, decay, window
        self.sim_: sp.csr_matrix | None = None

    def fit(self, item_idx: np.ndarray, n_items: int) -> ItemKNN:
        """``item_idx`` (N, T) left-padded training sequences of indices in 1..n_items."""
        rows, cols = np.nonzero(item_idx)
        return self.fit_events(rows, item_idx[rows, cols], len(item_idx), n_items)

    def fit_events(self, row: np.ndarray, item: np.ndarray, n_rows: int, n_items: int) -> ItemKNN:
        """Fit from flat (sequence row, item index) pairs in history order, rows contiguous (e.g. whole
        histories longer than any model window)."""
        return self.fit_cooccurrence(*cooccurrence(row, item, n_rows, n_items, self.window))

    def fit_cooccurrence(self, co: sp.csr_matrix, counts: np.ndarray) -> ItemKNN:
        """Fit from :func:`cooccurrence`'s output (computed with this instance's ``window``), so a grid over
        neighbours and decay counts co-occurrence once."""
        co = co.tocoo()
        keep = co.row != co.col
        row, col, data = co.row[keep], co.col[keep], co.data[keep]
        norm = np.sqrt(counts.astype(np.float32))
        data = data / (norm[row] * norm[col] + self.shrink)
        self.sim_ = _keep_top(sp.csr_matrix((data, (row, col)), shape=co.shape), self.neighbours)
        return self

    def recommend(self, item_idx: np.ndarray, batch: int = 2048) -> np.ndarray:
        if self.sim_ is None:
            raise RuntimeError("ItemKNN is not fitted: call fit() first")
        T = item_idx.shape[1]
        weight = (self.decay ** np.arange(T - 1, -1, -1)).astype(np.float32)  # newest (right) weighs 1
        out = []
        for lo in range(0, len(item_idx), batch):
            part = item_idx[lo : lo + batch]
            rows, cols = np.nonzero(part)
            h = sp.csr_matrix((weight[cols], (rows, part[rows, cols])), shape=(len(part), self.sim_.shape[0]))
            scores = np.asarray((h @ self.sim_).todense(), dtype=np.float64)
            scores += 1e-9 * self._prior  # ties (and customers with no neighbours) fall back on popularity
            out.append(top_k(scores, part, self.k, self.exclude_seen))
        return np.concatenate(out) if out else np.zeros((0, self.k), dtype=np.int64)

    @property
    def _prior(self) -> np.ndarray:
        assert self.sim_ is not None
        n = self.sim_.shape[0]
        return (n - np.arange(n)) / n  # item indices are ordered by popularity (1 = most popular)


def cooccurrence(
    row: np.ndarray, item: np.ndarray, n_rows: int, n_items: int, window: int | None
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Item × item co-occurrence counts (n_items + 1 square) and per-item counts (n_items + 1,) of flat
    (row, item) events in history order, rows contiguous.

    ``window`` None: the number of rows holding both items (a binary row × item matrix), per-item counts
    = rows holding the item. ``window`` w: pairs of events at most w positions apart in the same row,
    both orders, per-item counts = events. One distance at a time, so memory stays at one distance's pairs.
    """
    if len(row) > 1 and (np.diff(row) < 0).any():
        raise ValueError("events must come row by row (rows contiguous, in order)")
    n = n_items + 1
    if window is None:
        x = sp.csr_matrix((np.ones(len(row), dtype=np.float32), (row, item)), shape=(n_rows, n))
        x.data[:] = 1.0  # duplicates summed by the constructor: back to 0/1
        co = (x.T @ x).tocsr().astype(np.float32)
        return co, co.diagonal().copy()
    co = sp.csr_matrix((n, n), dtype=np.float32)
    for d in range(1, min(window, max(len(row) - 1, 0)) + 1):
        same = row[d:] == row[:-d]
        a, b = item[:-d][same], item[d:][same]
        pairs = sp.csr_matrix((np.ones(len(a), dtype=np.float32), (a, b)), shape=(n, n))
        co = co + pairs + pairs.T
    return co.tocsr(), np.bincount(item, minlength=n).astype(np.float32)


def whole_history_pairs(row: np.ndarray, item: np.ndarray, n_items: int) -> int:
    """Σ over rows of (distinct items)²: the work, and an upper bound of the entries, of whole-history
    co-occurrence (``window`` None) — the figure that decides whether it fits in memory."""
    distinct = np.unique(row.astype(np.int64) * (n_items + 1) + item)
    per_row = np.bincount(distinct // (n_items + 1))
    return int((per_row.astype(np.int64) ** 2).sum())


def _keep_top(m: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Keep the ``n`` largest entries of every row of a CSR matrix."""
    m.sort_indices()
    keep = np.zeros(m.nnz, dtype=bool)
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        if hi - lo <= n:
            keep[lo:hi] = True
        else:
            keep[lo + np.argpartition(-m.data[lo:hi], n - 1)[:n]] = True
    coo = m.tocoo()
    return sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=m.shape)


def logistic_regression_baseline(seed: int = 0) -> Pipeline:
    """log1p → standardise → logistic regression, on the point-in-time aggregate features."""
    return make_pipeline(
        FunctionTransformer(np.log1p),  # aggregates are counts and day spans, all ≥ 0
        StandardScaler(),
        LogisticRegression(max_iter=2000, random_state=seed),
    )


def gradient_boosting_baseline(seed: int = 0) -> HistGradientBoostingClassifier:
    """Histogram gradient boosting on the raw aggregates (trees need no scaling), early-stopped on an
    internal 10% hold-out of the training rows."""
    return HistGradientBoostingClassifier(
        learning_rate=0.05,
        max_iter=500,
        max_leaf_nodes=31,
        min_samples_leaf=40,
        l2_regularization=1.0,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=20,
        random_state=seed,
    )


class BetaGeoBaseline:
    """BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way"), the buy-till-you-die model,
    from pymc-marketing, fit by maximum a posteriori on each row's order history as of its cutoff. Like
    scikit-learn's classifiers it takes the aggregate matrix (:data:`schema.INTENT_FEATURES`, by name) and
    answers ``predict_proba``: P(at least one order within ``horizon_days``) = 1 − P(no order in (T, T + h]),
    or with ``positive="lapse"`` (churn) P(no order) as the positive class.

    Its inputs, in weeks: frequency = orders after the first, recency = first to last order, T = first order
    to the cutoff. A customer without an order is taken as born at its first event with none since
    (frequency 0, recency 0, T = tenure). The model never sees the labels: it is fit to the histories alone,
    as buy-till-you-die models are.
    """

    REQUIRED = (S.F_N_PURCHASES_ALL, S.F_DAYS_SINCE_FIRST_PURCHASE, S.F_DAYS_SINCE_PURCHASE, S.F_TENURE_DAYS)

    def __init__(
        self, feature_names: Sequence[str], horizon_days: int, positive: Literal["order", "lapse"] = "order"
    ) -> None:
        missing = [n for n in self.REQUIRED if n not in feature_names]
        if missing:
            raise ValueError(f"BG/NBD needs the aggregates {', '.join(missing)}")
        self.columns = [list(feature_names).index(n) for n in self.REQUIRED]
        self.horizon_weeks = horizon_days / 7.0
        self.positive = positive
        self.model: Any = None

    def histories(self, features: np.ndarray) -> pd.DataFrame:
        """One row per example: customer_id (the row number), frequency, recency, T (weeks)."""
        n, first, last, tenure = (np.asarray(features[:, c], dtype=np.float64) for c in self.columns)
        bought = n >= 1
        frequency = np.where(bought, n - 1, 0.0)
        recency = np.where(bought, np.maximum(first - last, 0.0), 0.0) / 7.0
        age = np.where(bought, first, tenure) / 7.0
        return pd.DataFrame(
            {"customer_id": np.arange(len(n)), "frequency": frequency, "recency": recency, "T": age}
        )

    def fit(self, features: np.ndarray, label: np.ndarray | None = None) -> BetaGeoBaseline:
        del label  # fit to the histories, not to the outcome
        with warnings.catch_warnings():  # ArviZ's refactor notice; PyTensor's "no BLAS" (four scalars here)
            warnings.simplefilter("ignore")
            from pymc_marketing.clv import BetaGeoModel

            self.model = BetaGeoModel(data=self.histories(features))
            self.model.fit(method="map", progressbar=False)
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("fit the BG/NBD baseline before predicting")
        no_order = self.model.expected_probability_no_purchase(
            self.horizon_weeks, data=self.histories(features)
        )
        p = 1.0 - np.asarray(no_order, dtype=np.float64).reshape(-1)
        p = np.clip(np.nan_to_num(p, nan=0.0), 1e-6, 1 - 1e-6)
        if self.positive == "lapse":
            p = 1.0 - p
        return np.column_stack([1.0 - p, p])

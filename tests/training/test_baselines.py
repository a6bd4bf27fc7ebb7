"""Recommender baselines on hand-built data: the top-k helper and ItemKNN's neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from training.baselines import ItemKNN, cooccurrence, top_k, whole_history_pairs


def test_top_k_removes_padding_and_seen() -> None:
    scores = np.array([[9.0, 1.0, 5.0, 3.0, 4.0]])
    assert top_k(scores.copy(), np.array([[0, 2]]), 2, exclude_seen=True).tolist() == [[4, 3]]
    assert top_k(scores.copy(), np.array([[0, 2]]), 2, exclude_seen=False).tolist() == [[2, 4]]


def test_item_knn_recommends_what_co_occurs() -> None:
    # items 1 and 2 always go together, 3 and 4 always go together; 5 is popular with everyone
    train = np.array([[1, 2, 5], [2, 1, 5], [3, 4, 5], [4, 3, 5], [0, 1, 2], [0, 3, 4]])
    knn = ItemKNN(k=1, neighbours=3, shrink=0.0).fit(train, n_items=5)
    assert knn.recommend(np.array([[0, 0, 1], [0, 0, 4]])).tolist() == [[2], [3]]
    # with decay the newest item decides; without, the older pair's partner can win too
    recent = ItemKNN(k=1, neighbours=3, shrink=0.0, decay=0.1).fit(train, n_items=5)
    assert recent.recommend(np.array([[0, 1, 3]])).tolist() == [[4]]


def test_item_knn_window_counts_only_events_close_together() -> None:
    # one long history: 1 2 ... then 3 4 far later; within window 1 only neighbours in time co-occur
    row = np.zeros(8, dtype=np.int64)
    item = np.array([1, 2, 5, 5, 5, 5, 3, 4])
    whole = ItemKNN(k=1, neighbours=5, shrink=0.0).fit_events(row, item, 1, n_items=5)
    near = ItemKNN(k=1, neighbours=5, shrink=0.0, window=1).fit_events(row, item, 1, n_items=5)
    assert whole.sim_ is not None and near.sim_ is not None
    assert whole.sim_[1, 4] > 0 and near.sim_[1, 4] == 0  # 1 and 4 are six events apart
    assert near.sim_[1, 2] > 0 and near.sim_[3, 4] > 0 and near.sim_[2, 1] == near.sim_[1, 2]
    assert near.recommend(np.array([[0, 3]])).tolist() == [[4]]
    # rows never mix: the last item of one history and the first of the next are not neighbours
    two = ItemKNN(k=1, neighbours=5, shrink=0.0, window=3).fit_events(
        np.array([0, 0, 1, 1]), np.array([1, 2, 3, 4]), 2, n_items=4
    )
    assert two.sim_ is not None and two.sim_[2, 3] == 0 and two.sim_[3, 4] > 0


def test_repeat_history_recommends_own_items_first_then_popular() -> None:
    from training.baselines import RepeatHistory

    popularity = np.array([9.0, 7.0, 5.0, 3.0, 1.0])  # items 1..5
    rep = RepeatHistory(k=3, decay=0.5).fit(popularity)
    # 4 three times before 5: decayed by 0.5, 4 scores 0.125 + 0.25 + 0.5 < 1 for the newest 5
    history = np.array([[4, 4, 4, 5]])
    assert rep.recommend(history).tolist() == [[5, 4, 1]]
    assert RepeatHistory(k=3, decay=1.0).fit(popularity).recommend(history).tolist() == [[4, 5, 1]]
    assert RepeatHistory(k=2, exclude_seen=True).fit(popularity).recommend(history).tolist() == [[1, 2]]


def test_recent_popularity_counts_only_the_last_days() -> None:
    from training.baselines import recent_popularity

    day = 86_400
    item = np.array([1, 1, 1, 2, 2, 3])
    ts = np.array([0, 1, 2, 50, 51, 52]) * day
    counts = recent_popularity(item, ts, n_items=3, days=7)
    assert np.argsort(-counts).tolist() == [1, 2, 0]  # item 2 (twice lately), item 3, then item 1
    assert counts[0] < 1e-3 and round(counts[1]) == 2


def test_item_knn_window_boundary_is_inclusive() -> None:
    from training.baselines import cooccurrence

    row = np.zeros(4, dtype=np.int64)
    co, counts = cooccurrence(row, np.array([1, 2, 3, 4]), 1, 4, window=2)
    assert co[1, 3] == 1 and co[3, 1] == 1  # two events apart: inside w = 2
    assert co[1, 4] == 0  # three events apart: outside
    assert counts.tolist() == [0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="row by row"):
        cooccurrence(np.array([1, 0]), np.array([1, 2]), 2, 2, window=1)


def test_repeat_history_puts_every_history_item_before_popular_ones() -> None:
    from training.baselines import RepeatHistory

    popularity = np.arange(60, 0, -1, dtype=np.float64)  # item 1 most popular
    history = np.concatenate([[59], np.full(49, 60)])[None, :]  # item 59 once, 49 events ago
    top = RepeatHistory(k=3, decay=0.7).fit(popularity).recommend(history)
    assert top.tolist() == [[60, 59, 1]]


def test_whole_history_pairs_bounds_the_cooccurrence_entries() -> None:
    # rows: [1, 2, 2, 3] (3 distinct) and [2, 4] (2 distinct): 9 + 4 pairs, repeats counted once
    row, item = np.array([0, 0, 0, 0, 1, 1]), np.array([1, 2, 2, 3, 2, 4])
    assert whole_history_pairs(row, item, n_items=4) == 13
    co, _ = cooccurrence(row, item, 2, 4, window=None)
    assert co.nnz <= 13


def _bg_nbd_world(n: int, seed: int, horizon_weeks: float) -> tuple[np.ndarray, np.ndarray]:
    """Customers drawn from a BG/NBD process (r 0.8, alpha 4 weeks, a 1.5, b 6): the aggregate matrix as of
    each one's cutoff (days, schema.INTENT_FEATURES order) and whether it orders in the next horizon."""
    from data_prep import schema as S

    rng = np.random.default_rng(seed)
    rows, label = np.zeros((n, len(S.INTENT_FEATURES))), np.zeros(n, dtype=np.int64)
    col = {name: i for i, name in enumerate(S.INTENT_FEATURES)}
    for i in range(n):
        rate, dropout, age = rng.gamma(0.8, 1 / 4.0), rng.beta(1.5, 6.0), rng.uniform(10, 40)
        t, orders, alive = 0.0, [0.0], True  # the first order at time 0
        while alive:
            t += rng.exponential(1 / rate)
            if t > age + horizon_weeks:
                break
            if t <= age:
                orders.append(t)
            else:
                label[i] = 1
                break
            alive = rng.random() >= dropout
        rows[i, col[S.F_N_PURCHASES_ALL]] = len(orders)
        rows[i, col[S.F_DAYS_SINCE_FIRST_PURCHASE]] = age * 7
        rows[i, col[S.F_DAYS_SINCE_PURCHASE]] = (age - orders[-1]) * 7
        rows[i, col[S.F_TENURE_DAYS]] = age * 7
    return rows, label


def test_bg_nbd_histories_follow_the_aggregates() -> None:
    from data_prep import schema as S
    from training.baselines import BetaGeoBaseline

    names = list(S.INTENT_FEATURES)
    m = np.zeros((2, len(names)))
    m[0, [names.index(c) for c in BetaGeoBaseline.REQUIRED]] = [3, 70, 14, 77]  # 3 orders, first 10 wk ago
    m[1, [names.index(c) for c in BetaGeoBaseline.REQUIRED]] = [0, 365, 365, 21]  # never bought, seen 3 wk
    h = BetaGeoBaseline(names, 14).histories(m)
    assert h[["frequency", "recency", "T"]].values.tolist() == [[2, 8, 10], [0, 0, 3]]
    with pytest.raises(ValueError, match="days_since_first_purchase"):
        BetaGeoBaseline([S.F_N_PURCHASES_ALL], 14)


def test_bg_nbd_ranks_and_calibrates_customers_of_a_bg_nbd_world() -> None:
    from sklearn.metrics import roc_auc_score

    from data_prep import schema as S
    from training.baselines import BetaGeoBaseline

    train, _ = _bg_nbd_world(3_000, 0, 2.0)
    test, label = _bg_nbd_world(3_000, 1, 2.0)
    model = BetaGeoBaseline(list(S.INTENT_FEATURES), 14).fit(train)
    p = model.predict_proba(test)[:, 1]
    assert roc_auc_score(label, p) > 0.75
    assert abs(p.mean() - label.mean()) < 0.03  # the right level, not only the right order
    lapse = BetaGeoBaseline(list(S.INTENT_FEATURES), 14, positive="lapse")
    lapse.model = model.model  # the same fit: churn's positive class is no order in the horizon
    np.testing.assert_allclose(lapse.predict_proba(test)[:, 1], 1.0 - p)

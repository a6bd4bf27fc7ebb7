"""Recommender baselines on hand-built data: the top-k helper and ItemKNN's neighbours."""

from __future__ import annotations

import numpy as np

from training.baselines import ItemKNN, top_k


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

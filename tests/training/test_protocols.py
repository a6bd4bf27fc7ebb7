"""Protocol R1 tables and training windows on hand-built sequences."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from data_prep import schema as S
from models.encoding import ItemVocabulary
from training.data import training_windows
from training.protocols import drop_last, leave_one_out, nth_from_end


def sequences() -> pa.Table:
    return pa.table(
        {
            S.CUSTOMER_ID: ["c2", "c1", "c3"],
            S.ITEMS: [list("abcd"), list("xyz"), list("pq")],  # c3 is too short for R1
            S.EVENT_TYPES_COL: [["view", "order", "view", "order"], ["order"] * 3, ["order"] * 2],
            S.TIMESTAMPS_COL: [[1, 2, 3, 4], [5, 6, 7], [8, 9]],
        }
    )


def test_leave_one_out_targets_and_inputs() -> None:
    r1 = leave_one_out(sequences())
    assert r1.train.column(S.CUSTOMER_ID).to_pylist() == ["c1", "c2"]  # sorted, c3 left out
    assert r1.train.column(S.ITEMS).to_pylist() == [["x"], ["a", "b"]]
    assert r1.val.column(S.ITEMS).to_pylist() == [["x"], ["a", "b"]]
    assert r1.val.column(S.TARGET_ITEM).to_pylist() == ["y", "c"]
    # the test input includes the validation event
    assert r1.test.column(S.ITEMS).to_pylist() == [["x", "y"], ["a", "b", "c"]]
    assert r1.test.column(S.TARGET_ITEM).to_pylist() == ["z", "d"]
    # every list column is cut the same way, so types and times stay aligned with the items
    assert r1.test.column(S.EVENT_TYPES_COL).to_pylist()[1] == ["view", "order", "view"]
    assert r1.test.column(S.TIMESTAMPS_COL).to_pylist() == [[5, 6], [1, 2, 3]]


def test_drop_last_and_nth_from_end() -> None:
    lists = pa.array([[1, 2, 3], [4], [], None])
    assert drop_last(lists, 1).to_pylist() == [[1, 2], [], [], []]
    assert nth_from_end(pa.array([[1, 2, 3], [4, 5]]), 2).to_pylist() == [2, 4]
    with pytest.raises(ValueError, match="at least 3"):
        nth_from_end(pa.array([[1, 2]]), 3)


def test_training_windows_cover_every_pair_once() -> None:
    rng = np.random.default_rng(0)
    vocab = ItemVocabulary().fit([f"i{n}" for n in range(30)])
    seqs = [[f"i{v}" for v in rng.integers(0, 30, n)] for n in (1, 2, 5, 9, 23)]
    seqs[3][4] = "unknown"  # dropped, as the encoder drops it
    table = pa.table({S.ITEMS: seqs, S.EVENT_TYPES_COL: [["view"] * len(s) for s in seqs]})
    want = []
    for s in seqs:
        idx = [int(i) for i in vocab.lookup(s) if i]
        want += list(itertools.pairwise(idx))
    for stride in (4, 2, 1):
        items, types, targets = training_windows(table, vocab, max_len=4, stride=stride)
        kind = types[:, :, 0]  # context column 0: event type
        assert items.shape[1] == 5 and (kind[items > 0] == 1).all() and (kind[items == 0] == 0).all()
        x = items[:, :-1]
        got = sorted(
            (int(a), int(b))
            for xs, ys in zip(x, targets, strict=True)
            for a, b in zip(xs, ys, strict=True)
            if b
        )
        assert got == sorted(want)  # every pair once, whatever the stride
        assert all((w[np.argmax(w > 0) :] > 0).all() for w in items)  # left-padded, no holes
        if stride == 1:  # each window trains only its newest pair: the one with the most context
            assert (targets[:, :-1] == 0).all() and (targets[:, -1] > 0).all()


def test_seen_filter_covers_the_whole_history_not_only_the_input_window() -> None:
    import torch

    from training.baselines import drop_older_seen
    from training.data import older_items
    from training.recommender import RecommenderModule

    vocab = ItemVocabulary().fit(list("abcdefgh"))
    table = pa.table({S.CUSTOMER_ID: ["u1", "u2", "u3"], S.ITEMS: [list("abcabde"), ["f"], list("gghx")]})
    older = older_items(table, vocab, max_len=2)  # window: the newest 2 known items
    assert older.tolist() == [[1, 2, 3], [0, 0, 0], [0, 0, 0]]  # u3's older g is also in its window
    top = np.array([[1, 4, 2, 6, 3, 7], [6, 1, 2, 3, 4, 5], [7, 1, 2, 3, 4, 5]])
    assert drop_older_seen(top, older, 3).tolist() == [[4, 6, 7], [6, 1, 2], [7, 1, 2]]

    torch.manual_seed(0)
    cfg = {"n_items": 12, "max_len": 2, "d_model": 8, "n_heads": 2, "n_layers": 1}
    module = RecommenderModule(cfg, k=4).eval()
    x = torch.tensor([[4, 5], [0, 6], [7, 8]])
    ctx = torch.zeros((3, 2, 3), dtype=torch.long)
    with torch.no_grad():
        plain = module.top_k(x, ctx)
        full = module.top_k(x, ctx, torch.from_numpy(older))
        everything = module.top_k(x, ctx, torch.zeros_like(torch.from_numpy(older)))
    assert torch.equal(everything, plain) and torch.equal(full[1:], plain[1:])
    assert not set(full[0].tolist()) & {1, 2, 3, 4, 5}  # window items and older items all removed
    kept = [i for i in plain[0].tolist() if i not in (1, 2, 3)]
    assert full[0].tolist()[: len(kept)] == kept  # otherwise the same ranking, in the same order

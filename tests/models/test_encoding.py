"""The shared numpy encoder: vocabulary lookups, dropping unknown items, truncation, left padding."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from models.encoding import (
    CTX_CHANNEL,
    CTX_EVENT_TYPE,
    CTX_TIME_GAP,
    N_CONTEXT,
    ItemVocabulary,
    encode_sequences,
    flatten_sequences,
    gap_buckets,
    newest_suffixes,
)


def vocab() -> ItemVocabulary:
    return ItemVocabulary().fit(["a", "b", "c", "d"])


def test_lookup_and_ids() -> None:
    v = vocab()
    assert v.lookup(["c", "zz", "a"]).tolist() == [3, 0, 1]
    assert v.ids(np.array([[1, 4]])).tolist() == [["a", "d"]]
    with pytest.raises(ValueError, match=r"1\.\.4"):
        v.ids(np.array([0, 1]))  # padding is not an item
    with pytest.raises(RuntimeError, match="not fitted"):
        ItemVocabulary().lookup(["a"])


def test_encode_left_pads_truncates_and_drops_unknown() -> None:
    seqs = [["a", "b", "zz", "c", "d"], ["d"], []]
    types = [["view", "view", "view", "order", "view"], ["order"], []]
    items, ctx = encode_sequences(seqs, vocab(), 3, types, ["view", "order"])
    assert items.tolist() == [[2, 3, 4], [0, 0, 4], [0, 0, 0]]
    assert ctx.shape == (3, 3, N_CONTEXT)
    assert ctx[:, :, CTX_EVENT_TYPE].tolist() == [[1, 2, 1], [0, 0, 2], [0, 0, 0]]
    assert not ctx[:, :, CTX_CHANNEL].any() and not ctx[:, :, CTX_TIME_GAP].any()  # not given: 0


def test_channels_and_time_gaps() -> None:
    seqs = [["a", "zz", "b", "c", "d"]]
    channels = [["web", "app", "store", "nope", "app"]]
    day = 86_400
    ts = [[0, 10, 30, 30 + 2 * day, 30 + 2 * day + 5]]
    _, ctx = encode_sequences(
        seqs, vocab(), 10, channels=channels, channel_names=["web", "app", "store"], timestamps=ts
    )
    assert ctx[0, :, CTX_CHANNEL].tolist() == [1, 3, 0, 2]  # zz dropped with its channel; unknown → 0
    # first event 1; 30 s since a (zz is dropped) → bucket 2 (< 1 min); 2 days → 6 (≥ 1 d); 5 s → 2
    assert ctx[0, :, CTX_TIME_GAP].tolist() == [1, 2, 6, 2]
    assert gap_buckets(np.array([0, 59, 119, 10**9]), np.zeros(4, dtype=np.int64)).tolist() == [
        1,
        2,
        3,
        2 + 6,
    ]
    with pytest.raises(ValueError, match="timestamps must align"):
        encode_sequences(seqs, vocab(), 10, timestamps=[[1, 2]])


def test_encode_accepts_arrow_and_python_lists_identically() -> None:
    seqs = [["a", "b"], ["c"]]
    a, _ = encode_sequences(seqs, vocab(), 5)
    b, _ = encode_sequences(pa.chunked_array([pa.array(seqs)]), vocab(), 5)
    assert a.tolist() == b.tolist() == [[1, 2], [0, 3]]


def test_width_is_at_least_one() -> None:
    items, _ = encode_sequences([[], ["zz"]], vocab(), 10)
    assert items.shape == (2, 1) and not items.any()


def test_event_types_must_align_per_sequence() -> None:
    with pytest.raises(ValueError, match="align"):
        encode_sequences([["a", "b"], ["c"]], vocab(), 5, [["view"], ["order", "view"]], ["view", "order"])


def test_cutting_to_the_newest_keeps_every_context_of_the_uncut_sequences() -> None:
    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d", "zz"]  # zz is unknown to the vocabulary: dropped with its context
    lengths = rng.integers(0, 12, size=40)
    seqs = [rng.choice(names, size=n).tolist() for n in lengths]
    types = [rng.choice(["view", "order", "odd"], size=n).tolist() for n in lengths]
    channels = [rng.choice(["web", "store"], size=n).tolist() for n in lengths]
    ts = [np.cumsum(rng.integers(0, 10 * 86_400, size=n)).tolist() for n in lengths]
    kw = {"type_names": ["view", "order"], "channel_names": ["web", "store"]}
    full = flatten_sequences(seqs, vocab(), types, channels=channels, timestamps=ts, **kw)
    cut = flatten_sequences(seqs, vocab(), types, channels=channels, timestamps=ts, newest=3, **kw)
    newest = full.from_end() < 3
    assert np.array_equal(cut.item, full.item[newest]) and np.array_equal(cut.row, full.row[newest])
    assert np.array_equal(cut.ctx, full.ctx[newest])  # the window's first time gap included
    assert (cut.ctx[:, CTX_TIME_GAP] > 1).any()  # some windows start after an earlier known event
    item_idx, ctx = encode_sequences(seqs, vocab(), 3, types, channels=channels, timestamps=ts, **kw)
    assert item_idx.shape == (40, 3) and ctx.shape == (40, 3, N_CONTEXT)


def test_python_histories_are_cut_before_arrow_and_encode_as_arrow_ones_do() -> None:
    rng = np.random.default_rng(1)
    names = ["a", "b", "c", "d", "zz", None]  # zz unknown, None a null item
    lengths = rng.integers(0, 30, size=50)
    seqs = [rng.choice(np.array(names, dtype=object), size=n).tolist() for n in lengths]
    types = [rng.choice(["view", "order"], size=n).tolist() for n in lengths]
    ts = [np.cumsum(rng.integers(0, 10 * 86_400, size=n)).tolist() for n in lengths]
    kw = {"type_names": ["view", "order"]}
    from_python = encode_sequences(seqs, vocab(), 4, types, timestamps=ts, **kw)
    arrow = [pa.array(v) for v in (seqs, types, ts)]
    from_arrow = encode_sequences(arrow[0], vocab(), 4, arrow[1], timestamps=arrow[2], **kw)
    for got, want in zip(from_python, from_arrow, strict=True):
        assert np.array_equal(got, want)
    cut, aligned = newest_suffixes(seqs, vocab(), 5, event_types=types, channels=None)
    assert aligned["channels"] is None
    for row, full, types_row in zip(cut, seqs, aligned["event_types"] or [], strict=True):
        known = [i for i in row if i in ("a", "b", "c", "d")]
        assert len(row) == len(types_row) and list(full[len(full) - len(row) :]) == list(row)
        assert len(known) == min(5, sum(i in ("a", "b", "c", "d") for i in full))
        assert not row or row[0] in ("a", "b", "c", "d") or len(row) == len(full)  # shortest suffix
    with pytest.raises(ValueError, match="timestamps must align"):
        encode_sequences([["a", "b"], ["c"]], vocab(), 5, timestamps=[[1, 2], [3, 4]])


def test_lookup_of_many_ids_agrees_with_the_lookup_of_a_few() -> None:
    v = ItemVocabulary().fit([f"i{n}" for n in range(100)])
    ids = [f"i{n}" for n in range(-50, 5000)]  # above SMALL_LOOKUP: the Arrow path
    many = v.lookup(ids)
    assert many.tolist() == [v.lookup([i])[0] for i in ids]
    assert v.lookup(pa.array(ids[:10])).tolist() == v.lookup(ids[:10]).tolist()
    assert v.lookup(pa.array(["i3", None])).tolist() == [4, 0]

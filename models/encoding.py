"""Numpy-only encoding of item sequences, shared by training, export, the batch scorer and the API.

One encoder everywhere is what makes online and batch scores identical: item ids → 1-based indices of the
fitted vocabulary (0 = padding), unknown items dropped, the newest ``max_len`` kept, left-padded.
Imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ListInput: TypeAlias = pa.Array | pa.ChunkedArray | Sequence[Sequence[str]]


class ItemVocabulary:
    """Item id ↔ 1-based index. Fit from ids ordered by index; index 0 is padding."""

    def __init__(self) -> None:
        self.item_ids_: np.ndarray | None = None
        self.index_: pd.Index | None = None

    def fit(self, item_ids_by_idx: Sequence[str]) -> ItemVocabulary:
        ids = np.asarray(item_ids_by_idx, dtype=object)
        if len(set(ids.tolist())) != len(ids):
            raise ValueError("vocabulary item ids must be unique")
        self.item_ids_ = ids
        self.index_ = pd.Index(ids)
        return self

    def _check(self) -> tuple[np.ndarray, pd.Index]:
        if self.item_ids_ is None or self.index_ is None:
            raise RuntimeError("ItemVocabulary is not fitted: call fit() first")
        return self.item_ids_, self.index_

    @property
    def n_items(self) -> int:
        """Number of real items (the model's item table has ``n_items + 1`` rows, padding first)."""
        return len(self._check()[0])

    def lookup(self, item_ids: np.ndarray | Sequence[str]) -> np.ndarray:
        """1-based indices (int64); 0 for ids not in the vocabulary."""
        return self._check()[1].get_indexer(pd.Index(np.asarray(item_ids, dtype=object))).astype(np.int64) + 1

    def ids(self, idx: np.ndarray) -> np.ndarray:
        """Item ids for 1-based indices (any shape); padding (0) or out-of-range indices raise."""
        ids = self._check()[0]
        idx = np.asarray(idx)
        if idx.size and (idx.min() < 1 or idx.max() > len(ids)):
            raise ValueError(f"item indices must be in 1..{len(ids)}; got {idx.min()}..{idx.max()}")
        return ids[idx - 1]


def as_list_array(values: ListInput) -> pa.ListArray:
    """One Arrow list<string> array from Arrow (chunked) arrays or Python lists of lists."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array([list(v) for v in values], type=pa.list_(pa.string()))


def encode_sequences(
    items: ListInput,
    vocab: ItemVocabulary,
    max_len: int,
    event_types: ListInput | None = None,
    type_names: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded index matrices for a batch of item sequences (oldest item first).

    Returns ``item_idx`` and ``type_idx``, both int64 of shape (B, L) with
    L = max(1, min(max_len, longest kept sequence)). Items unknown to the vocabulary are dropped with their
    event type. ``type_idx`` is 1 + position in ``type_names`` (0 for padding or unknown types) and all
    zeros when ``event_types`` is None.
    """
    arr = as_list_array(items)
    n = len(arr)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = vocab.lookup(pc.list_flatten(arr).to_numpy(zero_copy_only=False))
    if event_types is not None:
        tarr = as_list_array(event_types)
        tlengths = pc.fill_null(pc.list_value_length(tarr), 0).to_numpy(zero_copy_only=False)
        if len(tarr) != n or not np.array_equal(lengths, tlengths):
            raise ValueError("event_types must align with items (same number of entries in every sequence)")
        tflat = pc.list_flatten(tarr).to_numpy(zero_copy_only=False)
        tidx = pd.Index(list(type_names)).get_indexer(pd.Index(tflat)).astype(np.int64) + 1
    else:
        tidx = np.zeros_like(flat)
    row = np.repeat(np.arange(n), lengths)
    keep = flat > 0
    flat, tidx, row = flat[keep], tidx[keep], row[keep]
    counts = np.bincount(row, minlength=n)
    from_end = np.cumsum(counts)[row] - np.arange(len(row)) - 1  # 0 for each sequence's newest item
    width = max(1, min(max_len, int(counts.max(initial=0))))
    sel = from_end < width
    item_idx = np.zeros((n, width), dtype=np.int64)
    type_idx = np.zeros((n, width), dtype=np.int64)
    cols = width - 1 - from_end[sel]
    item_idx[row[sel], cols] = flat[sel]
    type_idx[row[sel], cols] = tidx[sel]
    return item_idx, type_idx

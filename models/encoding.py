"""Numpy-only encoding of item sequences, shared by training, export, the batch scorer and the API.

One encoder everywhere is what makes online and batch scores identical: item ids → 1-based indices of the
fitted vocabulary (0 = padding), unknown items dropped, the newest ``max_len`` kept, left-padded.
Imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ListInput: TypeAlias = pa.Array | pa.ChunkedArray | Sequence[Sequence[str]] | Sequence[Sequence[int]]


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


def as_list_array(values: ListInput, value_type: pa.DataType | None = None) -> pa.ListArray:
    """One Arrow list array from Arrow (chunked) arrays or Python lists of lists (of ``value_type``,
    default string; None entries become empty lists)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array([list(v or ()) for v in values], type=pa.list_(value_type or pa.string()))


# Columns of the context matrix (B, T, C) that travels beside the item indices: per event, its type, its
# channel and the time since the previous kept event, bucketed. 0 = padding or unknown in every column.
CTX_EVENT_TYPE, CTX_CHANNEL, CTX_TIME_GAP = 0, 1, 2
N_CONTEXT = 3
GAP_EDGES_SECONDS = (60, 600, 3_600, 86_400, 7 * 86_400, 30 * 86_400)
N_GAP_BUCKETS = len(GAP_EDGES_SECONDS) + 2  # 1 = first event of the history, 2.. = gap ranges


def gap_buckets(timestamps: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Bucket of the time since the previous event of the same row (flat arrays, rows contiguous, oldest
    first): 1 for a row's first event, then 2 + the number of ``GAP_EDGES_SECONDS`` the gap reaches."""
    gap = np.diff(timestamps, prepend=timestamps[:1]) if len(timestamps) else timestamps
    first = np.ones(len(row), dtype=bool)
    first[1:] = row[1:] != row[:-1]
    bucket = 2 + np.searchsorted(np.asarray(GAP_EDGES_SECONDS), np.maximum(gap, 0), side="right")
    return np.where(first, 1, bucket).astype(np.int64)


def _aligned(
    values: ListInput, lengths: np.ndarray, what: str, value_type: pa.DataType | None = None
) -> np.ndarray:
    """The flat values of a list column that must have as many entries per sequence as the items."""
    arr = as_list_array(values, value_type)
    got = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    if len(arr) != len(lengths) or not np.array_equal(lengths, got):
        raise ValueError(f"{what} must align with items (same number of entries in every sequence)")
    return pc.list_flatten(arr).to_numpy(zero_copy_only=False)


def _names_index(values: ListInput, names: Sequence[str], lengths: np.ndarray, what: str) -> np.ndarray:
    flat = _aligned(values, lengths, what)
    return pd.Index(list(names)).get_indexer(pd.Index(flat)).astype(np.int64) + 1


@dataclass(frozen=True)
class FlatSequences:
    """Sequences after vocabulary lookup, unknown items dropped, as flat arrays (rows contiguous, oldest
    first): item index (N,), context (N, N_CONTEXT), row (N,), and the number of rows."""

    item: np.ndarray
    ctx: np.ndarray
    row: np.ndarray
    n_rows: int

    def from_end(self) -> np.ndarray:
        """(N,) each event's place counted from its sequence's newest kept event (0 = newest)."""
        counts = np.bincount(self.row, minlength=self.n_rows)
        return np.cumsum(counts)[self.row] - np.arange(len(self.row)) - 1


def flatten_sequences(
    items: ListInput,
    vocab: ItemVocabulary,
    event_types: ListInput | None = None,
    type_names: Sequence[str] = (),
    channels: ListInput | None = None,
    channel_names: Sequence[str] = (),
    timestamps: ListInput | None = None,
) -> FlatSequences:
    """The lookup step of :func:`encode_sequences`, for callers that cut sequences their own way."""
    arr = as_list_array(items)
    n = len(arr)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = vocab.lookup(pc.list_flatten(arr).to_numpy(zero_copy_only=False))
    ctx = np.zeros((len(flat), N_CONTEXT), dtype=np.int64)
    if event_types is not None:
        ctx[:, CTX_EVENT_TYPE] = _names_index(event_types, type_names, lengths, "event_types")
    if channels is not None:
        ctx[:, CTX_CHANNEL] = _names_index(channels, channel_names, lengths, "channels")
    row = np.repeat(np.arange(n), lengths)
    keep = flat > 0
    flat, ctx, row = flat[keep], ctx[keep], row[keep]
    if timestamps is not None:
        ts = _aligned(timestamps, lengths, "timestamps", pa.int64()).astype(np.int64)[keep]
        ctx[:, CTX_TIME_GAP] = gap_buckets(ts, row)
    return FlatSequences(flat, ctx, row, n)


def encode_sequences(
    items: ListInput,
    vocab: ItemVocabulary,
    max_len: int,
    event_types: ListInput | None = None,
    type_names: Sequence[str] = (),
    channels: ListInput | None = None,
    channel_names: Sequence[str] = (),
    timestamps: ListInput | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded index matrices for a batch of item sequences (oldest item first).

    Returns ``item_idx`` (B, L) and ``ctx_idx`` (B, L, N_CONTEXT), int64, with
    L = max(1, min(max_len, longest kept sequence)). Items unknown to the vocabulary are dropped with their
    context. Context columns: event type = 1 + position in ``type_names``, channel = 1 + position in
    ``channel_names`` (0 for padding or an unknown name, and all 0 when the list is not given), time gap =
    :func:`gap_buckets` of ``timestamps`` (epoch seconds) between kept events.
    """
    f = flatten_sequences(items, vocab, event_types, type_names, channels, channel_names, timestamps)
    from_end = f.from_end()  # 0 for each sequence's newest item
    width = max(1, min(max_len, int(np.bincount(f.row, minlength=f.n_rows).max(initial=0))))
    sel = from_end < width
    item_idx = np.zeros((f.n_rows, width), dtype=np.int64)
    ctx_idx = np.zeros((f.n_rows, width, N_CONTEXT), dtype=np.int64)
    cols = width - 1 - from_end[sel]
    item_idx[f.row[sel], cols] = f.item[sel]
    ctx_idx[f.row[sel], cols] = f.ctx[sel]
    return item_idx, ctx_idx

"""Scoring functions shared by the API and the batch scorer: same encoder, same sessions, same answers."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.encoding import ListInput, as_list_array
from serving.artifact import OnnxModel

SOURCE_HISTORY = "history"
SOURCE_SEGMENT = "segment_popular"  # cold start: popular in the customer's segment
SOURCE_POPULAR = "popular"  # cold start: popular overall (no segment, or the segment ran out)


@dataclass(frozen=True)
class Recommendations:
    """Per history: item ids best first, their scores, and where they came from.

    Lists may hold fewer than k items when the filters leave fewer candidates than asked for. Scores are
    model logits for ``history`` rows and training-window counts for the cold-start rows. Held flat (the
    lists of all histories one after another, ``offsets`` (B+1,) marking where each starts), which is what
    a scoring chunk writes to Arrow without a Python object per item.
    """

    offsets: np.ndarray  # (B+1,) int64
    flat_item_ids: np.ndarray  # (N,) object
    flat_scores: np.ndarray  # (N,) float32
    source: list[str]

    @property
    def item_ids(self) -> list[list[str]]:
        return [self.flat_item_ids[a:b].tolist() for a, b in itertools.pairwise(self.offsets)]

    @property
    def scores(self) -> list[list[float]]:
        return [self.flat_scores[a:b].tolist() for a, b in itertools.pairwise(self.offsets)]

    def arrow_item_ids(self) -> pa.ListArray:
        return self._lists(pa.array(self.flat_item_ids, type=pa.string()))

    def arrow_scores(self) -> pa.ListArray:
        return self._lists(pa.array(self.flat_scores, type=pa.float32()))

    def _lists(self, values: pa.Array) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(self.offsets, type=pa.int32()), values)


@dataclass(frozen=True)
class ItemFilter:
    """Business rules applied before the top-k: items and categories never to recommend, and a store
    whose assortment (items it sold in the last 90 days of the data) bounds the candidates."""

    exclude_items: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    store_id: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.exclude_items or self.exclude_categories or self.store_id)

    def to_dict(self) -> dict[str, Any]:
        """The rules as recorded in a scoring manifest."""
        return {
            "exclude_items": list(self.exclude_items),
            "exclude_categories": list(self.exclude_categories),
            "store_id": self.store_id,
        }


def allowed_items(model: OnnxModel, rules: ItemFilter) -> np.ndarray:
    """(V+1,) float32 mask, 1 = may be recommended (padding always 0). Raises ValueError for a category or
    store the bundle does not know (a typo would otherwise silently filter nothing or everything)."""
    allowed = np.ones(model.vocab.n_items + 1, dtype=np.float32)
    allowed[0] = 0.0
    if rules.exclude_items:
        idx = model.vocab.lookup(list(rules.exclude_items))
        allowed[idx[idx > 0]] = 0.0  # unknown ids: not recommendable anyway
    if rules.exclude_categories:
        known = {c for c in model.categories[1:] if c is not None}
        unknown = sorted(set(rules.exclude_categories) - known)
        if unknown:
            raise ValueError(f"unknown categories {unknown}; this bundle knows {sorted(known)[:20]}")
        allowed[np.isin(model.categories, list(rules.exclude_categories))] = 0.0
    if rules.store_id is not None:
        if rules.store_id not in model.assortment:
            have = "no store assortment" if not model.assortment else f"{len(model.assortment)} stores"
            raise ValueError(f"unknown store_id {rules.store_id!r} (the bundle has {have})")
        in_store = np.zeros_like(allowed)
        in_store[model.assortment[rules.store_id]] = 1.0
        allowed *= in_store
    return allowed


def check_k(model: OnnxModel, k: int) -> None:
    """Raise ValueError unless 1 ≤ k ≤ the bundle's ``max_k`` (top-k size of the graph, ≤ catalogue)."""
    max_k = model.ranking.max_k
    if not 1 <= k <= max_k:
        raise ValueError(f"k must be between 1 and {max_k} for this model, got {k}")


def _popular(
    model: OnnxModel, k: int, allowed: np.ndarray, segment: str | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Cold start: the segment's most popular allowed items, then the overall ones to fill k (a cold
    history holds no known item, so none of them counts as seen)."""
    ok = allowed > 0
    chosen: list[np.ndarray] = []
    chosen_scores: list[np.ndarray] = []
    source = SOURCE_POPULAR
    seg = model.segment_popularity.get(segment) if segment is not None else None
    if seg is not None:
        cand = np.flatnonzero(ok & (seg > 0))
        top = cand[np.argsort(-seg[cand], kind="stable")][:k]
        if len(top):
            source = SOURCE_SEGMENT
            chosen.append(top)
            chosen_scores.append(seg[top])
            ok[top] = False
    n_more = k - sum(len(c) for c in chosen)
    if n_more > 0:
        cand = np.flatnonzero(ok & np.isfinite(model.popularity))
        top = cand[np.argsort(-model.popularity[cand], kind="stable")][:n_more]
        chosen.append(top)
        chosen_scores.append(model.popularity[top])
    return np.concatenate(chosen), np.concatenate(chosen_scores), source


GRAPH_ROWS = 1024  # rows per ONNX Runtime call: a big batch's activations (rows × length × width) stay small
SHARED_INPUTS = ("allowed",)  # graph inputs that are not per row (the catalogue mask)


def run_rows(model: OnnxModel, feeds: dict[str, np.ndarray], rows: int = GRAPH_ROWS) -> list[np.ndarray]:
    """The graph's outputs for every row of ``feeds``, run ``rows`` rows at a time and concatenated: a batch
    scorer chunk of 20,000 customers would otherwise hold all of their attention and feed-forward
    activations at once."""
    n = len(next(v for k, v in feeds.items() if k not in SHARED_INPUTS))
    if n <= rows:
        return list(model.session.run(None, feeds))
    parts = [
        model.session.run(None, {k: v if k in SHARED_INPUTS else v[i : i + rows] for k, v in feeds.items()})
        for i in range(0, n, rows)
    ]
    return [np.concatenate(out) for out in zip(*parts, strict=True)]


def _history_keys(model: OnnxModel, items: pa.ListArray, rows: np.ndarray) -> np.ndarray:
    """Sorted unique ``row · (V+1) + item index`` of every known item in the whole history of each of
    ``rows``: membership of (row, item) pairs for a whole batch in one lookup."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    sub = items.take(pa.array(rows, type=pa.int64()))
    flat = model.vocab.lookup(pc.list_flatten(sub))
    lengths = pc.fill_null(pc.list_value_length(sub), 0).to_numpy(zero_copy_only=False)
    owner = np.repeat(np.asarray(rows, dtype=np.int64), lengths)
    known = flat > 0
    return np.unique(owner[known] * (model.vocab.n_items + 1) + flat[known])


def _rerank_without(
    model: OnnxModel, feeds: dict[str, np.ndarray], row: int, allowed: np.ndarray, seen: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one history with ``seen`` (item indices) masked inside the graph.

    The graph ranks only its ``max_k`` best candidates; when older history items (outside the ``max_len``
    window the graph sees) fill most of them, the list would come back short. Passing them through the
    ``allowed`` mask for this row alone lets the graph rank the next candidates instead.
    """
    mask = allowed.copy()
    mask[seen] = 0.0
    one = {name: value[row : row + 1] for name, value in feeds.items() if name != "allowed"}
    one["allowed"] = mask
    scores, idx = model.session.run(None, one)
    sel = scores[0] > model.ranking.masked_below
    return idx[0][sel][:k], scores[0][sel][:k]


def recommend(
    model: OnnxModel,
    items: ListInput,
    event_types: ListInput | None,
    k: int,
    exclude_seen: bool | None = None,
    rules: ItemFilter | None = None,
    segments: Sequence[str | None] | None = None,
    channels: ListInput | None = None,
    timestamps: ListInput | None = None,
) -> Recommendations:
    """Top-k item ids per history (oldest event first), with ``rules`` applied before the top-k.

    ``exclude_seen`` defaults to the setting the model was evaluated with. The graph removes items among the
    newest ``max_len`` events; older items of a long history are removed here, so the whole history counts
    as seen. Histories with no known item get the cold-start fallback: the most popular items of their
    ``segments`` entry (RFM segment) when the bundle knows it, then the most popular overall.
    ``channels`` and ``timestamps`` (epoch seconds), aligned with ``items``, feed the models that use them.
    """
    check_k(model, k)
    rules = rules or ItemFilter()
    exclude = model.ranking.exclude_seen if exclude_seen is None else exclude_seen
    arr = as_list_array(items)
    if segments is not None and len(segments) != len(arr):
        raise ValueError(f"segments has {len(segments)} entries for {len(arr)} histories")
    allowed = allowed_items(model, rules)
    # the lists as given: Python lists are cut to the graph's window before they become Arrow
    item_idx, feeds = model.sequence_feeds(items, event_types, channels, timestamps)
    n = len(item_idx)
    feeds["exclude_seen"] = np.full(n, float(exclude), dtype=np.float32)
    feeds["allowed"] = allowed
    scores, idx = run_rows(model, feeds)  # (B, max_k) each
    keep = scores > model.ranking.masked_below  # (B, max_k): drop removed items
    cold = np.asarray(~item_idx.any(axis=1), dtype=bool)  # (B,) no known item: nothing for the graph
    keep[cold] = False
    if exclude:  # the whole history counts as seen: items older than the graph's window leave here
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
        long_rows = np.flatnonzero(~cold & (lengths > model.max_len))
        history = _history_keys(model, arr, long_rows)
        pair = np.arange(n, dtype=np.int64)[:, None] * (model.vocab.n_items + 1) + idx  # (B, max_k)
        seen_old = keep & np.isin(pair, history)  # (B, max_k)
        keep &= ~seen_old
    else:
        seen_old = np.zeros_like(keep)
    take = keep & (np.cumsum(keep, axis=1) <= k)  # (B, max_k): each row's first k survivors
    counts = take.sum(axis=1)  # (B,)
    # a row cut short by old history items: the graph ranks again with them masked
    rerank = (counts < k) & seen_old.any(axis=1)
    own: dict[int, tuple[np.ndarray, np.ndarray, str]] = {}  # rows answered one by one
    for row in np.flatnonzero(cold).tolist():  # cold rows know no item: nothing of theirs to leave out
        segment = segments[row] if segments is not None else None
        own[row] = _popular(model, k, allowed, segment)
    for row in np.flatnonzero(rerank).tolist():
        seen = _history_keys(model, arr, np.array([row])) - row * (model.vocab.n_items + 1)
        own[row] = (*_rerank_without(model, feeds, row, allowed, seen, k), SOURCE_HISTORY)
    take[list(own)] = False
    for row, (top, _, _) in own.items():
        counts[row] = len(top)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (B+1,)
    flat_idx = np.zeros(offsets[-1], dtype=np.int64)
    flat_scores = np.zeros(offsets[-1], dtype=np.float32)
    rows, _ = np.nonzero(take)  # row-major: each row's survivors best first
    dest = offsets[rows] + (np.cumsum(take, axis=1)[take] - 1)
    flat_idx[dest], flat_scores[dest] = idx[take], scores[take]
    sources = [SOURCE_HISTORY] * n
    for row, (top, top_scores, source) in own.items():
        flat_idx[offsets[row] : offsets[row + 1]] = top
        flat_scores[offsets[row] : offsets[row + 1]] = top_scores
        sources[row] = source
    return Recommendations(offsets, model.vocab.ids(flat_idx), flat_scores, sources)


def similar_items(model: OnnxModel, item_id: str, k: int) -> tuple[list[str], list[float]]:
    """The ``k`` items nearest to ``item_id`` by cosine similarity of the recommender's item embeddings, best
    first (ties: lower item index first), with their similarities in [-1, 1].

    Never the item itself or padding, so fewer than ``k`` only when the catalogue has fewer other items.
    Raises LookupError for an item the model does not know; ValueError for ``k`` out of range or a model
    without an item table (one shared embedding for every item).
    """
    unit = model.unit_item_embeddings  # (V+1, D)
    if unit is None:
        raise ValueError("this model has no item embeddings (one shared embedding for every item)")
    check_k(model, k)
    idx = int(model.vocab.lookup([item_id])[0])
    if idx == 0:
        raise LookupError(f"unknown item_id {item_id!r}: not in this model's vocabulary")
    sims = unit @ unit[idx]  # (V+1,)
    sims[[0, idx]] = -np.inf
    n = min(k, len(sims) - 2)  # every real item but this one
    if n == 0:
        return [], []
    nth = np.partition(sims, len(sims) - n)[len(sims) - n]  # the n-th largest similarity
    cand = np.flatnonzero(sims >= nth)  # ascending index, ties at the cut included
    top = cand[np.argsort(-sims[cand], kind="stable")][:n]  # (n,)
    return model.vocab.ids(top).tolist(), sims[top].astype(np.float32).tolist()


def intent_probability(
    model: OnnxModel,
    items: ListInput,
    event_types: ListInput | None,
    features: np.ndarray,
    channels: ListInput | None = None,
    timestamps: ListInput | None = None,
) -> np.ndarray:
    """Calibrated purchase probability (B,) within the label horizon, from history and raw aggregates (B, F).

    The graph returns the network's probability; the bundle's calibration map (fitted on validation at
    training time) is applied here, so the batch scorer and the API return the same calibrated figure.

    ``features`` columns must be in the model's ``feature_names`` order (see :func:`feature_matrix`).
    """
    item_idx, feeds = model.sequence_feeds(items, event_types, channels, timestamps)
    feeds["features"] = np.asarray(features, dtype=np.float32).reshape(len(item_idx), -1)
    (prob,) = run_rows(model, feeds)
    return model.calibration.apply(prob.astype(np.float64))


def feature_matrix(model: OnnxModel, columns: dict[str, Sequence[float] | np.ndarray]) -> np.ndarray:
    """(B, F) float32 matrix of the model's ``feature_names`` taken from ``columns`` (name → values)."""
    names = model.classifier.feature_names
    missing = [n for n in names if n not in columns]
    if missing:
        raise ValueError(f"features {missing} required by the intent model are missing from the input")
    return np.column_stack([np.asarray(columns[n], dtype=np.float32) for n in names])

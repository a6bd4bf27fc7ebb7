"""Scoring functions shared by the API and the batch scorer: same encoder, same sessions, same answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.encoding import ListInput, as_list_array, encode_sequences
from serving.artifact import OnnxModel

SOURCE_HISTORY = "history"
SOURCE_POPULAR = "popular"  # cold start: no known item in the history


@dataclass(frozen=True)
class Recommendations:
    """Per history: item ids best first, their scores, and where they came from.

    Lists may hold fewer than k items when the seen filter leaves fewer candidates than asked for.
    Scores are model logits for ``history`` rows and training-window counts for ``popular`` rows.
    """

    item_ids: list[list[str]]
    scores: list[list[float]]
    source: list[str]


def check_k(model: OnnxModel, k: int) -> None:
    """Raise ValueError unless 1 ≤ k ≤ the bundle's ``max_k`` (top-k size of the graph, ≤ catalogue)."""
    max_k = int(model.config["max_k"])
    if not 1 <= k <= max_k:
        raise ValueError(f"k must be between 1 and {max_k} for this model, got {k}")


def _popular(model: OnnxModel, seen: set[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = model.popularity.copy()
    scores[list(seen)] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    top = top[np.isfinite(scores[top])]
    return top, scores[top]


def _history_indices(model: OnnxModel, items: pa.ListArray, row: int) -> set[int]:
    idx = model.vocab.lookup(items[row].values.to_numpy(zero_copy_only=False))
    return set(idx[idx > 0].tolist())


def recommend(
    model: OnnxModel,
    items: ListInput,
    event_types: ListInput | None,
    k: int,
    exclude_seen: bool | None = None,
) -> Recommendations:
    """Top-k item ids per history (oldest event first).

    ``exclude_seen`` defaults to the setting the model was evaluated with. The graph removes items among the
    newest ``max_len`` events; older items of a long history are removed here, so the whole history counts
    as seen. Histories with no known item get the most popular items (cold start).
    """
    check_k(model, k)
    exclude = bool(model.config["exclude_seen"]) if exclude_seen is None else exclude_seen
    arr = as_list_array(items)
    item_idx, type_idx = encode_sequences(arr, model.vocab, model.max_len, event_types, model.type_names)
    flag = np.full(len(item_idx), float(exclude), dtype=np.float32)
    scores, idx = model.session.run(None, {"item_idx": item_idx, "type_idx": type_idx, "exclude_seen": flag})
    keep = scores > float(model.config["masked_below"])  # (B, max_k): drop removed items
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    out_ids: list[list[str]] = []
    out_scores: list[list[float]] = []
    sources: list[str] = []
    for row in range(len(item_idx)):
        cold = not item_idx[row].any()
        needs_full_history = exclude and (cold or lengths[row] > model.max_len)
        seen = _history_indices(model, arr, row) if needs_full_history else set()
        if cold:
            top, top_scores = _popular(model, seen, k)
        else:
            sel = keep[row] & ~np.isin(idx[row], list(seen))
            top, top_scores = idx[row][sel][:k], scores[row][sel][:k]
        out_ids.append(model.vocab.ids(top).tolist())
        out_scores.append(top_scores.astype(np.float32).tolist())
        sources.append(SOURCE_POPULAR if cold else SOURCE_HISTORY)
    return Recommendations(out_ids, out_scores, sources)


def intent_probability(
    model: OnnxModel, items: ListInput, event_types: ListInput | None, features: np.ndarray
) -> np.ndarray:
    """Purchase probability (B,) within the label horizon, from history and raw aggregates (B, F).

    ``features`` columns must be in the model's ``feature_names`` order (see :func:`feature_matrix`).
    """
    item_idx, type_idx = encode_sequences(items, model.vocab, model.max_len, event_types, model.type_names)
    feats = np.asarray(features, dtype=np.float32).reshape(len(item_idx), -1)
    (prob,) = model.session.run(None, {"item_idx": item_idx, "type_idx": type_idx, "features": feats})
    return prob.astype(np.float64)


def feature_matrix(model: OnnxModel, columns: dict[str, Sequence[float] | np.ndarray]) -> np.ndarray:
    """(B, F) float32 matrix of the model's ``feature_names`` taken from ``columns`` (name → values)."""
    names = list(model.config["feature_names"])
    missing = [n for n in names if n not in columns]
    if missing:
        raise ValueError(f"features {missing} required by the intent model are missing from the input")
    return np.column_stack([np.asarray(columns[n], dtype=np.float32) for n in names])

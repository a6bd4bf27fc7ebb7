"""Scoring functions shared by the API and the batch scorer: same encoder, same sessions, same answers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.encoding import ListInput, encode_sequences
from serving.artifact import OnnxModel

SOURCE_HISTORY = "history"
SOURCE_POPULAR = "popular"  # cold start: no known item in the history


@dataclass(frozen=True)
class Recommendations:
    item_ids: np.ndarray  # (B, k) object
    scores: np.ndarray  # (B, k) float32 (popularity counts for cold-start rows)
    source: np.ndarray  # (B,) object: "history" | "popular"


def _popular(
    model: OnnxModel, item_idx: np.ndarray, k: int, exclude_seen: bool
) -> tuple[np.ndarray, np.ndarray]:
    scores = np.broadcast_to(model.popularity, (len(item_idx), len(model.popularity))).copy()
    if exclude_seen:
        scores[np.repeat(np.arange(len(item_idx)), item_idx.shape[1]), item_idx.ravel()] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(scores, top, axis=1).astype(np.float32)


def recommend(
    model: OnnxModel, items: ListInput, event_types: ListInput | None, k: int, exclude_seen: bool = True
) -> Recommendations:
    """Top-k item ids per history (oldest event first). Histories with no known item get popular items."""
    max_k = int(model.config["max_k"])
    if not 1 <= k <= max_k:
        raise ValueError(f"k must be between 1 and {max_k}, got {k}")
    item_idx, type_idx = encode_sequences(items, model.vocab, model.max_len, event_types, model.type_names)
    flag = np.full(len(item_idx), 1.0 if exclude_seen else 0.0, dtype=np.float32)
    scores, idx = model.session.run(None, {"item_idx": item_idx, "type_idx": type_idx, "exclude_seen": flag})
    scores, idx = scores[:, :k], idx[:, :k]
    cold = ~(item_idx > 0).any(axis=1)
    if cold.any():
        pidx, pscores = _popular(model, item_idx[cold], k, exclude_seen)
        idx, scores = idx.copy(), scores.copy()
        idx[cold], scores[cold] = pidx, pscores
    source = np.where(cold, SOURCE_POPULAR, SOURCE_HISTORY).astype(object)
    return Recommendations(model.vocab.ids(idx), scores.astype(np.float32), source)


def intent_probability(
    model: OnnxModel, items: ListInput, event_types: ListInput | None, features: np.ndarray
) -> np.ndarray:
    """Purchase probability (B,) within the label horizon, from history and raw aggregates (B, F)."""
    item_idx, type_idx = encode_sequences(items, model.vocab, model.max_len, event_types, model.type_names)
    feats = np.asarray(features, dtype=np.float32).reshape(len(item_idx), -1)
    (prob,) = model.session.run(None, {"item_idx": item_idx, "type_idx": type_idx, "features": feats})
    return prob.astype(np.float64)

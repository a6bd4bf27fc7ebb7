"""Metric definitions used by every model, baseline and peer, so every number means the same thing.

Ranking (protocols R1/R2): one target per example; HR@k, NDCG@k = 1/log2(rank + 1), MRR@k = 1/rank, each
0 when the target is not in the top k (including targets unknown to the vocabulary, index 0).
Classification (I1/I2): ROC-AUC, PR-AUC, log-loss, Brier, ECE and top-decile lift, with the positive rate.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
)

INTENT_HEADLINE = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift@10%", "f1", "positive_rate")


def headline_metrics(task: str, k: int = 10) -> list[str]:
    """The metric columns every results table shows for a task (ranking metrics at the cut-off k)."""
    if task == "recommender":
        return [f"ndcg@{k}", f"hr@{k}", f"mrr@{k}"]
    return list(INTENT_HEADLINE)


def target_ranks(topk: np.ndarray, target: np.ndarray, k: int = 10) -> np.ndarray:
    """(N,) 1-based rank of each example's target in its top ``k`` (0 = not there; targets unknown to the
    vocabulary, index 0, are never a hit). ``topk`` (N, ≥k) item indices best first, ``target`` (N,)."""
    top = np.asarray(topk)[:, :k]
    tgt = np.asarray(target)[:, None]
    hit = (top == tgt) & (tgt > 0)  # (N, k)
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)


def ndcg_gains(ranks: np.ndarray) -> np.ndarray:
    """(N,) each example's NDCG from :func:`target_ranks` (one relevant item: 1/log2(rank + 1), 0 = miss);
    their mean is NDCG@k, and per-example gains are what a paired comparison resamples."""
    ranks = np.asarray(ranks)
    return np.where(ranks > 0, 1.0 / np.log2(np.maximum(ranks, 1) + 1), 0.0)


def ranking_metrics(topk: np.ndarray, target: np.ndarray, k: int = 10) -> dict[str, float]:
    """``topk`` (N, ≥k) item indices best first, ``target`` (N,) item index (0 = unknown, never a hit)."""
    rank = target_ranks(topk, target, k)
    found = rank > 0
    safe = np.maximum(rank, 1)
    return {
        f"hr@{k}": float(found.mean()) if len(found) else 0.0,
        f"ndcg@{k}": float(ndcg_gains(rank).mean()) if len(found) else 0.0,
        f"mrr@{k}": float(np.where(found, 1.0 / safe, 0.0).mean()) if len(found) else 0.0,
        "n_examples": len(found),
    }


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Equal-width-bin ECE: Σ_b |bin| / N · |mean(y_b) − mean(p_b)|."""
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    err = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            err += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(err)


def top_fraction_lift(y: np.ndarray, p: np.ndarray, fraction: float = 0.1) -> tuple[float, float]:
    """(lift, share of all positives captured) among the ``fraction`` highest scores."""
    n_top = max(1, round(fraction * len(y)))
    top = np.argsort(-p, kind="stable")[:n_top]
    rate = y.mean()
    lift = float(y[top].mean() / rate) if rate > 0 else 0.0
    captured = float(y[top].sum() / y.sum()) if y.sum() > 0 else 0.0
    return lift, captured


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """I1/I2 metrics of probabilities ``p`` for labels ``y`` (0/1); AUCs are NaN when one class is absent."""
    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    both = 0 < y.sum() < len(y)
    lift, captured = top_fraction_lift(y, p)
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
        "lift@10%": lift,
        "captured@10%": captured,
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
        "n_examples": len(y),
    }


def f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability threshold with the best F1 on (y, p): chosen on validation, applied to test."""
    precision, recall, thresholds = precision_recall_curve(
        np.asarray(y).astype(int), np.asarray(p, dtype=float)
    )
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))]) if len(thresholds) else 0.5


def with_f1(
    val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray] | None
) -> dict[str, dict[str, float]]:
    """:func:`binary_metrics` of the val and test (labels, probabilities), each with ``f1`` at the threshold
    that maximises F1 on validation (recorded as ``threshold``): the test F1 is an honest estimate.
    ``test`` None (a run that must not touch test): validation only."""
    threshold = f1_threshold(*val)
    out = {}
    for split, pair in (("val", val), ("test", test)):
        if pair is None:
            continue
        y, p = pair
        m = binary_metrics(y, p)
        m["f1"] = float(f1_score(np.asarray(y).astype(int), np.asarray(p) >= threshold, zero_division=0))
        m["threshold"] = threshold
        out[split] = m
    return out

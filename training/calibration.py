"""Fit a calibration map (:mod:`models.calibration`) on validation predictions, choosing the method honestly.

The map is fitted on the validation split only; the test split never informs it. With ``method="auto"``
the choice between none, temperature and isotonic is made by K-fold cross-validation **inside** the
validation split: each method is fitted on K − 1 folds and scored on the held-out fold, and the method
with the lowest out-of-fold log-loss (a proper scoring rule: it rewards calibration and sharpness) is then
refitted on the whole validation split. In-sample figures of an isotonic fit would always look perfect.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from models.calibration import EPS, METHODS, Calibration, logit
from training.metrics import expected_calibration_error

N_FOLDS = 5
MIN_PER_CLASS = 10  # fewer positives or negatives than this in validation: no calibration is fitted


def fit_temperature(y: np.ndarray, p: np.ndarray) -> Calibration:
    """T minimising the log-loss of σ(logit(p) / T), searched over log T in [−3, 3]."""
    z, y = logit(p), np.asarray(y, dtype=np.float64)

    def nll(log_t: float) -> float:
        q = np.clip(1.0 / (1.0 + np.exp(-z / np.exp(log_t))), EPS, 1 - EPS)
        return float(-(y * np.log(q) + (1 - y) * np.log1p(-q)).mean())

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return Calibration("temperature", temperature=float(np.exp(res.x)))


def fit_isotonic(y: np.ndarray, p: np.ndarray) -> Calibration:
    """Isotonic regression of the labels on p; knots kept as a piecewise-linear map."""
    iso = IsotonicRegression(y_min=EPS, y_max=1 - EPS, out_of_bounds="clip").fit(p, y)
    return Calibration(
        "isotonic", x=tuple(map(float, iso.X_thresholds_)), y=tuple(map(float, iso.y_thresholds_))
    )


def fit_method(method: str, y: np.ndarray, p: np.ndarray) -> Calibration:
    if method == "temperature":
        return fit_temperature(y, p)
    if method == "isotonic":
        return fit_isotonic(y, p)
    if method == "none":
        return Calibration()
    raise ValueError(f"calibration method must be one of {(*METHODS, 'auto')}, got {method!r}")


def choose_calibration(
    y_val: np.ndarray, p_val: np.ndarray, method: str = "auto", seed: int = 0
) -> tuple[Calibration, dict[str, Any]]:
    """The calibration map fitted on validation, and a record of how it was chosen.

    ``method``: ``auto`` (cross-validated choice, see the module doc), or one of none / temperature /
    isotonic. The record holds the out-of-fold log-loss and ECE of every candidate (auto), the chosen
    method, and why (e.g. too few positives to fit anything).
    """
    y = np.asarray(y_val).astype(int)
    p = np.asarray(p_val, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        why = f"validation has {n_pos} positives and {n_neg} negatives (< {MIN_PER_CLASS}): not calibrated"
        return Calibration(), {"method": "none", "requested": method, "reason": why}
    if method != "auto":
        return fit_method(method, y, p), {"method": method, "requested": method, "reason": "requested"}
    folds = StratifiedKFold(n_splits=min(N_FOLDS, n_pos, n_neg), shuffle=True, random_state=seed)
    oof = {m: np.zeros(len(y)) for m in METHODS}
    for fit_idx, held_idx in folds.split(p, y):
        for m in METHODS:
            oof[m][held_idx] = fit_method(m, y[fit_idx], p[fit_idx]).apply(p[held_idx])
    candidates = {
        m: {"oof_log_loss": float(log_loss(y, q, labels=[0, 1])), "oof_ece": expected_calibration_error(y, q)}
        for m, q in oof.items()
    }
    best = min(METHODS, key=lambda m: candidates[m]["oof_log_loss"])
    record = {
        "method": best,
        "requested": "auto",
        "reason": f"lowest {folds.get_n_splits()}-fold out-of-fold log-loss on validation",
        "candidates": candidates,
    }
    return fit_method(best, y, p), record

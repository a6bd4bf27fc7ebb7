"""Calibration maps: fitted on validation only, chosen by out-of-fold log-loss, applied identically everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import EPS, Calibration, logit
from training.calibration import choose_calibration, fit_isotonic, fit_temperature
from training.metrics import expected_calibration_error


def _overconfident(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities; the 'model' reports σ(T · logit(true)) (too sharp for T > 1)."""
    rng = np.random.default_rng(seed)
    true = 1 / (1 + np.exp(-rng.normal(-1.0, 1.5, n)))
    y = (rng.random(n) < true).astype(int)
    return y, 1 / (1 + np.exp(-temperature * logit(true)))


def test_temperature_recovers_the_overconfidence_and_fixes_the_ece() -> None:
    y, p = _overconfident(20_000, 3.0, seed=0)
    cal = fit_temperature(y, p)
    assert cal.temperature == pytest.approx(3.0, rel=0.1)
    assert expected_calibration_error(y, cal.apply(p)) < 0.02 < expected_calibration_error(y, p)
    # a monotone map: the ranking (and so ROC-AUC) is unchanged
    assert (np.diff(cal.apply(np.sort(p))) >= 0).all()


def test_isotonic_fixes_a_base_rate_shift_that_temperature_cannot() -> None:
    y, p = _overconfident(20_000, 1.0, seed=1)
    shifted = np.clip(p * 0.4, EPS, 1)  # the model under-predicts every customer by the same factor
    iso, temp = fit_isotonic(y, shifted), fit_temperature(y, shifted)
    assert expected_calibration_error(y, iso.apply(shifted)) < 0.02
    assert expected_calibration_error(y, temp.apply(shifted)) > expected_calibration_error(
        y, iso.apply(shifted)
    )


def test_auto_chooses_by_out_of_fold_log_loss_on_validation_only() -> None:
    y, p = _overconfident(5_000, 3.0, seed=2)
    cal, record = choose_calibration(y, p, "auto", seed=0)
    losses = {m: c["oof_log_loss"] for m, c in record["candidates"].items()}
    assert record["method"] == cal.method == min(losses, key=losses.__getitem__)
    assert cal.method != "none" and losses[cal.method] < losses["none"]
    y_test, p_test = _overconfident(5_000, 3.0, seed=3)  # a later split, never seen by the fit
    assert expected_calibration_error(y_test, cal.apply(p_test)) < expected_calibration_error(y_test, p_test)


def test_too_few_positives_leave_the_probabilities_alone() -> None:
    y = np.zeros(200, dtype=int)
    y[:3] = 1
    cal, record = choose_calibration(y, np.linspace(0.01, 0.9, 200))
    assert cal == Calibration() and record["method"] == "none" and "3 positives" in record["reason"]


def test_a_requested_method_is_fitted_as_asked() -> None:
    y, p = _overconfident(2_000, 2.0, seed=4)
    assert choose_calibration(y, p, "isotonic")[0].method == "isotonic"
    with pytest.raises(ValueError, match="calibration method"):
        choose_calibration(y, p, "platt")


def test_maps_round_trip_and_refuse_nonsense() -> None:
    for cal in (
        Calibration(),
        Calibration("temperature", 1.7),
        Calibration("isotonic", x=(0.1, 0.5), y=(0.2, 0.3)),
    ):
        assert Calibration.from_dict(cal.to_dict()) == cal
    assert Calibration.from_dict(None) == Calibration()
    p = np.array([0.0, 0.05, 0.3, 0.9, 1.0])
    assert np.allclose(Calibration().apply(p), np.clip(p, EPS, 1 - EPS))
    iso = Calibration("isotonic", x=(0.1, 0.5), y=(0.2, 0.3))
    assert iso.apply(np.array([0.0, 0.3, 1.0])).tolist() == pytest.approx([0.2, 0.25, 0.3])
    with pytest.raises(ValueError, match="temperature"):
        Calibration("temperature", -1.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibration("isotonic", x=(0.5, 0.1), y=(0.2, 0.3))
    with pytest.raises(ValueError, match="method"):
        Calibration("platt")  # type: ignore[arg-type]

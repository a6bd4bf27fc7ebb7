"""Probability calibration maps, numpy only: fitted by training (on validation), applied by serving.

A classifier trained with BCE on early cutoffs ranks customers well but its probabilities drift: the
positive rate moves between cutoffs and the network grows over-confident as it fits. A calibration map
turns the network's probability into one that matches observed frequencies. Two maps are supported:

- ``temperature``: p' = σ(logit(p) / T), one parameter; keeps the ranking, fixes over- or
  under-confidence (Guo et al. 2017).
- ``isotonic``: a monotone piecewise-linear map through fitted (x, y) knots; also fixes a base-rate shift
  and any monotone distortion, at the cost of more data needed.

``none`` is the identity. The map travels in the bundle's ``intent/config.json`` (``calibration``) so the
batch scorer and the API apply the same one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import ConfigDict

Method = Literal["none", "temperature", "isotonic"]
METHODS: tuple[Method, ...] = ("none", "temperature", "isotonic")
EPS = 1e-6  # probabilities are kept in [EPS, 1 - EPS]: log-loss stays finite, logits stay finite


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


@dataclass(frozen=True)
class Calibration:
    # unknown keys are errors when a spec (models.spec) is read
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    method: Method = "none"
    temperature: float = 1.0  # ``temperature`` only
    x: tuple[float, ...] = field(default=())  # ``isotonic`` only: knots, raw probability ascending
    y: tuple[float, ...] = field(default=())  # ``isotonic`` only: calibrated probability at each knot

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}, got {self.method!r}")
        if self.method == "temperature" and not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if self.method == "isotonic":
            x, y = np.asarray(self.x), np.asarray(self.y)
            if len(x) < 1 or len(x) != len(y) or (np.diff(x) < 0).any() or (np.diff(y) < 0).any():
                raise ValueError("isotonic calibration needs as many x as y knots, both non-decreasing")

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (same shape as ``p``), in [EPS, 1 − EPS]."""
        p = np.asarray(p, dtype=np.float64)
        if self.method == "temperature":
            out = 1.0 / (1.0 + np.exp(-logit(p) / self.temperature))
        elif self.method == "isotonic":
            out = np.interp(p, self.x, self.y)  # constant beyond the outer knots
        else:
            out = p
        return np.clip(out, EPS, 1 - EPS)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"method": self.method}
        if self.method == "temperature":
            doc["temperature"] = self.temperature
        if self.method == "isotonic":
            doc["x"], doc["y"] = list(self.x), list(self.y)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any] | None) -> Calibration:
        """A map from :meth:`to_dict`'s output; None (bundles exported before calibration) is the identity."""
        if not doc:
            return cls()
        return cls(
            doc["method"],
            float(doc.get("temperature", 1.0)),
            tuple(float(v) for v in doc.get("x", ())),
            tuple(float(v) for v in doc.get("y", ())),
        )

"""The oracle of protocol I1 on synthetic data: each example's true chance of a purchase in its label window.

The generator writes the expected purchases of every person on every day (``ground_truth/
purchase_intensity.parquet``, :mod:`data_prep.synthetic.truth`). For an example (customer c, cutoff T) with
horizon h, the oracle probability is

    p = 1 - exp(-sum over the persons behind c and the days of [T, T + h) of the recorded intensity)

The persons behind c are those of c's identifiers as resolved at T (the resolution prep used for the
example; :func:`data_prep.pipeline.identity_map_as_of`), read from ``ground_truth/identifiers.csv`` the way
prep scores identity resolution (:func:`data_prep.pipeline.truth_identifiers`); a shared identifier (a
household phone) brings every person using it. The recorded intensity counts the purchases that carry one
of the person's identifiers (store baskets without a card or phone never reach a label).

What the oracle knows that no model can: each person's latent rate (propensity, lifecycle, replenishment due
dates, promotion response) and the carts abandoned inside the window, which raise the rate of the days after
them; so it is a slightly optimistic ceiling. What it does not know: faults that drop a purchase row, and
purchases that prep attributes to another customer (a false merge, a device not yet linked): there it can
be wrong the other way. docs/data.md, "The synthetic retailer", has the details.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from data_prep import engine, pii
from data_prep import schema as S
from data_prep.features import TimeSplits
from data_prep.generate import GT_DATE, GT_INTENSITY_FILE, GT_RECORDED_INTENSITY
from data_prep.manifest import file_sha256, read_manifest
from data_prep.pipeline import identity_map_as_of, read_evidence, truth_identifiers
from training.metrics import binary_metrics, with_f1

ORACLE = "oracle"  # the row name beside the models
ORACLE_P = "oracle_p"  # column of the per-example probability
N_PERSONS = "n_persons"  # column: persons behind the customer at the cutoff


@dataclass(frozen=True)
class OracleResult:
    split: str
    examples: pd.DataFrame  # customer_id, cutoff, label, n_persons, oracle_p (the split's row order)
    metrics: dict[str, float]  # training.metrics.binary_metrics of oracle_p


def raw_dir_of(features_dir: Path) -> Path | None:
    """The raw folder (holding ``01_raw/``) that prep read to build ``features_dir``, from the manifest of
    ``02_events``; None when there is no manifest or a raw file changed since (its SHA-256 differs)."""
    events_dir = Path(features_dir).parent / S.EVENTS_DIR
    if not (events_dir / S.MANIFEST_FILE).is_file():
        return None
    inputs = read_manifest(events_dir).get("inputs", {})
    raws = {
        Path(p).parents[2]
        for p in inputs
        if len(Path(p).parents) > 2 and Path(p).parents[1].name == S.RAW_DIR
    }
    if len(raws) != 1:
        return None
    if not all(Path(p).is_file() and file_sha256(Path(p)) == sha for p, sha in inputs.items()):
        return None
    return raws.pop()


def ground_truth_intensity(features_dir: Path) -> Path | None:
    """``ground_truth/purchase_intensity.parquet`` beside the raw data of ``features_dir``, None without one
    (data that is not synthetic, or generated before the intensity was written)."""
    raw = raw_dir_of(features_dir)
    path = None if raw is None else raw / S.GROUND_TRUTH_DIR / GT_INTENSITY_FILE
    return path if path is not None and path.is_file() else None


def window_intensity(
    path: Path, start: datetime, days: int, column: str = GT_RECORDED_INTENSITY
) -> pd.Series:
    """person_id → the sum of ``column`` over the days [start, start + days)."""
    lo, hi = start.date(), (start + timedelta(days=days)).date()
    t = pq.read_table(
        path, columns=[S.GT_PERSON_ID, GT_DATE, column], filters=[(GT_DATE, ">=", lo), (GT_DATE, "<", hi)]
    )
    frame = t.to_pandas()
    return frame.groupby(S.GT_PERSON_ID)[column].sum().astype(np.float64)


def oracle_probabilities(features_dir: Path, split: str, raw: Path, key: bytes | None = None) -> pd.DataFrame:
    """The split's I1 examples (customer_id, cutoff, label) with n_persons and oracle_p (module docstring)."""
    features_dir = Path(features_dir)
    examples = pd.read_parquet(
        features_dir / S.split_file("intent", split), columns=[S.CUSTOMER_ID, S.CUTOFF, S.LABEL]
    )
    horizon = TimeSplits.from_json((features_dir / S.SPLITS_FILE).read_text()).horizon_days
    truth = truth_identifiers(raw, pii.load_key() if key is None else key)
    intensity = raw / S.GROUND_TRUTH_DIR / GT_INTENSITY_FILE
    con = engine.connect()
    evidence = read_evidence(con, features_dir.parent)
    parts = []
    for cutoff in sorted(examples[S.CUTOFF].unique()):
        at = pd.Timestamp(cutoff).to_pydatetime()
        id_map = identity_map_as_of(con, evidence, at).to_pandas()
        persons = id_map.merge(truth, on=[S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY])[
            [S.CUSTOMER_ID, S.GT_PERSON_ID]
        ]
        persons = persons.drop_duplicates()
        rate = persons[S.GT_PERSON_ID].map(window_intensity(intensity, at, horizon)).fillna(0.0)
        per = persons.assign(_rate=rate.to_numpy()).groupby(S.CUSTOMER_ID)
        parts.append(pd.DataFrame({S.CUTOFF: cutoff, N_PERSONS: per.size(), "_rate": per["_rate"].sum()}))
    summed = pd.concat(parts).rename_axis(S.CUSTOMER_ID).reset_index()
    out = examples.merge(summed, on=[S.CUSTOMER_ID, S.CUTOFF], how="left")
    out[N_PERSONS] = out[N_PERSONS].fillna(0).astype(np.int64)
    out[ORACLE_P] = -np.expm1(-out.pop("_rate").fillna(0.0).to_numpy())
    return out


def oracle(
    features_dir: Path, split: str, raw: Path | None = None, key: bytes | None = None
) -> OracleResult | None:
    """The oracle's examples and metrics on one I1 split; None when ``features_dir`` has no ground truth."""
    raw = raw if raw is not None else raw_dir_of(features_dir)
    if raw is None or not (raw / S.GROUND_TRUTH_DIR / GT_INTENSITY_FILE).is_file():
        return None
    examples = oracle_probabilities(features_dir, split, raw, key)
    return OracleResult(
        split, examples, binary_metrics(examples[S.LABEL].to_numpy(), examples[ORACLE_P].to_numpy())
    )


def oracle_summary(features_dir: Path) -> dict[str, Any] | None:
    """Validation and test metrics of the oracle, as a run reports its model's (``training.metrics.with_f1``:
    F1 at the threshold best on validation), and where the ground truth came from; None without one."""
    raw = raw_dir_of(features_dir)
    if raw is None or not (raw / S.GROUND_TRUTH_DIR / GT_INTENSITY_FILE).is_file():
        return None
    val, test = (oracle_probabilities(features_dir, s, raw) for s in (S.SPLIT_VAL, S.SPLIT_TEST))
    metrics = with_f1(
        (val[S.LABEL].to_numpy(), val[ORACLE_P].to_numpy()),
        (test[S.LABEL].to_numpy(), test[ORACLE_P].to_numpy()),
    )
    return {"ground_truth": str(raw / S.GROUND_TRUTH_DIR / GT_INTENSITY_FILE), **metrics}


LEARNING_FRACTIONS = (0.25, 0.5, 1.0)


def oracle_gap(features_dir: Path, seed: int = 0) -> dict[str, Any] | None:
    """Where the gap between a model and the oracle lies, on the I1 test split, with gradient boosting on the
    intent features (``training.baselines``) as the probe: its learning curve (trained on growing random
    shares of the training rows), the examples the oracle gives exactly 0 (every person behind them lapsed
    before the cutoff: a latent state a model can only infer from silence), how well the probe separates
    those from live non-buyers, and both ROC-AUCs on the live examples alone. None without ground truth."""
    from sklearn.metrics import roc_auc_score

    from training.baselines import gradient_boosting_baseline

    result = oracle(features_dir, S.SPLIT_TEST)
    if result is None:
        return None
    names = list(S.INTENT_FEATURES)
    train = pd.read_parquet(features_dir / S.split_file("intent", S.SPLIT_TRAIN), columns=[*names, S.LABEL])
    test = pd.read_parquet(features_dir / S.split_file("intent", S.SPLIT_TEST), columns=[*names, S.LABEL])
    x, y = train[names].to_numpy(), train[S.LABEL].to_numpy()
    order = np.random.default_rng(seed).permutation(len(y))
    curve, p = [], np.zeros(len(test))
    for share in LEARNING_FRACTIONS:
        rows = order[: max(1, int(share * len(y)))]
        p = gradient_boosting_baseline(seed).fit(x[rows], y[rows]).predict_proba(test[names].to_numpy())[:, 1]
        curve.append({"share": share, "rows": len(rows), "roc_auc": float(roc_auc_score(test[S.LABEL], p))})
    label, oracle_p = result.examples[S.LABEL].to_numpy(), result.examples[ORACLE_P].to_numpy()
    alive = oracle_p > 0
    negatives = label == 0
    return {
        "examples": len(label),
        "oracle_roc_auc": result.metrics["roc_auc"],
        "probe_roc_auc": curve[-1]["roc_auc"],
        "learning_curve": curve,
        "oracle_zero": int((~alive).sum()),
        "oracle_zero_positives": int(label[~alive].sum()),
        "probe_lapsed_vs_live_non_buyers_roc_auc": float(roc_auc_score(alive[negatives], p[negatives])),
        "live_oracle_roc_auc": float(roc_auc_score(label[alive], oracle_p[alive])),
        "live_probe_roc_auc": float(roc_auc_score(label[alive], p[alive])),
    }

"""The I1 oracle (experiments/oracle.py) on the 150-customer retailer prepared once per session, and the row it
adds to ``o2o evaluate``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from data_prep import schema as S
from data_prep.generate import GT_INTENSITY_FILE
from experiments import evaluate as ev
from experiments.oracle import N_PERSONS, ORACLE, ORACLE_P, oracle, oracle_gap, oracle_summary, raw_dir_of
from tests.conftest import Prepared, copy_prepared
from training.config import load_config
from training.metrics import binary_metrics
from training.train import RunResult


def _own_copy(prepared: Prepared, dest: Path) -> Prepared:
    """A copy whose 02_events manifest names its own raw files (as if prep had run there)."""
    copy = copy_prepared(prepared, dest)
    manifest = copy.data / S.EVENTS_DIR / S.MANIFEST_FILE
    manifest.write_text(manifest.read_text().replace(str(prepared.data), str(copy.data)))
    return copy


def test_oracle_scores_every_example_and_beats_chance(prepared_150: Prepared) -> None:
    features = prepared_150.data / S.FEATURES_DIR
    assert raw_dir_of(features) == prepared_150.data
    result = oracle(features, S.SPLIT_TEST)
    assert result is not None
    e = result.examples
    split = pd.read_parquet(features / S.split_file("intent", S.SPLIT_TEST))
    assert list(e[S.CUSTOMER_ID]) == list(split[S.CUSTOMER_ID]) and list(e[S.LABEL]) == list(split[S.LABEL])
    assert (e[N_PERSONS] >= 1).all()  # every customer has a person behind it
    p = e[ORACLE_P]
    assert ((p >= 0) & (p < 1)).all() and ((p > 0) & (p < 1)).mean() > 0.5
    assert (e.loc[p == 0, S.LABEL] == 0).all()  # a lapsed person does not buy
    assert result.metrics["roc_auc"] > 0.7 and result.metrics["n_examples"] == len(split)
    assert abs(p.mean() - e[S.LABEL].mean()) < 0.1  # the rates are probabilities, not just scores


def test_the_oracle_sums_the_intensity_of_the_label_window(prepared_150: Prepared, tmp_path: Path) -> None:
    """Doubling every intensity inside the test window moves each probability p to 1 - (1 - p)^2; outside
    it, nothing moves."""
    copy = copy_prepared(prepared_150, tmp_path)
    features = copy.data / S.FEATURES_DIR
    before = oracle(features, S.SPLIT_TEST)
    assert before is not None
    path = copy.data / S.GROUND_TRUTH_DIR / GT_INTENSITY_FILE
    t = pd.read_parquet(path)
    cutoff = pd.Timestamp(before.examples[S.CUTOFF].iloc[0]).tz_localize(None)
    day = pd.to_datetime(t["date"])
    inside = (day >= cutoff) & (day < cutoff + pd.Timedelta(days=14))
    for c in t.columns[2:]:
        t.loc[inside, c] *= 2
        t.loc[(day < cutoff - pd.Timedelta(days=1)), c] *= 5  # before the window: no effect
    t.to_parquet(path, index=False)
    after = oracle(features, S.SPLIT_TEST, raw=copy.data)
    assert after is not None
    expected = 1 - (1 - before.examples[ORACLE_P]) ** 2
    np.testing.assert_allclose(after.examples[ORACLE_P], expected, rtol=1e-5, atol=1e-6)


def test_no_oracle_without_ground_truth_or_when_the_raw_data_changed(
    prepared_150: Prepared, tmp_path: Path
) -> None:
    copy = _own_copy(prepared_150, tmp_path)
    features = copy.data / S.FEATURES_DIR
    assert raw_dir_of(features) == copy.data
    raw_file = copy.data / S.RAW_DIR / S.RAW_CRM_DIR / S.RAW_CRM_FILE
    raw_file.write_text(raw_file.read_text() + raw_file.read_text().splitlines()[1] + "\n")
    assert raw_dir_of(features) is None and oracle(features, S.SPLIT_TEST) is None  # not what prep read
    shutil.copy(prepared_150.data / S.RAW_DIR / S.RAW_CRM_DIR / S.RAW_CRM_FILE, raw_file)
    assert raw_dir_of(features) == copy.data
    (copy.data / S.GROUND_TRUTH_DIR / GT_INTENSITY_FILE).unlink()
    assert oracle(features, S.SPLIT_TEST) is None and oracle_summary(features) is None


def _fake_train(features: Path) -> Any:
    """A stand-in for ``training.train.train``: metrics of a fixed scorer, no training."""
    split = {s: pd.read_parquet(features / S.split_file("intent", s)) for s in (S.SPLIT_VAL, S.SPLIT_TEST)}

    def train(cfg: Any, runs_dir: Path, progress_bar: bool = False) -> RunResult:
        rng = np.random.default_rng(cfg.train.seed)
        scores = {s: {**binary_metrics(f[S.LABEL], rng.random(len(f))), "f1": 0.5} for s, f in split.items()}
        run_dir = runs_dir / f"fake-{cfg.train.seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = {"task": cfg.task, "protocol": "I1", "model": scores, "baselines": {"logistic": scores}}
        return RunResult(run_dir, {**metrics, "train_seconds": 0.0})

    return train


def test_evaluate_prints_the_oracle_beside_the_models(
    prepared_150: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    features = prepared_150.data / S.FEATURES_DIR
    monkeypatch.setattr(ev, "train", _fake_train(features))
    cfg = load_config("intent", None, [f"data.features_dir={features}", "name=tiny"])
    result = ev.evaluate(cfg, [0, 1], tmp_path / "runs")
    test = result.summary["test"]
    assert list(test) == ["ours", "logistic", ORACLE]
    found = result.summary[ORACLE]
    assert test[ORACLE]["roc_auc"] == {"mean": found["test"]["roc_auc"], "std": 0.0, "min": found["test"]["roc_auc"],
                                       "max": found["test"]["roc_auc"], "n": 1}  # fmt: skip
    assert found["test"]["roc_auc"] > test["ours"]["roc_auc"]["mean"]  # the ceiling above a coin flip
    assert set(result.summary["val"]) == set(test)
    saved = json.loads((result.out_dir / ev.EVALUATION_JSON).read_text())
    assert saved[ORACLE]["ground_truth"].endswith(GT_INTENSITY_FILE)
    md = (result.out_dir / ev.EVALUATION_MD).read_text()
    assert f"| {ORACLE} |" in md and "the ceiling" in md


def test_evaluate_adds_no_oracle_for_other_targets_or_data(
    prepared_150: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _own_copy(prepared_150, tmp_path / "data")
    features = copy.data / S.FEATURES_DIR
    monkeypatch.setattr(ev, "train", _fake_train(features))
    session = load_config("intent", None, [f"data.features_dir={features}", "target=session"])
    purchase = load_config("intent", None, [f"data.features_dir={features}"])
    for cfg, truth in ((session, True), (purchase, False)):  # I2 with ground truth; I1 without
        if not truth:
            (copy.data / S.GROUND_TRUTH_DIR / GT_INTENSITY_FILE).unlink()
        result = ev.evaluate(cfg, [0], tmp_path / "runs")
        assert ORACLE not in result.summary and ORACLE not in result.summary["test"]
        assert f"| {ORACLE} |" not in (result.out_dir / ev.EVALUATION_MD).read_text()


def test_oracle_gap_splits_the_examples_the_way_the_oracle_sees_them(prepared_150: Prepared) -> None:
    features = prepared_150.data / S.FEATURES_DIR
    gap = oracle_gap(features)
    assert gap is not None
    result = oracle(features, S.SPLIT_TEST)
    assert result is not None
    p = result.examples[ORACLE_P]
    assert gap["examples"] == len(p) and gap["oracle_zero"] == int((p == 0).sum())
    assert gap["oracle_zero_positives"] == 0  # nobody lapsed buys
    train_rows = len(pd.read_parquet(features / S.split_file("intent", S.SPLIT_TRAIN), columns=[S.LABEL]))
    assert [c["rows"] for c in gap["learning_curve"]] == [int(f * train_rows) for f in (0.25, 0.5, 1.0)]
    assert gap["probe_roc_auc"] == gap["learning_curve"][-1]["roc_auc"]
    assert gap["oracle_roc_auc"] == pytest.approx(result.metrics["roc_auc"])
    for key in ("probe_lapsed_vs_live_non_buyers_roc_auc", "live_oracle_roc_auc", "live_probe_roc_auc"):
        assert 0.0 <= gap[key] <= 1.0


def test_oracle_gap_needs_ground_truth(prepared_150: Prepared, tmp_path: Path) -> None:
    copy = _own_copy(prepared_150, tmp_path)
    (copy.data / S.GROUND_TRUTH_DIR / GT_INTENSITY_FILE).unlink()
    assert oracle_gap(copy.data / S.FEATURES_DIR) is None

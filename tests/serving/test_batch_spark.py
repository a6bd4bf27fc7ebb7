"""`o2o score --engine spark`: the same scorer run inside Spark (mapInArrow) on local Spark gives exactly the
arrow engine's rows: same customers, items, scores, probabilities and segments, and the same customers left
out for lack of marketing consent (issue 7)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from data_prep import schema as S
from serving.artifact import BundleError, load_bundle
from serving.batch import (
    CHURN_RISK,
    INTENT_PROBABILITY,
    REC_ITEMS,
    REC_SCORES,
    REC_SOURCE,
    SCORES_FILE,
    score_snapshot,
)
from serving.inputs import ScoringInputError
from serving.scoring import ItemFilter

pyspark = pytest.importorskip(
    "pyspark", reason="the spark extra is not installed (pip install -e '.[spark]')"
)
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs a Java runtime (java on PATH or JAVA_HOME)", allow_module_level=True)

from serving.batch_spark import score_snapshot_spark, worker_bundle  # noqa: E402

pytestmark = pytest.mark.slow
CHUNK = 50  # rows per Arrow batch on the executors: several batches per partition


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    from data_prep.engine import spark_session

    session = spark_session("o2o-score-test", {"spark.default.parallelism": "2"})
    yield session
    session.stop()


def _rows(dataset: Path) -> pd.DataFrame:
    df = pd.read_parquet(dataset).sort_values(S.CUSTOMER_ID).reset_index(drop=True)
    for c in (REC_ITEMS, REC_SCORES):
        df[c] = df[c].map(list)
    return df


def _consenting(snapshot: Path) -> set[str]:
    t = pq.read_table(snapshot, columns=[S.CUSTOMER_ID, S.CONSENT_MARKETING])
    return set(t.filter(pc.fill_null(t.column(S.CONSENT_MARKETING), False)).column(S.CUSTOMER_ID).to_pylist())


def _assert_same_rows(arrow: pd.DataFrame, spark: pd.DataFrame) -> None:
    assert list(spark.columns) == list(arrow.columns)
    assert spark[S.CUSTOMER_ID].tolist() == arrow[S.CUSTOMER_ID].tolist()
    assert spark[REC_ITEMS].tolist() == arrow[REC_ITEMS].tolist()
    for a, b in zip(arrow[REC_SCORES], spark[REC_SCORES], strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    for c in (INTENT_PROBABILITY, CHURN_RISK):
        if c in arrow:
            np.testing.assert_allclose(spark[c], arrow[c], rtol=0, atol=1e-6)
    for c in (REC_SOURCE, S.SEGMENT, S.CHANNEL_MIX, S.CUTOFF, S.LABEL):
        if c in arrow:
            assert spark[c].tolist() == arrow[c].tolist(), c


def _with_unknown_consent(snapshot: Path, out: Path) -> Path:
    """The snapshot with every 7th customer's marketing consent unknown (null: counts as no)."""
    t = pq.read_table(snapshot)
    at = t.schema.get_field_index(S.CONSENT_MARKETING)
    consent = t.column(at).to_pylist()
    consent = [None if i % 7 == 0 else c for i, c in enumerate(consent)]
    assert any(c for c in consent) and any(c is False for c in consent)
    pq.write_table(t.set_column(at, S.CONSENT_MARKETING, pa.array(consent, pa.bool_())), out)
    return out


def test_spark_engine_gives_the_arrow_engines_rows(tiny_pipeline, spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    snapshot = _with_unknown_consent(tiny_pipeline.features / S.SNAPSHOT_FILE, tmp_path / "snapshot.parquet")
    bundle = load_bundle(tiny_pipeline.bundle)
    arrow_out = score_snapshot(bundle, snapshot, tmp_path / "arrow", chunk_size=CHUNK)
    out = tmp_path / "spark"
    dataset = score_snapshot_spark(tiny_pipeline.bundle, snapshot, out, chunk_size=CHUNK, session=spark)

    assert dataset == out / SCORES_FILE and (dataset / "_SUCCESS").is_file()
    assert sorted(dataset.glob("part-*.parquet"))
    arrow, spark_rows = _rows(arrow_out), _rows(dataset)
    assert set(spark_rows[S.CUSTOMER_ID]) == _consenting(snapshot)  # nobody without consent
    assert spark_rows[S.CUSTOMER_ID].is_unique
    _assert_same_rows(arrow, spark_rows)
    assert pq.read_schema(next(dataset.glob("part-*.parquet"))).field(S.CUTOFF).type == pa.timestamp(
        "us", tz="UTC"
    )

    manifest = json.loads((out / S.MANIFEST_FILE).read_text())
    arrow_manifest = json.loads((tmp_path / "arrow" / S.MANIFEST_FILE).read_text())
    assert manifest["engine"] == "spark" and arrow_manifest["engine"] == "arrow"
    assert manifest["rows_in"] == pq.read_metadata(snapshot).num_rows == arrow_manifest["rows_in"]
    assert manifest["rows_scored"] == len(spark_rows) == arrow_manifest["rows_scored"]
    assert manifest["rows_in"] == manifest["rows_scored"] + manifest["excluded_no_marketing_consent"]
    assert manifest["excluded_no_marketing_consent"] == arrow_manifest["excluded_no_marketing_consent"] > 0
    assert manifest["bundle_version"] == bundle.version and manifest["k"] == 10
    assert manifest["snapshot_sha256"] == arrow_manifest["snapshot_sha256"]

    # the same settings through both engines again: filters, another k, no consent gate; the rerun
    # overwrites the spark output folder
    category = next(c for c in bundle.recommender.categories if c is not None)
    rules = ItemFilter(exclude_categories=(category,))
    settings = {"k": 5, "exclude_seen": False, "rules": rules, "campaign": False}
    arrow_out = score_snapshot(bundle, snapshot, tmp_path / "arrow2", chunk_size=CHUNK, **settings)
    dataset = score_snapshot_spark(bundle, snapshot, out, chunk_size=CHUNK, session=spark, **settings)
    arrow, spark_rows = _rows(arrow_out), _rows(dataset)
    assert len(spark_rows) == manifest["rows_in"] and spark_rows[S.CUSTOMER_ID].is_unique
    _assert_same_rows(arrow, spark_rows)
    allowed = set(np.asarray(bundle.recommender.vocab.lookup(np.array(spark_rows[REC_ITEMS].sum()))))
    assert all(bundle.recommender.categories[i] != category for i in allowed)
    manifest = json.loads((out / S.MANIFEST_FILE).read_text())
    assert manifest["excluded_no_marketing_consent"] == 0 and manifest["filters"]["exclude_categories"] == [
        category
    ]

    # the executors: no torch / Lightning / training, and each Python worker loaded the bundle once
    # (two scoring runs above) and kept it
    def probe(batches):  # type: ignore[no-untyped-def]
        import sys

        import pyarrow as pa

        for _ in batches:
            mod = sys.modules.get("serving.batch_spark")
            heavy = [m for m in ("torch", "lightning", "training", "bentoml") if m in sys.modules]
            yield pa.RecordBatch.from_pydict(
                {"loaded": [len(mod._BUNDLES) if mod else -1], "heavy": [",".join(heavy)]}
            )

    workers = spark.range(0, 4, numPartitions=4).mapInArrow(probe, "loaded long, heavy string").collect()
    assert all(w["heavy"] == "" for w in workers), workers
    assert all(w["loaded"] <= 1 for w in workers) and any(w["loaded"] == 1 for w in workers), workers


def test_cli_engine_spark_feeds_the_campaign_report(tiny_pipeline, spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from experiments.cli import app

    runner = CliRunner()
    args = ["score", "--artifact", str(tiny_pipeline.bundle), "--features", str(tiny_pipeline.features)]
    r = runner.invoke(app, [*args, "--out", str(tmp_path), "--split", "test", "--engine", "spark"])
    assert r.exit_code == 0, r.output
    held_out = tmp_path / "held_out_test"
    assert json.loads((held_out / S.MANIFEST_FILE).read_text())["engine"] == "spark"
    scores = pd.read_parquet(held_out / SCORES_FILE)
    test = pd.read_parquet(tiny_pipeline.features / S.split_file("intent", "test"))
    assert set(scores[S.CUSTOMER_ID]) == set(test[S.CUSTOMER_ID]) & _consenting(
        tiny_pipeline.features / S.SNAPSHOT_FILE
    )
    r = runner.invoke(app, ["report", "campaign", "--scores", str(held_out), "--budget", "30"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*args, "--out", str(tmp_path), "--engine", "dask"])
    assert r.exit_code == 2 and "dask" in r.output


def test_worker_bundle_is_cached_and_verified(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_pipeline.bundle, copy)
    first = worker_bundle(str(copy), 1)
    assert worker_bundle(str(copy), 1) is first  # loaded once per worker
    with (copy / "recommender" / S.ONNX_FILE).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(copy)
    sums = json.loads((copy / S.CHECKSUMS_FILE).read_text())
    sums["extra.txt"] = "0" * 64
    (copy / S.CHECKSUMS_FILE).write_text(json.dumps(sums))  # another manifest: loaded (and verified) afresh
    with pytest.raises(BundleError):
        worker_bundle(str(copy), 1)


def test_the_snapshot_is_checked_before_spark_starts(
    tiny_pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The spark engine refuses a snapshot as the arrow engine does, before a Spark session exists."""
    import data_prep.engine

    def no_spark(*args: object, **kwargs: object) -> None:
        raise AssertionError("Spark was started for an input that cannot be scored")

    monkeypatch.setattr(data_prep.engine, "spark_session", no_spark)
    snapshot = tmp_path / S.SNAPSHOT_FILE
    pq.write_table(pq.read_table(tiny_pipeline.features / S.SNAPSHOT_FILE).drop_columns([S.ITEMS]), snapshot)
    with pytest.raises(ScoringInputError, match="no column 'items'"):
        score_snapshot_spark(tiny_pipeline.bundle, snapshot, tmp_path / "out")
    shutil.copy(tiny_pipeline.features / S.SNAPSHOT_FILE, snapshot)
    with pytest.raises(ScoringInputError, match="SHA-256 differs"):
        score_snapshot_spark(tiny_pipeline.bundle, snapshot, tmp_path / "out", recorded_sha256="0" * 64)


def test_the_executor_module_imports_no_torch() -> None:
    code = (
        "import sys, serving.batch_spark; "
        "print(','.join(m for m in ('torch', 'lightning', 'training', 'pyspark', 'bentoml') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == ""

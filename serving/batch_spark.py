"""Batch scoring on Spark (``o2o score --engine spark``): the same scorer as :mod:`serving.batch`, run on
Spark's executors, for snapshots that outgrow one machine.

Spark reads the snapshot and applies the marketing-consent gate; every partition is then scored by
:func:`serving.batch.score_batch`, the function the arrow engine (and, through the same scoring functions,
the API) uses, inside ``DataFrame.mapInArrow``.

Why ``mapInArrow`` rather than ``mapInPandas``: both move the data between the JVM and Python as Arrow record
batches, and ``score_batch`` takes an Arrow record batch. ``mapInPandas`` would turn each batch into a pandas
frame first (list columns into object arrays of numpy arrays, integer columns with nulls into floats) only for
the scorer to rebuild Arrow arrays from it: an extra copy per batch and a place for types to drift between the
engines. With ``mapInArrow`` the executors see the same columns and types as the arrow engine.

Nothing here imports torch, Lightning or ``training``; pyspark is imported only on the driver's side
(executors already run inside it). Executors load the bundle themselves, once per Python worker, from the
folder the driver resolved (signature and checksums verified on load), so on a cluster that folder must be on
storage every executor reads at the same path, and every executor needs the bundle-signing key
(``O2O_BUNDLE_KEY``, :mod:`serving.checksums`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from data_prep import schema as S
from data_prep.manifest import file_sha256
from serving.artifact import THREADS_ENV, Bundle, load_bundle
from serving.batch import SCORES_FILE, check_request, run_settings, score_batch
from serving.inputs import check_snapshot
from serving.scoring import ItemFilter

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ENGINE = "spark"
SAMPLE_ROWS = 16  # rows of the snapshot scored on the driver to learn the output schema

# Bundles loaded by this Python worker: (folder, checksums.json digest, ORT threads) → bundle. Spark reuses
# its Python workers between tasks (spark.python.worker.reuse), so a worker loads a bundle once, not per task;
# a bundle re-exported into the same folder has another digest and is loaded afresh.
_BUNDLES: dict[tuple[str, str, int], Bundle] = {}


def worker_bundle(folder: str, threads: int) -> Bundle:
    """The bundle in ``folder``, loaded (every checksum verified) on this worker's first call only."""
    key = (folder, file_sha256(Path(folder) / S.CHECKSUMS_FILE), threads)
    if key not in _BUNDLES:
        _BUNDLES[key] = load_bundle(Path(folder), threads=threads)
    return _BUNDLES[key]


@dataclass(frozen=True)
class PartitionScorer:
    """What runs on the executors: scores each Arrow record batch of a partition with ``score_batch``.

    Pickled to the executors by reference to this module, with these fields as its only data.
    """

    bundle_dir: str
    k: int
    exclude_seen: bool | None
    rules: ItemFilter
    schema: pa.Schema  # of the output, as declared to Spark
    threads: int  # ONNX Runtime threads per task

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        bundle: Bundle | None = None  # an empty partition never loads it
        for batch in batches:
            if batch.num_rows == 0:
                continue
            bundle = bundle or worker_bundle(self.bundle_dir, self.threads)
            table = score_batch(bundle, batch, self.k, self.exclude_seen, self.rules)
            yield from table.select(self.schema.names).cast(self.schema).to_batches()


@contextmanager
def _session_conf(session: SparkSession, conf: dict[str, str]) -> Iterator[None]:
    """Set runtime SQL settings for one scoring run, then put back what was there (a shared session)."""
    before: dict[str, str | None] = {key: session.conf.get(key, None) for key in conf}
    for key, value in conf.items():
        session.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in before.items():
            if old is None:
                session.conf.unset(key)
            else:
                session.conf.set(key, old)


def _sample(df: DataFrame, n: int) -> pa.Table:
    """The first ``n`` rows as Arrow, typed exactly as the executors receive them."""
    head = df.limit(n)
    if hasattr(head, "toArrow"):  # pyspark >= 4.0
        return head.toArrow()
    return pa.Table.from_batches(head._collect_as_arrow())  # type: ignore[operator]  # pyspark 3.5


def score_snapshot_spark(
    bundle_ref: Bundle | Path | str,
    snapshot: Path,
    out_dir: Path,
    k: int = 10,
    exclude_seen: bool | None = None,
    rules: ItemFilter | None = None,
    campaign: bool = True,
    chunk_size: int = 20_000,
    partitions: int | None = None,
    threads: int | None = None,
    session: SparkSession | None = None,
    recorded_sha256: str | None = None,
) -> Path:
    """Score the customers in ``snapshot`` on Spark into the Parquet dataset ``out_dir/scores.parquet/`` and
    write ``out_dir/manifest.json``; the same rows (customers, items, scores, probabilities, segments) as
    :func:`serving.batch.score_snapshot`, as Spark part files in any order.

    ``bundle_ref``: a loaded bundle, its folder or its model-store tag. With ``campaign`` (the default),
    customers without marketing consent (null counts as no) are left out in Spark and counted in the
    manifest. ``chunk_size``: rows per Arrow record batch sent to the scorer. ``partitions``: score in at
    least this many tasks (default: the session's default parallelism; the snapshot is repartitioned when
    Spark reads it in fewer). ``threads``: ONNX Runtime threads per task (default ``$O2O_ORT_THREADS`` or 1:
    Spark already runs one task per core). ``session``: default :func:`data_prep.engine.spark_session`
    (``$O2O_SPARK_MASTER``, default ``local[*]``). The snapshot is checked first as the arrow engine checks
    it (:func:`serving.inputs.check_snapshot`, ``recorded_sha256`` included).

    Failure and reruns: this engine does not resume chunk by chunk like the arrow engine. Spark retries a
    failed task (``spark.task.maxFailures``; local mode: ``local[N,F]``), and the Parquet commit protocol
    writes task output under ``_temporary`` and moves it into place only when the whole job succeeds
    (``_SUCCESS`` marks a complete dataset; ``manifest.json`` is written after it). A killed run leaves no
    ``_SUCCESS`` and no manifest; rerunning the command overwrites the output folder and scores everyone
    again, so the result never mixes two runs.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from data_prep.engine import spark_session

    t0 = time.perf_counter()
    bundle = bundle_ref if isinstance(bundle_ref, Bundle) else load_bundle(bundle_ref)
    rules = check_request(bundle, k, rules)
    digest = check_snapshot(bundle, snapshot, recorded_sha256)  # before Spark starts
    threads = threads or int(os.environ.get(THREADS_ENV, 0)) or 1
    spark = session or spark_session("o2o-score", {"spark.ui.showConsoleProgress": "false"})
    dataset = out_dir / SCORES_FILE
    conf = {
        "spark.sql.session.timeZone": "UTC",  # timestamps reach the scorer (and its output) as UTC
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(chunk_size),
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # not INT96: readers get UTC timestamps
    }
    with _session_conf(spark, conf):
        raw = spark.read.parquet(str(snapshot))
        gate = campaign and S.CONSENT_MARKETING in raw.columns
        consenting = F.coalesce(F.col(S.CONSENT_MARKETING), F.lit(False)) if gate else F.lit(True)
        counts = raw.agg(
            F.count(F.lit(1)).alias("rows_in"), F.sum(F.when(consenting, 1).otherwise(0)).alias("kept")
        ).first()
        rows_in, kept = (int(counts["rows_in"]), int(counts["kept"] or 0)) if counts else (0, 0)
        if rows_in == 0:
            raise ValueError(f"{snapshot} has no customers to score")
        sample = _sample(raw, SAMPLE_ROWS).combine_chunks().to_batches()[0]
        schema = score_batch(bundle, sample, k, exclude_seen, rules).schema.remove_metadata()
        scorer = PartitionScorer(str(bundle.path.resolve()), k, exclude_seen, rules, schema, threads)
        scored = raw.filter(consenting) if gate else raw
        n_tasks = partitions or spark.sparkContext.defaultParallelism
        if scored.rdd.getNumPartitions() < n_tasks:
            scored = scored.repartition(n_tasks)
        n_tasks = scored.rdd.getNumPartitions()
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / S.MANIFEST_FILE).unlink(missing_ok=True)  # an earlier run's: stale once the job starts
        scored.mapInArrow(scorer, from_arrow_schema(schema)).write.mode("overwrite").parquet(str(dataset))
        rows_scored = spark.read.parquet(str(dataset)).count()
    if rows_scored != kept:
        raise RuntimeError(f"{dataset}: {rows_scored} rows written for {kept} customers to score")
    manifest = {
        "layer": "05_scores",
        "engine": ENGINE,
        "bundle": str(bundle.path),
        "snapshot": str(snapshot),
        **run_settings(
            bundle,
            digest,
            k=k,
            exclude_seen=exclude_seen,
            chunk_size=chunk_size,
            campaign=campaign,
            filters=rules.to_dict(),
        ),
        "spark_master": spark.sparkContext.master,
        "spark_version": spark.version,
        "tasks": n_tasks,
        "output": str(dataset),
        "parts": len(list(dataset.glob("part-*.parquet"))),
        "rows_in": rows_in,
        "rows_scored": rows_scored,
        "excluded_no_marketing_consent": rows_in - rows_scored,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (out_dir / S.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return dataset

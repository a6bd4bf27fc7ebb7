"""Execution engines for the prep pipeline: the same Ibis expressions on DuckDB (default) or PySpark.

Only reading raw files, writing Parquet and opening a session differ by engine; every transformation is
engine-neutral Ibis. Parquet outputs are single files on both engines, so later stages (and people) read
the same layout whichever engine wrote it.

Spark is an optional extra (``pip install -e .[spark]``, needs Java 17+). Differences worth knowing: Spark's
CSV reader pads a row with too few fields with nulls instead of failing (the row is then rejected by
validation, so nothing is lost), and it runs in local mode here (``local[*]``) unless
``O2O_SPARK_MASTER`` names a cluster.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from ibis.expr.types.relations import CachedTable

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DUCKDB = "duckdb"
SPARK = "spark"
ENGINES = (DUCKDB, SPARK)
DUCKDB_MEMORY_ENV = "O2O_DUCKDB_MEMORY"  # e.g. "4GB": DuckDB spills to disk beyond it
# Prep must fit 10M raw events in 2 GB of RAM (DuckDB plus the Python process around it); raise it with the
# variable on a bigger machine for speed.
DEFAULT_DUCKDB_MEMORY = "1GB"
SPARK_MASTER_ENV = "O2O_SPARK_MASTER"


def safe_error_text(err: Exception) -> str:
    """DuckDB's diagnosis without the echoed raw line (it may hold an email or phone) or SQL."""
    kept = []
    for line in str(err).splitlines():
        if line.startswith(("Possible fixes", "LINE 1:")):
            break
        if line.strip() and not line.startswith("Original Line"):
            kept.append(line.strip())
    return "; ".join(kept)


def _first_line(err: BaseException) -> str:
    text = safe_error_text(err) if isinstance(err, duckdb.Error) else str(err)
    return text.split("; ")[0] or type(err).__name__


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError | duckdb.OutOfMemoryException) or "out of memory" in str(err).lower()


def is_out_of_disk(err: BaseException) -> bool:
    return isinstance(err, duckdb.Error | OSError) and "no space left" in str(err).lower()


def is_resource_error(err: BaseException) -> bool:
    """Out of memory or disk: not the data's fault (a parse step must not blame the file for it)."""
    return is_out_of_memory(err) or is_out_of_disk(err)


def failure_message(step: str, err: BaseException) -> str | None:
    """One line for a prep step that failed on a resource or in DuckDB: the step, the cause, the remedy.

    None for errors that are not DuckDB's or a lack of memory (they keep their own message)."""
    text = _first_line(err)
    memory = os.environ.get(DUCKDB_MEMORY_ENV, DEFAULT_DUCKDB_MEMORY)
    if is_out_of_memory(err):
        return (
            f"prep step '{step}' ran out of memory ({text}): raise {DUCKDB_MEMORY_ENV} (now {memory}) on a "
            f"machine with more RAM, e.g. {DUCKDB_MEMORY_ENV}=4GB, and keep free disk in $TMPDIR (DuckDB spills)"
        )
    if is_out_of_disk(err):
        return f"prep step '{step}' ran out of disk ({text}): free space there and in $TMPDIR (DuckDB spills)"
    if not isinstance(err, duckdb.Error):
        return None
    return f"prep step '{step}' failed in DuckDB: {text} (O2O_DEBUG=1 shows the traceback)"


def engine_name(con: ibis.BaseBackend) -> str:
    return SPARK if con.name == "pyspark" else DUCKDB


def connect(engine: str = DUCKDB) -> ibis.BaseBackend:
    """A session for ``engine`` with UTC as the session time zone."""
    if engine == DUCKDB:
        con = ibis.duckdb.connect()
        con.raw_sql("SET TimeZone = 'UTC'")
        con.raw_sql(f"SET memory_limit = '{os.environ.get(DUCKDB_MEMORY_ENV, DEFAULT_DUCKDB_MEMORY)}'")
        # Results without ORDER BY need not keep their input order: DuckDB then streams big writes and
        # materializations instead of buffering them in order (out of memory at 18M raw rows otherwise).
        # Every layer file whose row order means something is written with an ORDER BY.
        con.raw_sql("SET preserve_insertion_order = false")
        spill = tempfile.mkdtemp(prefix="o2o-duckdb-")  # not DuckDB's default ./.tmp in the user's folder
        atexit.register(shutil.rmtree, spill, ignore_errors=True)
        con.raw_sql(f"SET temp_directory = '{spill}'")
        return con
    if engine == SPARK:
        return _spark()
    raise ValueError(f"unknown engine {engine!r}: expected one of {ENGINES}")


def spark_session(app_name: str = "o2o-prep", conf: dict[str, str] | None = None) -> SparkSession:
    """The Spark session of this process (created on first use): master ``$O2O_SPARK_MASTER`` (default
    ``local[*]``), UTC session time zone, no web UI, few shuffle partitions (a small machine), driver memory
    ``$O2O_SPARK_DRIVER_MEMORY`` (default 2g), plus ``conf``.

    In local mode the Python workers run this interpreter (unless ``$PYSPARK_PYTHON`` says otherwise), so they
    see the same packages as the driver even when the virtual environment is not activated.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise RuntimeError(
            "the spark engine needs the spark extra: pip install -e '.[spark]' (and Java 17+)"
        ) from e
    master = os.environ.get(SPARK_MASTER_ENV, "local[*]")
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.sql.warehouse.dir", tempfile.mkdtemp(prefix="o2o-spark-"))
        .config("spark.driver.memory", os.environ.get("O2O_SPARK_DRIVER_MEMORY", "2g"))
    )
    if master.startswith("local") and "PYSPARK_PYTHON" not in os.environ:
        # PySpark starts its Python workers with $PYSPARK_PYTHON (default: `python3` on PATH, which is not
        # this virtual environment's when it is not activated); the spark.pyspark.python setting alone
        # only reaches spark-submit
        os.environ["PYSPARK_PYTHON"] = sys.executable
        builder = builder.config("spark.pyspark.python", sys.executable)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def _spark() -> ibis.BaseBackend:
    return ibis.pyspark.connect(spark_session())


def temp_table(con: ibis.BaseBackend, data: pa.Table | pd.DataFrame) -> ir.Table:
    """Register in-memory data as a session table with a name of its own (a lookup, a key list).

    Explicit registration rather than ``ibis.memtable``: Spark does not see a memtable that is first used
    inside a cached expression, and engines resolve tables by name when a query runs.
    """
    name = f"_o2o_{uuid.uuid4().hex}"
    if engine_name(con) == SPARK:
        frame = data.to_pandas() if isinstance(data, pa.Table) else data
        session = con._session  # type: ignore[attr-defined]
        schema = _string_schema(list(frame.columns))  # lookups and key lists are text
        session.createDataFrame(
            frame.astype(object).where(frame.notna(), None), schema=schema
        ).createOrReplaceTempView(name)
        return con.table(name)
    return con.create_table(name, data, temp=True)


def release(tables: list[ir.Table]) -> None:
    """Free materialized tables no longer needed (DuckDB drops the cached copy; a no-op otherwise)."""
    for t in tables:
        if isinstance(t, CachedTable):
            t.release()


def materialize(con: ibis.BaseBackend, expr: ir.Table) -> ir.Table:
    """Compute ``expr`` once and reuse the result in later queries.

    DuckDB caches it as a temporary table. Spark checkpoints it locally, cutting the lineage, because iterative
    steps such as label propagation otherwise build ever deeper query plans.
    """
    if engine_name(con) == SPARK:
        name = f"_o2o_{uuid.uuid4().hex}"
        con._session.sql(ibis.to_sql(expr, dialect="pyspark")).localCheckpoint().createOrReplaceTempView(name)  # type: ignore[attr-defined]
        return con.table(name)
    return expr.cache()


def read_csv_text(con: ibis.BaseBackend, path: Path, columns: list[str]) -> ir.Table:
    """A CSV with a header, every column read as text (strict RFC-4180 quoting)."""
    if engine_name(con) == SPARK:
        return con.read_csv(str(path), schema=_string_schema(columns), header=True, quote='"', escape='"')
    return con.read_csv(
        path,
        columns={c: "VARCHAR" for c in columns},
        header=True,
        auto_detect=False,
        delim=",",
        quote='"',
        escape='"',
        strict_mode=True,
    )


def read_jsonl_text(con: ibis.BaseBackend, path: Path, columns: list[str]) -> ir.Table:
    """Newline-delimited JSON, the given keys as text columns (absent keys are null)."""
    if engine_name(con) == SPARK:
        return con.read_json(str(path), schema=_string_schema(columns), mode="FAILFAST")
    return con.read_json(path, format="newline_delimited", columns={c: "VARCHAR" for c in columns})


def _string_schema(columns: list[str]):  # type: ignore[no-untyped-def]
    from pyspark.sql.types import StringType, StructField, StructType

    return StructType([StructField(c, StringType()) for c in columns])


# DuckDB's writer buffers a whole row group (122,880 rows by default) before it writes it; rows that hold
# sequence lists make that hundreds of MB outside the memory cap. A byte bound keeps each group small.
PARQUET_ROW_GROUP_BYTES = "32MB"


def write_parquet(con: ibis.BaseBackend, expr: ir.Table, path: Path) -> None:
    """One Parquet file at ``path`` (Spark would write a folder of parts; we stream its rows instead)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if engine_name(con) == DUCKDB:
        con.to_parquet(expr, path, row_group_size_bytes=PARQUET_ROW_GROUP_BYTES)
        return
    reader = con.to_pyarrow_batches(expr)
    with pq.ParquetWriter(path, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)


def write_parquet_parts(con: ibis.BaseBackend, exprs: Iterable[ir.Table], path: Path) -> None:
    """One Parquet file at ``path`` holding the rows of every expression in turn (same columns), each computed
    and written out before the next starts: a big result built piece by piece within the memory cap.

    DuckDB writes each piece to a file of its own, then copies them in order into one (the same Parquet
    types as :func:`write_parquet`); other engines stream each piece's batches into one writer.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if engine_name(con) != DUCKDB:
        _stream_parts(con, exprs, path)
        return
    with tempfile.TemporaryDirectory(prefix="o2o-parts-", dir=path.parent) as tmp:
        parts = []
        for i, expr in enumerate(exprs):
            parts.append(Path(tmp) / f"{i:05d}.parquet")
            con.to_parquet(expr, parts[-1], row_group_size_bytes=PARQUET_ROW_GROUP_BYTES)
        writer: pq.ParquetWriter | None = None
        try:  # row groups copied in order (DuckDB would not keep the order without a sort)
            for part in parts:
                f = pq.ParquetFile(part)
                writer = writer or pq.ParquetWriter(path, f.schema_arrow)
                for i in range(f.num_row_groups):
                    writer.write_table(f.read_row_group(i))
        finally:
            if writer is not None:
                writer.close()


def _stream_parts(con: ibis.BaseBackend, exprs: Iterable[ir.Table], path: Path) -> None:
    writer: pq.ParquetWriter | None = None
    try:
        for expr in exprs:
            reader = con.to_pyarrow_batches(expr)
            writer = writer or pq.ParquetWriter(path, reader.schema)
            for batch in reader:
                writer.write_batch(batch if batch.schema == writer.schema else batch.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()


def read_parquet(con: ibis.BaseBackend, path: Path) -> ir.Table:
    return con.read_parquet(str(path) if engine_name(con) == SPARK else path)

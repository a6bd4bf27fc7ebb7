"""The same prep on DuckDB and on Spark gives the same tables (issue 3: one Ibis definition, two engines)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import schema as S
from data_prep.generate import RetailerSpec, generate_retailer
from data_prep.pipeline import run_prep

pyspark = pytest.importorskip(
    "pyspark", reason="the spark extra is not installed (pip install -e '.[spark]')"
)
pytestmark = pytest.mark.slow


def _java_available() -> bool:
    return shutil.which("java") is not None or bool(__import__("os").environ.get("JAVA_HOME"))


def normalised(path: Path) -> pd.DataFrame:
    """Rows in a canonical order, lists as tuples, timestamps as UTC microseconds."""
    df = pd.read_parquet(path)
    for c in df.columns:
        if df[c].dtype == object and df[c].map(lambda v: isinstance(v, list | np.ndarray)).any():
            df[c] = df[c].map(lambda v: tuple(v) if v is not None else None)
        elif str(df[c].dtype).startswith("datetime64"):
            df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    return df.sort_values(list(df.columns)).reset_index(drop=True)


@pytest.mark.skipif(not _java_available(), reason="Spark needs a Java runtime (java on PATH or JAVA_HOME)")
def test_duckdb_and_spark_write_identical_layers(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    generate_retailer(raw, RetailerSpec(n_customers=120, seed=5, n_days=120))
    duck, spark = tmp_path / "duck", tmp_path / "spark"
    for out in (duck, spark):
        shutil.copytree(raw, out)
    run_prep(duck, duck, engine_name="duckdb")
    run_prep(spark, spark, engine_name="spark")
    files = sorted(p.relative_to(duck) for p in duck.glob("0[234]_*/*.parquet"))
    assert len(files) >= 20
    for rel in files:
        a, b = normalised(duck / rel), normalised(spark / rel)
        assert list(a.columns) == list(b.columns), rel
        pd.testing.assert_frame_equal(a, b, check_dtype=False, check_exact=False, rtol=1e-9, obj=str(rel))
    assert (duck / S.EVENTS_DIR / S.LEDGER_FILE).read_text() == (
        spark / S.EVENTS_DIR / S.LEDGER_FILE
    ).read_text()


@pytest.mark.skipif(not _java_available(), reason="Spark needs a Java runtime (java on PATH or JAVA_HOME)")
def test_amounts_that_are_not_finite_are_bad_price_on_spark_too() -> None:
    """On Spark, Ibis compiles ``isinf`` to a literal false and ``notnull`` to exclude NaN: the checks must
    depend on neither (issue 19)."""
    from data_prep import engine
    from tests.data_prep.test_events import (
        assert_only_fine_rows_pass,
        every_not_finite_row_and_fine_ones,
        unify_all,
    )

    rows = every_not_finite_row_and_fine_ones()
    con = engine.connect(engine.SPARK)
    marked = engine.materialize(con, unify_all(rows, con))
    assert_only_fine_rows_pass(rows, marked)

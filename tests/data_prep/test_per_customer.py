"""Per-customer steps built a share of the customers at a time (memory) give the rows built all at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from data_prep import engine, pipeline
from data_prep import features as fe
from data_prep import schema as S
from data_prep.generate import RetailerSpec, generate_retailer
from data_prep.pipeline import run_prep


def test_sequences_built_piece_by_piece_equal_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [
        {S.EVENT_ID: f"e{i}", S.CUSTOMER_ID: f"c{i % 7}", S.TS: t0 + timedelta(hours=i), S.ORDER_ID: None,
         S.ITEM_ID: f"I{i % 5}", S.EVENT_TYPE: S.EV_VIEW, S.CHANNEL: "web"}
        for i in range(60)
    ]  # fmt: skip
    con = engine.connect()
    events = engine.temp_table(con, pd.DataFrame(rows).astype({S.ORDER_ID: "string"}))
    cutoff = t0 + timedelta(days=30)

    def build(e: object) -> object:
        return fe.customer_sequences(e, cutoff)  # type: ignore[arg-type]

    whole = build(events).to_pandas()
    monkeypatch.setattr(pipeline, "EVENTS_PER_PIECE", 20)  # 3 pieces
    pieces = pipeline.per_customer(con, build, events).to_pandas()  # type: ignore[arg-type]
    key = lambda df: df.sort_values(S.CUSTOMER_ID).reset_index(drop=True)  # noqa: E731
    assert len(whole) == 7
    pd.testing.assert_frame_equal(key(pieces).map(str), key(whole).map(str))


def _rows(path: Path) -> pd.DataFrame:
    """A Parquet file's rows in a canonical order (the files written piece by piece have no row order)."""
    df = pd.read_parquet(path)
    text = df.map(lambda v: repr(list(v)) if hasattr(v, "__len__") and not isinstance(v, str) else repr(v))
    return text.sort_values(list(text.columns)).reset_index(drop=True)


def test_prep_in_pieces_writes_the_same_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    generate_retailer(raw, RetailerSpec(n_customers=120, seed=3, n_days=240))
    run_prep(raw, tmp_path / "whole")
    monkeypatch.setattr(pipeline, "EVENTS_PER_PIECE", 5_000)  # several pieces per step
    run_prep(raw, tmp_path / "pieces")
    files = sorted((tmp_path / "whole" / S.FEATURES_DIR).glob("*.parquet"))
    assert len(files) > 15
    for f in files:
        pd.testing.assert_frame_equal(
            _rows(tmp_path / "pieces" / S.FEATURES_DIR / f.name), _rows(f), obj=f.name
        )


@pytest.mark.parametrize("parts", [False, True], ids=["one query", "in parts"])
def test_parquet_row_groups_are_bounded_in_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parts: bool
) -> None:
    """DuckDB buffers a whole row group before writing it (122,880 rows by default): with sequence lists in
    each row, that buffer lies outside the memory cap, so the writer is told to cut groups by size."""
    import pyarrow.parquet as pq

    con = engine.connect()
    n = 20_000  # DuckDB cuts groups at multiples of 2,048 rows: enough rows for several
    seqs = pd.DataFrame({"customer_id": [f"c{i}" for i in range(n)], "items": [list(range(100))] * n})
    expr = engine.temp_table(con, seqs)
    monkeypatch.setattr(engine, "PARQUET_ROW_GROUP_BYTES", "1MB")  # ~16 MB of lists in all
    out = tmp_path / "seq.parquet"
    if parts:
        engine.write_parquet_parts(con, [expr.limit(n // 2), expr.limit(n // 2, offset=n // 2)], out)
    else:
        engine.write_parquet(con, expr, out)
    meta = pq.ParquetFile(out).metadata
    assert meta.num_rows == n
    assert meta.num_row_groups >= 4

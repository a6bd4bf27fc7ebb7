"""Reading the raw layer (``01_raw``): every source file screened, parsed as text by the engine, counted.

A line that cannot be read (bytes that are not UTF-8, a CSV record with the wrong number of fields, a JSONL
line that is not JSON) is rejected with its file and line (:mod:`data_prep.screening`) instead of stopping the
run; the engine reads the rest. A file that cannot be read at all (missing, no header, a required column
absent, an undecodable header) stops the run with one line naming the file (:class:`RawInputError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa

from data_prep import engine, screening
from data_prep import schema as S
from data_prep.events import UTC_TS
from data_prep.screening import FileFormat, LineReject

CATALOGUE = ("items", "stores")  # read and screened like the others, but not counted in the ledger


class RawInputError(ValueError):
    """A raw file is missing or lacks a required column; the message names the file and column."""


@dataclass
class RawSource:
    """One raw source as read: its table (every column text), raw row count and lines rejected unread."""

    table: ir.Table
    n_raw: int  # rows the engine parsed + lines rejected here
    path: Path | None = None  # the raw file (None: an optional source that is absent)
    rejects: list[LineReject] = field(default_factory=list)


def require(path: Path) -> Path:
    if not path.exists():
        raise RawInputError(f"missing raw file: {path}")
    return path


def _csv_columns(path: Path, columns: tuple[str, ...], optional: tuple[str, ...]) -> list[str]:
    try:
        header = screening.csv_header(path)
    except screening.UnreadableFile as e:
        raise RawInputError(str(e)) from None
    missing = [c for c in columns if c not in header and c not in optional]
    if missing:
        raise RawInputError(f"{path}: missing column(s) {missing}; header has {header}")
    return header


def _text_table(
    con: ibis.BaseBackend, path: Path, fmt: FileFormat, columns: tuple[str, ...], header: list[str]
) -> ir.Table:
    """The file as a table of text columns; ``columns`` absent from a CSV header (older layouts) are null."""
    if fmt == "jsonl":
        return engine.read_jsonl_text(con, path, list(columns))
    t = engine.read_csv_text(con, path, header)
    absent = {c: ibis.null("string") for c in columns if c not in header}
    return t.mutate(**absent) if absent else t


def write_raw_parquet(con: ibis.BaseBackend, t: ir.Table, dest: Path, path: Path) -> None:
    """Parse the whole file once into Parquet (text columns): a file the engine cannot parse stops the run
    here with the file named. Every later query reads the Parquet copy: no second parse of the raw text,
    and the engine knows its row count when it plans joins."""
    try:
        engine.write_parquet(con, t, dest)
    except Exception as e:  # the engine's parse error (DuckDB or Spark)
        if engine.is_resource_error(e):
            raise
        raise RawInputError(f"{path}: cannot be parsed: {engine.safe_error_text(e)}") from None


def count_raw_rows(t: ir.Table, path: Path) -> int:
    """Parse the whole file now, so a file the engine cannot parse stops the run here with the file named."""
    try:
        return int(t.count().execute())
    except Exception as e:  # the engine's parse error (DuckDB or Spark)
        if engine.is_resource_error(e):
            raise
        raise RawInputError(f"{path}: cannot be parsed: {engine.safe_error_text(e)}") from None


def read_source(
    con: ibis.BaseBackend,
    name: str,
    path: Path,
    fmt: FileFormat,
    columns: tuple[str, ...],
    work: Path,
    optional: tuple[str, ...] = (),
) -> RawSource:
    """Read one raw file, screening it first when it is not UTF-8 and again when the engine cannot parse it.

    The returned table reads a Parquet copy of the parsed rows (every column text) under ``work``, which must
    outlive every query on it; so do the screened copies.
    """
    header = _csv_columns(require(path), columns, optional) if fmt == "csv" else []
    copy = work / f"{name}-{path.name}"
    screened = screening.Screened(path)
    if not screening.is_utf8(path):
        screened = screening.screen_file(path, fmt, copy)
    parsed = work / f"{name}.parquet"
    try:
        engine.write_parquet(con, _text_table(con, screened.path, fmt, columns, header), parsed)
    except Exception as e:  # the engine cannot parse a line: find the lines, read the rest
        if engine.is_resource_error(e):
            raise
        screened = screening.screen_file(path, fmt, copy, structure=True)
        write_raw_parquet(con, _text_table(con, screened.path, fmt, columns, header), parsed, path)
    t = engine.read_parquet(con, parsed)
    return RawSource(t, count_raw_rows(t, path) + len(screened.rejects), path, screened.rejects)


def empty_source(con: ibis.BaseBackend, columns: tuple[str, ...]) -> RawSource:
    """An optional source the retailer does not export: no rows."""
    empty = pd.DataFrame({c: pd.Series(dtype="string") for c in columns})
    return RawSource(engine.temp_table(con, empty), 0)


def relative_name(path: Path, raw: Path) -> str:
    """The file as named in rejects: relative to the data folder (``01_raw/pos/pos_lines.csv``)."""
    try:
        return path.relative_to(raw).as_posix()
    except ValueError:
        return path.as_posix()


def parse_reject_counts(sources: dict[str, RawSource]) -> pd.DataFrame:
    """(source, outcome, reason, n) rows of the lines rejected unread, for the ledger."""
    rows = [
        (name, "rejected", reason, n)
        for name, src in sources.items()
        for reason, n in pd.Series([r.reason for r in src.rejects], dtype="string").value_counts().items()
    ]
    return pd.DataFrame(rows, columns=[S.SOURCE, "outcome", S.REJECT_REASON, "n"])


def parse_rejects(con: ibis.BaseBackend, sources: dict[str, RawSource], raw: Path) -> ir.Table | None:
    """The lines rejected unread, in the columns of ``rejects.parquet`` (no event id, no time); None if none."""
    rows = [
        (name, r.reason, relative_name(src.path, raw), str(r.line))
        for name, src in sources.items()
        if src.path is not None
        for r in src.rejects
    ]
    if not rows:
        return None
    cols = [S.SOURCE, S.REJECT_REASON, S.RAW_FILE, S.RAW_LINE]
    data = {c: pa.array(v, pa.string()) for c, v in zip(cols, zip(*rows, strict=True), strict=True)}
    t = engine.temp_table(con, pa.table(data))
    return t.select(
        t[S.SOURCE],
        **{S.EVENT_ID: ibis.null("string"), S.TS: ibis.null(UTC_TS)},
        **{S.REJECT_REASON: t[S.REJECT_REASON], S.RAW_FILE: t[S.RAW_FILE]},
        **{S.RAW_LINE: t[S.RAW_LINE].cast("int64")},
    )

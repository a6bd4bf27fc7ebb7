"""Removing one person's rows from files, for erasure (:mod:`data_prep.erasure`).

Each function rewrites one file without the rows of the erased customers or identifiers, atomically (a
temporary file beside it, then a rename), and returns how many rows it removed; a file holding none of them is
left untouched. Parquet files keep their schema and its metadata (the batch scorer's part metadata included)
and are streamed batch by batch, so memory stays bounded whatever the file's size. Raw CSV and JSONL exports are
rewritten line for line: every kept record keeps its exact bytes, undecodable bytes included, so erasure never
changes what another person's rows say. The files an import read (a retailer's own CSV in any delimiter and
encoding, JSONL, Parquet) are read as the import read them: identifier values as text.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep import pii
from data_prep import schema as S

BATCH_ROWS = 65_536
CUSTOMER_ID_COLUMNS = (S.CUSTOMER_ID, S.PREVIOUS_CUSTOMER_ID)  # the id registry's log names two customers
NODE_COLUMNS = ("node", "src", "dst")  # identity-graph tables: "<identifier_type>:<identifier_key>"
RAW_ENCODING, RAW_ERRORS = "utf-8", "surrogateescape"  # bytes in == bytes out, even invalid ones


@dataclass
class Target:
    """Who is erased: customer ids and identifier keys (by type), and the raw values seen so far."""

    customer_ids: list[str]
    keys: pd.DataFrame  # identifier_type, identifier_key
    raw_values: set[str] = field(default_factory=set)  # raw identifier values found in raw exports

    def __post_init__(self) -> None:
        types, keys = self.keys[S.IDENTIFIER_TYPE].tolist(), self.keys[S.IDENTIFIER_KEY].tolist()
        self._pairs = set(zip(types, keys, strict=True))
        self._customers = pa.array(self.customer_ids, pa.string())
        self._nodes = pa.array([f"{t}:{k}" for t, k in self._pairs], pa.string())
        self._by_type = {
            t: pa.array([k for tt, k in self._pairs if tt == t], pa.string()) for t in set(types)
        }

    def has_key(self, identifier_type: str, key: str | None) -> bool:
        return key is not None and (identifier_type, key) in self._pairs

    def mask(self, batch: pa.RecordBatch | pa.Table) -> pa.Array | None:
        """True for the rows of ``batch`` that belong to the target; None when no column can tell."""
        names = set(batch.schema.names)
        terms = []
        for col in CUSTOMER_ID_COLUMNS:
            if col in names:
                terms.append(pc.is_in(_text(batch, col), self._customers))
        for id_type, col in S.IDENTIFIER_KEY_COLUMNS.items():
            if col in names and id_type in self._by_type:
                terms.append(pc.is_in(_text(batch, col), self._by_type[id_type]))
        if {S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY} <= names:
            node = pc.binary_join_element_wise(
                _text(batch, S.IDENTIFIER_TYPE), _text(batch, S.IDENTIFIER_KEY), ":"
            )
            terms.append(pc.is_in(node, self._nodes))
        terms += [pc.is_in(_text(batch, c), self._nodes) for c in NODE_COLUMNS if c in names]
        if not terms:
            return None
        hit = terms[0]
        for term in terms[1:]:
            hit = pc.or_kleene(hit, term)
        return pc.fill_null(hit, False)  # a NULL key matches nobody


def _text(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    col = batch.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return (
        col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) else col.cast(pa.string())
    )


def relevant_columns(schema: pa.Schema) -> list[str]:
    """The columns :meth:`Target.mask` reads (empty: the file cannot hold a person)."""
    keys = [*CUSTOMER_ID_COLUMNS, *S.IDENTIFIER_KEY_COLUMNS.values(), *NODE_COLUMNS]
    cols = [c for c in keys if c in schema.names]
    if {S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY} <= set(schema.names):
        cols += [S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY]
    return cols


def count_parquet(path: Path, target: Target) -> int:
    """Rows of ``path`` that belong to the target (reads only the key columns)."""
    file = pq.ParquetFile(path)
    cols = relevant_columns(file.schema_arrow)
    if not cols:
        return 0
    n = 0
    for batch in file.iter_batches(BATCH_ROWS, columns=cols):
        mask = target.mask(batch)
        n += 0 if mask is None else int(pc.sum(mask).as_py() or 0)
    return n


def purge_parquet(path: Path, target: Target) -> int:
    """Rewrite ``path`` without the target's rows; returns how many were removed (0: file untouched)."""
    n = count_parquet(path, target)
    if not n:
        return 0
    file = pq.ParquetFile(path)
    tmp = path.with_name(path.name + ".erasing")
    with pq.ParquetWriter(tmp, file.schema_arrow) as out:  # the schema carries its metadata
        for batch in file.iter_batches(BATCH_ROWS):
            mask = target.mask(batch)
            out.write_batch(batch.filter(pc.invert(mask)) if mask is not None else batch)
    tmp.replace(path)
    return n


def _rewrite_lines(
    path: Path, keep: Callable[[IO[str]], Iterator[tuple[str, bool]]], encoding: str = RAW_ENCODING
) -> int:
    """Rewrite a text file keeping the records ``keep`` marks True (each record: its exact raw text)."""
    tmp = path.with_name(path.name + ".erasing")
    removed = 0
    with (
        open(path, newline="", encoding=encoding, errors=RAW_ERRORS) as src,
        open(tmp, "w", newline="", encoding=encoding, errors=RAW_ERRORS) as dst,
    ):
        for text, kept in keep(src):
            if kept:
                dst.write(text)
            else:
                removed += 1
    if removed:
        tmp.replace(path)
    else:
        tmp.unlink()
    return removed


class _Recorder:
    """A line iterator that remembers the lines it has handed out (the raw text of a CSV record)."""

    def __init__(self, f: IO[str]) -> None:
        self.f, self.lines = f, []  # type: ignore[var-annotated]

    def __iter__(self) -> _Recorder:
        return self

    def __next__(self) -> str:
        line = next(self.f)
        self.lines.append(line)
        return line

    def take(self) -> str:
        text, self.lines = "".join(self.lines), []
        return text


def _undecodable(text: str) -> bool:
    """Whether ``text`` holds bytes that were not UTF-8 (kept as lone surrogates by :data:`RAW_ERRORS`)."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _erased_value(target: Target, id_type: str, value: object, key: bytes) -> bool:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # a JSON or Parquet number, as the import's CAST(... AS VARCHAR) writes it
    if not isinstance(value, str) or not value.strip() or _undecodable(value):
        return False  # an undecodable value has no key (prep rejects its row): see _holds_known_value
    if target.has_key(id_type, pii.pseudonymise(id_type, value, key)):
        target.raw_values.add(value.strip())
        return True
    return False


def _holds_known_value(text: str, target: Target) -> bool:
    """A record that could not be parsed is dropped when it carries a raw value already erased elsewhere."""
    lowered = text.lower()
    return any(v and v.lower() in lowered for v in target.raw_values)


def purge_raw_csv(
    path: Path,
    columns: dict[str, str],
    target: Target,
    key: bytes,
    *,
    delimiter: str = ",",
    quote: str = '"',
    encoding: str = RAW_ENCODING,
) -> int:
    """Drop the CSV records whose identifier ``columns`` (raw column → identifier type) hash to the target.

    ``delimiter``, ``quote`` (also the escape: ``""`` inside quotes) and ``encoding`` as the file was read."""

    def keep(src: IO[str]) -> Iterator[tuple[str, bool]]:
        lines = _Recorder(src)
        reader = csv.reader(lines, delimiter=delimiter, quotechar=quote)
        header = next(reader, None)
        yield lines.take(), True
        if header is None:
            return
        where = {i: columns[c] for i, c in enumerate(csv_names(header)) if c in columns}
        for row in reader:
            hit = any(_erased_value(target, t, row[i], key) for i, t in where.items() if i < len(row))
            text = lines.take()
            unreadable = len(row) != len(header) or _undecodable(text)
            yield text, not (hit or (unreadable and _holds_known_value(text, target)))

    return _rewrite_lines(path, keep, encoding)


def csv_names(header: list[str]) -> list[str]:
    """Column names as an import matches them: trimmed, without a byte-order mark."""
    return [name.lstrip("\ufeff").strip() for name in header]


def csv_header(path: Path, delimiter: str = ",", quote: str = '"', encoding: str = RAW_ENCODING) -> list[str]:
    """The column names of a CSV file (empty for an empty file)."""
    with open(path, newline="", encoding=encoding, errors=RAW_ERRORS) as f:
        return csv_names(next(csv.reader(f, delimiter=delimiter, quotechar=quote), []))


def purge_raw_parquet(path: Path, columns: dict[str, str], target: Target, key: bytes) -> int:
    """Rewrite a raw Parquet file (a retailer's export) without the rows whose identifier ``columns`` (raw
    column → identifier type) hash to the target; its schema and metadata are kept."""
    file = pq.ParquetFile(path)
    cols = [c for c in columns if c in file.schema_arrow.names]
    if not cols:
        return 0

    def mask(batch: pa.RecordBatch) -> pa.Array:
        hit = pa.array([False] * batch.num_rows)
        for c in cols:  # each distinct value hashed once
            values = batch.column(c)
            if pa.types.is_dictionary(values.type):
                values = values.cast(values.type.value_type)
            erased = [v for v in pc.unique(values).to_pylist() if _erased_value(target, columns[c], v, key)]
            hit = pc.or_(hit, pc.fill_null(pc.is_in(values, pa.array(erased, values.type)), False))
        return hit

    n = sum(int(pc.sum(mask(b)).as_py() or 0) for b in file.iter_batches(BATCH_ROWS, columns=cols))
    if not n:
        return 0
    tmp = path.with_name(path.name + ".erasing")
    with pq.ParquetWriter(tmp, file.schema_arrow) as out:
        for batch in file.iter_batches(BATCH_ROWS):
            out.write_batch(batch.filter(pc.invert(mask(batch))))
    tmp.replace(path)
    return n


def purge_raw_jsonl(path: Path, columns: dict[str, str], target: Target, key: bytes) -> int:
    """Drop the JSON lines whose identifier fields hash to the target (an unparseable line: when it carries a
    raw value already erased)."""

    def keep(src: IO[str]) -> Iterator[tuple[str, bool]]:
        for line in src:
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = None
            if not isinstance(record, dict) or _undecodable(line):
                hit = isinstance(record, dict) and any(
                    _erased_value(target, t, record.get(c), key) for c, t in columns.items()
                )
                yield line, not (hit or _holds_known_value(line, target))
                continue
            yield line, not any(_erased_value(target, t, record.get(c), key) for c, t in columns.items())

    return _rewrite_lines(path, keep)


def purge_ground_truth(folder: Path, target: Target, key: bytes) -> dict[str, int]:
    """The synthetic generator's truth: drop the erased person's identifiers and every row of their
    ``person_id`` from each CSV of ``ground_truth/`` (files without a ``person_id`` column stay)."""
    identifiers = folder / "identifiers.csv"
    if not identifiers.is_file():
        return {}
    persons: set[str] = set()
    with open(identifiers, newline="", encoding=RAW_ENCODING, errors=RAW_ERRORS) as f:
        for row in csv.DictReader(f):
            if _erased_value(target, row.get("identifier_type") or "", row.get("identifier"), key):
                persons.add(row.get("person_id") or "")
    persons.discard("")
    removed = {}
    for path in sorted(folder.glob("*.csv")):
        n = _purge_csv_column(path, "person_id", persons)
        if n:
            removed[str(path)] = n
    return removed


def _purge_csv_column(path: Path, column: str, values: Iterable[str]) -> int:
    wanted = set(values)

    def keep(src: IO[str]) -> Iterator[tuple[str, bool]]:
        lines = _Recorder(src)
        reader = csv.reader(lines)
        header = next(reader, None)
        yield lines.take(), True
        if header is None or column not in header:
            return
        i = header.index(column)
        for row in reader:
            yield lines.take(), not (i < len(row) and row[i] in wanted)

    return _rewrite_lines(path, keep) if wanted else 0

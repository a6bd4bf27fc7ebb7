"""Raw files screened line by line before an engine parses them: a row that cannot be read is a reject.

Engines stop a whole file at its first undecodable byte or malformed line (DuckDB reads UTF-8 only; a till
that writes Latin-1 is enough). Here such lines become rejects with the file, the 1-based line number and a
reason, and the engine reads a copy of the file without them, so that the ledger still balances:
raw rows = rows the engine parsed + lines rejected here.

The happy path costs one streaming UTF-8 check of the file (:func:`is_utf8`); the line-by-line pass
(:func:`screen_file`) runs only on a file that fails it, or that the engine could not parse.
A file whose header cannot be read stops the run (:class:`UnreadableFile`).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

R_BAD_ENCODING = "bad_encoding"  # the line's bytes are not valid UTF-8
R_MALFORMED_ROW = "malformed_row"  # CSV: a wrong number of fields, or broken quoting
R_MALFORMED_JSON = "malformed_json"  # JSONL: the line is not JSON
PARSE_REASONS = (R_BAD_ENCODING, R_MALFORMED_ROW, R_MALFORMED_JSON)
MAX_RECORD_LINES = 1000  # a quoted CSV field open for longer than this is an unterminated quote
CHUNK_BYTES = 1 << 24

FileFormat = Literal["csv", "jsonl"]


class UnreadableFile(ValueError):
    """A raw file that cannot be read at all (its header); the message names the file and line."""


@dataclass(frozen=True)
class LineReject:
    line: int  # 1-based physical line of the file (a CSV's header is line 1)
    reason: str


@dataclass
class Screened:
    """The file an engine should read (the original, or a copy without the rejected lines) and the rejects."""

    path: Path
    rejects: list[LineReject] = field(default_factory=list)


def is_utf8(path: Path) -> bool:
    """Whether the whole file decodes as UTF-8 (streamed in 16 MiB chunks; a character may straddle two)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def csv_header(path: Path, delimiter: str = ",", quote: str = '"') -> list[str]:
    """The column names of a CSV's first line; an undecodable header stops the run (file and line 1)."""
    with path.open("rb") as f:
        first = f.readline()
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UnreadableFile(
            f"{path}: line 1 (the header) is not valid UTF-8 (byte {e.start}): the file cannot be read"
        ) from None
    return next(csv.reader([text], delimiter=delimiter, quotechar=quote), [])


def screen_file(
    path: Path,
    fmt: FileFormat,
    dest: Path,
    structure: bool = False,
    delimiter: str = ",",
    quote: str = '"',
    unread: Path | None = None,
) -> Screened:
    """Copy ``path`` to ``dest`` without its unreadable lines; return ``dest`` and the lines rejected.

    Every line that is not UTF-8 is rejected (``bad_encoding``). With ``structure``, so is a CSV record whose
    field count differs from the header's or whose quoting is broken (``malformed_row``: a record opened by
    an unclosed quote is its first line alone, the lines after it are read again), and a JSONL line that is
    not JSON (``malformed_json``). Blank lines are kept: engines skip them. Nothing is decoded or re-encoded:
    kept lines are the original bytes. With ``unread``, the rejected lines' bytes are written there.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with path.open("rb") as src, dest.open("wb") as out:
        if fmt == "jsonl":
            rejects = _screen_jsonl(src, out, structure)
        else:
            header = src.readline()
            out.write(header)
            n_fields = len(csv_header(path, delimiter, quote))
            rejects = _screen_csv(src, out, n_fields if structure else None, delimiter, quote)
    if unread is not None:
        _copy_lines(path, {r.line for r in rejects}, unread)
    return Screened(dest, rejects)


def _copy_lines(path: Path, lines: set[int], dest: Path) -> None:
    """The given lines of ``path`` (1-based), each ending in a newline, to ``dest``."""
    with path.open("rb") as src, dest.open("wb") as out:
        for n, raw in enumerate(src, start=1):
            if n in lines:
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")


def _screen_jsonl(src: BinaryIO, out: BinaryIO, structure: bool) -> list[LineReject]:
    rejects: list[LineReject] = []
    for n, raw in enumerate(src, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            rejects.append(LineReject(n, R_BAD_ENCODING))
            continue
        if structure and text.strip() and not _is_json(text):
            rejects.append(LineReject(n, R_MALFORMED_JSON))
            continue
        out.write(raw)
    return rejects


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _screen_csv(
    src: BinaryIO, out: BinaryIO, n_fields: int | None, delimiter: str, quote: str
) -> list[LineReject]:
    """Lines after the header; ``n_fields`` None checks the encoding only (one record per line then)."""
    rejects: list[LineReject] = []
    quote_byte = quote.encode()
    lines: Iterator[tuple[int, bytes]] = enumerate(src, start=2)
    again: deque[tuple[int, bytes]] = deque()  # lines to read again after an unterminated quote
    record: list[tuple[int, bytes]] = []
    n_quotes = 0
    while True:
        item = again.popleft() if again else next(lines, None)
        if item is None and not record:
            return rejects
        if item is not None:
            n, raw = item
            if not _decodes(raw):
                rejects.append(LineReject(n, R_BAD_ENCODING))
                continue
            record.append(item)
            n_quotes += raw.count(quote_byte) if n_fields is not None else 0
            if n_quotes % 2 and len(record) < MAX_RECORD_LINES:
                continue  # a quoted field goes on to the next line
        if n_quotes % 2:  # unterminated: reject its first line, read the rest again
            rejects.append(LineReject(record[0][0], R_MALFORMED_ROW))
            again.extendleft(reversed(record[1:]))
        elif n_fields is None or _record_ok(record, n_fields, delimiter, quote):
            out.writelines(raw for _n, raw in record)
        else:
            rejects.append(LineReject(record[0][0], R_MALFORMED_ROW))
        record, n_quotes = [], 0


def _decodes(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _record_ok(record: list[tuple[int, bytes]], n_fields: int, delimiter: str, quote: str) -> bool:
    text = b"".join(raw for _n, raw in record).decode("utf-8")
    if not text.strip():
        return True  # a blank line: engines skip it
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter, quotechar=quote, strict=True))
    except csv.Error:
        return False
    return len(rows) == 1 and len(rows[0]) == n_fields

"""A retailer's own export files → the canonical raw layout (``01_raw``), described by a YAML mapping.

A mapping lists sources. Each says which canonical file it feeds (``kind``), where its files are (a glob,
relative to the mapping file's folder), how to read them, and where each canonical column comes from::

    sources:
      - name: web_events
        kind: online                 # online | accounts | pos | crm | orders | items | stores
        path: exports/web/*.jsonl
        format: jsonl                # csv | jsonl | parquet
        timestamp: {column: event_time, format: "%Y-%m-%d %H:%M:%S", timezone: Asia/Shanghai}
        columns: {event_id: id, device_id: cookie, item_id: sku}    # canonical ← source column
        templates: {session_id: "{cookie}-{visit}"}                 # canonical ← text built from columns
        constants: {channel: web}                                    # canonical ← fixed value
        values: {event_type: {pv: view, buy: order}}                 # recode values of a canonical column
        currency: {column: currency, rates: {USD: 7.1}, target: CNY}

DuckDB reads every source column as text and writes the canonical files; nothing is dropped or repaired
here, so prep's ledger still balances against the raw rows. A line that does not decode (a till writing
Latin-1 into a UTF-8 export) goes to the end of its canonical file as it came, and prep rejects it
(``bad_encoding``); a header that does not decode, or a record DuckDB cannot parse, stops the import. A timestamp that does not parse and a price in
an unknown currency are written empty; a number that does not parse is written as it came. Prep then
rejects such rows with a reason. Timestamps are written in UTC: ISO-8601 with ``Z`` for online events,
``YYYY-MM-DD HH:MM:SS`` for every other kind. The format is documented in ``docs/mapping.md``.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import os
import shutil
import string
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import duckdb
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from data_prep import engine, screening
from data_prep import schema as S
from data_prep.import_record import ImportedFile, write_record

Progress = Callable[[str], None]
Kind = Literal["online", "accounts", "pos", "crm", "orders", "items", "stores"]
Format = Literal["csv", "jsonl", "parquet"]

AMOUNT = (
    "amount"  # POS-only pseudo-column: the line total; unit_price = amount / quantity (orders: kind orders)
)
TS_FORMATS = ("iso", "epoch_s", "epoch_ms")  # any other timestamp format is a strptime pattern
ONLINE_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%gZ"  # %g: milliseconds
TABLE_TS_FORMAT = "%Y-%m-%d %H:%M:%S"
ROUND_DIGITS = 6  # of prices this module computes (currency conversion, amount / quantity)


@dataclass(frozen=True)
class CanonicalFile:
    folder: str
    name: str
    columns: tuple[str, ...]
    ts_column: str | None
    price_column: str | None

    def path(self, out: Path) -> Path:
        return out / S.RAW_DIR / self.folder / self.name


CANONICAL: dict[str, CanonicalFile] = {
    "online": CanonicalFile(S.RAW_ONLINE_DIR, S.RAW_ONLINE_FILE, S.RAW_ONLINE_COLUMNS, S.ON_TS, S.ON_PRICE),
    "accounts": CanonicalFile(
        S.RAW_ONLINE_DIR, S.RAW_ACCOUNTS_FILE, S.RAW_ACCOUNT_COLUMNS, S.ACC_CREATED_TS, None
    ),
    "pos": CanonicalFile(S.RAW_POS_DIR, S.RAW_POS_FILE, S.RAW_POS_COLUMNS, S.POS_TS, S.POS_UNIT_PRICE),
    "crm": CanonicalFile(S.RAW_CRM_DIR, S.RAW_CRM_FILE, S.RAW_CRM_COLUMNS, S.CRM_SIGNUP_TS, None),
    "orders": CanonicalFile(S.RAW_ORDERS_DIR, S.RAW_ORDERS_FILE, S.RAW_ORDER_COLUMNS, S.ORD_TS, S.ORD_TOTAL),
    "items": CanonicalFile(S.RAW_CATALOG_DIR, S.RAW_ITEMS_FILE, S.RAW_ITEM_COLUMNS, None, S.CAT_PRICE),
    "stores": CanonicalFile(S.RAW_CATALOG_DIR, S.RAW_STORES_FILE, S.RAW_STORE_COLUMNS, None, None),
}


class SourceError(ValueError):
    """A mapping or one of its sources is unusable; the message names the mapping, source and column."""


def _as_text(v: Any) -> Any:
    """YAML scalars (``1``, ``2.5``, ``true``) as the text a source file would hold."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v) if isinstance(v, int | float) else v


Text = Annotated[str, BeforeValidator(_as_text)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvOptions(_Model):
    """How to read a CSV source; the first row is always the header."""

    delimiter: str = Field(",", min_length=1, max_length=1)
    quote: str = Field('"', min_length=1, max_length=1)  # also the escape character ("" inside quotes)
    encoding: str = "utf-8"  # any Python codec; non-UTF-8 files are transcoded to a temporary copy

    @model_validator(mode="after")
    def _known_encoding(self) -> CsvOptions:
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"encoding: unknown encoding {self.encoding!r}") from None
        return self


class TimestampSpec(_Model):
    """Which source column holds the time, and how to read it."""

    column: str
    format: str = "iso"  # iso | epoch_s | epoch_ms | a strptime pattern such as "%d/%m/%Y %H:%M"
    timezone: str = "UTC"  # IANA zone of values without an offset (iso and patterns); epochs are UTC

    @model_validator(mode="after")
    def _check(self) -> TimestampSpec:
        try:
            ZoneInfo(self.timezone)
        except (ValueError, KeyError, OSError):
            raise ValueError(f"timestamp.timezone: unknown time zone {self.timezone!r}") from None
        if self.format.startswith("epoch_") and self.format not in TS_FORMATS:
            raise ValueError(f"timestamp.format: {self.format!r}; expected epoch_s or epoch_ms")
        if self.format in TS_FORMATS:
            if self.format.startswith("epoch_") and self.timezone != "UTC":
                raise ValueError("timestamp.timezone: epoch values are UTC; leave timezone out")
            return self
        if "%" not in self.format:
            raise ValueError(
                f"timestamp.format: {self.format!r} is neither {TS_FORMATS} nor a strptime pattern"
            )
        try:
            duckdb.connect().execute("SELECT try_strptime('2000-01-01', ?)", [self.format])
        except duckdb.Error as e:
            raise ValueError(f"timestamp.format: {self.format!r}: {str(e).splitlines()[0]}") from None
        return self


class CurrencySpec(_Model):
    """Convert the source's prices into one currency: price × rate of the row's currency."""

    rates: dict[str, float]  # units of ``target`` per unit of each currency code
    target: str
    column: str | None = None  # source column with each row's currency code ...
    code: str | None = None  # ... or one currency for the whole source

    @model_validator(mode="after")
    def _check(self) -> CurrencySpec:
        if (self.column is None) == (self.code is None):
            raise ValueError("currency: set exactly one of column (per-row code) or code (whole source)")
        bad = [c for c, r in self.rates.items() if not r > 0]
        if bad:
            raise ValueError(f"currency.rates: rates must be positive, not for {bad}")
        if self.code is not None and self.code.upper() not in self.normalised_rates():
            raise ValueError(f"currency.code: {self.code!r} has no rate")
        return self

    def normalised_rates(self) -> dict[str, float]:
        rates = {c.strip().upper(): r for c, r in self.rates.items()}
        return {self.target.strip().upper(): 1.0, **rates}


class RowNumberSpec(_Model):
    """A generated column: each row's 1-based position in the source (files in path order)."""

    name: str  # usable in columns and templates like a source column
    partition_by: list[str] = Field(default_factory=list)  # numbering restarts in each group
    pad: int = Field(0, ge=0, le=20)  # zero-pad to this width, so that text order is row order


class OneHotSpec(_Model):
    """A canonical column from flag columns: the name of the first flag column equal to ``true_value``."""

    columns: list[str] = Field(min_length=1)
    true_value: Text = "1"


class SourceSpec(_Model):
    """One export (one or more files of one format) feeding one canonical file."""

    name: str = Field(min_length=1)
    kind: Kind
    path: str = Field(min_length=1)  # glob; relative to the mapping's folder unless absolute
    format: Format
    csv: CsvOptions | None = None
    timestamp: TimestampSpec | None = None
    columns: dict[str, str | list[str]] = Field(default_factory=dict)  # a list: first non-empty column
    templates: dict[str, str] = Field(default_factory=dict)  # "{col}" fields; a null field → null
    constants: dict[str, Text] = Field(default_factory=dict)
    values: dict[str, dict[Text, Text]] = Field(default_factory=dict)  # unlisted values pass unchanged
    one_hot: dict[str, OneHotSpec] = Field(default_factory=dict)
    currency: CurrencySpec | None = None
    row_number: RowNumberSpec | None = None
    distinct: bool = False  # catalogue kinds only: one row per distinct canonical row (e.g. stores)
    # orders only: keep a total of exactly 0 (free, fully discounted, voucher orders) as an order with spend
    # 0, or reject it (bad_price, the default). Written to the canonical zero_total column of every row.
    zero_total: Literal["keep", "reject"] | None = None

    @model_validator(mode="after")
    def _check(self) -> SourceSpec:
        spec = CANONICAL[self.kind]
        fed = _fed_columns(self)
        for col in self.values:
            _check_canonical(self.kind, "values", col)
            if fed.get(col) not in ("columns", "templates"):
                raise ValueError(f"values.{col}: canonical column {col!r} is not read from the source")
        if self.timestamp is not None and spec.ts_column is None:
            raise ValueError(f"timestamp: kind {self.kind!r} has no timestamp column")
        if self.currency is not None and spec.price_column is None:
            raise ValueError(f"currency: kind {self.kind!r} has no price column")
        if AMOUNT in fed and S.POS_UNIT_PRICE in fed:
            raise ValueError(f"{AMOUNT}: set either {AMOUNT} or {S.POS_UNIT_PRICE}, not both")
        if self.zero_total is not None and self.kind != "orders":
            raise ValueError(f"zero_total: only for kind orders, not {self.kind!r}")
        if self.distinct and self.kind not in ("items", "stores"):
            raise ValueError("distinct: only for items and stores (prep counts every row of the other kinds)")
        if self.csv is not None and self.format != "csv":
            raise ValueError(f"csv: options given for a {self.format} source")
        for col, template in self.templates.items():
            _template_fields(col, template)
        return self

    def source_columns(self) -> list[str]:
        """Columns read from the files (the generated row number excluded), in first-use order."""
        cols: list[str] = []
        for v in self.columns.values():
            cols += [v] if isinstance(v, str) else v
        for col, template in self.templates.items():
            cols += _template_fields(col, template)
        for oh in self.one_hot.values():
            cols += oh.columns
        cols += [self.timestamp.column] if self.timestamp else []
        cols += [self.currency.column] if self.currency and self.currency.column else []
        cols += self.row_number.partition_by if self.row_number else []
        generated = self.row_number.name if self.row_number else None
        return [c for c in dict.fromkeys(cols) if c != generated]


class Mapping(_Model):
    """A retailer's exports → the canonical raw layout. Source names are unique."""

    description: str = ""
    sources: list[SourceSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Mapping:
        names = [s.name for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"sources: names must be unique; repeated: {repeated}")
        return self


def _check_canonical(kind: str, section: str, col: str) -> None:
    if kind == "orders" and col == S.ORD_ZERO_TOTAL:
        raise ValueError(
            f"{section}.{col}: set by the source option 'zero_total: keep | reject', not from the source"
        )
    mapped = [c for c in CANONICAL[kind].columns if c != S.ORD_ZERO_TOTAL]  # zero_total: an option's
    allowed = (*mapped, *((AMOUNT,) if kind == "pos" else ()))
    if col not in allowed:
        raise ValueError(
            f"{section}.{col}: unknown canonical column {col!r} for kind {kind!r}; expected one of {list(allowed)}"
        )


def _fed_columns(src: SourceSpec) -> dict[str, str]:
    """Canonical column → the section that sets it; each column may be set in one section only."""
    fed: dict[str, str] = {}
    sections: dict[str, dict[str, Any]] = {
        "columns": src.columns,
        "templates": src.templates,
        "constants": src.constants,
        "one_hot": src.one_hot,
    }
    ts_col = CANONICAL[src.kind].ts_column
    if src.timestamp is not None and ts_col is not None:
        sections["timestamp"] = {ts_col: src.timestamp}
    for section, entries in sections.items():
        for col, value in entries.items():
            _check_canonical(src.kind, section, col)
            if col in fed:
                raise ValueError(f"{section}.{col}: canonical column {col!r} is also set in {fed[col]}")
            if isinstance(value, list) and not value:
                raise ValueError(f"{section}.{col}: empty list of source columns")
            fed[col] = section
    return fed


def _template_fields(col: str, template: str) -> list[str]:
    fields = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"templates.{col}: {template!r}: {e}") from None
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field or spec or conversion:
            raise ValueError(f"templates.{col}: {template!r}: use plain {{column}} fields only")
        fields.append(field)
    return fields


# ------------------------------------------------------------------------------------------ loading
def load_mapping(path: Path) -> Mapping:
    """Parse and validate a mapping file; every problem is a SourceError naming the file and source."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SourceError(f"mapping {path}: cannot be read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SourceError(f"mapping {path}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise SourceError(f"mapping {path}: expected a YAML mapping with a 'sources' list")
    try:
        return Mapping.model_validate(data)
    except ValidationError as e:
        problems = dict.fromkeys(_describe(err, data) for err in e.errors())
        raise SourceError(f"mapping {path}: " + "; ".join(problems)) from None


def _describe(err: Any, data: dict[str, Any]) -> str:
    """One pydantic error as 'source 'name': field: message (got value)'."""
    loc = [str(p) for p in err["loc"] if p not in ("str", "list[str]")]
    where = ""
    if len(loc) >= 2 and loc[0] == "sources" and loc[1].isdigit():
        i = int(loc[1])
        sources = data.get("sources")
        name = sources[i].get("name") if isinstance(sources, list) and isinstance(sources[i], dict) else None
        where = f"source {name!r}: " if name else f"sources[{i}]: "
        loc = loc[2:]
    msg = str(err["msg"]).removeprefix("Value error, ")
    field = ".".join(loc)
    got = f" (got {err['input']!r})" if err["type"] == "literal_error" else ""
    prefix = f"{field}: " if field and not msg.startswith(field) else ""
    return f"{where}{prefix}{msg}{got}"


# ------------------------------------------------------------------------------------------ importing
@dataclass(frozen=True)
class ImportResult:
    mapping: Path
    files: dict[str, Path]  # kind → canonical file written (every kind, empty when nothing feeds one)
    n_rows: dict[str, int]  # kind → rows written
    n_rows_by_source: dict[str, int]  # source name → rows written (distinct rows for ``distinct`` sources)
    seconds: float
    n_unread: dict[str, int] = dataclasses.field(
        default_factory=dict
    )  # source → lines passed on undecoded (below)


def import_sources(
    mapping_path: Path, out: Path, base_dir: Path | None = None, progress: Progress | None = None
) -> ImportResult:
    """Read every source of the mapping and write every canonical file of ``out/01_raw``.

    Relative source paths are resolved against ``base_dir`` (default: the mapping file's folder). A kind
    that no source feeds gets a header-only CSV (or an empty JSONL file), so that prep runs unchanged.
    Several sources of one kind are concatenated in mapping order; each keeps its files' row order.
    The canonical files are replaced only after every source has been read, and ``01_raw/imported_from.json``
    then lists the files read and their identifier columns (:mod:`data_prep.import_record`).
    """
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    mapping = load_mapping(mapping_path)
    base = base_dir or mapping_path.parent
    truth = out / S.GROUND_TRUTH_DIR
    if truth.exists():
        raise SourceError(
            f"{out} holds {truth.name}/ from another dataset (prep would score identities against it): "
            "import into an empty folder or remove it"
        )
    raw = out / S.RAW_DIR
    raw.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[Path]] = {kind: [] for kind in CANONICAL}
    unread: dict[str, list[Path]] = {kind: [] for kind in CANONICAL}
    counts: dict[str, int] = {}
    n_unread: dict[str, int] = {}
    inputs: list[ImportedFile] = []
    with tempfile.TemporaryDirectory(prefix=".import-", dir=raw) as tmp, duckdb.connect() as con:
        stage = Path(tmp)
        for i, src in enumerate(mapping.sources):
            say(f"{src.name}: {src.kind} ← {src.path}")
            where = f"mapping {mapping_path}: source {src.name!r}"
            part = stage / f"part{i}"
            undecoded = stage / f"unread{i}"
            read = _expand(src, base, where)
            inputs += [_imported_file(src, f) for f in read]
            n_written, n_unread[src.name] = _import_source(con, src, read, stage, part, where, undecoded)
            counts[src.name] = n_written + n_unread[src.name]
            parts[src.kind].append(part)
            unread[src.kind] += [undecoded] if n_unread[src.name] else []
        staged = {
            kind: _assemble(spec, parts[kind] + unread[kind], stage / kind)
            for kind, spec in CANONICAL.items()
        }
        for kind, path in staged.items():
            CANONICAL[kind].path(out).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, CANONICAL[kind].path(out))
        write_record(out, inputs)
    n_rows = {kind: sum(counts[s.name] for s in mapping.sources if s.kind == kind) for kind in CANONICAL}
    files = {kind: spec.path(out) for kind, spec in CANONICAL.items()}
    return ImportResult(mapping_path, files, n_rows, counts, time.perf_counter() - start, n_unread)


def _import_source(
    con: duckdb.DuckDBPyConnection,
    src: SourceSpec,
    files: list[Path],
    stage: Path,
    part: Path,
    where: str,
    unread: Path,
) -> tuple[int, int]:
    """Write one source's canonical rows (no header) from its ``files`` to ``part`` and the lines that cannot
    be decoded, as they came, to ``unread``; returns the number of each."""
    needed = src.source_columns()
    decoded = [_decodable(src, i, f, stage, where) for i, f in enumerate(files)]
    _concat([u for _f, u in decoded if u is not None], unread)
    n_unread = sum(1 for _f, u in decoded if u is not None for _line in u.open("rb"))
    files = [f for f, _u in decoded]
    if src.format == "jsonl":
        _check_json_keys(con, files, needed, where)
    reads = [_read_sql(src, i, f, needed, stage, where) for i, f in enumerate(files)]
    query = _source_query(src, reads)
    zone = src.timestamp.timezone if src.timestamp else "UTC"
    options = "FORMAT json" if src.kind == "online" else "FORMAT csv, HEADER false"
    try:
        con.execute(f"SET TimeZone = {_lit(zone)}")  # read by iso parsing of values without an offset
        row = con.execute(f"COPY ({query}) TO {_lit(str(part))} ({options})").fetchone()
    except duckdb.Error as e:
        raise SourceError(f"{where}: cannot be read: {engine.safe_error_text(e)}") from None
    return (int(row[0]) if row else 0), n_unread


def _imported_file(src: SourceSpec, path: Path) -> ImportedFile:
    """Where the identifiers of ``src`` sit in its file ``path``: a column each, unless the mapping builds
    them (a template, recoded values), when no one column of the file holds the value prep hashes."""
    direct: list[tuple[str, str]] = []
    built: list[str] = []
    for col, id_type in S.RAW_IDENTIFIER_COLUMNS.get(src.kind, {}).items():
        if col in src.columns and col not in src.values:
            v = src.columns[col]
            direct += [(c, id_type) for c in ([v] if isinstance(v, str) else v)]
        elif col in src.templates or col in src.values:
            built.append(col)
    opts = src.csv or CsvOptions()
    return ImportedFile(
        path, src.name, src.format, tuple(direct), tuple(built), opts.delimiter, opts.quote, opts.encoding
    )


def _decodable(src: SourceSpec, i: int, path: Path, stage: Path, where: str) -> tuple[Path, Path | None]:
    """The file as UTF-8 without the lines that do not decode, and those lines as they came (None if none).

    Undecodable lines are not dropped or repaired: they go to the end of the canonical file as they came, and
    prep rejects them (``bad_encoding``) with the canonical file and line. A header that does not decode
    stops the import.
    """
    if src.format == "parquet":
        return path, None
    opts = src.csv or CsvOptions()
    unread = stage / f"unread-{i}-{path.name}"
    if src.format == "csv" and codecs.lookup(opts.encoding).name != "utf-8":
        path = _transcode(path, opts.encoding, stage / f"utf8-{i}-{path.name}", where, unread)
    elif not screening.is_utf8(path):
        if src.format == "csv":
            _csv_header(path, opts, where)
        clean = stage / f"clean-{i}-{path.name}"
        fmt: screening.FileFormat = "jsonl" if src.format == "jsonl" else "csv"
        path = screening.screen_file(
            path, fmt, clean, delimiter=opts.delimiter, quote=opts.quote, unread=unread
        ).path
    return path, unread if unread.exists() and unread.stat().st_size else None


def _csv_header(path: Path, opts: CsvOptions, where: str) -> list[str]:
    """The header's column names; refuses empty or repeated names (a file aligned with runs of spaces, read
    with ``delimiter: " "``, gives empty ones), which no query can name."""
    try:
        header = screening.csv_header(path, opts.delimiter, opts.quote)
    except screening.UnreadableFile as e:
        raise SourceError(f"{where}: {e}") from None
    empty = [i + 1 for i, c in enumerate(header) if not c.strip()]
    repeated = sorted({c for c in header if c.strip() and header.count(c) > 1})
    if empty or repeated:
        what = f"empty column name(s) at position(s) {empty[:5]}" if empty else f"repeated name(s) {repeated}"
        aligned = " (a file aligned with runs of spaces?)" if opts.delimiter.isspace() and empty else ""
        raise SourceError(
            f"{where}: {path.name}: the header read with delimiter {opts.delimiter!r} has {what}{aligned}: "
            "export it with one delimiter between columns (e.g. CSV or tab-separated) and set csv.delimiter"
        )
    return header


def _concat(paths: list[Path], dest: Path) -> None:
    with dest.open("wb") as out:
        for p in paths:
            with p.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)


def _expand(src: SourceSpec, base: Path, where: str) -> list[Path]:
    pattern = os.path.expanduser(src.path)
    if not os.path.isabs(pattern):
        pattern = os.path.join(glob.escape(str(base)), pattern)
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not files:
        raise SourceError(f"{where}: no file matches {pattern}")
    return files


def _check_json_keys(
    con: duckdb.DuckDBPyConnection, files: list[Path], needed: list[str], where: str
) -> None:
    """A JSON key may be absent from some records, but a mapped key absent from every record is an error."""
    if not needed:
        return
    seen = ", ".join(f"bool_or(list_contains(json_keys(json), {_lit(c)}))" for c in needed)
    paths = "[" + ", ".join(_lit(str(f)) for f in files) + "]"
    try:
        row = con.execute(f"SELECT count(*), {seen} FROM read_ndjson_objects({paths})").fetchone()
    except duckdb.Error as e:
        raise SourceError(f"{where}: cannot be read: {engine.safe_error_text(e)}") from None
    assert row is not None
    missing = [c for c, present in zip(needed, row[1:], strict=True) if not present]
    if row[0] and missing:
        raise SourceError(f"{where}: no record of {[str(f) for f in files]} has column(s) {missing}")


def _read_sql(src: SourceSpec, i: int, path: Path, needed: list[str], stage: Path, where: str) -> str:
    """SELECT of one file: file index, line number in the file, then the needed columns as text."""
    cols = ", ".join(f"CAST({_ident(c)} AS VARCHAR) AS {_ident(c)}" for c in needed)
    head = f"SELECT {i} AS _file, row_number() OVER () AS _line{', ' + cols if cols else ''}"
    if src.format == "jsonl":
        types = "{" + ", ".join(f"{_lit(c)}: 'VARCHAR'" for c in needed) + "}"
        return f"{head} FROM read_json({_lit(str(path))}, format='newline_delimited', columns={types})"
    if src.format == "parquet":
        try:
            header = pq.read_schema(path).names
        except Exception as e:
            raise SourceError(f"{where}: {path} is not a Parquet file: {e}") from None
        _require_columns(header, needed, path, where)
        return f"{head} FROM read_parquet({_lit(str(path))})"
    opts = src.csv or CsvOptions()
    header = _csv_header(path, opts, where)
    _require_columns(header, needed, path, where)
    types = "{" + ", ".join(f"{_lit(c)}: 'VARCHAR'" for c in header) + "}"
    q = _lit(opts.quote)
    return (
        f"{head} FROM read_csv({_lit(str(path))}, header=true, auto_detect=false, columns={types}, "
        f"delim={_lit(opts.delimiter)}, quote={q}, escape={q}, strict_mode=true)"
    )


def _require_columns(header: list[str], needed: list[str], path: Path, where: str) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        raise SourceError(f"{where}: {path} has no column(s) {missing}; its columns are {header}")


def _transcode(path: Path, encoding: str, dest: Path, where: str, unread: Path) -> Path:
    """Stream a non-UTF-8 file into a UTF-8 copy (DuckDB reads UTF-8 only without extensions), line by line:
    a line that is not valid ``encoding`` goes to ``unread`` as it came; a header that is not stops."""
    with path.open("rb") as f, dest.open("wb") as g, unread.open("wb") as bad:
        for n, raw in enumerate(f, start=1):
            try:
                g.write(raw.decode(encoding).encode("utf-8"))
            except UnicodeDecodeError as e:
                if n == 1:
                    raise SourceError(
                        f"{where}: {path} line 1 (the header) is not valid {encoding} (byte {e.start})"
                    ) from None
                bad.write(raw if raw.endswith(b"\n") else raw + b"\n")
    return dest


# ------------------------------------------------------------------------------------------ SQL
def _source_query(src: SourceSpec, reads: list[str]) -> str:
    """The canonical rows of one source, in the source's row order (files in path order)."""
    rows = "\nUNION ALL\n".join(reads)
    numbered = "src"
    if src.row_number is not None:
        rn = src.row_number
        part = f"PARTITION BY {', '.join(_ident(c) for c in rn.partition_by)} " if rn.partition_by else ""
        n = f"row_number() OVER ({part}ORDER BY _file, _line)"
        text = f"printf('%0{rn.pad}d', {n})" if rn.pad else f"CAST({n} AS VARCHAR)"
        rows = f"SELECT *, {text} AS {_ident(rn.name)} FROM ({rows})"
    exprs = _canonical_exprs(src)
    select = ", ".join(f"{e} AS {_ident(c)}" for c, e in exprs.items())
    cols = ", ".join(_ident(c) for c in exprs)
    if src.distinct:
        return (
            f"WITH {numbered} AS ({rows}) SELECT {cols} FROM (SELECT _file, _line, {select} FROM {numbered}) "
            f"QUALIFY row_number() OVER (PARTITION BY {cols} ORDER BY _file, _line) = 1 ORDER BY _file, _line"
        )
    return f"WITH {numbered} AS ({rows}) SELECT {select} FROM {numbered} ORDER BY _file, _line"


def _canonical_exprs(src: SourceSpec) -> dict[str, str]:
    """Canonical column → SQL text expression, in the canonical column order."""
    spec = CANONICAL[src.kind]
    fed = _fed_columns(src)
    exprs = {c: _recode(src, c, _value_expr(src, c)) for c in (*spec.columns, AMOUNT) if c in fed}
    if src.zero_total is not None:  # orders: the source's rule travels with each of its rows to prep
        exprs[S.ORD_ZERO_TOTAL] = _lit(src.zero_total)
    if spec.price_column and src.currency is not None and spec.price_column in exprs:
        exprs[spec.price_column] = _convert(exprs[spec.price_column], src.currency)
    if AMOUNT in exprs:  # POS: a line or order total
        amount = exprs.pop(AMOUNT)
        amount = _convert(amount, src.currency) if src.currency else amount
        if S.POS_QUANTITY in exprs:
            exprs[S.POS_UNIT_PRICE] = _per_unit(amount, exprs[S.POS_QUANTITY])
        else:
            exprs[S.POS_QUANTITY], exprs[S.POS_UNIT_PRICE] = "'1'", amount
    return {c: exprs.get(c, "CAST(NULL AS VARCHAR)") for c in spec.columns}


def _value_expr(src: SourceSpec, col: str) -> str:
    if col in src.columns:
        v = src.columns[col]
        if isinstance(v, str):
            return _ident(v)
        return "coalesce(" + ", ".join(f"nullif({_ident(c)}, '')" for c in v) + ")"
    if col in src.templates:
        return _template_sql(src.templates[col])
    if col in src.constants:
        return _lit(src.constants[col])
    if col in src.one_hot:
        oh = src.one_hot[col]
        cases = " ".join(f"WHEN {_ident(c)} = {_lit(oh.true_value)} THEN {_lit(c)}" for c in oh.columns)
        return f"CASE {cases} END"
    assert src.timestamp is not None
    return _timestamp_sql(src.timestamp, ONLINE_TS_FORMAT if src.kind == "online" else TABLE_TS_FORMAT)


def _recode(src: SourceSpec, col: str, expr: str) -> str:
    if col not in src.values:
        return expr
    cases = " ".join(f"WHEN {_lit(k)} THEN {_lit(v)}" for k, v in src.values[col].items())
    return f"(CASE {expr} {cases} ELSE {expr} END)"


def _template_sql(template: str) -> str:
    parts = []
    for literal, field, _spec, _conversion in string.Formatter().parse(template):
        parts += [_lit(literal)] if literal else []
        parts += [_ident(field)] if field else []
    return "(" + " || ".join(parts) + ")" if parts else "''"


def _timestamp_sql(ts: TimestampSpec, out_format: str) -> str:
    """Text in UTC, or NULL when the value does not parse (prep then rejects it: bad_timestamp)."""
    x = _ident(ts.column)
    if ts.format == "iso":  # values without an offset are read in the session zone (set per source)
        utc = f"timezone('UTC', TRY_CAST({x} AS TIMESTAMPTZ))"
    elif ts.format in ("epoch_s", "epoch_ms"):
        per_unit = "1e6" if ts.format == "epoch_s" else "1e3"
        utc = f"TRY(make_timestamp(CAST(round(TRY_CAST({x} AS DOUBLE) * {per_unit}) AS BIGINT)))"
    elif "%z" in ts.format or "%Z" in ts.format:
        utc = f"timezone('UTC', TRY_STRPTIME({x}, {_lit(ts.format)}))"
    else:
        utc = f"timezone('UTC', timezone({_lit(ts.timezone)}, TRY_STRPTIME({x}, {_lit(ts.format)})))"
    return f"strftime({utc}, {_lit(out_format)})"


def _number(d: str) -> str:
    return f"CAST(round({d}, {ROUND_DIGITS}) AS VARCHAR)"


def _convert(x: str, cur: CurrencySpec) -> str:
    """Price × rate; empty for an unknown currency, as-is when the price is not a number."""
    rates = cur.normalised_rates()
    if cur.code is not None:
        rate = repr(rates[cur.code.strip().upper()])
    else:
        assert cur.column is not None
        cases = " ".join(f"WHEN {_lit(c)} THEN {r!r}" for c, r in rates.items())
        rate = f"(CASE upper(trim({_ident(cur.column)})) {cases} END)"
    num = f"TRY_CAST({x} AS DOUBLE)"
    return f"(CASE WHEN {rate} IS NULL THEN NULL WHEN {num} IS NULL THEN {x} ELSE {_number(f'{num} * {rate}')} END)"


def _per_unit(amount: str, quantity: str) -> str:
    """amount / quantity when both are numbers and quantity ≠ 0, else the amount as-is."""
    a, q = f"TRY_CAST({amount} AS DOUBLE)", f"TRY_CAST({quantity} AS DOUBLE)"
    return f"(CASE WHEN {a} IS NOT NULL AND {q} IS NOT NULL AND {q} <> 0 THEN {_number(f'{a} / {q}')} ELSE {amount} END)"


def _assemble(spec: CanonicalFile, parts: list[Path], dest: Path) -> Path:
    """Concatenate the sources' parts into one canonical file (CSV: header first)."""
    with dest.open("wb") as f:
        if spec.name.endswith(".csv"):
            f.write((",".join(spec.columns) + "\n").encode())
        for part in parts:
            with part.open("rb") as p:
                shutil.copyfileobj(p, f, 1 << 20)
    return dest


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"

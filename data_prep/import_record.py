"""What an import read: ``01_raw/imported_from.json``, written by :func:`data_prep.sources.import_sources`.

It lists every file an import read (``o2o data import``, and ``o2o data fetch``, which imports through the
same code) and which of its columns hold identifiers. An input may lie inside the data folder, as a fetch's
``exports/`` does; it then holds the same raw identifiers as ``01_raw``, and erasure
(:mod:`data_prep.erasure`) cleans it with them. Paths inside the data folder are stored relative to it, so
the folder can be moved or copied; others are stored absolute.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep import schema as S

RECORD_FILE = "imported_from.json"


@dataclass(frozen=True)
class ImportedFile:
    """One file one source of a mapping read."""

    path: Path
    source: str  # the mapping's source name
    format: str  # csv | jsonl | parquet
    # (source column, identifier type) of every identifier read straight from a column of the file
    identifiers: tuple[tuple[str, str], ...]
    # canonical identifier columns the mapping builds (templates, recoded values): no one column holds them
    built_identifiers: tuple[str, ...] = ()
    delimiter: str = ","  # CSV only, as the mapping's csv options
    quote: str = '"'
    encoding: str = "utf-8"

    @property
    def holds_identifiers(self) -> bool:
        return bool(self.identifiers or self.built_identifiers)


def record_path(out: Path) -> Path:
    return out / S.RAW_DIR / RECORD_FILE


def write_record(out: Path, files: list[ImportedFile]) -> Path:
    """Record the files an import into ``out`` read, atomically (an import that fails leaves the record as
    it was). Files that earlier imports read, and this one did not, stay listed while they exist: a re-import
    from elsewhere leaves them in the folder, as raw as before."""
    read_now = {f.path.resolve() for f in files}
    earlier = [f for f in read_record(out) if f.path.resolve() not in read_now and f.path.is_file()]
    root = out.resolve()
    entries = []
    for f in [*earlier, *files]:
        entry = asdict(f)
        path = f.path.resolve()
        entry["path"] = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        entries.append(entry)
    dest = record_path(out)
    tmp = dest.with_name(dest.name + ".partial")
    tmp.write_text(json.dumps({"inputs": entries}, indent=2))
    os.replace(tmp, dest)
    return dest


def read_record(out: Path) -> list[ImportedFile]:
    """The files the imports into ``out`` read (empty when ``01_raw`` was not written by an import)."""
    path = record_path(out)
    if not path.is_file():
        return []
    files = []
    for entry in json.loads(path.read_text())["inputs"]:
        entry["path"] = out / entry["path"]  # an absolute path stays absolute
        entry["identifiers"] = tuple((c, t) for c, t in entry["identifiers"])
        entry["built_identifiers"] = tuple(entry["built_identifiers"])
        files.append(ImportedFile(**entry))
    return files

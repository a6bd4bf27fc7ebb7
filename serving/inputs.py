"""Scoring inputs, checked before any work: a snapshot (or held-out examples) must be readable Parquet with
the columns and types the bundle needs, and the very file ``o2o prep`` wrote (its SHA-256 in
``04_features/manifest.json``, which an erasure refreshes). Both batch engines call :func:`check_snapshot`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep import schema as S
from data_prep.manifest import file_sha256
from serving.artifact import Bundle


class ScoringInputError(ValueError):
    """A scoring input is unreadable, lacks a column the bundle needs, or is not the file prep wrote; the
    message names the file and the remedy."""


def first_line(e: BaseException) -> str:
    """An exception's message, first line only (Arrow's can run to several)."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _is_str(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _list_of(element: Callable[[pa.DataType], bool]) -> Callable[[pa.DataType], bool]:
    return lambda t: bool((pa.types.is_list(t) or pa.types.is_large_list(t)) and element(t.value_type))


def _is_number(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t))


_STRINGS, _NUMBER_LISTS = _list_of(_is_str), _list_of(pa.types.is_integer)
# columns score_batch reads when present, with the type it reads them as
_OPTIONAL: dict[str, tuple[Callable[[pa.DataType], bool], str]] = {
    S.CHANNELS_COL: (_STRINGS, "list<string>"),
    S.TIMESTAMPS_COL: (_NUMBER_LISTS, "list<int64> (epoch seconds)"),
    S.SEGMENT: (_is_str, "string"),
    S.CONSENT_MARKETING: (pa.types.is_boolean, "bool"),
    S.F_N_ONLINE_ALL: (_is_number, "a number"),
    S.F_N_STORE_ALL: (_is_number, "a number"),
}


def input_columns(bundle: Bundle) -> dict[str, tuple[Callable[[pa.DataType], bool], str]]:
    """Columns a snapshot must have for ``bundle`` → (type test, expected type in words): customer id and
    histories always, the channels and timestamps a model encodes, every aggregate a classifier takes."""
    need: dict[str, tuple[Callable[[pa.DataType], bool], str]] = {
        S.CUSTOMER_ID: (_is_str, "string"),
        S.ITEMS: (_STRINGS, "list<string>"),
        S.EVENT_TYPES_COL: (_STRINGS, "list<string>"),
    }
    models = [m for m in (bundle.recommender, bundle.intent, bundle.churn) if m is not None]
    if any(m.spec.model_config.n_channels for m in models):
        need[S.CHANNELS_COL] = _OPTIONAL[S.CHANNELS_COL]
    if any(m.spec.model_config.n_gap_buckets for m in models):
        need[S.TIMESTAMPS_COL] = _OPTIONAL[S.TIMESTAMPS_COL]
    for m in models:
        if m.task == "intent":
            need |= {name: (_is_number, "a number") for name in m.classifier.feature_names}
    return need


def _read_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path) if path.is_file() else pq.ParquetDataset(path).schema
    except (pa.ArrowException, OSError) as e:
        raise ScoringInputError(
            f"{path}: not a readable Parquet file ({first_line(e)}); rerun `o2o prep`"
        ) from None


def check_snapshot(bundle: Bundle, snapshot: Path, recorded_sha256: str | None = None) -> str | None:
    """Before any work: ``snapshot`` is readable Parquet with every column ``bundle`` needs, of the type it
    needs, and (``recorded_sha256`` given) the very file prep wrote. Returns its SHA-256 (None for a folder,
    which Spark reads). ScoringInputError otherwise, naming the file and the remedy."""
    if not snapshot.exists():
        raise ScoringInputError(f"{snapshot} not found: run `o2o prep` first or pass --features")
    schema, required = _read_schema(snapshot), input_columns(bundle)
    problems = []
    for name, (ok, expected) in (_OPTIONAL | required).items():
        if name not in schema.names:
            problems += [f"no column {name!r}"] if name in required else []
        elif not ok(schema.field(name).type):
            problems.append(f"column {name!r} is {schema.field(name).type}, expected {expected}")
    if problems:
        raise ScoringInputError(
            f"{snapshot}: cannot be scored with this bundle ({'; '.join(problems)}); rerun `o2o prep`, or score "
            "with a bundle trained on this data"
        )
    if not snapshot.is_file():
        return None
    stat = snapshot.stat()
    digest = _sha256(snapshot.resolve(), stat.st_size, stat.st_mtime_ns)
    if recorded_sha256 is not None and digest != recorded_sha256:
        raise ScoringInputError(
            f"{snapshot}: SHA-256 differs from the one `o2o prep` recorded in its manifest (the file was changed "
            "after prep); rerun `o2o prep`"
        )
    return digest


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """SHA-256 of ``path`` as of (``size``, ``mtime_ns``): the CLI checks a snapshot before its progress bar
    starts and the scorer checks it again, reading it once."""
    return file_sha256(path)


def recorded_sha256(features: Path, name: str) -> str:
    """The SHA-256 prep recorded for ``features/name`` in ``features/manifest.json`` (an erasure refreshes
    it); ScoringInputError when there is none, or the manifest is of another data schema major version."""
    path = features / S.MANIFEST_FILE
    try:
        doc = json.loads(path.read_text())
        schema, digest = str(doc.get("schema_version", "")), str(doc["outputs"][name]["sha256"])
    except FileNotFoundError:
        raise ScoringInputError(
            f"{path} not found: cannot check {features / name}; rerun `o2o prep`"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise ScoringInputError(
            f"{path} records no SHA-256 for {name}: cannot check {features / name}; rerun `o2o prep`"
        ) from None
    if schema.split(".")[0] != S.SCHEMA_VERSION.split(".")[0]:
        raise ScoringInputError(
            f"{path}: written by a prep of data schema {schema or '(none)'}, this code reads schema "
            f"{S.SCHEMA_VERSION}; rerun `o2o prep`"
        )
    return digest


def verified(features: Path, name: str) -> Path:
    """``features/name`` once it is readable and has the SHA-256 prep recorded."""
    path = features / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `o2o prep` first or pass --features")
    if file_sha256(path) != recorded_sha256(features, name):
        raise ScoringInputError(
            f"{path}: SHA-256 differs from the one `o2o prep` recorded in its manifest (the file was changed "
            "after prep); rerun `o2o prep`"
        )
    return path

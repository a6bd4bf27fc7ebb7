"""Customer-history stores behind the API: prep's snapshot plus the events apps append after it.

Three stores share one interface (:class:`HistoryStore`), picked by :func:`open_history_store`: in memory (one
process, lost on exit; here), SQLite (embedded default that survives restarts; several threads or worker
processes on one host) and Redis (shared by replicas on many hosts), both in :mod:`serving.history_stores`.

Keys are pseudonymous ``customer_id`` values: those prep resolved, or what the service derives from a raw
identifier with :mod:`data_prep.pii` before calling. No raw identifier reaches a store, and nothing here logs a
customer id, an item id or a store URL (it may carry a password).

How :meth:`HistoryStore.append` changes a history:

- **Order.** The snapshot's events are a fixed prefix in prep's order. Appended events follow it, in time order
  among themselves: each batch is sorted by ``ts`` and merged into the events appended before it (equal times
  keep arrival order). An appended event older than the snapshot's newest event (a late till upload, a replay)
  still goes after the snapshot: prep's history is never reordered online; the next prep run rebuilds it.
- **Cap.** A stored history keeps its newest :data:`MAX_HISTORY_EVENTS` events (the oldest drop, snapshot ones
  first), so a chatty client cannot grow a row without limit. The models read far fewer; only ``exclude_seen``
  looks further back. Snapshot rows are loaded whole (online and batch scores agree until the first append).
- **Side lists.** ``channels`` and ``timestamps`` grow with the items when the history has them (every snapshot
  prep writes today, and every customer an append creates); a row from an older snapshot without them keeps None.
- **Aggregates.** ``features`` and ``segment`` stay prep's, as of the end of its data: appends do not recompute
  them. A customer an append creates gets every aggregate at 0.0 and no segment (the cold-start fallback).

Reloading a snapshot into a persistent store (``load_snapshot``) is skipped when the store already holds that
exact file (by content hash), so a restart or another replica keeps what was appended since. A different
snapshot replaces the rows of the customers it holds, appended events included (it is assumed to contain them:
apps send the same events to the raw sources prep reads); the customers the previous snapshot held and this one
does not (an erased person) leave the store; customers that only appends created are kept.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow.parquet as pq

from data_prep import schema as S
from serving.store_registry import register_store

log = logging.getLogger(__name__)

MAX_HISTORY_EVENTS = 2_000  # newest events kept per customer once appends start
MAX_EPOCH_SECONDS = 10**11  # year ~5100: a larger ``ts`` is almost surely milliseconds
SNAPSHOT_BATCH_ROWS = 10_000  # customers read from the snapshot file at a time
APPENDED_TS = "appended_ts"  # stored beside a history: times of its appended tail (the newest events)
STORE_URL_FORMS = (
    "None or 'memory', 'sqlite:///relative/path.db' (sqlite:////absolute/path.db), 'redis://host:port/db'"
)


@dataclass(frozen=True)
class CustomerHistory:
    items: list[str]  # oldest first
    event_types: list[str]
    features: dict[str, float]  # raw point-in-time aggregates by name (schema.INTENT_FEATURES)
    segment: str | None = None  # RFM segment as of the end of the data (cold-start fallback)
    channels: list[str] | None = None  # aligned with items, when prep recorded them
    timestamps: list[int] | None = None  # epoch seconds, aligned with items

    def side_lists(self) -> tuple[list[list[str]] | None, list[list[int]] | None]:
        """(channels, timestamps) as one-row batches for the scorer; None when prep recorded none."""
        if self.channels is None or self.timestamps is None:
            return None, None
        return [self.channels], [self.timestamps]


@dataclass(frozen=True)
class NewEvent:
    """One item event an app reports after the snapshot; checked on construction (ValueError)."""

    item_id: str
    event_type: str  # one of schema.ITEM_EVENT_TYPES
    channel: str  # one of schema.CHANNELS
    ts: int  # epoch seconds

    def __post_init__(self) -> None:
        if not isinstance(self.item_id, str) or not self.item_id.strip():
            raise ValueError(f"item_id must be a non-empty string, got {self.item_id!r}")
        if self.event_type not in S.ITEM_EVENT_TYPES:
            raise ValueError(f"event_type {self.event_type!r} is not an item event type {S.ITEM_EVENT_TYPES}")
        if self.channel not in S.CHANNELS:
            raise ValueError(f"channel {self.channel!r} is not one of {S.CHANNELS}")
        if isinstance(self.ts, bool) or not isinstance(self.ts, int) or not 0 <= self.ts < MAX_EPOCH_SECONDS:
            raise ValueError(f"ts must be whole epoch seconds in [0, {MAX_EPOCH_SECONDS}), got {self.ts!r}")


def empty_history() -> CustomerHistory:
    """A customer the snapshot does not know: no events, every aggregate 0.0, no segment."""
    return CustomerHistory([], [], dict.fromkeys(S.INTENT_FEATURES, 0.0), None, [], [])


def merge_events(
    history: CustomerHistory, appended_ts: list[int], events: Sequence[NewEvent]
) -> tuple[CustomerHistory, list[int]]:
    """``history`` with ``events`` merged by time into its appended tail (its last ``len(appended_ts)``
    events, whose times ``appended_ts`` holds), cut to its newest :data:`MAX_HISTORY_EVENTS` events.

    Returns the new history and the times of its appended tail. Pure: the inputs are left unchanged, so a
    reader still holding the old history sees a consistent one.
    """
    n_base = len(history.items) - len(appended_ts)
    channels, timestamps = history.channels, history.timestamps
    tail_channels = channels[n_base:] if channels is not None else [""] * len(appended_ts)
    tail = zip(appended_ts, history.items[n_base:], history.event_types[n_base:], tail_channels, strict=True)
    new = sorted(((e.ts, e.item_id, e.event_type, e.channel) for e in events), key=_by_time)
    merged = list(heapq.merge(tail, new, key=_by_time))  # stable: on equal times the earlier event first
    merged_ts = [r[0] for r in merged]
    cut = max(0, n_base + len(merged) - MAX_HISTORY_EVENTS)

    def keep(base: list[Any], appended: list[Any]) -> list[Any]:
        return (base[:n_base] + appended)[cut:]

    if channels is not None and timestamps is not None:
        sides: tuple[list[str] | None, list[int] | None] = (
            keep(channels, [r[3] for r in merged]),
            keep(timestamps, merged_ts),
        )
    else:  # an older snapshot without side lists: the appended channels and times are not aligned to any
        sides = (None, None)
    merged_history = CustomerHistory(
        keep(history.items, [r[1] for r in merged]),
        keep(history.event_types, [r[2] for r in merged]),
        history.features,
        history.segment,
        *sides,
    )
    return merged_history, merged_ts[max(0, cut - n_base) :]


def _by_time(row: tuple[int, str, str, str]) -> int:
    return row[0]


def check_append(customer_id: str, events: Sequence[NewEvent]) -> None:
    """Raise ValueError (TypeError for a wrong kind of event) unless ``append`` may store ``events``."""
    if not isinstance(customer_id, str) or not customer_id.strip():
        raise ValueError("customer_id must be a non-empty string")
    if not events:
        raise ValueError("events must hold at least one event")
    for e in events:
        if not isinstance(e, NewEvent):
            raise TypeError(f"events must be NewEvent instances, got {type(e).__name__}")


def encode_history(history: CustomerHistory, appended_ts: list[int]) -> str:
    """The JSON a persistent store keeps per customer: the history's fields plus :data:`APPENDED_TS`."""
    return json.dumps({**vars(history), APPENDED_TS: appended_ts}, separators=(",", ":"))


def decode_history(text: str | bytes | None) -> tuple[CustomerHistory, list[int]]:
    """Inverse of :func:`encode_history`; None (an unknown customer) gives :func:`empty_history`."""
    if text is None:
        return empty_history(), []
    fields = json.loads(text)
    appended_ts = fields.pop(APPENDED_TS, [])
    return CustomerHistory(**fields), appended_ts


def read_snapshot(snapshot: Path) -> Iterator[tuple[str, CustomerHistory]]:
    """(customer_id, history) for every row of ``04_features/snapshot.parquet``, read in batches.

    ``segment``, ``channels`` and ``timestamps`` are optional columns (None when absent); null lists read as
    empty ones.
    """
    file = pq.ParquetFile(snapshot)
    names = set(file.schema_arrow.names)
    required = (S.CUSTOMER_ID, S.ITEMS, S.EVENT_TYPES_COL, *S.INTENT_FEATURES)
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"snapshot {snapshot} lacks the columns {missing}")
    optional = [c for c in (S.SEGMENT, S.CHANNELS_COL, S.TIMESTAMPS_COL) if c in names]
    for batch in file.iter_batches(SNAPSHOT_BATCH_ROWS, columns=[*required, *optional]):
        lists = (S.CUSTOMER_ID, S.ITEMS, S.EVENT_TYPES_COL, *optional)
        cols = {name: batch.column(name).to_pylist() for name in lists}
        none = [None] * batch.num_rows
        rows = zip(
            cols[S.CUSTOMER_ID],
            cols[S.ITEMS],
            cols[S.EVENT_TYPES_COL],
            batch.select(list(S.INTENT_FEATURES)).to_pylist(),
            cols.get(S.SEGMENT, none),
            cols.get(S.CHANNELS_COL, none),
            cols.get(S.TIMESTAMPS_COL, none),
            strict=True,
        )
        for c, i, t, f, g, ch, ts in rows:
            yield c, CustomerHistory(i or [], t or [], f, g, ch, ts)


class HistoryStore(ABC):
    """customer_id → :class:`CustomerHistory`; safe to call from several threads at once."""

    reads_block = True  # get() waits on a file or the network: an async caller runs it in a thread

    @abstractmethod
    def get(self, customer_id: str) -> CustomerHistory | None:
        """The customer's history, or None for a customer neither the snapshot nor an append created."""

    @abstractmethod
    def append(self, customer_id: str, events: Sequence[NewEvent]) -> CustomerHistory:
        """Add ``events`` atomically (see the module notes on order and cap); return the new history.

        An unknown customer is created. Raises ValueError for an empty ``customer_id`` or ``events``.
        """

    @abstractmethod
    def delete(self, customer_ids: Iterable[str]) -> int:
        """Remove these customers (snapshot rows and appended events alike); return how many were stored.

        Unknown ids are skipped. For erasure (``o2o erase --history-url``): a later snapshot load does not
        bring them back unless that snapshot holds them, but a later ``append`` creates them anew.
        """

    @abstractmethod
    def __len__(self) -> int:
        """Number of customers stored."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class InMemoryHistoryStore(HistoryStore):
    """In-process dict, read once from ``04_features/snapshot.parquet`` (empty without one); appends are lost
    when the process exits and are not seen by other workers."""

    reads_block = False  # a dict lookup

    def __init__(self, snapshot: Path | None = None) -> None:
        self._rows = dict(read_snapshot(snapshot)) if snapshot is not None else {}
        self._appended_ts: dict[str, list[int]] = {}  # only for customers with appended events
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, customer_id: str) -> CustomerHistory | None:
        return self._rows.get(customer_id)

    def append(self, customer_id: str, events: Sequence[NewEvent]) -> CustomerHistory:
        check_append(customer_id, events)
        with self._lock:
            old = self._rows.get(customer_id) or empty_history()
            history, tail = merge_events(old, self._appended_ts.get(customer_id, []), events)
            self._rows[customer_id], self._appended_ts[customer_id] = history, tail
        return history

    def delete(self, customer_ids: Iterable[str]) -> int:
        with self._lock:
            n = 0
            for customer_id in set(customer_ids):
                n += self._rows.pop(customer_id, None) is not None
                self._appended_ts.pop(customer_id, None)
        return n

    def close(self) -> None:
        pass


def open_history_store(url: str | None, snapshot: Path | None, existing: bool = False) -> HistoryStore:
    """The store a URL names, loading ``snapshot`` into it when given.

    None or ``"memory"``: :class:`InMemoryHistoryStore`. ``sqlite:///<path>``: :class:`SqliteHistoryStore` at
    ``<path>`` (SQLAlchemy's form: ``sqlite:///data/h.db`` is relative, ``sqlite:////srv/h.db`` absolute).
    ``redis://host:port/db`` (or ``rediss://`` for TLS): :class:`RedisHistoryStore`. Anything else: ValueError.

    ``existing``: open only a store a service may already have written (to delete from it): ValueError for
    an in-memory store (it lives inside the server process), FileNotFoundError for a SQLite file that does
    not exist (a mistyped path would otherwise open a new, empty store).

    A store opened with a ``snapshot`` (a service's) is recorded in the store registry
    (:mod:`serving.store_registry`), where ``o2o erase`` finds it.
    """
    store = _open_store(url, snapshot, existing)
    if snapshot is not None:  # a service's store: named where `o2o erase` looks for every store
        register_store(url, snapshot)
    return store


def _open_store(url: str | None, snapshot: Path | None, existing: bool) -> HistoryStore:
    from serving.history_stores import RedisHistoryStore, SqliteHistoryStore  # redis only when asked for

    if url is None or url == "memory":
        if existing:
            raise ValueError(
                "an in-memory history store lives inside its server process and cannot be opened from outside; "
                "it forgets erased customers when the server restarts on the new snapshot"
            )
        return InMemoryHistoryStore(snapshot)
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "sqlite" and rest.startswith("/") and len(rest) > 1:
        if existing and not Path(rest[1:]).is_file():
            raise FileNotFoundError(f"no SQLite history store at {rest[1:]}")
        return SqliteHistoryStore(rest[1:], snapshot)
    if sep and scheme in ("redis", "rediss") and rest:
        return RedisHistoryStore(url, snapshot)
    # the URL itself is not echoed: a Redis URL may carry a password
    raise ValueError(
        f"unsupported history store URL (scheme {scheme if sep else '?'!r}): use {STORE_URL_FORMS}"
    )

"""The persistent customer-history stores: SQLite (one host) and Redis (shared by replicas).

Both implement :class:`serving.history.HistoryStore` with the semantics its module notes describe (order, cap,
snapshot reloads); :func:`serving.history.open_history_store` picks one from a URL. Erasure needs more of a
persistent store than a delete: no readable copy may stay in the file, its write-ahead log or a Redis
persistence file (:meth:`SqliteHistoryStore.delete`, :meth:`RedisHistoryStore.delete`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, cast

import redis

from data_prep.manifest import file_sha256
from serving.history import (
    SNAPSHOT_BATCH_ROWS,
    CustomerHistory,
    HistoryStore,
    NewEvent,
    check_append,
    decode_history,
    encode_history,
    merge_events,
    read_snapshot,
)

log = logging.getLogger(__name__)

REDIS_CHUNK_ROWS = 1_000  # customers written per Redis pipeline round trip
SNAPSHOT_MEMBERS = (
    "snapshot_members"  # SQLite table / Redis set suffix: the customers the loaded snapshot holds
)
CHECKPOINT_RETRIES = 50  # TRUNCATE checkpoints tried (0.1 s apart) while another reader holds the WAL


class SqliteHistoryStore(HistoryStore):
    """One SQLite file (WAL mode): table ``history`` holds each customer's JSON (:func:`encode_history`).

    One connection behind a lock serves this object's threads; each append is one ``BEGIN IMMEDIATE``
    transaction, so other processes appending to the same file lose nothing either. ``path`` may be
    ``":memory:"`` (one connection, so one store).
    """

    def __init__(self, path: Path | str, snapshot: Path | None = None) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: every transaction below is opened explicitly
        self._con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")  # WAL keeps the file consistent on a crash
            # a deleted or replaced record is overwritten with zeros, not left readable in a free page
            self._con.execute("PRAGMA secure_delete=ON")
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS history (customer_id TEXT PRIMARY KEY, record TEXT NOT NULL)"
            )
            self._con.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            # the customers the loaded snapshot holds (rows only appends created are not listed)
            self._con.execute(f"CREATE TABLE IF NOT EXISTS {SNAPSHOT_MEMBERS} (customer_id TEXT PRIMARY KEY)")
        if snapshot is not None:
            self.load_snapshot(snapshot)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")  # take the write lock before reading: no lost updates
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    def load_snapshot(self, snapshot: Path) -> int:
        """Write every snapshot row in one transaction, unless this file is already loaded (see the module
        notes); returns the number of customers written (0 when skipped)."""
        fingerprint = file_sha256(snapshot)
        with self._transaction() as con:
            loaded = con.execute("SELECT value FROM meta WHERE name = 'snapshot'").fetchone()
            if loaded is not None and loaded[0] == fingerprint:
                return 0
            con.execute("CREATE TEMP TABLE IF NOT EXISTS loading (customer_id TEXT PRIMARY KEY)")
            con.execute("DELETE FROM loading")
            n = 0
            for chunk in _batched(read_snapshot(snapshot), SNAPSHOT_BATCH_ROWS):
                con.executemany(
                    "INSERT OR REPLACE INTO history (customer_id, record) VALUES (?, ?)",
                    ((c, encode_history(h, [])) for c, h in chunk),
                )
                con.executemany(
                    "INSERT OR IGNORE INTO loading (customer_id) VALUES (?)", ((c,) for c, _ in chunk)
                )
                n += len(chunk)
            # customers an earlier snapshot held and this one does not (erased, or gone): they leave the store
            dropped = con.execute(
                f"DELETE FROM history WHERE customer_id IN (SELECT customer_id FROM {SNAPSHOT_MEMBERS}) "
                "AND customer_id NOT IN (SELECT customer_id FROM loading)"
            ).rowcount
            con.execute(f"DELETE FROM {SNAPSHOT_MEMBERS}")
            con.execute(f"INSERT INTO {SNAPSHOT_MEMBERS} SELECT customer_id FROM loading")
            con.execute("DELETE FROM loading")
            con.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('snapshot', ?)", (fingerprint,))
        if dropped:
            try:
                self._compact()
            except OSError as e:  # another worker reading: its next erase or load compacts; serving goes on
                log.warning("%s", e)
        log.info("loaded %d snapshot customers into the SQLite history store (%d dropped)", n, dropped)
        return n

    def __len__(self) -> int:
        with self._lock:
            return int(self._con.execute("SELECT COUNT(*) FROM history").fetchone()[0])

    def get(self, customer_id: str) -> CustomerHistory | None:
        with self._lock:
            row = self._con.execute(
                "SELECT record FROM history WHERE customer_id = ?", (customer_id,)
            ).fetchone()
        return None if row is None else decode_history(row[0])[0]

    def append(self, customer_id: str, events: Sequence[NewEvent]) -> CustomerHistory:
        check_append(customer_id, events)
        with self._transaction() as con:
            row = con.execute("SELECT record FROM history WHERE customer_id = ?", (customer_id,)).fetchone()
            history, tail = merge_events(*decode_history(None if row is None else row[0]), events)
            con.execute(
                "INSERT OR REPLACE INTO history (customer_id, record) VALUES (?, ?)",
                (customer_id, encode_history(history, tail)),
            )
        return history

    def delete(self, customer_ids: Iterable[str]) -> int:
        """Delete the rows (zeroed in place: ``secure_delete``), then rewrite the file and empty its WAL so that
        no page of the file or its log still holds them (:meth:`_compact`)."""
        ids = [(c,) for c in set(customer_ids)]
        with self._transaction() as con:
            before = con.total_changes
            con.executemany("DELETE FROM history WHERE customer_id = ?", ids)
            n = con.total_changes - before
            con.executemany(f"DELETE FROM {SNAPSHOT_MEMBERS} WHERE customer_id = ?", ids)
        self._compact()
        return n

    def _compact(self) -> None:
        """VACUUM (a fresh copy of the live rows), then a TRUNCATE checkpoint (the WAL's old frames, which may
        hold a deleted record's earlier versions, are copied back and the log emptied). Raises OSError when
        another connection's open read transaction keeps the WAL busy past the retries."""
        if self.path == ":memory:":
            return
        with self._lock:
            self._con.execute("VACUUM")
            for _ in range(CHECKPOINT_RETRIES):
                busy, _, _ = self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return
                time.sleep(0.1)
        raise OSError(
            f"SQLite history store {self.path}: another process keeps its write-ahead log busy; deleted rows may "
            "remain in it until that process closes the file (stop the server, then run the erase again)"
        )

    def close(self) -> None:
        with self._lock:
            self._con.close()


class RedisHistoryStore(HistoryStore):
    """One Redis string per customer (``<prefix>c:<customer_id>``, JSON as :func:`encode_history`), shared by
    every replica that opens the same ``url`` and ``prefix``.

    Appends are optimistic transactions (WATCH the key, read, MULTI/EXEC the write; retried when another
    writer got in between), so no append is lost. The connection is checked on construction.
    """

    def __init__(self, url: str, snapshot: Path | None = None, prefix: str = "o2o:history:") -> None:
        self.prefix = prefix
        self._client = redis.Redis.from_url(url)
        self._client.ping()
        if snapshot is not None:
            self.load_snapshot(snapshot)

    def _key(self, customer_id: str) -> str:
        return f"{self.prefix}c:{customer_id}"

    def load_snapshot(self, snapshot: Path) -> int:
        """Write every snapshot row, :data:`REDIS_CHUNK_ROWS` per pipeline round trip, unless this file is
        already loaded (see the module notes); returns the number of customers written (0 when skipped).

        Not one transaction: replicas starting together may load the same file twice (same result), and an
        append made while a new snapshot loads may be overwritten by it.
        """
        fingerprint = file_sha256(snapshot)
        marker = f"{self.prefix}snapshot"
        if self._client.get(marker) == fingerprint.encode():
            return 0
        members, loading = self._members, f"{self._members}:loading"
        self._client.delete(loading)
        n = 0
        for chunk in _batched(read_snapshot(snapshot), REDIS_CHUNK_ROWS):
            with self._client.pipeline(transaction=False) as pipe:
                for customer_id, history in chunk:
                    pipe.set(self._key(customer_id), encode_history(history, []))
                pipe.sadd(loading, *(c for c, _ in chunk))
                pipe.execute()
            n += len(chunk)
        # customers an earlier snapshot held and this one does not (erased, or gone): they leave the store
        gone = [c.decode() for c in cast("set[bytes]", self._client.sdiff([members, loading]))]
        self._delete_keys(gone)
        if n:
            self._client.rename(loading, members)
        else:
            self._client.delete(members)
        self._client.set(marker, fingerprint)
        log.info("loaded %d snapshot customers into the Redis history store (%d dropped)", n, len(gone))
        return n

    @property
    def _members(self) -> str:
        return f"{self.prefix}{SNAPSHOT_MEMBERS}"

    def __len__(self) -> int:
        pattern = _glob_escape(self.prefix) + "c:*"
        return sum(1 for _ in self._client.scan_iter(match=pattern, count=1_000))

    def get(self, customer_id: str) -> CustomerHistory | None:
        text = cast(
            "bytes | None", self._client.get(self._key(customer_id))
        )  # the sync client's types are loose
        return None if text is None else decode_history(text)[0]

    def append(self, customer_id: str, events: Sequence[NewEvent]) -> CustomerHistory:
        check_append(customer_id, events)
        key = self._key(customer_id)
        with self._client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # until MULTI the pipeline runs each command at once
                    stored = cast("bytes | None", pipe.get(key))
                    history, tail = merge_events(*decode_history(stored), events)
                    pipe.multi()
                    pipe.set(key, encode_history(history, tail))
                    pipe.execute()
                    return history
                except redis.WatchError:
                    continue  # another append changed the row after we read it: read it again

    def delete(self, customer_ids: Iterable[str]) -> int:
        """Delete the customers' keys and their snapshot membership; when the server persists its data
        (RDB snapshots or an append-only file), rewrite those files so that no older copy keeps them."""
        ids = sorted(set(customer_ids))
        n = self._delete_keys(ids)
        if ids:
            self._client.srem(self._members, *ids)
        self._rewrite_persistence()
        return n

    def _delete_keys(self, customer_ids: Sequence[str]) -> int:
        n = 0
        for chunk in _batched(customer_ids, REDIS_CHUNK_ROWS):
            n += int(cast("int", self._client.delete(*(self._key(c) for c in chunk))))
        return n

    def _rewrite_persistence(self) -> None:
        """BGREWRITEAOF when the append-only file is on (its old entries still hold deleted values), BGSAVE when
        RDB snapshots are configured. A server that refuses CONFIG (a managed Redis) is logged, not fatal:
        its operator's persistence policy applies."""
        try:
            config = {
                **cast("dict[str, str]", self._client.config_get("appendonly")),
                **cast("dict[str, str]", self._client.config_get("save")),
            }
        except redis.ResponseError:
            log.warning(
                "Redis refuses CONFIG GET: cannot tell whether its persistence files still hold deleted rows"
            )
            return
        try:
            if config.get("appendonly") == "yes":
                self._client.bgrewriteaof()  # queued by the server when a save is running
            if config.get("save"):
                self._client.bgsave(schedule=True)  # after a running save, not refused by it
        except redis.ResponseError as e:
            log.warning("Redis did not start rewriting its persistence files (%s)", e)

    def close(self) -> None:
        self._client.close()


def _batched(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern (SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)

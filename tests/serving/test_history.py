"""Customer-history stores: snapshot load, append order and cap, validation, concurrency, URL parsing.

Every store kind runs the same tests; Redis runs against the server at ``REDIS_URL`` (keys under a unique
prefix, deleted afterwards) and is skipped only when that server cannot be reached.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from data_prep import schema as S
from serving.history import (
    MAX_HISTORY_EVENTS,
    CustomerHistory,
    HistoryStore,
    InMemoryHistoryStore,
    NewEvent,
    open_history_store,
)
from serving.history_stores import RedisHistoryStore, SqliteHistoryStore

REDIS_URL = "redis://127.0.0.1:6379/15"
KINDS = ["memory", "sqlite", "redis"]
PERSISTENT_KINDS = ["sqlite", "redis"]
FEATURES = {name: float(i) for i, name in enumerate(S.INTENT_FEATURES)}
ZERO_FEATURES = dict.fromkeys(S.INTENT_FEATURES, 0.0)

# c1: online browsing and an order; c2: one store purchase; c3: known to prep, no item events yet
SNAPSHOT_ROWS = {
    "c1": CustomerHistory(
        ["i1", "i2"], [S.EV_VIEW, S.EV_ORDER], FEATURES, "champions", [S.CHANNEL_WEB] * 2, [100, 200]
    ),
    "c2": CustomerHistory(["i3"], [S.EV_PURCHASE], FEATURES, None, [S.CHANNEL_STORE], [150]),
    "c3": CustomerHistory([], [], FEATURES, S.NO_PURCHASE_SEGMENT, [], []),
}


def write_snapshot(path: Path, rows: dict[str, CustomerHistory], side_lists: bool = True) -> Path:
    strings = pa.list_(pa.string())
    columns = {
        S.CUSTOMER_ID: pa.array(list(rows), pa.string()),
        S.ITEMS: pa.array([h.items for h in rows.values()], strings),
        S.EVENT_TYPES_COL: pa.array([h.event_types for h in rows.values()], strings),
        **{f: pa.array([h.features[f] for h in rows.values()], pa.float64()) for f in S.INTENT_FEATURES},
        S.SEGMENT: pa.array([h.segment for h in rows.values()], pa.string()),
    }
    if side_lists:
        columns[S.CHANNELS_COL] = pa.array([h.channels for h in rows.values()], strings)
        columns[S.TIMESTAMPS_COL] = pa.array([h.timestamps for h in rows.values()], pa.list_(pa.int64()))
    pq.write_table(pa.table(columns), path)
    return path


def ev(item: str, ts: int, event_type: str = S.EV_VIEW, channel: str = S.CHANNEL_APP) -> NewEvent:
    return NewEvent(item, event_type, channel, ts)


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    return write_snapshot(tmp_path / S.SNAPSHOT_FILE, SNAPSHOT_ROWS)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix on the test server; every key under it is deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as e:
        pytest.skip(f"no Redis server at {REDIS_URL} ({e})")
    prefix = f"o2o-test:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


OpenStore = Callable[[Path | None], HistoryStore]


@pytest.fixture
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens stores of the kind the test is parametrised with (``kind``), all on one database; closes them."""
    kind = request.param
    prefix = request.getfixturevalue("redis_prefix") if kind == "redis" else ""
    opened: list[HistoryStore] = []

    def open_(snapshot: Path | None) -> HistoryStore:
        if kind == "memory":
            store: HistoryStore = InMemoryHistoryStore(snapshot)
        elif kind == "sqlite":
            store = SqliteHistoryStore(tmp_path / "history.db", snapshot)
        else:
            store = RedisHistoryStore(REDIS_URL, snapshot, prefix=prefix)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: OpenStore, snapshot: Path) -> HistoryStore:
    return open_store(snapshot)


all_kinds = pytest.mark.parametrize("open_store", KINDS, indirect=True)
persistent_kinds = pytest.mark.parametrize("open_store", PERSISTENT_KINDS, indirect=True)


@all_kinds
def test_get_returns_the_snapshot_rows(store: HistoryStore) -> None:
    assert len(store) == 3
    for customer_id, expected in SNAPSHOT_ROWS.items():
        assert store.get(customer_id) == expected
    assert store.get("c9") is None


@all_kinds
def test_append_keeps_appended_events_in_time_order_after_the_snapshot(store: HistoryStore) -> None:
    first = store.append("c1", [ev("a500", 500, S.EV_ADD_TO_CART), ev("a300", 300)])
    assert first.items == ["i1", "i2", "a300", "a500"]
    assert first.event_types == [S.EV_VIEW, S.EV_ORDER, S.EV_VIEW, S.EV_ADD_TO_CART]
    assert first.timestamps == [100, 200, 300, 500]
    assert store.get("c1") == first
    # older than the newest appended event: placed among the appended ones by its time; older than the
    # snapshot's events: still after them; equal times keep arrival order
    second = store.append(
        "c1", [ev("a400", 400, S.EV_PURCHASE, S.CHANNEL_STORE), ev("a50", 50), ev("b300", 300)]
    )
    assert second.items == ["i1", "i2", "a50", "a300", "b300", "a400", "a500"]
    assert second.channels == [S.CHANNEL_WEB] * 2 + [S.CHANNEL_APP] * 3 + [S.CHANNEL_STORE, S.CHANNEL_APP]
    assert second.timestamps == [100, 200, 50, 300, 300, 400, 500]
    assert (second.features, second.segment) == (FEATURES, "champions")  # prep's aggregates, not recomputed
    assert store.get("c1") == second
    assert store.get("c2") == SNAPSHOT_ROWS["c2"]
    assert len(store) == 3


@all_kinds
def test_append_to_an_unknown_customer_creates_it(store: HistoryStore) -> None:
    created = store.append("c9", [ev("x", 20), ev("y", 10)])
    assert created == CustomerHistory(
        ["y", "x"], [S.EV_VIEW] * 2, ZERO_FEATURES, None, [S.CHANNEL_APP] * 2, [10, 20]
    )
    assert store.get("c9") == created
    assert len(store) == 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"event_type": S.EV_SEARCH}, "event_type 'search'"),
        ({"event_type": "like"}, "event_type 'like'"),
        ({"item_id": ""}, "item_id"),
        ({"item_id": "  "}, "item_id"),
        ({"channel": "fax"}, "channel 'fax'"),
        ({"ts": -1}, "ts"),
        ({"ts": 1_767_225_600_000}, "ts"),  # milliseconds
        ({"ts": 1.5}, "ts"),
        ({"ts": True}, "ts"),
    ],
)
def test_invalid_events_raise(fields: dict[str, object], message: str) -> None:
    good: dict[str, object] = {"item_id": "i1", "event_type": S.EV_VIEW, "channel": S.CHANNEL_WEB, "ts": 1}
    with pytest.raises(ValueError, match=message):
        NewEvent(**{**good, **fields})  # type: ignore[arg-type]


@all_kinds
def test_invalid_appends_raise_and_change_nothing(store: HistoryStore) -> None:
    with pytest.raises(ValueError, match="customer_id"):
        store.append("", [ev("x", 1)])
    with pytest.raises(ValueError, match="at least one event"):
        store.append("c1", [])
    with pytest.raises(TypeError, match="NewEvent"):
        store.append("c1", [{"item_id": "x"}])  # type: ignore[list-item]
    assert store.get("c1") == SNAPSHOT_ROWS["c1"]
    assert len(store) == 3


@all_kinds
def test_the_cap_keeps_the_newest_events(store: HistoryStore) -> None:
    n = MAX_HISTORY_EVENTS
    store.append("c1", [ev(f"a{t}", t) for t in range(1_000, 1_000 + n - 1)])  # one snapshot event drops
    capped = store.get("c1")
    assert capped is not None and capped.items[:2] == ["i2", "a1000"] and len(capped.items) == n
    # a late event lands among the appended ones; the oldest events drop, appended ones too
    last = store.append("c1", [ev("late", 1_500), *[ev(f"b{t}", t) for t in range(5_000, 5_010)]])
    expected = [f"a{t}" for t in range(1_010, 1_501)] + ["late"]
    expected += [f"a{t}" for t in range(1_501, 1_000 + n - 1)] + [f"b{t}" for t in range(5_000, 5_010)]
    assert last.items == expected
    assert last.timestamps is not None and last.timestamps == sorted(last.timestamps)
    assert len(last.event_types) == len(last.channels or []) == len(last.timestamps) == n
    assert store.get("c1") == last


@all_kinds
def test_concurrent_appends_lose_nothing(open_store: OpenStore, snapshot: Path) -> None:
    # persistent kinds: two store objects (for SQLite two connections competing for one file) share the work
    first = open_store(snapshot)
    stores = [first, first if isinstance(first, InMemoryHistoryStore) else open_store(None)]
    n_threads, n_appends = 8, 25
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for k in range(n_appends):
                ts = 1_000 + k * n_threads + t
                stores[t % 2].append("c2", [ev(f"t{t}-{k}-a", ts), ev(f"t{t}-{k}-b", ts)])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = stores[0].get("c2")
    assert final is not None and final == stores[1].get("c2")
    expected = {f"t{t}-{k}-{x}" for t in range(n_threads) for k in range(n_appends) for x in "ab"}
    assert (
        final.items[0] == "i3" and set(final.items[1:]) == expected and len(final.items) == 1 + len(expected)
    )
    assert final.timestamps is not None and final.timestamps[1:] == sorted(final.timestamps[1:])


@persistent_kinds
def test_reopening_with_the_same_snapshot_keeps_appends_and_a_new_one_replaces_and_drops(
    open_store: OpenStore, snapshot: Path, tmp_path: Path
) -> None:
    """A newer snapshot replaces the rows it holds; snapshot customers it lacks (an erased person) leave the
    store; customers only appends created stay."""
    first = open_store(snapshot)
    appended = first.append("c1", [ev("x", 300)])
    first.append("c9", [ev("y", 300)])
    first.close()
    again = open_store(snapshot)
    assert again.get("c1") == appended and len(again) == 4
    newer = {"c1": CustomerHistory(["z"], [S.EV_VIEW], FEATURES, None, [S.CHANNEL_WEB], [400])}
    replaced = open_store(write_snapshot(tmp_path / "newer.parquet", newer))
    assert replaced.get("c1") == newer["c1"]  # the newer snapshot holds c1's appended events
    assert replaced.get("c2") is None and replaced.get("c3") is None  # the newer snapshot lacks them
    assert replaced.get("c9") is not None and len(replaced) == 2  # created by an append: kept
    replaced.close()
    back = open_store(snapshot)  # the first snapshot again: its customers return, c9 still stays
    assert back.get("c2") == SNAPSHOT_ROWS["c2"] and back.get("c9") is not None and len(back) == 4


def test_a_snapshot_without_side_lists_orders_appends_but_keeps_none(tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / S.SNAPSHOT_FILE, SNAPSHOT_ROWS, side_lists=False)
    store = InMemoryHistoryStore(snapshot)
    assert store.get("c1") == CustomerHistory(["i1", "i2"], [S.EV_VIEW, S.EV_ORDER], FEATURES, "champions")
    store.append("c1", [ev("late", 900)])
    after = store.append("c1", [ev("early", 300)])
    assert after.items == ["i1", "i2", "early", "late"]
    assert after.channels is None and after.timestamps is None
    assert after.side_lists() == (None, None)


def test_open_history_store_parses_urls(
    snapshot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for url in (None, "memory"):
        with open_history_store(url, snapshot) as store:
            assert isinstance(store, InMemoryHistoryStore) and len(store) == 3
    with open_history_store(f"sqlite:///{tmp_path}/abs/history.db", snapshot) as store:
        assert isinstance(store, SqliteHistoryStore) and store.path == f"{tmp_path}/abs/history.db"
    monkeypatch.chdir(tmp_path)
    with open_history_store("sqlite:///rel/history.db", None) as store:
        assert isinstance(store, SqliteHistoryStore) and store.path == "rel/history.db" and len(store) == 0
    assert (tmp_path / "rel" / "history.db").exists()


def test_open_history_store_opens_redis(redis_prefix: str) -> None:
    with open_history_store(REDIS_URL, None) as store:
        assert isinstance(store, RedisHistoryStore)


@pytest.mark.parametrize(
    "url",
    ["", "memory:", "postgres://db/history", "sqlite://", "sqlite:///", "sqlite:history.db", "redis://"],
)
def test_open_history_store_rejects_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="'memory', 'sqlite:///"):
        open_history_store(url, None)


def test_an_unknown_url_is_not_echoed() -> None:
    with pytest.raises(ValueError) as raised:
        open_history_store("redis:/:secret@host/0", None)
    assert "secret" not in str(raised.value)


@all_kinds
def test_delete_removes_snapshot_and_appended_customers(open_store: OpenStore, snapshot: Path) -> None:
    store = open_store(snapshot)
    store.append("c1", [ev("x", 300)])
    store.append("c9", [ev("y", 300)])  # a customer only an append created
    assert store.delete(["c1", "c9", "c1", "unknown"]) == 2  # duplicates and unknown ids are skipped
    assert store.get("c1") is None and store.get("c9") is None
    assert store.get("c2") == SNAPSHOT_ROWS["c2"] and len(store) == 2
    assert store.delete([]) == 0 and len(store) == 2
    again = store.append("c1", [ev("z", 400)])  # deleted means gone: a new append starts from nothing
    assert again.items == ["z"] and again.features == ZERO_FEATURES


@persistent_kinds
def test_a_deleted_customer_stays_deleted_for_other_openers_and_a_reload(
    open_store: OpenStore, snapshot: Path
) -> None:
    serving = open_store(snapshot)  # a running service's store
    eraser = open_store(None)  # `o2o erase --history-url` opens the same database
    assert eraser.delete(["c1"]) == 1
    assert serving.get("c1") is None
    assert open_store(snapshot).get("c1") is None  # the same snapshot again: the load is skipped


def test_open_existing_refuses_memory_and_a_missing_sqlite_file(tmp_path: Path) -> None:
    for url in (None, "memory"):
        with pytest.raises(ValueError, match="in-memory history store lives inside its server process"):
            open_history_store(url, None, existing=True)
    with pytest.raises(FileNotFoundError, match="no SQLite history store"):
        open_history_store(f"sqlite:///{tmp_path}/typo.db", None, existing=True)
    assert not (tmp_path / "typo.db").exists()
    SqliteHistoryStore(tmp_path / "h.db").close()
    with open_history_store(f"sqlite:///{tmp_path}/h.db", None, existing=True) as store:
        assert isinstance(store, SqliteHistoryStore)


def test_sqlite_delete_leaves_no_readable_copy_in_the_file_or_its_wal(snapshot: Path, tmp_path: Path) -> None:
    """Erasure: the deleted row's bytes are in neither the database file, its WAL nor its shared memory,
    although another connection (a running service) keeps the file open (issue 18, finding 2)."""
    path = tmp_path / "history.db"
    service = SqliteHistoryStore(path, snapshot)
    service.append("c2", [ev("secret-item-c2", 300)])  # an appended version too: an older record in the WAL
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    assert any(b"secret-item-c2" in f.read_bytes() for f in files if f.exists())
    eraser = SqliteHistoryStore(path)
    assert eraser.delete(["c2"]) == 1
    for f in files:
        if f.exists():
            data = f.read_bytes()
            assert b"secret-item-c2" not in data and b'"c2"' not in data, f
            # the id as a stored value; "c2" inside a hex digest (the snapshot's SHA-256 is stored) is not it
            assert not re.search(rb"(?<![0-9a-f])c2(?![0-9a-f])", data), f
    assert service.get("c2") is None and service.get("c1") is not None
    eraser.close()
    service.close()

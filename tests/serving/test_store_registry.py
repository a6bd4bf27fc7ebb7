"""The store registry: every history store a service opens is named in one place, with no secret in it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from serving.history import open_history_store
from serving.store_registry import (
    forget_stores,
    redact_url,
    register_store,
    registered_stores,
    registry_path,
    store_kind,
)
from tests.serving.test_history import SNAPSHOT_ROWS, write_snapshot


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("O2O_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_redact_url_hides_the_password_only() -> None:
    assert redact_url("redis://:s3cret@cache.internal:6380/2") == "redis://:***@cache.internal:6380/2"
    assert redact_url("rediss://app:s3cret@h/0") == "rediss://app:***@h/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("sqlite:////srv/h.db") == "sqlite:////srv/h.db"
    assert [store_kind(u) for u in (None, "memory", "sqlite:///a.db", "rediss://h/0")] == [
        "memory",
        "memory",
        "sqlite",
        "redis",
    ]


def test_a_service_store_is_registered_and_a_plain_open_is_not(tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / "snapshot.parquet", SNAPSHOT_ROWS)
    url = f"sqlite:///{tmp_path}/h.db"
    with open_history_store(url, None):  # o2o erase opening a store: not a service
        pass
    assert registered_stores() == []
    with (
        open_history_store(url, snapshot),
        open_history_store(url, snapshot),
        open_history_store(None, snapshot),
    ):
        pass
    entries = {e.kind: e for e in registered_stores()}
    assert sorted(entries) == ["memory", "sqlite"]  # one entry per store, however often it is opened
    assert entries["sqlite"].url == url and entries["sqlite"].snapshot == str(snapshot)
    assert entries["memory"].pid == os.getpid() and entries["memory"].process_alive()
    forget_stores({entries["memory"].key})
    assert [e.kind for e in registered_stores()] == ["sqlite"]


def test_the_registry_never_holds_a_password(tmp_path: Path) -> None:
    register_store("redis://:s3cret@cache.internal:6380/2", tmp_path / "snapshot.parquet")
    assert "s3cret" not in registry_path().read_text()
    (entry,) = registered_stores()
    assert entry.needs_password and entry.url == "redis://:***@cache.internal:6380/2"


def test_an_unwritable_registry_does_not_stop_the_service(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home.mkdir(parents=True)
    registry_path().mkdir()  # a folder where the file should be: it cannot be written
    register_store("sqlite:////srv/h.db", home / "snapshot.parquet")
    assert "o2o erase will not find it" in caplog.text


def test_a_damaged_registry_is_a_clear_error(home: Path) -> None:
    home.mkdir(parents=True)
    registry_path().write_text(json.dumps([{"url": 1}]))
    with pytest.raises(ValueError, match="not a store registry"):
        registered_stores()

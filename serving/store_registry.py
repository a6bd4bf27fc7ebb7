"""Where customer histories live: every history store a service has opened, named in one place.

A service that loads a snapshot into a history store records the store in ``$O2O_HOME/history_stores.json``
(:func:`register_store`), so that ``o2o erase`` reaches every store a person may be kept in, not only the ones
its caller remembers to name (:func:`registered_stores`). An entry holds the store's URL with any password
replaced by ``***`` (the file never holds a secret), its kind, the snapshot it was loaded from, and for an
in-memory store the host and process id of the server that holds it (it can be reached only through that
process, and forgets an erased person when it restarts on the erased snapshot).

Entries are keyed by the redacted URL (in-memory stores by host and pid) and rewritten atomically under a file
lock, so workers starting together lose no entry.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

STORES_FILE = "history_stores.json"
MEMORY = "memory"
HOME_ENV = "O2O_HOME"  # as data_prep.pii.o2o_home (not imported: the service image lacks its phonenumbers)


@dataclass(frozen=True)
class StoreEntry:
    url: str  # redacted: a password reads ***; "memory" for an in-process store
    kind: str  # "sqlite", "redis" or "memory"
    snapshot: str
    opened_at: str
    host: str
    pid: int

    @property
    def key(self) -> str:
        return f"{MEMORY}@{self.host}:{self.pid}" if self.kind == MEMORY else self.url

    @property
    def needs_password(self) -> bool:
        return "***" in self.url

    def process_alive(self) -> bool:
        """Whether the process that opened the store still runs (only knowable on its own host)."""
        if self.host != socket.gethostname():
            return True  # cannot tell: assume it does
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def store_kind(url: str | None) -> str:
    """``memory``, ``sqlite`` or ``redis`` (TLS included) for a store URL."""
    if url is None or url == MEMORY:
        return MEMORY
    scheme = url.partition("://")[0]
    return "redis" if scheme in ("redis", "rediss") else scheme


def registry_path() -> Path:
    return Path(os.environ.get(HOME_ENV, Path.home() / ".o2o")) / STORES_FILE


@contextmanager
def _locked() -> Iterator[Path]:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> dict[str, StoreEntry]:
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text())
        entries = [StoreEntry(**row) for row in rows]
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a store registry ({e}); fix or delete it") from None
    return {e.key: e for e in entries}


def _write(path: Path, entries: dict[str, StoreEntry]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(e) for e in entries.values()], indent=2))
    tmp.replace(path)


def register_store(url: str | None, snapshot: Path) -> None:
    """Record that this process keeps customer histories in the store ``url`` names (loaded from
    ``snapshot``). A registry that cannot be written is logged: serving goes on, erasure will warn."""
    kind = store_kind(url)
    entry = StoreEntry(
        url=MEMORY if kind == MEMORY else redact_url(str(url)),
        kind=kind,
        snapshot=str(snapshot),
        opened_at=datetime.now(UTC).isoformat(timespec="seconds"),
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    try:
        with _locked() as path:
            entries = _read(path)
            entries[entry.key] = entry
            _write(path, entries)
    except (OSError, ValueError) as e:
        log.warning(
            "could not record the history store in the store registry (%s): o2o erase will not find it", e
        )


def registered_stores() -> list[StoreEntry]:
    """Every store recorded by :func:`register_store` under this ``$O2O_HOME``."""
    return list(_read(registry_path()).values())


def forget_stores(keys: set[str]) -> None:
    """Drop entries (a SQLite file that no longer exists, an in-memory store whose process has exited)."""
    if not keys:
        return
    with _locked() as path:
        entries = _read(path)
        _write(path, {k: e for k, e in entries.items() if k not in keys})

"""Fixtures of the erasure tests: the Redis test database a service's history store lives in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

REDIS_URL = "redis://127.0.0.1:6379/15"  # the test database of tests/serving/test_history.py
REDIS_PREFIX = "o2o:history:"  # what `open_history_store` (the service, o2o erase) uses


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """The test database, without the service's keys before and after (skipped when no server answers)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as e:
        pytest.skip(f"no Redis server at {REDIS_URL} ({e})")

    def clear() -> None:
        keys = list(client.scan_iter(match=REDIS_PREFIX + "*"))
        if keys:
            client.delete(*keys)

    clear()
    yield client
    clear()
    client.close()

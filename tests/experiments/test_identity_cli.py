"""`o2o identity pull`: the links the service made online reach the file the next prep reads."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import redis
from typer.testing import CliRunner

from data_prep import schema as S
from experiments.cli import app
from serving.identity import RedisIdentityStore
from tests.experiments.conftest import REDIS_URL

runner = CliRunner()
PREFIX = "o2o:identity:"  # the service's (and the command's) prefix


def _clear(client: redis.Redis) -> None:
    keys = list(client.scan_iter(match=PREFIX + "*"))
    if keys:
        client.delete(*keys)


def test_pull_writes_each_link_once(redis_db: redis.Redis, tmp_path: Path) -> None:
    _clear(redis_db)
    store = RedisIdentityStore(REDIS_URL)
    try:
        store.link(["device:d1", "account:a1"])
        store.link(["card:k1", "phone:p1", "account:a1"])
        pull = ["identity", "pull", "--identity-url", REDIS_URL, "--data", str(tmp_path)]
        r = runner.invoke(app, pull)
        assert r.exit_code == 0, r.output
        assert "3 new link record(s), 3 in all" in r.output and "127.0.0.1" not in r.output
        rows = pd.read_parquet(tmp_path / S.REGISTRY_DIR / S.ONLINE_LINKS_FILE)
        pairs = {
            tuple(sorted(f"{t}:{row[c]}" for t, c in S.IDENTIFIER_KEY_COLUMNS.items() if pd.notna(row[c])))
            for _, row in rows.iterrows()
        }
        assert pairs == {("account:a1", "device:d1"), ("card:k1", "phone:p1"), ("account:a1", "card:k1")}
        assert str(rows[S.TS].dtype) == "datetime64[us, UTC]"
        again = runner.invoke(app, pull)
        assert "0 new link record(s), 3 in all" in again.output  # the log is read whole each time
        refused = runner.invoke(
            app, ["identity", "pull", "--identity-url", "memory", "--data", str(tmp_path)]
        )
        assert refused.exit_code != 0 and "only a Redis identity store" in refused.output
    finally:
        _clear(redis_db)
        store.close()

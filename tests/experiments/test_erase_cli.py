"""`o2o erase` reaches serving: the person leaves the history stores a service reads (SQLite and Redis), and
bundle copies in the BentoML model store are flagged for retraining like the exported folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import redis
from typer.testing import CliRunner

from data_prep import pii
from data_prep import schema as S
from data_prep.erasure import RETRAIN_MARKER, erased_keys
from data_prep.manifest import file_sha256
from experiments.cli import app
from serving.artifact import bundle_path, register_bundle
from serving.checksums import write_checksums
from serving.history import open_history_store, read_snapshot
from serving.history_stores import RedisHistoryStore, SqliteHistoryStore
from serving.store_registry import forget_stores, register_store, registered_stores
from tests.conftest import Pipeline, Prepared, copy_prepared
from tests.experiments.conftest import REDIS_URL

runner = CliRunner()


@pytest.fixture
def prepared(prepared_150: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("O2O_HOME", str(tmp_path / "home"))
    return copy_prepared(prepared_150, tmp_path).data


def snapshot_person(data: Path) -> tuple[str, str]:
    """(raw email, customer_id) of a CRM member whose history is in the snapshot the service loads."""
    snapshot = {c for c, _ in read_snapshot(data / S.FEATURES_DIR / S.SNAPSHOT_FILE)}
    id_map = pd.read_parquet(data / S.CUSTOMERS_DIR / S.IDENTITY_MAP_FILE)
    by_key = dict(zip(id_map[S.IDENTIFIER_KEY], id_map[S.CUSTOMER_ID], strict=True))
    crm = pd.read_csv(data / S.RAW_DIR / S.RAW_CRM_DIR / S.RAW_CRM_FILE, dtype=str)
    key = pii.load_key()
    for email in crm[S.CRM_EMAIL].dropna():
        customer = by_key.get(pii.pseudonymise(S.ID_EMAIL, email, key))
        if customer in snapshot:
            return email, customer
    raise AssertionError("no CRM member with a snapshot history in the tiny retailer")


def stale_bundle(folder: Path, data: Path, template: Path) -> Path:
    """A real bundle (``template``'s models) whose data manifest names the hashes of ``data``'s features:
    one built on the data the erasure changes."""
    shutil.copytree(template, folder)
    doc = json.loads((folder / S.BUNDLE_FILE).read_text())
    doc["data_manifest"] = json.loads((data / S.FEATURES_DIR / S.MANIFEST_FILE).read_text())["outputs"]
    (folder / S.BUNDLE_FILE).write_text(json.dumps(doc))
    write_checksums(folder)  # listed and signed, as export does
    return folder


def test_erase_deletes_the_person_from_sqlite_and_redis_stores_and_flags_store_bundles(
    prepared: Path, redis_db: redis.Redis, bentoml_home: Path, tmp_path: Path, tiny_pipeline: Pipeline
) -> None:
    data = prepared
    snapshot = data / S.FEATURES_DIR / S.SNAPSHOT_FILE
    email, customer = snapshot_person(data)
    sqlite = SqliteHistoryStore(tmp_path / "history.db", snapshot)  # what a running service holds
    shared = RedisHistoryStore(REDIS_URL, snapshot)
    n = len(sqlite)
    assert customer in {c for c, _ in read_snapshot(snapshot)} and shared.get(customer) is not None
    exported = stale_bundle(tmp_path / "artifacts" / "o2o" / "e1", data, tiny_pipeline.bundle)
    tag = register_bundle(exported)
    urls = ["--history-url", f"sqlite:///{tmp_path}/history.db", "--history-url", REDIS_URL]

    r = _erase(email, data, *urls, "--artifacts", str(tmp_path / "artifacts"))

    assert r.exit_code == 0, r.output
    assert "history store #1 (sqlite): 1 customer(s) deleted" in r.output
    assert "history store #2 (redis): 1 customer(s) deleted" in r.output
    assert "127.0.0.1" not in r.output  # store URLs are not printed (a Redis URL may carry a password)
    assert sqlite.get(customer) is None and shared.get(customer) is None
    assert len(sqlite) == n - 1 and len(shared) == n - 1  # nobody else
    copy = bundle_path(tag)  # still loads: the marker is not one of the bundle's checksummed files
    assert (copy / RETRAIN_MARKER).exists() and (exported / RETRAIN_MARKER).exists()
    assert r.output.count("retrain required:") == 2
    sqlite.close()
    shared.close()


def _erase(email: str, data: Path, *options: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["erase", "--identifier", f"email:{email}", "--data", str(data), *options])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:1/0", "history store #1 cannot be reached"),
        ("sqlite:///{tmp}/typo.db", "no SQLite history store"),
        ("memory", "in-memory history store lives inside its server process"),
    ],
)
def test_a_store_that_cannot_be_opened_stops_erasure_before_anything_is_erased(
    prepared: Path, bentoml_home: Path, tmp_path: Path, url: str, message: str
) -> None:
    data = prepared
    email, _ = snapshot_person(data)
    before = {p: file_sha256(p) for p in sorted(data.rglob("*.parquet"))}
    r = _erase(email, data, "--history-url", url.format(tmp=tmp_path))
    assert r.exit_code == 2 and message in " ".join(r.output.split()) and "Traceback" not in r.output
    assert {p: file_sha256(p) for p in sorted(data.rglob("*.parquet"))} == before
    assert erased_keys().empty


def test_erase_finds_registered_stores_refuses_one_it_cannot_open_and_warns_about_running_memory(
    prepared: Path, tmp_path: Path, bentoml_home: Path
) -> None:
    """No store is missed silently (issue 18, finding 3): a registered store needing a password that was not
    given stops the erasure before anything changes; given, it is cleaned; a running in-memory server is named."""
    data = prepared
    email, customer = snapshot_person(data)
    snapshot = data / S.FEATURES_DIR / S.SNAPSHOT_FILE
    register_store("redis://:pw@127.0.0.1:1/0", snapshot)  # a service elsewhere, password not on file
    memory = open_history_store(None, snapshot)  # this process plays a running in-memory server
    before = {p: file_sha256(p) for p in sorted(data.rglob("*.parquet"))}

    refused = _erase(email, data)

    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "needs its password" in " ".join(refused.output.split()) and "pw@" not in refused.output
    assert {p: file_sha256(p) for p in sorted(data.rglob("*.parquet"))} == before and erased_keys().empty

    forget_stores({e.key for e in registered_stores() if e.kind == "redis"})
    sqlite = SqliteHistoryStore(tmp_path / "gone.db", snapshot)
    register_store(f"sqlite:///{tmp_path}/gone.db", snapshot)  # a store deleted since: forgotten
    sqlite.close()
    (tmp_path / "gone.db").unlink()
    r = _erase(email, data)
    assert r.exit_code == 0, r.output
    assert "keeps customer histories in memory" in " ".join(r.output.split())
    assert str(os.getpid()) in r.output and memory.get(customer) is not None  # it is named, not reached
    assert [e.kind for e in registered_stores()] == ["memory"]


def test_erase_names_an_import_input_outside_the_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bentoml_home: Path
) -> None:
    """The export an import read from elsewhere still holds the person: the command says so (issue 19)."""
    from data_prep.sources import import_sources

    monkeypatch.setenv("O2O_HOME", str(tmp_path / "home"))
    export = tmp_path / "elsewhere" / "orders.csv"
    export.parent.mkdir()
    export.write_text("id,t,card,total\nO1,2026-01-05 09:15:00,K77,9.5\n")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        f"sources:\n  - {{name: orders, kind: orders, path: '{export}', format: csv, timestamp: {{column: t}},\n"
        "     columns: {order_id: id, total: total, loyalty_card: card}, constants: {channel: app}}\n"
    )
    data = tmp_path / "data"
    import_sources(mapping, data)

    r = runner.invoke(app, ["erase", "--identifier", "card:K77", "--data", str(data), "--runs-dir",
                            str(tmp_path / "runs"), "--artifacts", str(tmp_path / "artifacts")])  # fmt: skip

    assert r.exit_code == 0, r.output
    assert "not cleaned:" in r.output and "outside the data folder" in " ".join(r.output.split())
    assert "K77" not in (data / S.RAW_DIR / S.RAW_ORDERS_DIR / S.RAW_ORDERS_FILE).read_text()
    assert "K77" in export.read_text()


def test_erase_reaches_the_online_identity_store(prepared: Path, redis_db: redis.Redis) -> None:
    from serving.identity import RedisIdentityStore

    data = prepared
    email, customer = snapshot_person(data)
    for key in redis_db.scan_iter(match="o2o:identity:*"):
        redis_db.delete(key)
    folder = data / S.CUSTOMERS_DIR
    store = RedisIdentityStore(REDIS_URL, folder / S.IDENTITY_MAP_FILE, folder / S.SHARED_IDENTIFIERS_FILE)
    email_node = f"{S.ID_EMAIL}:{pii.pseudonymise(S.ID_EMAIL, email, pii.load_key())}"
    assert store.customer_of(email_node) == customer
    store.link([email_node, "device:linked-online"])  # a device the service linked to the person
    other = next(c for c in pd.read_parquet(folder / S.IDENTITY_MAP_FILE)[S.CUSTOMER_ID] if c != customer)
    n_before = len(store.link_log())

    r = _erase(email, data, "--identity-url", REDIS_URL)

    assert r.exit_code == 0, r.output
    assert "identity store #1:" in r.output and "127.0.0.1" not in r.output
    assert store.customer_of(email_node) is None and store.customer_of("device:linked-online") is None
    assert len(store.link_log()) == n_before - 1  # the link naming the person is gone
    assert store._members(other)  # nobody else is touched
    for key in redis_db.scan_iter(match="o2o:identity:*"):
        redis_db.delete(key)
    store.close()


def test_erase_refuses_an_identity_store_it_cannot_reach(prepared: Path) -> None:
    email, _ = snapshot_person(prepared)
    r = _erase(email, prepared, "--identity-url", "memory")
    assert r.exit_code != 0 and "only a Redis store" in r.output
    assert erased_keys().empty  # nothing was erased

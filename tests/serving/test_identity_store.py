"""The service's identity store: lookups from prep's identity map, linking in real time under prep's merge
protection and merge rules, and erasure; in memory and on a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from serving.identity import (
    IdentityStore,
    InMemoryIdentityStore,
    RedisIdentityStore,
    identifier_node,
    new_customer_id,
    open_identity_store,
)

REDIS_URL = "redis://127.0.0.1:6379/15"
# prep's map: Ca = account a1 + card k1 + phone p1; Cb = account a2; Cc = device d9 alone
MAP = [
    ("account", "a1", "Ca"),
    ("card", "k1", "Ca"),
    ("phone", "p1", "Ca"),
    ("account", "a2", "Cb"),
    ("device", "d9", "Cc"),
]


def _files(tmp_path: Path) -> tuple[Path, Path]:
    id_map, shared = tmp_path / "identity_map.parquet", tmp_path / "shared_identifiers.parquet"
    cols = list(zip(*MAP, strict=True))
    pq.write_table(
        pa.table({S.IDENTIFIER_TYPE: cols[0], S.IDENTIFIER_KEY: cols[1], S.CUSTOMER_ID: cols[2]}), id_map
    )
    pq.write_table(pa.table({"node": ["device:kiosk"]}), shared)
    return id_map, shared


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IdentityStore]:
    id_map, shared = _files(tmp_path)
    if request.param == "memory":
        yield InMemoryIdentityStore(id_map, shared)
        return
    prefix = f"o2o-test:{uuid.uuid4().hex}:"
    s = RedisIdentityStore(REDIS_URL, id_map, shared, prefix=prefix)
    try:
        yield s
    finally:
        keys = list(s._client.scan_iter(match=prefix + "*"))
        if keys:
            s._client.delete(*keys)
        s.close()


def test_prep_customers_are_found_by_any_of_their_identifiers(store: IdentityStore) -> None:
    assert store.customer_of("card:k1") == store.customer_of("phone:p1") == "Ca"
    assert store.customer_of("device:nobody") is None
    assert store.resolve(["device:nobody", "account:a2"]) == "Cb"


def test_a_device_that_logs_in_joins_the_account_at_once(store: IdentityStore) -> None:
    first = store.link(["device:d1"])  # an anonymous device's first events: a customer of its own
    assert first.created and first.customer_id == new_customer_id(["device:d1"])
    assert store.link(["device:d1"]).customer_id == first.customer_id  # not created twice
    login = store.link(["device:d1", "account:a1"])
    assert login.customer_id == "Ca"  # the larger customer survives
    assert login.merged == (first.customer_id,)  # its history moves to Ca
    assert store.customer_of("device:d1") == "Ca"
    # a card at the till with a new phone: the phone joins the card's customer
    till = store.link(["card:k1", "phone:p2"])
    assert till.customer_id == "Ca" and till.added == 1 and store.customer_of("phone:p2") == "Ca"


def test_two_customers_with_one_anchor_between_them_merge_into_the_larger(store: IdentityStore) -> None:
    store.link(["device:d2", "phone:p5"])  # an anonymous customer of two identifiers
    small = store.customer_of("device:d2")
    assert small is not None
    joined = store.link(["phone:p5", "account:a2"])  # Cb (one identifier) meets the two-identifier one
    assert joined.customer_id == small and joined.merged == ("Cb",)
    assert store.customer_of("account:a2") == small


def test_an_identifier_seen_with_two_accounts_links_nobody(store: IdentityStore) -> None:
    store.link(["device:d3", "account:a1"])
    refused = store.link(["device:d3", "account:a2"])  # the same device, another account: a shared device
    assert refused.refused == "conflicting_anchors"
    assert refused.customer_id == "Cb"  # who logged in
    assert refused.shared == ("device:d3",)
    assert store.customer_of("device:d3") is None  # it leaves Ca too, as prep would leave it out
    assert store.customer_of("account:a1") == "Ca" and store.customer_of("account:a2") == "Cb"
    assert store.link(["device:d3"]).customer_id is None  # and never links again
    # prep's shared identifiers link nobody either
    kiosk = store.link(["device:kiosk", "account:a2"])
    assert kiosk.customer_id == "Cb" and store.customer_of("device:kiosk") is None


def test_erasure_forgets_the_customer_and_every_log_entry_about_them(store: IdentityStore) -> None:
    store.link(["device:d4", "account:a1"])
    store.link(["device:d5", "account:a2"])
    removed = store.delete_customers(["Ca"])
    assert removed == 4  # a1, k1, p1 and the linked device
    assert store.customer_of("device:d4") is None and store.customer_of("card:k1") is None
    log = store.link_log()
    assert log and all(r.get("customer_id") != "Ca" and "device:d4" not in str(r["nodes"]) for r in log)
    assert store.customer_of("account:a2") == "Cb"


def test_identifier_nodes_are_prep_keys_and_never_the_raw_value() -> None:
    key = b"k"
    node = identifier_node(S.ID_EMAIL, "  Wei.Zhu@Example.com ", key)
    assert node == identifier_node(S.ID_EMAIL, "wei.zhu@example.com", key)
    assert node is not None and node.startswith("email:") and "wei" not in node.lower()
    assert identifier_node(S.ID_PHONE, "+86 138-0013-8000", key) == identifier_node(
        S.ID_PHONE, "+8613800138000", key
    )
    assert identifier_node(S.ID_EMAIL, "no-at-sign", key) is None


def test_open_identity_store_refuses_an_unknown_scheme_without_echoing_it(tmp_path: Path) -> None:
    assert isinstance(open_identity_store(None, None, None), InMemoryIdentityStore)
    with pytest.raises(ValueError, match="unsupported identity store URL") as e:
        open_identity_store("postgres://user:secret@h/db", None, None)
    assert "secret" not in str(e.value)

"""The API by any identifier, and identity stitched in real time, through a real ``bentoml serve`` process:
an anonymous device browses, logs into an account, the same person buys in a store with the loyalty card
bound to that account, and the device's next recommendation reflects the store purchase — no prep between."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_prep import pii
from data_prep import schema as S

pytestmark = pytest.mark.slow

API_KEYS = ("identity-key",)
DEVICE = "d-e2e-new-device-0001"  # a device prep never saw


@pytest.fixture(scope="module")
def server(bentoml_server) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with bentoml_server("identity", API_KEYS) as client:
        yield client


def _person(tiny_pipeline) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Raw account, card and phone of one person whose account and card prep resolved to one customer (a card
    bound to the account), and that customer's id."""
    truth = pd.read_csv(tiny_pipeline.data / S.GROUND_TRUTH_DIR / S.GT_IDENTIFIERS_FILE, dtype=str)
    truth = truth[truth["sharing"] == "personal"]
    id_map = pq.read_table(tiny_pipeline.data / S.CUSTOMERS_DIR / S.IDENTITY_MAP_FILE).to_pandas()
    customer_of = dict(
        zip(id_map[S.IDENTIFIER_TYPE] + ":" + id_map[S.IDENTIFIER_KEY], id_map[S.CUSTOMER_ID], strict=True)
    )
    key = pii.load_key()

    def found(t: str, v: str) -> str | None:
        return customer_of.get(f"{t}:{pii.pseudonymise(t, v, key)}")

    for _, rows in truth.groupby(S.GT_PERSON_ID):
        raw = {t: v for t, v in zip(rows[S.IDENTIFIER_TYPE], rows[S.GT_IDENTIFIER], strict=True)}
        if {S.ID_ACCOUNT, S.ID_CARD, S.ID_PHONE} <= raw.keys():
            owner = found(S.ID_ACCOUNT, raw[S.ID_ACCOUNT])
            if owner and owner == found(S.ID_CARD, raw[S.ID_CARD]) == found(S.ID_PHONE, raw[S.ID_PHONE]):
                return {**raw, "customer_id": owner}
    pytest.fail("the tiny retailer has no person with an account, a bound card and a phone in one customer")


def _items(tiny_pipeline) -> list[str]:  # type: ignore[no-untyped-def]
    return pq.read_table(tiny_pipeline.features / S.ITEMS_FILE).column(S.ITEM_ID).to_pylist()


def _event(
    item: str, ts: int, event_type: str = S.EV_VIEW, channel: str = S.CHANNEL_APP
) -> dict[str, object]:
    return {"item_id": item, "event_type": event_type, "channel": channel, "ts": ts}


def _recommend(server: httpx.Client, **who: object) -> dict:  # type: ignore[type-arg]
    r = server.post("/recommend", json={**who, "k": 10, "exclude_seen": True})
    assert r.status_code == 200, r.text
    return r.json()


def test_device_login_then_store_purchase_reaches_the_devices_next_recommendation(  # type: ignore[no-untyped-def]
    server: httpx.Client, tiny_pipeline
) -> None:
    person, items = _person(tiny_pipeline), _items(tiny_pipeline)
    device = {"type": "device", "value": DEVICE}
    r = server.post("/identify", json={"identifier": device})
    assert r.status_code == 200 and r.json() == {"customer_id": None, "found": False}
    cold = _recommend(server, identifier=device)  # an anonymous visitor: cold start, not an error
    assert cold["customer_id"] is None and cold["source"] != "history"

    # 1. the anonymous device browses: it becomes a customer of its own
    r = server.post("/events", json={"identifiers": [device], "events": [_event(items[0], 1_800_000_000)]})
    assert r.status_code == 200, r.text
    anonymous = r.json()["customer_id"]
    assert anonymous != person["customer_id"] and r.json()["merged"] == []
    # 2. it logs into the account: both identifiers in one call link at once, the device's events move over
    account = {"type": "account", "value": person[S.ID_ACCOUNT]}
    r = server.post(
        "/events", json={"identifiers": [device, account], "events": [_event(items[1], 1_800_000_100)]}
    )
    assert r.status_code == 200, r.text
    assert r.json()["customer_id"] == person["customer_id"] and r.json()["merged"] == [anonymous]
    assert server.post("/identify", json={"identifier": device}).json() == {
        "customer_id": person["customer_id"],
        "found": True,
    }
    before = _recommend(server, identifier=device)
    assert before["customer_id"] == person["customer_id"] and before["source"] == "history"
    bought = before["items"][0]["item_id"]  # what the model would show the device next
    # 3. the same person buys it in a store with the loyalty card bound to the account
    card = {"type": "card", "value": person[S.ID_CARD].lower()}  # typed any way: normalised as prep does
    r = server.post(
        "/events",
        json={
            "identifiers": [card],
            "events": [_event(bought, 1_800_000_200, S.EV_PURCHASE, S.CHANNEL_STORE)],
        },
    )
    assert r.status_code == 200 and r.json()["customer_id"] == person["customer_id"], r.text
    # 4. the device's next recommendation reflects the store purchase: the item is now seen, and the
    # answer is the customer's own, whichever identifier asks
    after = _recommend(server, identifier=device)
    assert after["customer_id"] == person["customer_id"]
    assert bought not in [i["item_id"] for i in after["items"]]
    assert after["items"] != before["items"]
    assert _recommend(server, customer_id=person["customer_id"])["items"] == after["items"]
    phone = {"type": "phone", "value": person[S.ID_PHONE]}
    assert _recommend(server, identifier=phone)["items"] == after["items"]
    r = server.post("/intent", json={"identifier": device})
    assert r.status_code == 200 and r.json()["customer_id"] == person["customer_id"], r.text


def test_identifier_errors_are_4xx_with_a_message_and_no_raw_value_is_logged(  # type: ignore[no-untyped-def]
    server: httpx.Client, tiny_pipeline
) -> None:
    secret = "Someone.Private@Example.com"
    cases = [
        ("/identify", {"identifier": {"type": "email", "value": "no-at-sign"}}, 400, "invalid_identifier"),
        ("/identify", {"identifier": {"type": "passport", "value": "X"}}, 400, None),
        ("/identify", {"identifier": {"type": "email", "value": "   "}}, 400, None),
        ("/intent", {"identifier": {"type": "email", "value": secret}}, 404, "unknown_identifier"),
        ("/recommend", {"identifier": {"type": "email", "value": secret}, "customer_id": "c1"}, 400, None),
        ("/events", {"identifiers": [], "events": [_event("x", 1)]}, 400, None),
        ("/events", {"events": [_event("x", 1)]}, 400, None),
    ]
    for path, body, status, code in cases:
        r = server.post(path, json=body)
        assert r.status_code == status, (path, body, r.text)
        assert r.json()["message"], r.text
        if code:
            assert r.json()["error"] == code
    log = (tiny_pipeline.data.parent / "identity.log").read_text()
    assert secret not in log and secret.lower() not in log and "no-at-sign" not in log

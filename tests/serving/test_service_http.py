"""The HTTP API through a real ``bentoml serve`` process on a free local port, with API keys required and the
customer histories in a SQLite file (as ``o2o serve --history-url`` sets up)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from experiments.cli import REPO_ROOT, serve_command
from serving.auth import API_KEY_HEADER, API_KEYS_ENV
from serving.batch import INTENT_PROBABILITY, REC_ITEMS
from serving.service import MAX_EVENTS_PER_CALL

pytestmark = pytest.mark.slow

API_KEYS = ("test-key-alpha", "test-key-beta")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_pipeline) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    port = free_port()
    snapshot = tiny_pipeline.features / S.SNAPSHOT_FILE
    history_url = f"sqlite:///{tiny_pipeline.data.parent / 'serve-history.db'}"
    cmd, env = serve_command(tiny_pipeline.bundle, snapshot, "127.0.0.1", port, 1, history_url)
    env[API_KEYS_ENV] = ",".join(API_KEYS)
    log = open(tiny_pipeline.data.parent / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    headers = {API_KEY_HEADER: API_KEYS[0]}
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"bentoml serve exited with {proc.returncode}; see {log.name}")
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("bentoml serve did not become ready in 90 s")
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def known_customer(tiny_pipeline, row: int = 0) -> tuple[str, list[str]]:  # type: ignore[no-untyped-def]
    """A scored customer and their batch recommendations; row 0 is never sent /events (its online answers
    must match the batch scorer's), other rows may be."""
    scores = pq.read_table(tiny_pipeline.scores).to_pandas()
    found = scores.iloc[row]
    return found[S.CUSTOMER_ID], list(found[REC_ITEMS])


def catalogue(tiny_pipeline) -> list[str]:  # type: ignore[no-untyped-def]
    return pq.read_table(tiny_pipeline.features / S.ITEMS_FILE).column(S.ITEM_ID).to_pylist()


def event(item_id: str, ts: int = 1_700_000_000, **fields: object) -> dict[str, object]:
    return {"item_id": item_id, "event_type": S.EV_VIEW, "channel": S.CHANNEL_APP, "ts": ts, **fields}


def test_health(server: httpx.Client) -> None:
    assert server.get("/livez").status_code == 200
    assert server.get("/readyz").status_code == 200


def test_recommend_known_customer_matches_batch_scores(server: httpx.Client, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    customer, batch_items = known_customer(tiny_pipeline)
    r = server.post("/recommend", json={"customer_id": customer, "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["customer_id"] == customer and body["bundle_version"] == "test"
    assert [i["item_id"] for i in body["items"]] == batch_items


def test_recommend_anonymous_session(server: httpx.Client, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    items = pq.read_table(tiny_pipeline.features / S.ITEMS_FILE).column(S.ITEM_ID).to_pylist()[:3]
    r = server.post("/recommend", json={"items": items, "k": 5})
    assert r.status_code == 200, r.text
    got = [i["item_id"] for i in r.json()["items"]]
    assert len(got) == 5 and not set(got) & set(items)


def test_intent_known_customer(server: httpx.Client, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    customer, _ = known_customer(tiny_pipeline)
    r = server.post("/intent", json={"customer_id": customer})
    assert r.status_code == 200, r.text
    body = r.json()
    row = pq.read_table(tiny_pipeline.scores).to_pandas().set_index(S.CUSTOMER_ID).loc[customer]
    # the same calibrated probability and RFM segment as the batch scorer; no churn model in this bundle
    assert body["probability"] == pytest.approx(row[INTENT_PROBABILITY], abs=1e-6)
    assert body["segment"] == row[S.SEGMENT] and body["churn_risk"] is None


def test_recommend_with_business_filters(server: httpx.Client, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    customer, batch_items = known_customer(tiny_pipeline)
    assortment = pq.read_table(tiny_pipeline.features / S.ASSORTMENT_FILE).to_pandas()
    store = assortment[S.STORE_ID].value_counts().index[0]
    sold = set(assortment.loc[assortment[S.STORE_ID] == store, S.ITEM_ID])
    body = {"customer_id": customer, "k": 5, "store_id": store, "exclude_items": batch_items[:2]}
    r = server.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    got = [i["item_id"] for i in r.json()["items"]]
    assert got and set(got) <= sold and not set(got) & set(batch_items[:2])
    r = server.post("/recommend", json={"customer_id": customer, "store_id": "no-such-store"})
    assert r.status_code == 400 and "unknown store_id" in r.text
    r = server.post("/recommend", json={"customer_id": customer, "exclude_categories": ["nope"]})
    assert r.status_code == 400 and "unknown categories" in r.text


def test_unknown_customer_is_404_with_message(server: httpx.Client) -> None:
    for route in ("/recommend", "/intent"):
        r = server.post(route, json={"customer_id": "c0000000000000000"})
        assert r.status_code == 404
        assert "unknown customer_id" in r.text


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"customer_id": 12345}, "customer_id"),
        ({"customer_id": "x", "k": 0}, "greater than or equal"),
        ({"customer_id": "x", "k": 1000}, "less than or equal"),
        ({"customer_id": "x", "k": "ten"}, "valid integer"),
        ({"items": []}, "at least one item"),
        ({"items": "SKU1"}, "valid array"),
        ({}, "exactly one of"),
        ({"customer_id": "x", "items": ["a"]}, "exactly one of"),
        ({"customer_id": "bad id with spaces"}, "pattern"),
        ([1, 2], "object"),
    ],
)
def test_malformed_recommend_bodies_get_4xx_with_a_message(
    server: httpx.Client, body: object, fragment: str
) -> None:
    r = server.post("/recommend", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert fragment in r.text
    assert "Traceback" not in r.text


def test_invalid_json_is_400(server: httpx.Client) -> None:
    r = server.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Invalid JSON" in r.text


def test_serve_command_names_the_history_store_and_passes_keys_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(API_KEYS_ENV, "k1,k2")
    monkeypatch.setenv("O2O_HISTORY_URL", "redis://stale:6379/0")
    _, env = serve_command(Path("b"), Path("s.parquet"), "127.0.0.1", 3000, 1, "sqlite:///h.db")
    # a relative SQLite path is this directory's, not the repository root's the server runs in
    assert (
        env["O2O_HISTORY_URL"] == f"sqlite:///{tmp_path.resolve() / 'h.db'}" and env[API_KEYS_ENV] == "k1,k2"
    )
    _, env = serve_command(Path("b"), Path("s.parquet"), "127.0.0.1", 3000, 1, "redis://127.0.0.1:6379/0")
    assert env["O2O_HISTORY_URL"] == "redis://127.0.0.1:6379/0"
    _, env = serve_command(Path("b"), Path("s.parquet"), "127.0.0.1", 3000, 1, None)
    assert "O2O_HISTORY_URL" not in env  # in memory


# ---------------------------------------------------------------- API keys


def test_no_or_a_wrong_key_is_401_probes_are_open(server: httpx.Client, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=server.base_url, timeout=10) as anonymous:
        for headers in ({}, {API_KEY_HEADER: "wrong"}):
            for route in ("/recommend", "/events", "/similar-items", "/intent"):
                r = anonymous.post(route, json={"customer_id": "x"}, headers=headers)
                assert r.status_code == 401, (route, r.text)
                assert set(r.json()) == {"error"} and API_KEY_HEADER in r.json()["error"]
            assert anonymous.get("/docs", headers=headers).status_code == 401
        for path in ("/livez", "/readyz", "/metrics"):
            assert anonymous.get(path).status_code == 200, path
        body = {"items": catalogue(tiny_pipeline)[:3], "k": 3}
        for key in API_KEYS:  # any listed key opens the API
            r = anonymous.post("/recommend", json=body, headers={API_KEY_HEADER: key})
            assert r.status_code == 200, r.text


# ---------------------------------------------------------------- /events


def test_appended_events_reach_the_next_recommendation(server: httpx.Client, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    customer, _ = known_customer(tiny_pipeline, row=1)
    snapshot = pq.read_table(tiny_pipeline.features / S.SNAPSHOT_FILE).to_pandas().set_index(S.CUSTOMER_ID)
    items = snapshot.loc[customer, S.ITEMS]
    n_before = 0 if items is None else len(items)
    query = {"customer_id": customer, "k": 10, "exclude_seen": True}
    before = server.post("/recommend", json=query)
    assert before.status_code == 200, before.text
    top = before.json()["items"][0]["item_id"]
    later = 2_000_000_000  # 2033: after every snapshot event
    r = server.post("/events", json={"customer_id": customer, "events": [event(top, later)]})
    assert r.status_code == 200, r.text
    assert r.json() == {"customer_id": customer, "n_events": n_before + 1, "accepted": 1}
    after = server.post("/recommend", json=query)
    assert after.status_code == 200, after.text
    got = [i["item_id"] for i in after.json()["items"]]
    # the item just viewed now counts as seen, and the model read the longer history
    assert top not in got and after.json()["items"] != before.json()["items"]
    assert after.json()["source"] == "history"


def test_events_create_a_customer_the_snapshot_did_not_know(server: httpx.Client, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    customer = "c-created-by-events"
    assert server.post("/recommend", json={"customer_id": customer}).status_code == 404
    items = catalogue(tiny_pipeline)[:3]
    events = [event(i, 1_700_000_000 + n) for n, i in enumerate(items)]
    r = server.post("/events", json={"customer_id": customer, "events": events})
    assert r.status_code == 200, r.text
    assert r.json() == {"customer_id": customer, "n_events": 3, "accepted": 3}
    r = server.post("/recommend", json={"customer_id": customer, "k": 5, "exclude_seen": True})
    assert r.status_code == 200, r.text
    got = [i["item_id"] for i in r.json()["items"]]
    assert r.json()["source"] == "history" and len(got) == 5 and not set(got) & set(items)


@pytest.mark.parametrize(
    ("events", "extra", "fragments"),
    [
        ([event("SKU", event_type="click")], {}, ["events[0]", "event_type 'click'"]),
        ([event("SKU"), event("SKU", channel="fax")], {}, ["events[1]", "channel 'fax'"]),
        ([event("SKU", ts=1_700_000_000_000)], {}, ["events[0]", "epoch seconds"]),
        ([event("SKU", colour="red")], {}, ["colour", "Extra inputs are not permitted"]),
        ([event("SKU")], {"source": "pos"}, ["source", "Extra inputs are not permitted"]),
        ([event("SKU")] * (MAX_EVENTS_PER_CALL + 1), {}, ["events", f"at most {MAX_EVENTS_PER_CALL}"]),
        ([], {}, ["events", "at least 1"]),
        ([{"item_id": "SKU"}], {}, ["event_type", "Field required"]),
    ],
)
def test_bad_events_are_400_with_a_message_and_store_nothing(
    server: httpx.Client, events: list[object], extra: dict[str, object], fragments: list[str]
) -> None:
    customer = "c-sent-only-bad-events"
    r = server.post("/events", json={"customer_id": customer, "events": events, **extra})
    assert r.status_code == 400, r.text
    assert all(f in r.text for f in fragments), r.text
    assert "Traceback" not in r.text
    # a call is all or nothing: not even the customer was created
    assert server.post("/recommend", json={"customer_id": customer}).status_code == 404


# ---------------------------------------------------------------- /similar-items


def test_similar_items_are_other_known_items(server: httpx.Client, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    item = catalogue(tiny_pipeline)[0]
    r = server.post("/similar-items", json={"item_id": item, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    got = [i["item_id"] for i in body["items"]]
    scores = [i["score"] for i in body["items"]]
    assert body["item_id"] == item and body["bundle_version"] == "test"
    assert len(got) == 5 and item not in got and set(got) <= set(catalogue(tiny_pipeline))
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"item_id": "no-such-item"}, 404, "unknown item_id 'no-such-item'"),
        ({"item_id": "x", "k": 0}, 400, "greater than or equal"),
        ({"item_id": "x", "k": 1000}, 400, "less than or equal"),
        ({"item_id": "x", "n": 5}, 400, "Extra inputs are not permitted"),
        ({}, 400, "item_id"),
    ],
)
def test_similar_items_errors(
    server: httpx.Client, body: dict[str, object], status: int, fragment: str
) -> None:
    r = server.post("/similar-items", json=body)
    assert r.status_code == status, r.text
    assert fragment in r.text and "Traceback" not in r.text

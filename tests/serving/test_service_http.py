"""The HTTP API through a real ``bentoml serve`` process on a free local port, with API keys required and the
customer histories in a SQLite file (as ``o2o serve --history-url`` sets up)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from experiments.cli import serve_command
from serving.auth import API_KEY_HEADER, API_KEYS_ENV
from serving.batch import INTENT_PROBABILITY, REC_ITEMS
from serving.service import MAX_EVENTS_PER_CALL

pytestmark = pytest.mark.slow

API_KEYS = ("test-key-alpha", "test-key-beta")


def serve_log_path(tiny_pipeline) -> Path:  # type: ignore[no-untyped-def]
    """Where the ``server`` fixture's process writes its stdout and stderr (BentoML logs to stdout)."""
    return Path(tiny_pipeline.data.parent / "serve.log")


@pytest.fixture(scope="module")
def server(bentoml_server) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with bentoml_server("serve", API_KEYS) as client:
        yield client


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
        # read strictly, as the OpenAPI schema says: no number in a string, no float, no 0/1 for a boolean
        ({"customer_id": "x", "k": "5"}, "valid integer"),
        ({"customer_id": "x", "k": 5.0}, "valid integer"),
        ({"customer_id": "x", "exclude_seen": 1}, "valid boolean"),
        ({"customer_id": "x", "store_id": 3}, "valid string"),
        ({"items": []}, "at least 1 item"),
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
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "validation_error" and fragment in r.text
    assert "Traceback" not in r.text


def test_invalid_json_is_400(server: httpx.Client) -> None:
    r = server.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Invalid JSON" in r.text


@pytest.mark.parametrize("route", ["/recommend", "/intent", "/events", "/similar-items"])
def test_unknown_fields_are_refused_on_every_endpoint(
    server: httpx.Client, tiny_pipeline, route: str
) -> None:  # type: ignore[no-untyped-def]
    customer, _ = known_customer(tiny_pipeline)
    valid = {
        "/recommend": {"customer_id": customer, "k": 3},
        "/intent": {"customer_id": customer},
        "/events": {"customer_id": "c-never-stored", "events": [event(catalogue(tiny_pipeline)[0])]},
        "/similar-items": {"item_id": catalogue(tiny_pipeline)[0], "k": 3},
    }[route]
    r = server.post(route, json={**valid, "kk": 3})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "validation_error" and r.json()["fields"] == ["kk"]
    assert "Extra inputs are not permitted" in r.json()["message"]


def oversized_body() -> bytes:
    return json.dumps({"items": ["x" * 60] * 20_000}).encode()  # ~1.3 MB, over the 1 MiB limit


@pytest.mark.parametrize(
    ("method", "route", "kwargs", "status", "code"),
    [
        ("POST", "/recommend", {"json": {"customer_id": "x", "k": 0}}, 400, "validation_error"),
        ("POST", "/recommend", {"content": b"{not json"}, 400, "invalid_json"),
        (
            "POST",
            "/recommend",
            {"json": {"items": ["a"], "store_id": "no-such-store"}},
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/events",
            {"json": {"customer_id": "c1", "events": [event("a", channel="fax")]}},
            400,
            "validation_error",
        ),
        ("POST", "/recommend", {"json": {"customer_id": "c0000000000000000"}}, 404, "unknown_customer"),
        ("POST", "/intent", {"json": {"customer_id": "c0000000000000000"}}, 404, "unknown_customer"),
        ("POST", "/similar-items", {"json": {"item_id": "no-such-item"}}, 404, "unknown_item"),
        ("POST", "/no-such-route", {"json": {}}, 404, "not_found"),
        ("GET", "/recommend", {}, 405, "method_not_allowed"),
        ("POST", "/recommend", {"content": oversized_body()}, 413, "payload_too_large"),
        ("POST", "/recommend", {"data": {"customer_id": "x"}}, 415, "unsupported_media_type"),
    ],
)
def test_every_client_error_has_one_body_shape(
    server: httpx.Client, method: str, route: str, kwargs: dict[str, object], status: int, code: str
) -> None:
    headers = {} if "data" in kwargs else {"content-type": "application/json"}
    r = server.request(method, route, headers=headers, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]
    assert isinstance(body["fields"], list) and set(body) <= {"error", "message", "fields", "detail"}


def read_log_events(path: Path, event: str) -> list[dict[str, object]]:
    """The structured lines (:func:`serving.logs.log_event`) of one kind in the server's log."""
    found = []
    for line in path.read_text().splitlines():
        match = re.search(r"(\{\"event\": .*\})", line)
        if match and f'"event": "{event}"' in line:
            found.append(json.loads(match.group(1)))
    return found


def test_bad_input_leaves_no_personal_data_and_no_traceback_in_the_log(  # type: ignore[no-untyped-def]
    server: httpx.Client, tiny_pipeline
) -> None:
    email = "jane.doe.9f3a@example.com"  # a raw identifier sent by mistake
    customer = "c9f3a5eed1e55c0de"  # a pseudonymous id the store does not hold
    log_path = serve_log_path(tiny_pipeline)
    n_before = len(read_log_events(log_path, "request_error"))
    bad = [
        ("/recommend", {"customer_id": email}, 400),
        ("/recommend", {"customer_id": customer}, 404),
        ("/recommend", {"customer_id": customer, email: 1}, 400),
        ("/intent", {"customer_id": customer}, 404),
        ("/intent", {"customer_id": email}, 400),
        ("/events", {"customer_id": customer, "events": [event(email, event_type="click")]}, 400),
        ("/events", {"customer_id": email, "events": [event("SKU")]}, 400),
        ("/events", {"customer_id": customer, "events": [{"item_id": email, "ts": "yesterday"}]}, 400),
    ]
    for route, body, status in bad:
        assert server.post(route, json=body).status_code == status, (route, body)
    r = server.post("/recommend", content=f'{{"customer_id": "{email}"'.encode())  # invalid JSON
    assert r.status_code == 400
    deadline = time.monotonic() + 10
    while len(read_log_events(log_path, "request_error")) < n_before + len(bad) + 1:
        assert time.monotonic() < deadline, "the server did not log one line per refused request"
        time.sleep(0.2)
    lines = read_log_events(log_path, "request_error")[n_before:]
    assert [(e["endpoint"], e["status"]) for e in lines] == [
        *((route, status) for route, _, status in bad),
        ("/recommend", 400),
    ]
    assert lines[2]["fields"] == ["<extra>"] and lines[5]["fields"] == ["events.0.event_type"]
    text = log_path.read_text()
    assert email not in text and customer not in text
    assert "Traceback" not in text and "input_value" not in text


def test_the_log_records_the_onnx_runtime_threads(server: httpx.Client, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    (loaded,) = read_log_events(serve_log_path(tiny_pipeline), "service_loaded")
    # o2o serve --threads (default 1) sets O2O_ORT_THREADS; BentoML runs one worker
    assert loaded["ort_intra_op_threads"] == 1 and loaded["threads_from"] == "O2O_ORT_THREADS"
    assert loaded["workers"] == 1 and loaded["bundle_version"] == "test"


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
                assert r.json()["error"] == "unauthorized" and API_KEY_HEADER in r.json()["message"]
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
    assert r.json() == {"customer_id": customer, "n_events": n_before + 1, "accepted": 1, "merged": []}
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
    assert r.json() == {"customer_id": customer, "n_events": 3, "accepted": 3, "merged": []}
    r = server.post("/recommend", json={"customer_id": customer, "k": 5, "exclude_seen": True})
    assert r.status_code == 200, r.text
    got = [i["item_id"] for i in r.json()["items"]]
    assert r.json()["source"] == "history" and len(got) == 5 and not set(got) & set(items)


@pytest.mark.parametrize(
    ("events", "extra", "fragments"),
    [
        ([event("SKU", event_type="click")], {}, ["events.0.event_type", "Input should be 'view'"]),
        ([event("SKU"), event("SKU", channel="fax")], {}, ["events.1.channel", "Input should be 'web'"]),
        ([event("SKU", ts=1_700_000_000_000)], {}, ["events.0.ts", "less than or equal to 99999999999"]),
        ([event("SKU", ts=-1)], {}, ["events.0.ts", "greater than or equal to 0"]),
        ([event("   ")], {}, ["events.0.item_id", "should match pattern"]),
        ([event("SKU", ts=True)], {}, ["events.0.ts", "valid integer"]),
        ([event("SKU", ts="1700000000")], {}, ["events.0.ts", "valid integer"]),
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


def test_concurrent_recommendations_are_batched_and_each_gets_its_own_answer(  # type: ignore[no-untyped-def]
    server: httpx.Client, tiny_pipeline
) -> None:
    scores = pq.read_table(tiny_pipeline.scores).to_pandas()
    bodies: list[dict[str, object]] = [{"customer_id": c, "k": 5} for c in scores[S.CUSTOMER_ID].head(24)]
    bodies += [{"customer_id": c, "k": 3, "exclude_seen": False} for c in scores[S.CUSTOMER_ID].head(4)]
    bodies += [
        {"items": catalogue(tiny_pipeline)[:2]},
        {"customer_id": bodies[0]["customer_id"], "store_id": "x"},
    ]
    alone = [server.post("/recommend", json=b) for b in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: server.post("/recommend", json=b), bodies * 3))
    for i, r in enumerate(together):
        want = alone[i % len(bodies)]
        assert r.status_code == want.status_code, r.text
        if r.status_code == 200:
            assert [x["item_id"] for x in r.json()["items"]] == [x["item_id"] for x in want.json()["items"]]
        else:
            assert r.status_code == 400 and "unknown store_id" in r.text  # one caller's error, theirs alone
    assert batched_requests(server, "/recommend") >= 4 * len(bodies)  # every request went through a batch


def batched_requests(server: httpx.Client, endpoint: str) -> float:
    """Requests of ``endpoint`` that went through its batcher so far (the sum of its batch-size histogram)."""
    found = re.search(
        rf'^o2o_batch_size_sum{{endpoint="{endpoint}"}} (\S+)$', server.get("/metrics").text, re.M
    )
    assert found, f"no o2o_batch_size for {endpoint} on /metrics"
    return float(found.group(1))


def test_concurrent_intents_are_batched_and_each_gets_its_own_answer(
    server: httpx.Client, tiny_pipeline
) -> None:  # type: ignore[no-untyped-def]
    customers = pq.read_table(tiny_pipeline.scores).column(S.CUSTOMER_ID).to_pylist()[:20]
    alone = [server.post("/intent", json={"customer_id": c}).json() for c in customers]
    before = batched_requests(server, "/intent")
    with ThreadPoolExecutor(len(customers)) as pool:
        together = list(pool.map(lambda c: server.post("/intent", json={"customer_id": c}), customers * 3))
    for i, r in enumerate(together):
        assert r.status_code == 200, r.text
        want = alone[i % len(customers)]
        assert r.json()["segment"] == want["segment"]
        assert abs(r.json()["probability"] - want["probability"]) < 1e-5  # float order of another batch shape
    assert batched_requests(server, "/intent") - before == len(together)

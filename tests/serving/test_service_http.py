"""The HTTP API through a real ``bentoml serve`` process on a free local port."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from experiments.cli import REPO_ROOT, serve_command
from serving.batch import INTENT_PROBABILITY, REC_ITEMS

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_pipeline) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    port = free_port()
    snapshot = tiny_pipeline.features / S.SNAPSHOT_FILE
    cmd, env = serve_command(tiny_pipeline.bundle, snapshot, "127.0.0.1", port, threads=1)
    log = open(tiny_pipeline.data.parent / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
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


def known_customer(tiny_pipeline) -> tuple[str, list[str]]:  # type: ignore[no-untyped-def]
    scores = pq.read_table(tiny_pipeline.scores).to_pandas()
    row = scores.iloc[0]
    return row[S.CUSTOMER_ID], list(row[REC_ITEMS])


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

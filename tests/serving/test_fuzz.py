"""Fuzzing the HTTP API with schemathesis, from the OpenAPI document the running server publishes.

A real ``bentoml serve`` (the ``bentoml_server`` fixture) answers requests that schemathesis generates from
``/docs.json``: for each endpoint, schema-valid bodies (positive mode; with known customer and item ids mixed
in, so that the scorers run) and schema-violating ones (negative mode), about one in five without the API
key or with a wrong one. Every response goes through schemathesis' checks (no 5xx; documented status,
content type and body; invalid data rejected; the key enforced) and the service's own rules (one error body
shape; a schema-valid body never fails validation, so the published schema is no looser than the service).
At least :data:`MIN_REQUESTS` requests, seeded so that every run sends the same ones:
``pytest tests/serving/test_fuzz.py -s`` (``-s`` prints the requests sent and the statuses per endpoint).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup

from data_prep import schema as S
from serving.auth import API_KEY_HEADER
from serving.history import MAX_EPOCH_SECONDS
from serving.service import API_KEY_SCHEME, NOT_BLANK, O2OService, error_statuses, openapi_document

pytestmark = pytest.mark.slow

API_KEY = "fuzz-key"
SEED = 20261202
MIN_REQUESTS = 2000
# examples per endpoint and mode: 4 endpoints x (280 + 240) ≈ 2,080 requests, plus the probes
EXAMPLES = {GenerationMode.POSITIVE: 280, GenerationMode.NEGATIVE: 240}
PROBE_EXAMPLES = 5  # GET /livez and friends take no input: a few requests each
WITHOUT_KEY = ("missing", "wrong")
AUTH = st.sampled_from(["key"] * 8 + list(WITHOUT_KEY))  # one case in five: no key or a wrong one
ERROR_KEYS = {"error", "message", "fields"}
# positive data fails only on rules the schema cannot state: k over the bundle's max_k, unknown store or
# category (400 invalid_request); unknown customer or item (404)
VALIDATION_CODES = {"validation_error", "invalid_json"}
# schemathesis' built-in checks, but one: it expects every schema-valid body to be accepted, while a store id
# or a k over this bundle's max_k is the bundle's to refuse; the run asserts instead that such a refusal is
# never a validation error
CONFIG = {"checks": {"positive_data_acceptance": {"enabled": False}}}


@dataclass
class Tally:
    """What the fuzz run sent and what came back wrong."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    per_operation: Counter[tuple[str, int]] = field(default_factory=Counter)  # (operation, status)
    problems: dict[str, str] = field(default_factory=dict)  # one example per kind of problem

    def problem(self, key: str, text: str) -> None:
        self.problems.setdefault(key, text)


@dataclass(frozen=True)
class KnownIds:
    customers: list[str]
    items: list[str]


@pytest.fixture(scope="module")
def fuzz_server(bentoml_server) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with bentoml_server("fuzz", [API_KEY]) as client:
        yield client


@pytest.fixture(scope="module")
def known_ids(tiny_pipeline) -> KnownIds:  # type: ignore[no-untyped-def]
    customers = pq.read_table(tiny_pipeline.scores).column(S.CUSTOMER_ID).to_pylist()
    items = pq.read_table(tiny_pipeline.features / S.ITEMS_FILE).column(S.ITEM_ID).to_pylist()
    return KnownIds(customers[:50], items)


def load_schema(base_url: str) -> Any:
    config = schemathesis.Config.from_dict(CONFIG)
    return schemathesis.openapi.from_url(
        f"{base_url}/docs.json", headers={API_KEY_HEADER: API_KEY}, config=config, timeout=10
    )


def with_known_ids(body: Any, customer: str | None, items: list[str] | None) -> None:
    """Put a known customer and known items into a schema-valid ``body`` in place (when drawn)."""
    if not isinstance(body, dict):
        return
    if customer is not None and isinstance(body.get("customer_id"), str):
        body["customer_id"] = customer
    if items:
        if isinstance(body.get("items"), list):
            body["items"] = items
        if isinstance(body.get("item_id"), str):
            body["item_id"] = items[0]
        for n, event in enumerate(body.get("events") or ()):
            if isinstance(event, dict) and isinstance(event.get("item_id"), str):
                event["item_id"] = items[n % len(items)]


def check_error_body(response: requests.Response) -> str | None:
    """What is wrong with an error response's body, or None."""
    try:
        body = response.json()
    except ValueError:
        return "not JSON"
    if not isinstance(body, dict) or not ERROR_KEYS <= set(body) <= ERROR_KEYS | {"detail"}:
        return f"keys {sorted(body) if isinstance(body, dict) else type(body).__name__}"
    if not all(isinstance(body[key], str) and body[key] for key in ("error", "message")):
        return "error or message not a non-empty string"
    fields = body["fields"]
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        return "fields not a list of strings"
    return None


def exercise(
    case: schemathesis.Case,
    auth: str,
    base_url: str,
    session: requests.Session,
    tally: Tally,
) -> None:
    """Send one generated case (with the key, without it or with a wrong one) and check the response."""
    label = case.operation.label
    if auth == "key":
        headers = {API_KEY_HEADER: API_KEY}
    else:
        for name in [h for h in case.headers or {} if h.lower() == API_KEY_HEADER.lower()]:
            del case.headers[name]  # type: ignore[union-attr]
        headers = {API_KEY_HEADER: "not-a-key"} if auth == "wrong" else {}
    response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
    status = response.status_code
    tally.requests += 1
    tally.statuses[status] += 1
    tally.per_operation[label, status] += 1
    where = f"{label} -> {status}: {case.as_curl_command(headers=headers)}\n{response.text[:500]}"
    if status >= 500:
        tally.problem(f"{label}: {status}", where)
    is_probe = case.operation.method.upper() == "GET"
    if auth != "key" and not is_probe and status not in (401, 413, 415):
        tally.problem(f"{label}: {auth} key answered {status}", where)
    trouble = check_error_body(response) if status >= 400 else None
    if trouble:
        tally.problem(f"{label}: error body {trouble}", where)
    mode = case.meta.generation.mode if case.meta else None
    positive = mode == GenerationMode.POSITIVE and auth == "key"
    if positive and status == 400 and not trouble and response.json()["error"] in VALIDATION_CODES:
        tally.problem(f"{label}: schema-valid body failed validation", where)
    try:
        case.validate_response(
            response,
            headers=headers,
            transport_kwargs={"base_url": base_url, "session": session, "headers": headers},
        )
    except FailureGroup as failures:
        for failure in failures.exceptions:
            tally.problem(f"{label}: {failure.title}", f"{where}\n{failure.message}")


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    n_examples: int,
    base_url: str,
    session: requests.Session,
    known: KnownIds,
    tally: Tally,
) -> None:
    """``n_examples`` cases of one operation in one generation mode, seeded; problems go to ``tally``."""

    @seed(SEED)
    @settings(
        max_examples=n_examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: problems are collected, not raised
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        auth=AUTH,
        customer=st.none() | st.sampled_from(known.customers),
        items=st.none() | st.lists(st.sampled_from(known.items), min_size=1, max_size=5),
    )
    def run(case: schemathesis.Case, auth: str, customer: str | None, items: list[str] | None) -> None:
        if mode == GenerationMode.POSITIVE:
            with_known_ids(case.body, customer, items)
        exercise(case, auth, base_url, session, tally)

    run()


def fuzz(base_url: str, known: KnownIds, tally: Tally) -> None:
    """Every operation of the published schema: the endpoints in both generation modes (:data:`EXAMPLES`
    cases each), the GET probes in positive mode (:data:`PROBE_EXAMPLES`)."""
    schema = load_schema(base_url)
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.method.upper() == "GET":
                fuzz_operation(
                    operation, GenerationMode.POSITIVE, PROBE_EXAMPLES, base_url, session, known, tally
                )
                continue
            for mode, n_examples in EXAMPLES.items():
                fuzz_operation(operation, mode, n_examples, base_url, session, known, tally)


def test_fuzzed_requests_never_get_a_5xx(fuzz_server: httpx.Client, known_ids: KnownIds) -> None:
    tally = Tally()
    started = time.monotonic()
    fuzz(str(fuzz_server.base_url).rstrip("/"), known_ids, tally)
    elapsed = time.monotonic() - started
    per_operation: dict[str, dict[int, int]] = {}
    for (label, status), n in sorted(tally.per_operation.items()):
        per_operation.setdefault(label, {})[status] = n
    summary = f"{tally.requests} requests in {elapsed:.0f} s: " + "; ".join(
        f"{label} {statuses}" for label, statuses in per_operation.items()
    )
    print(summary)
    assert not tally.problems, summary + "\n\n" + "\n\n".join(f"{k}\n{v}" for k, v in tally.problems.items())
    assert tally.requests >= MIN_REQUESTS, summary
    assert not any(status >= 500 for status in tally.statuses), summary
    for route in ("/recommend", "/intent", "/events", "/similar-items"):
        # keyed requests reached the handler and were answered by it, and keyless ones were refused
        statuses = per_operation[f"POST {route}"]
        assert statuses.get(200) and statuses.get(400) and statuses.get(401), (route, statuses)


def test_the_published_schema_states_what_the_service_checks(fuzz_server: httpx.Client) -> None:
    doc = fuzz_server.get("/docs.json").json()
    event = doc["components"]["schemas"]["EventIn"]["properties"]
    assert event["event_type"]["enum"] == list(S.ITEM_EVENT_TYPES)
    assert event["channel"]["enum"] == list(S.CHANNELS)
    assert (event["ts"]["minimum"], event["ts"]["maximum"]) == (0, MAX_EPOCH_SECONDS - 1)
    assert event["item_id"]["pattern"] == NOT_BLANK  # not blank, to both regex dialects
    recommend = doc["paths"]["/recommend"]["post"]
    assert recommend["requestBody"]["required"] is True
    body = recommend["requestBody"]["content"]["application/json"]["schema"]
    # optional fields are nullable (OpenAPI 3.0 has no null type), and exactly one of the two histories is sent
    assert body["properties"]["customer_id"]["nullable"] and body["properties"]["items"]["nullable"]
    assert [branch["required"] for branch in body["oneOf"]] == [["customer_id"], ["identifier"], ["items"]]
    assert [b["properties"] for b in body["oneOf"]] == [  # present means not null
        {"customer_id": {"type": "string"}},
        {"identifier": {"type": "object"}},
        {"items": {"type": "array"}},
    ]
    intent = doc["paths"]["/intent"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert intent["properties"]["churn_risk"]["nullable"] is True
    for route in ("/recommend", "/intent", "/events", "/similar-items", "/identify"):
        operation = doc["paths"][route]["post"]
        assert set(operation["responses"]) == {"200", *map(str, error_statuses(route, True))}, route
        # 503: batched (overloaded), or takes identifiers (no pseudonymisation key)
        assert ("503" in operation["responses"]) == (route != "/similar-items"), route
        error = operation["responses"]["400"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/Error"}
        assert operation["security"] == [{API_KEY_SCHEME: []}]
    assert doc["components"]["securitySchemes"][API_KEY_SCHEME] == {
        "type": "apiKey",
        "in": "header",
        "name": API_KEY_HEADER,
    }
    assert "security" not in doc["paths"]["/livez"]["get"]  # the probes stay open
    assert {"InvalidArgument", "NotFound"}.isdisjoint(doc["components"]["schemas"])  # BentoML's error bodies


def test_without_api_keys_the_schema_declares_no_security() -> None:
    service: Any = O2OService
    spec = service.openapi_spec.asdict()
    doc = openapi_document(spec, [api.route for api in service.apis.values()], keys_required=False)
    operation = doc["paths"]["/events"]["post"]
    assert "401" not in operation["responses"] and "security" not in operation
    assert "securitySchemes" not in doc["components"]
    assert "security" not in spec["paths"]["/events"]["post"]  # BentoML's document is left as it was

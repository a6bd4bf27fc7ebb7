"""Error bodies and error logs through a small BentoML service in process: BentoML's own request handling
(validation, its exception handler and ``log_exception``) behind the same middlewares as the O2O service."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Annotated, Any

import bentoml
import httpx
import pytest
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from serving.auth import API_KEY_HEADER, EXEMPT_PATHS, ApiKeyMiddleware
from serving.logs import BENTOML_EXCEPTION_LOGGER, ApiError, ErrorResponseMiddleware, describe

KEY = "probe-key"
MAX_BODY = 1000
EMAIL = "jane.doe@example.com"  # a raw identifier a caller sent by mistake
CUSTOMER = "c5eed1e55c0ffee42"  # a pseudonymous id: must not reach the log either


class EchoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-:.]+$")]
    k: Annotated[int, Field(ge=1, le=100)] = 10


@bentoml.service
class Probe:
    @bentoml.api(route="/echo")
    def echo(self, request: EchoRequest, /) -> dict[str, str]:
        if request.customer_id == "boom":
            raise RuntimeError("an unexpected failure")
        if request.customer_id == "multipart":
            raise HTTPException(400, "Invalid multipart data.")  # what Starlette raises for a broken form
        if request.customer_id != "known":
            raise ApiError(
                HTTPStatus.NOT_FOUND,
                "unknown_customer",
                f"unknown customer_id {request.customer_id!r}",
                ("customer_id",),
            )
        return {"customer_id": request.customer_id}


Probe.add_asgi_middleware(
    ErrorResponseMiddleware, api_paths=["/echo"], exempt_paths=EXEMPT_PATHS, max_body_bytes=MAX_BODY
)
Probe.add_asgi_middleware(ApiKeyMiddleware, keys=(KEY,))


class Client:
    """Requests to the service's ASGI app in process, each in its own event loop with the app's lifespan
    running (it builds the service instance)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        async def send() -> httpx.Response:
            async with self.app.router.lifespan_context(self.app):
                transport = httpx.ASGITransport(app=self.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                    return await c.request(
                        method, path, headers={API_KEY_HEADER: KEY, **(headers or {})}, **kw
                    )

        return asyncio.run(send())

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(Probe.to_asgi())


def request_errors(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    lines = [r.getMessage() for r in caplog.records if r.name == "serving.logs"]
    return [e for e in map(json.loads, lines) if e["event"] == "request_error"]


def all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record of the service and of BentoML's exception handler as a handler would print it,
    tracebacks included (BentoML's access log and httpx's request log record the path, not the body)."""
    formatter = logging.Formatter()
    mine = ("serving.logs", BENTOML_EXCEPTION_LOGGER)
    return "\n".join(formatter.format(r) for r in caplog.records if r.name in mine)


def assert_error_shape(body: object, code: str) -> None:
    assert isinstance(body, dict) and body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["fields"], list)
    assert set(body) <= {"error", "message", "fields", "detail"}


@pytest.mark.parametrize(
    ("body", "code", "fields", "log_fields"),
    [
        ({"customer_id": EMAIL}, "validation_error", ["customer_id"], ["customer_id"]),
        ({"customer_id": CUSTOMER, "k": 0}, "validation_error", ["k"], ["k"]),
        ({"customer_id": CUSTOMER, EMAIL: 1}, "validation_error", [EMAIL], ["<extra>"]),
        ({}, "validation_error", ["customer_id"], ["customer_id"]),
        ([CUSTOMER, EMAIL], "validation_error", [], []),
        ({"customer_id": CUSTOMER}, "unknown_customer", ["customer_id"], ["customer_id"]),
    ],
)
def test_a_client_error_gets_one_shape_and_one_log_line_without_values_or_traceback(
    client: Client,
    caplog: pytest.LogCaptureFixture,
    body: object,
    code: str,
    fields: list[str],
    log_fields: list[str],
) -> None:
    with caplog.at_level(logging.INFO):
        r = client.post("/echo", json=body)
    assert r.status_code in (400, 404), r.text
    assert_error_shape(r.json(), code)
    assert r.json()["fields"] == fields
    (line,) = request_errors(caplog)
    assert line == {
        "event": "request_error",
        "endpoint": "/echo",
        "method": "POST",
        "status": r.status_code,
        "error": code,
        "fields": log_fields,
        "types": line["types"],
    }
    text = all_log_text(caplog)
    assert EMAIL not in text and CUSTOMER not in text
    assert "Traceback" not in text
    assert not [rec for rec in caplog.records if rec.name == BENTOML_EXCEPTION_LOGGER]


def test_validation_errors_list_each_field_and_never_the_value(client: Client) -> None:
    r = client.post("/echo", json={"customer_id": EMAIL, "k": "ten"})
    body = r.json()
    assert r.status_code == 400 and body["fields"] == ["customer_id", "k"]
    assert [d["type"] for d in body["detail"]] == ["string_pattern_mismatch", "int_parsing"]
    assert "customer_id: String should match pattern" in body["message"]
    assert EMAIL not in r.text


def test_invalid_json_is_400_invalid_json(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        r = client.post(
            "/echo",
            content=f'{{"customer_id": "{EMAIL}"'.encode(),
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 400
    assert_error_shape(r.json(), "invalid_json")
    assert EMAIL not in all_log_text(caplog) and EMAIL not in r.text


def test_a_5xx_keeps_its_traceback_and_answers_a_generic_message(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        r = client.post("/echo", json={"customer_id": "boom"})
    assert r.status_code == 500
    assert_error_shape(r.json(), "internal_error")
    assert "an unexpected failure" not in r.text  # the exception's text stays in the server log
    tracebacks = [rec for rec in caplog.records if rec.name == BENTOML_EXCEPTION_LOGGER and rec.exc_info]
    assert len(tracebacks) == 1 and "an unexpected failure" in all_log_text(caplog)
    (line,) = request_errors(caplog)
    assert line["status"] == 500 and line["error"] == "internal_error"


def test_starlettes_http_exception_keeps_its_4xx(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        r = client.post("/echo", json={"customer_id": "multipart"})
    assert r.status_code == 400  # BentoML alone answers 500
    assert_error_shape(r.json(), "bad_request")
    assert "Traceback" not in all_log_text(caplog)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_a_body_that_is_not_json_is_415(client: Client, content_type: str) -> None:
    r = client.post("/echo", content=f"customer_id={EMAIL}".encode(), headers={"content-type": content_type})
    assert r.status_code == 415
    assert_error_shape(r.json(), "unsupported_media_type")


def test_json_with_a_charset_or_no_content_type_is_read(client: Client) -> None:
    body = json.dumps({"customer_id": "known"}).encode()
    for headers in ({"content-type": "application/json; charset=utf-8"}, {}):
        r = client.post("/echo", content=body, headers=headers)
        assert r.status_code == 200, r.text


def test_a_body_over_the_limit_is_413_with_or_without_content_length(client: Client) -> None:
    big = json.dumps({"customer_id": "x" * MAX_BODY}).encode()
    r = client.post("/echo", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert_error_shape(r.json(), "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: the limit is counted as the body arrives
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    r = client.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert_error_shape(r.json(), "payload_too_large")


def test_401_and_unknown_routes_share_the_shape(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        r = client.post("/echo", json={"customer_id": "known"}, headers={API_KEY_HEADER: "wrong"})
        assert r.status_code == 401 and r.json()["message"] == f"invalid {API_KEY_HEADER}"
        assert_error_shape(r.json(), "unauthorized")
        assert "WWW-Authenticate" in r.headers
        r = client.post(f"/{EMAIL}", json={})
        assert r.status_code == 404
        assert_error_shape(r.json(), "not_found")
        r = client.get("/echo")
        assert r.status_code == 405
        assert_error_shape(r.json(), "method_not_allowed")
    lines = request_errors(caplog)
    assert [(e["status"], e["endpoint"]) for e in lines] == [(401, "/echo"), (404, "other"), (405, "/echo")]
    assert EMAIL not in all_log_text(caplog)  # a path the router does not know is the caller's text


def test_successes_and_probes_pass_untouched(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert client.post("/echo", json={"customer_id": "known"}).json() == {"customer_id": "known"}
        assert client.get("/livez", headers={API_KEY_HEADER: ""}).status_code == 200
    assert request_errors(caplog) == []


def test_an_already_shaped_body_is_kept() -> None:
    body = json.dumps({"error": "unauthorized", "message": "missing X-API-Key header", "fields": []}).encode()
    problem = describe(401, None, body)
    assert (problem.status, problem.code, problem.message) == (
        401,
        "unauthorized",
        "missing X-API-Key header",
    )
    assert describe(404, None, b"Not Found").body() == {
        "error": "not_found",
        "message": "Not Found",
        "fields": [],
    }

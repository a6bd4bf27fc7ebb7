"""API-key middleware through a small ASGI app: who gets in, what a refusal looks like, how keys are read."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from serving.auth import API_KEYS_ENV, EXEMPT_PATHS, ApiKeyMiddleware, api_keys_from_env

KEYS = ("key-one", "key-two")


async def ok(_: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


class Client:
    """Requests to a small app behind the middleware, in process (each call its own event loop)."""

    def __init__(self, keys: tuple[str, ...] | None) -> None:
        paths = ["/recommend", "/docs", *EXEMPT_PATHS]
        self.app = Starlette(routes=[Route(p, ok, methods=["GET", "POST"]) for p in paths])
        self.app.add_middleware(ApiKeyMiddleware, keys=keys)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await c.request(method, path, headers=headers)

        return asyncio.run(send())

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("GET", path, headers)

    def post(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("POST", path, headers)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing X-API-Key header"),
        ({"X-API-Key": "wrong"}, "invalid X-API-Key"),
        ({"X-API-Key": ""}, "invalid"),
    ],
)
def test_a_request_without_a_valid_key_gets_401_json(headers: dict[str, str], reason: str) -> None:
    c = Client(KEYS)
    for path in ("/recommend", "/docs"):
        r = c.post(path, headers=headers)
        assert r.status_code == 401
        assert r.json() == {"error": "unauthorized", "message": r.json()["message"], "fields": []}
        assert reason in r.json()["message"]
        assert "X-API-Key" in r.headers["www-authenticate"]


def test_any_listed_key_gets_in_and_probes_need_none() -> None:
    c = Client(KEYS)
    for key in KEYS:
        assert c.post("/recommend", headers={"x-api-key": key}).text == "ok"  # header names: any case
    assert c.post("/recommend", headers={"X-API-Key": "key-one "}).status_code == 401  # exact match
    for path in EXEMPT_PATHS:
        assert c.get(path).status_code == 200, path


def test_without_keys_everything_is_open_and_a_warning_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.auth"):
        c = Client(())
        for _ in range(3):
            assert c.post("/recommend").status_code == 200
    warnings = [r for r in caplog.records if r.name == "serving.auth"]
    assert len(warnings) == 1 and API_KEYS_ENV in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("value", "keys"),
    [(None, ()), ("", ()), ("  ", ()), ("a", ("a",)), (" a , b,,", ("a", "b"))],
)
def test_keys_are_read_from_the_environment(value: str | None, keys: tuple[str, ...]) -> None:
    environ = {} if value is None else {API_KEYS_ENV: value}
    assert api_keys_from_env(environ) == keys


def test_a_key_list_of_separators_only_is_refused() -> None:
    with pytest.raises(ValueError, match="lists no key"):
        api_keys_from_env({API_KEYS_ENV: " , ,"})


def test_the_middleware_reads_the_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEYS_ENV, "from-env")
    c = Client(None)
    assert c.post("/recommend").status_code == 401
    assert c.post("/recommend", headers={"X-API-Key": "from-env"}).status_code == 200

"""API-key check for the HTTP service: ASGI middleware in front of every route but health and metrics.

Keys come from ``O2O_API_KEYS`` (comma-separated; spaces around a key are dropped). When it is set, a request
must carry one of them in the ``X-API-Key`` header, or it gets 401 with the service's JSON error body
(:func:`serving.logs.error_body`: ``{"error": "unauthorized", "message": ..., "fields": []}``); the
probes and Prometheus (:data:`EXEMPT_PATHS`) stay open. When it is unset or empty there is no check (the
demo), and one warning says so when the app starts. Keys are compared in constant time, and neither a
key nor the header's value is ever logged.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping, Sequence

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.logs import error_body

API_KEYS_ENV = "O2O_API_KEYS"
API_KEY_HEADER = "X-API-Key"
EXEMPT_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})  # BentoML's probes, Prometheus
WS_POLICY_VIOLATION = 1008  # websocket close code: refused by policy

log = logging.getLogger(__name__)


def api_keys_from_env(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The keys ``O2O_API_KEYS`` lists; () when it is unset or empty. Raises ValueError when it is set to
    separators only (``","``): a typo must not switch authentication off."""
    raw = environ.get(API_KEYS_ENV, "")
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if raw.strip() and not keys:
        raise ValueError(f"{API_KEYS_ENV} is set but lists no key: give comma-separated keys or unset it")
    return keys


class ApiKeyMiddleware:
    """Answers 401 unless the request's ``X-API-Key`` is one of ``keys`` (default: :func:`api_keys_from_env`).

    Register it on the BentoML service with ``Service.add_asgi_middleware(ApiKeyMiddleware)``; it is built
    when the app starts, so the keys are read then, in the worker process.
    """

    def __init__(self, app: ASGIApp, keys: Sequence[str] | None = None) -> None:
        self.app = app
        self.keys = tuple(k.encode() for k in (api_keys_from_env() if keys is None else keys))
        if not self.keys:
            log.warning("%s is not set: the API accepts requests without a key (demo mode)", API_KEYS_ENV)

    def _refusal(self, scope: Scope) -> str | None:
        """Why the request is refused, or None when it may pass."""
        header = API_KEY_HEADER.lower().encode()
        given = next((v for k, v in scope.get("headers", ()) if k == header), None)
        if given is None:
            return f"missing {API_KEY_HEADER} header"
        ok = False
        for key in self.keys:  # every key is compared: the time does not say which one was close
            ok |= hmac.compare_digest(given, key)
        return None if ok else f"invalid {API_KEY_HEADER}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        checked = scope["type"] in ("http", "websocket") and scope["path"] not in EXEMPT_PATHS
        reason = self._refusal(scope) if self.keys and checked else None
        if reason is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})
        else:
            headers = {"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'}
            body = error_body("unauthorized", reason)
            await JSONResponse(body, status_code=401, headers=headers)(scope, receive, send)

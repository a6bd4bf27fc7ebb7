"""How the HTTP service answers and logs a failed request: one JSON error shape, one log line, no request values.

BentoML answers a failed API call itself: pydantic's ``ValidationError`` becomes 400 ``{"error", "detail"}``,
another ``BentoMLException`` a one-element list ``[{"error": str(exc)}]``, anything else 500; and for each it
logs the traceback (``log_exception``), which for a client error holds the request's values: pydantic's
``input_value=...``, and messages naming customer and item ids. Here:

- :class:`ErrorResponseMiddleware` (ASGI, the service's outermost own middleware) rewrites every error response
  into :class:`Problem`'s body ``{"error": <code>, "message": <text>, "fields": [...]}`` (plus ``detail`` for
  validation errors) and logs one JSON line per error response: endpoint, method, status, code, field paths,
  pydantic error types. Never a message or a value: messages may quote what the caller sent.
- :class:`ClientErrorTracebackFilter`, on the logger of BentoML's ``log_exception``, hands the exception to
  the middleware and drops the record for a client error (4xx). A 5xx keeps BentoML's traceback (frames and
  the exception's message, never the request body).
- The middleware refuses, before BentoML reads anything, a POST whose content type is not JSON (415) and a body
  over :data:`MAX_BODY_BYTES` (413, closing the connection: :mod:`serving.http` drains what the client still
  sends, up to a bound, so that it reads the 413 instead of a reset).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# the largest valid body, /recommend with 1,000 + 1,000 + 200 ids of 64 characters, is ~150 kB
MAX_BODY_BYTES = 1 << 20
BENTOML_EXCEPTION_LOGGER = "bentoml._internal.server.http_app"  # where BentoML's log_exception writes
JSON_MEDIA_TYPE = "application/json"
EXTRA_FIELD = "<extra>"  # stands in the log for an unknown field's name: the name is the caller's text
CODES = {  # error code for a status when no exception says more
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}
INTERNAL_MESSAGE = "unexpected error; the server log has the details"
# :meth:`Problem.body` as an OpenAPI 3.0 schema (the service's OpenAPI document names it for every error status)
ERROR_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "description": "every error response of the service",
    "required": ["error", "message", "fields"],
    "properties": {
        "error": {"type": "string", "description": "short code: match on it, not on the message"},
        "message": {"type": "string", "description": "what is wrong, naming the field"},
        "fields": {
            "type": "array",
            "items": {"type": "string"},
            "description": "the request fields at fault, as dotted paths (events.0.ts)",
        },
        "detail": {
            "type": "array",
            "description": "validation errors only: one entry per problem",
            "items": {
                "type": "object",
                "required": ["field", "type", "message"],
                "properties": {
                    "field": {"type": "string"},
                    "type": {"type": "string"},
                    "message": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}

log = logging.getLogger(__name__)


class ApiError(BentoMLException):
    """A request the service refuses: HTTP status, short code, a message for the caller (it may quote what the
    caller sent; it is never logged) and the request fields at fault, as dotted paths (``events.0.ts``)."""

    def __init__(self, status: HTTPStatus, code: str, message: str, fields: Sequence[str] = ()) -> None:
        super().__init__(message, error_code=status)
        self.code = code
        self.fields = tuple(fields)


@dataclass(frozen=True)
class Problem:
    """An error response: its status and body, and what the log line may say about it."""

    status: int
    code: str
    message: str
    fields: tuple[str, ...] = ()
    detail: list[dict[str, str]] | None = None  # validation errors: one entry per problem
    log_fields: tuple[str, ...] = ()  # ``fields`` without the caller's own text (unknown field names)
    types: tuple[str, ...] = ()  # pydantic error types

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, "message": self.message, "fields": list(self.fields)}
        if self.detail is not None:
            out["detail"] = self.detail
        return out


def error_body(code: str, message: str, fields: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON body of an error response built outside BentoML's handler (the API-key check)."""
    return Problem(0, code, message, tuple(fields)).body()


def status_of(exc: BaseException) -> int:
    """The status BentoML's handler answers ``exc`` with, corrected for Starlette's HTTPException (a malformed
    multipart body), which BentoML would answer with 500."""
    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, BentoMLException):
        return int(exc.error_code)
    if isinstance(exc, HTTPException):
        return exc.status_code
    return 500


def _dotted(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc)


def validation_problem(exc: ValidationError) -> Problem:
    """400 naming each field at fault and what is wrong with it, never the value sent."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    detail, log_fields = [], []
    for e in errors:
        loc = tuple(e["loc"])
        detail.append(
            {"field": _dotted(loc), "type": e["type"], "message": e["msg"].removeprefix("Value error, ")}
        )
        if e["type"] == "extra_forbidden":
            loc = (*loc[:-1], EXTRA_FIELD)
        log_fields.append(_dotted(loc))
    types = tuple(e["type"] for e in errors)
    message = "; ".join(f"{d['field']}: {d['message']}" if d["field"] else d["message"] for d in detail)
    return Problem(
        status=400,
        code="invalid_json" if "json_invalid" in types else "validation_error",
        message=message,
        fields=tuple(dict.fromkeys(d["field"] for d in detail if d["field"])),
        detail=detail,
        log_fields=tuple(dict.fromkeys(f for f in log_fields if f)),
        types=types,
    )


def describe(status: int, exc: BaseException | None, body: bytes) -> Problem:
    """The error response to send instead of ``status``/``body``, from the exception BentoML handled (if any)."""
    if isinstance(exc, ValidationError):
        return validation_problem(exc)
    if isinstance(exc, ApiError):
        return Problem(int(exc.error_code), exc.code, exc.message, exc.fields, log_fields=exc.fields)
    if exc is not None:
        status = status_of(exc)
        if status < 500:
            text = exc.detail if isinstance(exc, HTTPException) else str(exc)
            return Problem(status, CODES.get(status, f"http_{status}"), text)
    if status >= 500:
        return Problem(status, CODES.get(status, f"http_{status}"), INTERNAL_MESSAGE)
    try:
        sent = json.loads(body)
    except ValueError:
        sent = None
    if isinstance(sent, dict) and isinstance(sent.get("error"), str) and isinstance(sent.get("message"), str):
        fields = tuple(str(f) for f in sent.get("fields", ()))
        return Problem(status, sent["error"], sent["message"], fields, log_fields=fields)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    return Problem(status, CODES.get(status, f"http_{status}"), phrase)


@dataclass
class _Seen:
    """The exception BentoML handled for the request in progress, if any."""

    exception: BaseException | None = None


_current: ContextVar[_Seen | None] = ContextVar("o2o_request_exception", default=None)


class ClientErrorTracebackFilter(logging.Filter):
    """On BentoML's ``log_exception`` logger: passes the exception to :class:`ErrorResponseMiddleware` and drops
    the record (traceback and all) when it is a client error; 5xx records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        seen = _current.get()
        if seen is not None:
            seen.exception = exc
        return status_of(exc) >= 500


def install_logging() -> None:
    """Add :class:`ClientErrorTracebackFilter` to BentoML's exception logger (once per process) and let this
    module's INFO lines through (BentoML's server configuration leaves the root logger at WARNING)."""
    logger = logging.getLogger(BENTOML_EXCEPTION_LOGGER)
    if not any(isinstance(f, ClientErrorTracebackFilter) for f in logger.filters):
        logger.addFilter(ClientErrorTracebackFilter())
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One structured line: a JSON object with ``event`` and ``fields``. Callers pass no request values."""
    log.log(level, json.dumps({"event": event, **fields}))


def _media_type(scope: Scope) -> str | None:
    raw = dict(scope.get("headers", ())).get(b"content-type")
    return None if raw is None else raw.decode("latin-1").split(";")[0].strip().lower()


def _content_length(scope: Scope) -> int | None:
    raw = dict(scope.get("headers", ())).get(b"content-length")
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


class ErrorResponseMiddleware:
    """Every error response of the app gets :class:`Problem`'s JSON body and one log line (:func:`log_event`).

    Register it first with ``Service.add_asgi_middleware(ErrorResponseMiddleware, api_paths=...)`` so that it
    also sees the API-key check's 401s. ``api_paths`` are the routes named in the log; any other path is
    logged as ``"other"`` (a path the router does not know is the caller's text). ``exempt_paths`` (the
    probes) pass untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        api_paths: Collection[str],
        exempt_paths: Collection[str] = (),
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.api_paths = frozenset(api_paths)
        self.exempt_paths = frozenset(exempt_paths)
        self.max_body_bytes = max_body_bytes
        install_logging()

    def _early_refusal(self, scope: Scope) -> ApiError | None:
        """415/413 decided from the headers alone, before anything reads the body."""
        if scope["method"] != "POST" or scope["path"] not in self.api_paths:
            return None
        media_type = _media_type(scope)
        if media_type not in (None, JSON_MEDIA_TYPE):
            return ApiError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                f"send a JSON body with content-type: {JSON_MEDIA_TYPE}",
            )
        size = _content_length(scope)
        if size is not None and size > self.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> ApiError:
        return ApiError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "payload_too_large",
            f"the request body is over {self.max_body_bytes} bytes",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        seen = _Seen(exception=self._early_refusal(scope))
        if seen.exception is not None:
            await self._send_problem(scope, send, describe(0, seen.exception, b""), [])
            return
        token = _current.set(seen)
        try:
            await self.app(scope, self._limited(receive), self._rewriting(scope, send, seen))
        finally:
            _current.reset(token)

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that raises 413 once a body without (or with a false) content-length passes the limit."""
        n_bytes = 0

        async def limited() -> Message:
            nonlocal n_bytes
            message = await receive()
            if message["type"] == "http.request":
                n_bytes += len(message.get("body", b""))
                if n_bytes > self.max_body_bytes:
                    raise self._too_large()  # BentoML's handler catches it and logs it here first
            return message

        return limited

    def _rewriting(self, scope: Scope, send: Send, seen: _Seen) -> Send:
        """``send`` that passes successful responses through and replaces an error response once complete."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def rewriting(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                problem = describe(start["status"], seen.exception, b"".join(chunks))
                await self._send_problem(scope, send, problem, start.get("headers", []))

        return rewriting

    async def _send_problem(
        self, scope: Scope, send: Send, problem: Problem, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        body = json.dumps(problem.body()).encode()
        kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
        kept += [(b"content-type", JSON_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
        if problem.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            # the rest of the body is not read: the connection closes once the client has read the answer
            # (serving.http drains what it still sends, up to a bound, instead of resetting it)
            kept = [(k, v) for k, v in kept if k.lower() != b"connection"] + [(b"connection", b"close")]
        await send({"type": "http.response.start", "status": problem.status, "headers": kept})
        await send({"type": "http.response.body", "body": body})
        log_event(
            "request_error",
            logging.ERROR if problem.status >= 500 else logging.INFO,
            endpoint=scope["path"] if scope["path"] in self.api_paths else "other",
            method=scope["method"],
            status=problem.status,
            error=problem.code,
            fields=list(problem.log_fields),
            types=list(problem.types),
        )

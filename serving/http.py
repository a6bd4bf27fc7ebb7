"""Connection limits of the HTTP server, enforced where a request's head is read (below ASGI).

BentoML 1.4 runs each worker's uvicorn with settings of its own and exposes no header size limit, no timeout
for a request head and no connection limit. uvicorn picks its HTTP protocol class by name from its registry
(``uvicorn.config.HTTP_PROTOCOLS``; BentoML asks for ``"auto"``), so :func:`install_limits`, called when the
service module loads, names :class:`LimitedHttpToolsProtocol` there: uvicorn's own httptools protocol with

- a request head over :data:`MAX_HEAD_BYTES` (the request target and every header's name and value, with 4
  bytes of separators each) answered 431 and the connection closed; a head still arriving is cut once its
  raw bytes pass that plus :data:`HEAD_LINE_ALLOWANCE`, so that a 50 MB header is never read in full;
- a head not complete :data:`HEAD_TIMEOUT_S` seconds after the connection opened, or after the first byte of a
  later request on a kept-alive connection, answered 408 and closed (an idle connection is closed silently);
- at most :func:`max_connections` open connections per worker: one more is answered 503 and closed at once
  (without lingering, so that a flood of connections cannot hold more descriptors);
- every close graceful (:class:`LingeringTransport`): the answer written, the sending side shut, and what the
  client still sends read and dropped, at most :data:`DRAIN_BYTES` for at most :data:`LINGER_S` seconds, so that
  a client still sending a refused body (413) or head (431) reads the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import uvicorn.config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.logs import log_event

MAX_HEAD_BYTES = 16 * 1024  # request target + header fields; a real request's head is well under 2 KiB
HEAD_LINE_ALLOWANCE = (
    1024  # raw bytes of an unfinished head beyond MAX_HEAD_BYTES: method, version, line ends
)
HEAD_TIMEOUT_S = 10.0  # for a request head to arrive in full
MAX_CONNECTIONS = 1024  # per worker, and at most the descriptor limit less DESCRIPTOR_RESERVE
DESCRIPTOR_RESERVE = 64  # descriptors kept for files, the history store and logs
DRAIN_BYTES = 8 << 20  # what a client may still send after its answer before the connection is cut
LINGER_S = 5.0  # how long a closing connection waits for the client to stop sending
PROTOCOL_NAME = "serving.http:LimitedHttpToolsProtocol"


def max_connections(limit: int = MAX_CONNECTIONS) -> int:
    """Open connections one worker accepts: ``limit``, or fewer when the process's descriptor limit (soft
    RLIMIT_NOFILE) leaves less than :data:`DESCRIPTOR_RESERVE` descriptors besides them."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(1, min(limit, soft - DESCRIPTOR_RESERVE))


def error_response(status: HTTPStatus, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response with the service's JSON error body that closes the connection."""
    body = json.dumps({"error": code, "message": message, "fields": []}).encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class HeadTooLarge(Exception):
    """Raised in the parser's callback to stop it at a head over :data:`MAX_HEAD_BYTES`."""


class LingeringTransport(asyncio.Transport):
    """The connection's transport as uvicorn sees it. When the client may still be sending (``sending()``:
    a refused head or body), ``close()`` shuts the sending side after what was written, then reads and drops
    what still arrives (:meth:`LimitedHttpToolsProtocol.data_received`) until the client closes,
    :data:`DRAIN_BYTES` have come or :data:`LINGER_S` have passed; otherwise it closes at once."""

    def __init__(
        self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop, sending: Callable[[], bool]
    ) -> None:
        super().__init__()
        self.inner = inner
        self.loop = loop
        self.sending = sending
        self.lingering = False
        self.drain_left = DRAIN_BYTES

    def close(self) -> None:
        if self.lingering or self.inner.is_closing():
            return
        if not self.sending() or not self.inner.can_write_eof():
            self.inner.close()  # an idle connection holds no descriptor longer than it must
            return
        self.lingering = True
        self.inner.write_eof()
        self.inner.resume_reading()  # uvicorn may have paused it (a large body): the client must not stall
        self.loop.call_later(LINGER_S, self.inner.close)

    def drop(self, n_bytes: int) -> None:
        """``n_bytes`` more arrived while lingering: cut the connection once over :data:`DRAIN_BYTES`."""
        self.drain_left -= n_bytes
        if self.drain_left < 0:
            self.inner.close()

    def is_closing(self) -> bool:
        return self.lingering or self.inner.is_closing()

    def abort(self) -> None:
        self.inner.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.lingering:
            self.inner.write(data)

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def write_eof(self) -> None:
        self.inner.write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def pause_reading(self) -> None:
        if not self.lingering:
            self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.inner.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head size limit, a head timeout, a connection limit and graceful
    closes (see the module's docstring)."""

    transport: LingeringTransport

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_open = True  # the next bytes belong to a request head
        self.head_bytes = 0
        self.heads_done = 0  # request heads parsed on this connection
        self.head_size = 0  # of the head being parsed, as MAX_HEAD_BYTES counts it
        self.refused = False  # answered with an error of ours: the client may still be sending
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(LingeringTransport(transport, self.loop, self.client_sending))
        if len(self.connections) > max_connections():
            # closed at once, not lingering: a flood of connections must not hold more descriptors
            answer = error_response(HTTPStatus.SERVICE_UNAVAILABLE, "too_many_connections", "retry later")
            self.transport.write(answer)
            self.transport.inner.close()
            log_event("connection_refused", status=503, error="too_many_connections")
            return
        self.arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:
            self.transport.drop(len(data))
            return
        was_open, heads_before = self.head_open, self.heads_done
        super().data_received(data)
        # only a chunk that is all head counts: one that ended a head (and held a body, perhaps the start of
        # the next head) does not, so the bound stays one chunk wide
        in_one_head = was_open and self.head_open and self.heads_done == heads_before
        if in_one_head and not self.transport.is_closing():
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES + HEAD_LINE_ALLOWANCE:
                self.refuse_head()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a head the parser stopped on: 431 when it was :meth:`on_headers_complete`."""
        if self.head_size > MAX_HEAD_BYTES:
            self.refuse_head()
        else:
            super().send_400_response(msg)

    def refuse_head(self) -> None:
        self.refuse(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            f"the request target and headers are over {MAX_HEAD_BYTES} bytes",
        )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_open, self.head_size = True, 0
        self.arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self.head_size += len(name) + len(value) + 4  # ": " and the line end

    def on_headers_complete(self) -> None:
        self.head_open, self.head_bytes = False, 0
        self.heads_done += 1
        self.cancel_head_timer()
        if (
            self.head_size > MAX_HEAD_BYTES
        ):  # it came in one read: stop the parser, uvicorn calls send_400_response
            raise HeadTooLarge(self.head_size)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.head_open, self.head_bytes = True, 0  # the keep-alive timer covers the wait for the next one

    def client_sending(self) -> bool:
        """Whether the client may still be sending: after a refusal, part of a head, a body not read to its end."""
        if self.refused:
            return True
        if self.head_open:
            return self.head_bytes > 0
        return self.cycle is not None and self.cycle.more_body

    def arm_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self.head_timed_out)

    def cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or not self.head_open:
            return
        if self.head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # nothing of a request arrived: close without an answer
            return
        self.refuse(
            HTTPStatus.REQUEST_TIMEOUT,
            "request_timeout",
            f"the request line and headers did not arrive within {HEAD_TIMEOUT_S:g} s",
        )

    def refuse(self, status: HTTPStatus, code: str, message: str) -> None:
        """Answer ``status`` with the service's error body and close the connection gracefully."""
        self.refused = True
        self.cancel_head_timer()
        self._unset_keepalive_if_required()
        log_event("connection_refused", status=status.value, error=code)
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # else a response is under way: no second one
            self.transport.write(error_response(status, code, message))
        self.transport.close()


def install_limits() -> None:
    """Make :class:`LimitedHttpToolsProtocol` uvicorn's ``"auto"`` and ``"httptools"`` HTTP protocol in this
    process (a BentoML worker imports the service before it builds uvicorn's configuration)."""
    for name in ("auto", "httptools"):
        uvicorn.config.HTTP_PROTOCOLS[name] = PROTOCOL_NAME

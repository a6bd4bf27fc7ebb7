"""serving.http's protocol under a plain uvicorn in this process (fast; test_http_limits.py checks the same
limits through a real ``bentoml serve``): limits at their edges, with small settings patched in."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
import uvicorn.config
from starlette.types import Receive, Scope, Send

from serving import http
from serving.http import LimitedHttpToolsProtocol, install_limits, max_connections
from tests.conftest import free_port


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """200 with the body's length, after reading all of it."""
    if scope["type"] != "http":
        return
    n, more = 0, True
    while more:
        message = await receive()
        n += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(n).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(http, "HEAD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(http, "LINGER_S", 0.5)
    free = free_port()
    config = uvicorn.Config(
        echo_length,
        host="127.0.0.1",
        port=free,
        http=LimitedHttpToolsProtocol,
        log_level="error",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield free
    server.should_exit = True
    thread.join(10)


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        s.settimeout(10)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def exchange_in_pieces(port: int, data: bytes, piece: int = 1000) -> bytes:
    """As :func:`exchange`, sent in small pieces with pauses (a head spread over many reads)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        for i in range(0, len(data), piece):
            s.sendall(data[i : i + piece])
            time.sleep(0.002)
        s.settimeout(10)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def request(head_extra: str = "", body: bytes = b"") -> bytes:
    return (
        f"POST /x HTTP/1.1\r\nhost: t\r\n{head_extra}content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def head_size(raw: bytes) -> int:
    """A head's size as MAX_HEAD_BYTES counts it: the request target, and each header line's name and value
    with 4 bytes of separators (``name: value`` + CRLF is the line's length + 2)."""
    request_line, *lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    return len(request_line.split(b" ")[1]) + sum(len(line) + 2 for line in lines)


@pytest.mark.parametrize("in_pieces", [False, True])
def test_a_head_at_the_limit_is_served_one_byte_over_is_431(port: int, in_pieces: bool) -> None:
    n_filler = http.MAX_HEAD_BYTES - head_size(request("x-f: \r\n", b"abc"))
    at_limit = request(f"x-f: {'a' * n_filler}\r\n", b"abc")
    over = request(f"x-f: {'a' * (n_filler + 1)}\r\n", b"abc")
    assert head_size(at_limit) == http.MAX_HEAD_BYTES == head_size(over) - 1
    send = exchange_in_pieces if in_pieces else exchange
    assert send(port, at_limit).startswith(b"HTTP/1.1 200 ")
    answer = send(port, over)
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"error": "headers_too_large"' in answer


def test_a_body_larger_than_the_head_limit_is_no_head(port: int) -> None:
    body = b"b" * (4 * http.MAX_HEAD_BYTES)  # arrives with the head in one read: only the head counts
    assert exchange(port, request("", body)).endswith(str(len(body)).encode())


def test_keep_alive_requests_each_get_the_whole_head_limit(port: int) -> None:
    filler = "x-f: " + "a" * (http.MAX_HEAD_BYTES // 2) + "\r\n"
    one = f"POST /x HTTP/1.1\r\nhost: t\r\n{filler}content-length: 0\r\n\r\n".encode()
    answer = exchange(port, one * 3 + request())
    assert answer.count(b"HTTP/1.1 200 ") == 4


def test_an_idle_connection_is_closed_and_a_slow_head_gets_408(port: int) -> None:
    assert exchange(port, b"") == b""
    answer = exchange(port, b"POST /x HTTP/1.1\r\nhost: t\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_connections_over_the_limit_get_503_at_once(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "max_connections", lambda limit=http.MAX_CONNECTIONS: 2)
    with socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port)):
        answer = exchange(port, b"")  # refused on arrival (a client that already sent may see a reset)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in answer
    assert exchange(port, request()).startswith(b"HTTP/1.1 200 ")  # the others gone, served again


def test_the_connection_limit_leaves_descriptors_in_reserve() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = http.MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else soft - http.DESCRIPTOR_RESERVE
    assert max_connections() == max(1, min(http.MAX_CONNECTIONS, expected))


def test_installing_the_limits_names_the_protocol_for_uvicorns_auto_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(uvicorn.config, "HTTP_PROTOCOLS", dict(uvicorn.config.HTTP_PROTOCOLS))
    install_limits()
    config = uvicorn.Config(echo_length)
    config.load()
    assert config.http_protocol_class is LimitedHttpToolsProtocol

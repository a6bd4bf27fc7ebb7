"""The HTTP limits the service owns, against a real ``bentoml serve`` with hostile clients on raw sockets:
a fixed metrics label set, a head size limit (431), a head timeout (408 / close), a connection limit under a
small descriptor limit, a 413 the client reads, and metrics that survive another server starting."""

from __future__ import annotations

import json
import re
import resource
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from experiments.bench_serving import start_server
from experiments.cli import REPO_ROOT, serve_command
from serving.auth import API_KEY_HEADER, API_KEYS_ENV
from serving.http import DESCRIPTOR_RESERVE, MAX_HEAD_BYTES
from serving.lifecycle import stop_server
from serving.logs import MAX_BODY_BYTES
from tests.conftest import Pipeline, free_port

pytestmark = pytest.mark.slow

KEY = "limits-key"
EMAIL = "jane.doe@example.com"
STARTUP_S = 180  # a busy 2-core machine; the assertions are about behaviour, never about time
ANSWER_S = 60.0  # how long a raw-socket client waits for an answer before calling it a hang
# run a command with a small descriptor limit (soft and hard): `python -c LIMITED N cmd...`
LIMITED = (
    "import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
)
LIMITED += "os.execv(sys.argv[2], sys.argv[2:])"


@dataclass(frozen=True)
class Server:
    port: int
    proc: subprocess.Popen[bytes]
    pid: int
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", headers={API_KEY_HEADER: KEY}, timeout=ANSWER_S
        )

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True)


@contextmanager
def serve(
    pipeline: Pipeline, name: str, env: dict[str, str] | None = None, nofile: int | None = None
) -> Iterator[Server]:
    """A real ``bentoml serve`` of the tiny pipeline's bundle with API keys required; stopped with every worker."""
    port = free_port()
    cmd, server_env = serve_command(
        pipeline.bundle, pipeline.features / S.SNAPSHOT_FILE, "127.0.0.1", port, 1
    )
    server_env.update({API_KEYS_ENV: KEY, **(env or {})})
    if nofile is not None:
        cmd = [sys.executable, "-c", LIMITED, str(nofile), *cmd]
    log = pipeline.data.parent / f"{name}.log"
    try:
        proc = start_server(cmd, server_env, port, log, REPO_ROOT, timeout=STARTUP_S)
    except RuntimeError as e:
        pytest.fail(f"bentoml serve: {e}")
    try:
        yield Server(port, proc, proc.pid, log)
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def server(tiny_pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("bentoml-home")
    with serve(tiny_pipeline, "limits", {"BENTOML_HOME": str(home)}) as running:
        yield running


def series(metrics_text: str) -> set[str]:
    """Every sample's name and labels on /metrics (its value left out)."""
    return {line.rsplit(" ", 1)[0] for line in metrics_text.splitlines() if line and not line.startswith("#")}


def raw_request(port: int, head: str, body: bytes = b"") -> bytes:
    """Send one request on a fresh connection and return what the server answers (b"" when it only closes)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head.encode("latin-1") + body)
        return read_answer(s)


def read_answer(s: socket.socket) -> bytes:
    """What the server sends until it closes (or stops sending for :data:`ANSWER_S`)."""
    s.settimeout(ANSWER_S)
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def status_of(answer: bytes) -> int | None:
    found = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(found.group(1)) if found else None


# --- finding 6: /metrics labels ------------------------------------------------------------------------


def test_metrics_keep_a_fixed_label_set_whatever_paths_callers_make_up(server: Server) -> None:
    with server.client() as client:
        assert client.post("/recommend", json={"customer_id": "nobody"}).status_code == 404
        assert client.get(f"/{EMAIL}").status_code == 404
        assert client.get(f"/{EMAIL}", headers={API_KEY_HEADER: ""}).status_code == 401
        before = client.get("/metrics").text
        for i in range(200):  # unauthenticated and unknown paths, each one new
            path = f"/u/{uuid.uuid4().hex}/{i}.{EMAIL}"
            assert client.get(path, headers={API_KEY_HEADER: ""}).status_code == 401
            assert client.post(path, json={}).status_code == 404
        after = client.get("/metrics").text
    assert series(after) == series(before)  # counts moved, no series was added
    assert EMAIL not in after and "/u/" not in after
    assert 'endpoint="other",status="401"' in after and 'endpoint="/recommend",status="404"' in after
    log = server.log.read_text()  # the access lines name the route label, never the path
    assert (
        EMAIL not in log and '"event": "request", "endpoint": "other", "method": "GET", "status": 401' in log
    )


# --- finding 7: request heads ---------------------------------------------------------------------------


def send_huge_head(port: int, header_bytes: int) -> tuple[int | None, int]:
    """A request whose one header is ``header_bytes`` long, sent in 64 KiB pieces while watching for an early
    answer (as curl does); the answer's status and how much was sent before it came."""
    piece = b"a" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET /livez HTTP/1.1\r\nhost: t\r\n{API_KEY_HEADER}: {KEY}\r\nx-big: ".encode())
        try:
            while sent < header_bytes and not select.select([s], [], [], 0)[0]:
                s.sendall(piece)
                sent += len(piece)
            if sent >= header_bytes:
                s.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        return status_of(read_answer(s)), sent


def test_a_head_over_the_limit_is_431_and_is_not_read_in_full(server: Server) -> None:
    status, sent = send_huge_head(server.port, 8 << 20)
    assert status == 431
    assert sent < 8 << 20  # answered while the client was still sending
    with server.client() as client:  # the server is fine
        assert client.get("/livez").status_code == 200


def test_many_huge_heads_at_once_leave_the_workers_memory_alone(server: Server) -> None:
    (worker,) = server.workers()
    rss_before = worker.memory_info().rss
    n_clients, size = 8, 32 << 20
    with ThreadPoolExecutor(n_clients) as pool:
        answers = list(pool.map(lambda _: send_huge_head(server.port, size), range(n_clients)))
    assert [status for status, _ in answers] == [431] * n_clients
    assert worker.memory_info().rss - rss_before < 32 << 20  # at baseline: all 256 MiB were buffered
    with server.client() as client:
        assert client.get("/livez").status_code == 200


def test_a_just_small_enough_head_is_served(server: Server) -> None:
    filler = "a" * (MAX_HEAD_BYTES - 1024)
    with server.client() as client:
        assert client.get("/livez", headers={"x-filler": filler}).status_code == 200


def test_a_body_far_larger_than_the_head_limit_is_served(server: Server, tiny_pipeline: Pipeline) -> None:
    snapshot = pq.read_table(tiny_pipeline.features / S.SNAPSHOT_FILE, columns=[S.CUSTOMER_ID])
    customer = snapshot.column(S.CUSTOMER_ID)[0].as_py()
    exclude = [f"no-such-item-{i:04d}-{'x' * 40}" for i in range(1000)]  # arrives with the head in one read
    body = {"customer_id": customer, "k": 5, "exclude_items": exclude}
    assert len(json.dumps(body)) > 3 * MAX_HEAD_BYTES
    with server.client() as client:
        r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text


def test_idle_and_slow_heads_are_closed_after_the_head_timeout(server: Server) -> None:
    with ExitStack() as stack:
        idle = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
        slow = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
        slow.sendall(b"GET /livez HTTP/1.1\r\nhost: t\r\n")  # and nothing more
        with ThreadPoolExecutor(2) as pool:
            idle_answer, slow_answer = pool.map(read_answer, (idle, slow))
    assert idle_answer == b""  # closed without a word: nothing of a request came
    assert status_of(slow_answer) == 408
    assert json.loads(slow_answer.split(b"\r\n\r\n", 1)[1])["error"] == "request_timeout"


def test_idle_sockets_beyond_the_descriptor_limit_do_not_lock_clients_out(tiny_pipeline: Pipeline) -> None:
    nofile = 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * nofile:  # this process holds the idle sockets
        if hard != resource.RLIM_INFINITY and hard < 4 * nofile:
            pytest.skip(f"this process may open {hard} descriptors, the test needs {4 * nofile}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (4 * nofile, hard))
    with serve(tiny_pipeline, "limits-nofile", nofile=nofile) as server, ExitStack() as stack:
        idle = [
            stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
            for _ in range(nofile + 44)
        ]
        with server.client() as client:  # answered at once (503: at the limit), never left hanging
            assert client.get("/livez").status_code in (200, 503)
        cap = nofile - DESCRIPTOR_RESERVE
        answers = [status_of(a) for a in ThreadPoolExecutor(32).map(read_answer, idle)]
        assert answers.count(503) >= len(idle) - cap  # refused at once
        assert set(answers) <= {None, 503}  # the rest closed by the head timeout
        with server.client() as client:
            assert eventually_ok(client, "/livez")


def eventually_ok(client: httpx.Client, path: str) -> bool:
    """Whether ``path`` answers 200 within :data:`ANSWER_S` (the server frees closed connections as it goes)."""
    deadline = time.monotonic() + ANSWER_S
    while time.monotonic() < deadline:
        if client.get(path).status_code == 200:
            return True
        time.sleep(0.5)
    return False


# --- finding 8: the 413 reaches the client --------------------------------------------------------------


def test_an_over_limit_body_gets_a_413_the_client_reads_every_time(server: Server) -> None:
    size = 7 << 20  # over MAX_BODY_BYTES and over what the kernel's socket buffers hold
    assert size > MAX_BODY_BYTES
    head = (
        f"POST /recommend HTTP/1.1\r\nhost: t\r\n{API_KEY_HEADER}: {KEY}\r\ncontent-type: application/json\r\n"
        f"content-length: {size}\r\nconnection: close\r\n\r\n"
    )
    body = b" " * size
    outcomes = []
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            try:  # a client sends its whole request, then reads the answer
                s.sendall(head.encode() + body)
            except (BrokenPipeError, ConnectionResetError) as e:  # at baseline: the server cut the connection
                outcomes.append(type(e).__name__)
                continue
            outcomes.append(str(status_of(read_answer(s))))
    assert outcomes == ["413"] * 50


# --- finding 11: another server under the same BENTOML_HOME ---------------------------------------------


def batch_count(metrics_text: str) -> float:
    found = re.search(r'^o2o_batch_size_count\{endpoint="/recommend"\} (\S+)$', metrics_text, re.M)
    return float(found.group(1)) if found else 0.0


def test_starting_another_server_under_the_same_home_keeps_this_ones_metrics(
    server: Server, tiny_pipeline: Pipeline
) -> None:
    snapshot = pq.read_table(tiny_pipeline.features / S.SNAPSHOT_FILE, columns=[S.CUSTOMER_ID])
    customer = snapshot.column(S.CUSTOMER_ID)[0].as_py()
    with server.client() as client:
        for _ in range(3):
            assert client.post("/recommend", json={"customer_id": customer}).status_code == 200
        before = batch_count(client.get("/metrics").text)
        home = psutil.Process(server.pid).environ()["BENTOML_HOME"]
        with serve(tiny_pipeline, "limits-second", {"BENTOML_HOME": home}):
            after = batch_count(client.get("/metrics").text)
    assert before >= 1 and after >= before

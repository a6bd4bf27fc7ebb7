"""How a server starts and stops, with real processes: a worker that cannot load stops plain ``bentoml serve``
with a non-zero exit and one line; ``o2o serve`` refuses a bad bundle or snapshot before it starts anything;
SIGTERM to ``o2o serve`` stops every process of the server and frees the port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from experiments.bench_serving import start_server
from experiments.cli import REPO_ROOT, serve_command
from serving.lifecycle import EXIT_STARTUP_FAILED, stop_server
from tests.conftest import Pipeline, free_port

pytestmark = pytest.mark.slow

EXIT_S = 240  # a generous bound on a busy machine: what is asserted is that the process exits at all
STARTUP_S = 180
ONE_LINE = "error: the service cannot start:"


def tampered_bundle(pipeline: Pipeline, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the bundle with one byte of a model graph changed; its snapshot unchanged."""
    bundle = Path(shutil.copytree(pipeline.bundle, tmp_path / "bundle"))
    graph = next(p for p in sorted(bundle.rglob("*")) if p.is_file() and p.suffix == ".onnx")
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    return bundle, pipeline.features / S.SNAPSHOT_FILE


def snapshot_without_items(pipeline: Pipeline, tmp_path: Path) -> tuple[Path, Path]:
    """The bundle unchanged; a snapshot missing the column of item histories."""
    features = tmp_path / "features"
    features.mkdir()
    table = pq.read_table(pipeline.features / S.SNAPSHOT_FILE)
    pq.write_table(table.drop_columns([S.ITEMS]), features / S.SNAPSHOT_FILE)
    return pipeline.bundle, features / S.SNAPSHOT_FILE


BROKEN_INPUTS: dict[str, Callable[[Pipeline, Path], tuple[Path, Path]]] = {
    "tampered_bundle": tampered_bundle,
    "snapshot_without_items": snapshot_without_items,
}


def wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> int | None:
    """``proc``'s exit status, or None when it still runs after ``seconds`` (it and its children then killed)."""
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        stop_server(proc, grace_s=5)
        return None


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize("broken", sorted(BROKEN_INPUTS))
def test_a_worker_that_cannot_load_stops_plain_bentoml_serve(
    broken: str, tiny_pipeline: Pipeline, tmp_path: Path
) -> None:
    bundle, snapshot = BROKEN_INPUTS[broken](tiny_pipeline, tmp_path)
    port = free_port()
    cmd, env = serve_command(
        bundle, snapshot, "127.0.0.1", port, 1
    )  # `bentoml serve` itself: no checks first
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
        code = wait_exit(proc, EXIT_S)
    text = log.read_text()
    assert code == EXIT_STARTUP_FAILED, f"exit status {code}; log:\n{text}"
    assert text.count(ONE_LINE) == 1 and "Traceback" not in text, text
    assert port_is_free(port)  # no worker left holding the socket


@pytest.mark.parametrize("broken", sorted(BROKEN_INPUTS))
def test_o2o_serve_checks_the_bundle_and_snapshot_before_starting(
    broken: str, tiny_pipeline: Pipeline, tmp_path: Path
) -> None:
    bundle, snapshot = BROKEN_INPUTS[broken](tiny_pipeline, tmp_path)
    cmd = [sys.executable, "-m", "experiments.cli", "serve", "--artifact", str(bundle)]
    cmd += ["--features", str(snapshot.parent), "--port", str(free_port())]
    env = {**os.environ, "COLUMNS": "1000"}  # the line unwrapped
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    code = wait_exit(proc, EXIT_S)
    assert proc.stdout is not None
    lines = proc.stdout.read().decode().strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error:"), lines


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_o2o_serve_stops_every_process_of_the_server(
    signum: signal.Signals, tiny_pipeline: Pipeline, tmp_path: Path
) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "experiments.cli", "serve", "--artifact", str(tiny_pipeline.bundle)]
    cmd += ["--features", str(tiny_pipeline.features), "--port", str(port), "--threads", "1"]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    proc = start_server(cmd, env, port, tmp_path / "o2o-serve.log", REPO_ROOT, timeout=STARTUP_S)
    server = psutil.Process(proc.pid).children(recursive=True)  # bentoml serve and its worker
    assert len(server) >= 2, [p.cmdline() for p in server]
    alive = server
    try:
        proc.send_signal(signum)
        code = wait_exit(proc, EXIT_S)
        _, alive = psutil.wait_procs(server, timeout=60)
    finally:
        for p in alive:
            with suppress(psutil.NoSuchProcess):
                p.kill()
    assert code == 0
    assert alive == []
    assert port_is_free(port)

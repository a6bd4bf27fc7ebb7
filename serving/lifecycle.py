"""How a server starts and stops: a worker that cannot load stops its server, which exits non-zero; ``o2o serve``
checks its inputs first and stops every process of the server on SIGTERM/SIGINT.

``bentoml serve`` is a supervisor (circus) that starts the workers and respawns any that exits, every few
seconds and for ever: a worker that could never load (a tampered bundle, a snapshot missing a column) left a
server that never answered ``/readyz`` and never exited. Now such a worker prints one line
(:func:`report_startup_failure`), leaves a mark in its server's folder, asks the supervisor to stop (SIGTERM:
it stops every worker) and exits; the supervisor, which imported the service too, then exits with
:data:`EXIT_STARTUP_FAILED` (:func:`exit_failed_at_startup`).

The supervisor puts each worker in a session of its own, so a signal to ``o2o serve``'s process group misses
them: :func:`run_server` forwards SIGTERM/SIGINT to the supervisor and kills whatever of the server is still
running after :data:`STOP_GRACE_S` seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import psutil

from serving.artifact import load_bundle
from serving.history import read_snapshot
from serving.metrics import INSTANCE_PREFIX, instance_folder

EXIT_STARTUP_FAILED = 3
FAILED_MARK = "startup_failed"  # in the server's folder: a worker could not load
WORKER_MODULE = "_bentoml_impl.worker.service"  # what `bentoml serve` runs for each worker (bentoml < 1.5)
STOP_GRACE_S = 8.0  # after SIGTERM, before what is left of the server is killed
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def check_inputs(bundle: Path, snapshot: Path) -> None:
    """What a worker loads, checked before a server starts: the bundle loads (checksums, spec, graphs) and the
    snapshot reads and has the columns the service needs. Raises what loading would (ValueError,
    RuntimeError, OSError) with the same message."""
    load_bundle(bundle, threads=1)
    next(read_snapshot(snapshot), None)


def in_bentoml_worker() -> bool:
    """Whether this process is a worker that ``bentoml serve`` started (its parent is the supervisor)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == WORKER_MODULE


def report_startup_failure(error: BaseException, environ: Mapping[str, str] = os.environ) -> None:
    """In a worker whose service could not load: one line on stderr naming ``error``, the mark in the server's
    folder, SIGTERM to the supervisor, and exit :data:`EXIT_STARTUP_FAILED` (no traceback: the line says it).
    Elsewhere (a test building the service in process) it returns and the caller raises as before."""
    if not in_bentoml_worker():
        return
    supervisor = os.getppid()
    print(f"error: the service cannot start: {error}", file=sys.stderr, flush=True)
    folder = instance_folder(supervisor, environ)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FAILED_MARK).write_text(f"{type(error).__name__}\n")
    os.kill(supervisor, signal.SIGTERM)
    os._exit(EXIT_STARTUP_FAILED)


def exit_failed_at_startup() -> None:
    """At a supervisor's exit: remove its folder (one ``o2o serve`` did not make) and, when a worker left the
    mark, exit :data:`EXIT_STARTUP_FAILED` instead of 0 (BentoML's command returns normally once its
    supervisor has stopped)."""
    try:
        folder = instance_folder(os.getpid())
    except psutil.Error:
        return
    failed = (folder / FAILED_MARK).exists()
    if folder.name.startswith(INSTANCE_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)
    else:
        (folder / FAILED_MARK).unlink(missing_ok=True)
    if failed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_STARTUP_FAILED)


def watch_for_failed_workers() -> None:
    """In the process that imports the service to start a server (not in a worker): register
    :func:`exit_failed_at_startup` to run at its exit."""
    if not in_bentoml_worker():
        atexit.register(exit_failed_at_startup)


def server_processes(root: psutil.Process) -> list[psutil.Process]:
    """``root`` and everything it started that still runs (workers are in sessions of their own, but they
    are still its children)."""
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_server(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM to ``proc`` (the supervisor stops its workers), then SIGKILL to every process of the server
    still running after ``grace_s`` seconds; ``proc``'s exit status."""
    processes = server_processes(psutil.Process(proc.pid))
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return proc.wait()


class _Stop(Exception):
    """A forwarded signal arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run_server(cmd: Sequence[str], env: Mapping[str, str], cwd: Path, grace_s: float = STOP_GRACE_S) -> int:
    """Run the server command in a session of its own until it exits, or until this process gets SIGTERM,
    SIGINT or SIGHUP: then the whole server is stopped (:func:`stop_server`). Returns its exit status."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:  # a second Ctrl-C waits for the first stop, which is bounded
            stopping = True
            raise _Stop(signum)

    previous = {s: signal.signal(s, on_signal) for s in FORWARDED_SIGNALS}
    try:
        try:
            proc = subprocess.Popen(list(cmd), env=dict(env), cwd=cwd, start_new_session=True)
        except _Stop as stop:
            return 128 + stop.signum
        try:
            return proc.wait()
        except _Stop:
            return stop_server(proc, grace_s)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

"""The service's request metrics on ``/metrics``: a fixed label set, in a Prometheus folder of this server's own.

BentoML's request metrics label each request by its raw path, so every made-up path, refused ones included,
added series for good (and a path may hold what a caller typed: an email); its access log line wrote the raw
path too. The service turns both off (``metrics={"enabled": False}``, ``logging.access.enabled: False``) and
:class:`RequestMetricsMiddleware` counts requests instead, labelled by :func:`endpoint_label` (a known route,
or ``"other"``) and the status code, writes one access line per request under the same label, and answers
``GET /metrics``.

Workers of one server share Prometheus' multiprocess folder (``PROMETHEUS_MULTIPROC_DIR``). BentoML puts it
at ``$BENTOML_HOME/prometheus_multiproc_dir`` and empties it whenever any server starts under that home, which
wiped the metrics of a server already running. :func:`use_instance_folder` moves a worker's metrics to a
folder of its server's own (:func:`instance_folder`) before any is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from timeit import default_timer

import anyio.to_thread
import psutil
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.logs import log_event

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by `bentoml serve` for its workers
INSTANCE_DIR_ENV = "O2O_INSTANCE_DIR"  # set by `o2o serve`: the server's own folder (removed when it stops)
INSTANCE_PREFIX = (
    "o2o-bentoml-"  # <tmp>/o2o-bentoml-<server pid>-<its start time> for a plain `bentoml serve`
)
METRICS_PATH = "/metrics"
OTHER = "other"  # the label of every path that is not a known route
PROBES = ("/livez", "/healthz", "/readyz", "/docs.json", "/")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # any other: "other"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "o2o_http_requests",
    "HTTP requests answered, by route ('other': any path that is not one) and status code",
    ["endpoint", "status"],
)
DURATION = Histogram(
    "o2o_http_request_duration_seconds",
    "time from a request's arrival to the end of its response, by route and status code",
    ["endpoint", "status"],
    buckets=DURATION_BUCKETS,
)
IN_PROGRESS = Gauge(
    "o2o_http_requests_in_progress",
    "requests being answered now, by route",
    ["endpoint"],
    multiprocess_mode="livesum",
)


def instance_folder(server_pid: int, environ: Mapping[str, str] = os.environ) -> Path:
    """The folder of the server whose supervisor is ``server_pid``: ``O2O_INSTANCE_DIR`` when set, else
    ``<tmp>/o2o-bentoml-<pid>-<start time>`` (a reused pid does not inherit an old server's files)."""
    if explicit := environ.get(INSTANCE_DIR_ENV):
        return Path(explicit)
    started = int(psutil.Process(server_pid).create_time() * 1000)
    return Path(tempfile.gettempdir()) / f"{INSTANCE_PREFIX}{server_pid}-{started}"


def remove_stale_folders(root: Path | None = None) -> None:
    """Delete the ``o2o-bentoml-*`` folders of servers that are no longer running."""
    for folder in Path(root or tempfile.gettempdir()).glob(f"{INSTANCE_PREFIX}*"):
        pid, _, started = folder.name.removeprefix(INSTANCE_PREFIX).partition("-")
        try:
            alive = int(psutil.Process(int(pid)).create_time() * 1000) == int(started)
        except (ValueError, psutil.Error):
            alive = False
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)


def use_instance_folder(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path | None:
    """In a `bentoml serve` worker (``PROMETHEUS_MULTIPROC_DIR`` set), point Prometheus at this server's own
    folder and return it; None elsewhere (one process: the default registry)."""
    if not environ.get(MULTIPROC_ENV):
        return None
    if not environ.get(INSTANCE_DIR_ENV):
        remove_stale_folders()
    folder = instance_folder(os.getppid(), environ) / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    environ[MULTIPROC_ENV] = str(folder)
    return folder


def endpoint_label(path: str, routes: Collection[str]) -> str:
    """``path`` when it is one of ``routes`` or a probe, else :data:`OTHER`: the label set is fixed."""
    return path if path in routes or path in PROBES else OTHER


def exposition() -> bytes:
    """Every worker's metrics in Prometheus' text format (only this process's outside multiprocess mode)."""
    if not os.environ.get(MULTIPROC_ENV):
        return generate_latest(DEFAULT_REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)


class RequestMetricsMiddleware:
    """Counts and times every HTTP request under :func:`endpoint_label`, logs one access line for it (route
    label, method, status, milliseconds; no path, address or value) and answers ``GET /metrics``.

    Register it first (outermost of the service's middlewares) so that refused requests are counted too.
    """

    def __init__(self, app: ASGIApp, routes: Collection[str]) -> None:
        self.app = app
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == METRICS_PATH:
            await self.metrics(scope, send)
            return
        endpoint = endpoint_label(scope["path"], self.routes)
        started, status = default_timer(), 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with IN_PROGRESS.labels(endpoint=endpoint).track_inprogress():
            try:
                await self.app(scope, receive, counted)
            finally:
                seconds = default_timer() - started
                REQUESTS.labels(endpoint=endpoint, status=str(status)).inc()
                DURATION.labels(endpoint=endpoint, status=str(status)).observe(seconds)
                method = scope["method"] if scope["method"] in METHODS else OTHER
                log_event(
                    "request", endpoint=endpoint, method=method, status=status, ms=round(seconds * 1e3, 2)
                )

    async def metrics(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            body, status = b"method not allowed", 405
        else:
            body, status = await anyio.to_thread.run_sync(exposition), 200
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})

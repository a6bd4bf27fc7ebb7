"""Serving benchmarks: batch scoring throughput, ONNX Runtime against torch eager on the same model, and a
bounded HTTP load test of a running ``bentoml serve`` (``o2o bench score``, ``o2o bench serve``).

They print their figures and write JSON; they are never part of the test suite (docs/benchmarks.md holds the
latest figures with the machine and the command).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from data_prep import schema as S
from serving.artifact import Bundle, OnnxModel, load_bundle
from serving.batch import score_snapshot
from serving.scoring import feature_matrix
from training.export import rebuild


def replicated_snapshot(snapshot: Path, n: int, out: Path) -> Path:
    """``n`` customers made by repeating the snapshot's rows under new ids (``<id>-r<k>``): the same mix of
    history lengths and aggregates, at the size to measure."""
    table = pq.read_table(snapshot)
    reps = -(-n // table.num_rows)
    copies = []
    for r in range(reps):
        ids = pc.binary_join_element_wise(table.column(S.CUSTOMER_ID), pa.scalar(f"r{r}"), "-")
        copies.append(table.set_column(table.schema.get_field_index(S.CUSTOMER_ID), S.CUSTOMER_ID, ids))
    pq.write_table(pa.concat_tables(copies).slice(0, n), out)
    return out


def scoring_throughput(bundle: Bundle, snapshot: Path, chunk_size: int) -> dict[str, Any]:
    """Every customer of ``snapshot`` scored (consent gate off: all of them), timed end to end."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        score_snapshot(bundle, snapshot, Path(tmp), chunk_size=chunk_size, campaign=False)
        seconds = time.perf_counter() - t0
    n = pq.read_metadata(snapshot).num_rows
    return {"customers": n, "seconds": round(seconds, 2), "customers_per_second": round(n / seconds)}


def _feeds(model: OnnxModel, table: pa.Table) -> dict[str, np.ndarray]:
    """The graph inputs for the customers of ``table``, as the scorer builds them."""
    side = [table.column(c) if c in table.column_names else None for c in (S.CHANNELS_COL, S.TIMESTAMPS_COL)]
    item_idx, feeds = model.sequence_feeds(table.column(S.ITEMS), table.column(S.EVENT_TYPES_COL), *side)
    if model.task == "recommender":
        feeds["exclude_seen"] = np.full(len(item_idx), float(model.config["exclude_seen"]), dtype=np.float32)
        feeds["allowed"] = np.ones(int(model.config["model_config"]["n_items"]) + 1, dtype=np.float32)
    else:
        names = model.config["feature_names"]
        feeds["features"] = feature_matrix(
            model, {n: table.column(n).to_numpy(zero_copy_only=False) for n in names}
        )
    return feeds


def _per_call(fn: Callable[[], object], min_seconds: float = 2.0) -> float:
    """Median seconds of one call of ``fn`` over repeats filling ``min_seconds`` (after one warm-up)."""
    fn()
    times: list[float] = []
    t_end = time.perf_counter() + min_seconds
    while time.perf_counter() < t_end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ort_vs_torch(
    model: OnnxModel, run_dir: Path, table: pa.Table, batch: int, threads: int
) -> dict[str, Any]:
    """The exported graph in ONNX Runtime against the same network in torch eager (the run's best
    checkpoint, eval mode, no_grad), same inputs, same thread count: a batch of ``batch`` customers and
    one customer at a time."""
    torch.set_num_threads(threads)
    exported = rebuild(run_dir)
    names = list(model.config["inputs"])
    out: dict[str, Any] = {"task": model.task, "threads": threads}
    for label, rows in (("batched", batch), ("single", 1)):
        feeds = _feeds(model, table.slice(0, rows))
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names]

        def run_ort(feeds: dict[str, np.ndarray] = feeds) -> object:
            return model.session.run(None, feeds)

        def run_torch(args: list[torch.Tensor] = args) -> object:
            with torch.no_grad():
                return exported.module(*args)

        t_ort, t_torch = _per_call(run_ort), _per_call(run_torch)
        out[label] = {
            "batch": rows,
            "ort_ms": round(t_ort * 1e3, 3),
            "torch_ms": round(t_torch * 1e3, 3),
            "speedup": round(t_torch / t_ort, 2),
            "ort_customers_per_second": round(rows / t_ort),
        }
    return out


def bench_scoring(
    artifact: Path,
    runs: list[Path],
    snapshot: Path,
    customers: int,
    chunk_size: int,
    batch: int,
    threads: int,
) -> dict[str, Any]:
    bundle = load_bundle(artifact, threads)
    with tempfile.TemporaryDirectory() as tmp:
        big = replicated_snapshot(snapshot, customers, Path(tmp) / "snapshot.parquet")
        result: dict[str, Any] = {"throughput": scoring_throughput(bundle, big, chunk_size)}
        table = pq.read_table(big).slice(0, batch)
    result["ort_vs_torch"] = []
    for run in runs:
        task = __import__("json").loads((run / "model.json").read_text())["task"]
        model = bundle.recommender if task == "recommender" else bundle.intent
        if model is not None:
            result["ort_vs_torch"].append(ort_vs_torch(model, run, table, batch, threads))
    result.update(threads=threads, chunk_size=chunk_size, bundle=str(artifact))
    return result


# --- HTTP load test ---------------------------------------------------------------------------------------


def _payloads(endpoint: str, customers: list[str], items: list[str]) -> Callable[[random.Random], dict]:
    if endpoint == "/recommend":
        return lambda rng: {"customer_id": rng.choice(customers), "k": 10}
    if endpoint == "/intent":
        return lambda rng: {"customer_id": rng.choice(customers)}
    if endpoint == "/similar-items":
        return lambda rng: {"item_id": rng.choice(items), "k": 10}
    raise ValueError(f"unknown endpoint {endpoint!r}: expected /recommend, /intent or /similar-items")


async def _load(
    url: str,
    payload: Callable[[random.Random], dict],
    concurrency: int,
    seconds: float,
    headers: dict[str, str],
) -> dict[str, Any]:
    """``concurrency`` clients sending requests back to back for ``seconds``; latencies of every request.

    The client is aiohttp (a C-accelerated HTTP parser): on the server's own cores the load generator
    should cost as little of them as it can (httpx took about 2 ms of CPU per request, aiohttp about a
    quarter of that).
    """
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as client:
        t_end = time.perf_counter() + seconds

        async def worker(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                try:
                    async with client.post(url, json=payload(rng)) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                except (TimeoutError, aiohttp.ClientError):
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1e3
    ok = sum(n for code, n in statuses.items() if code == 200)
    return {
        "requests": len(latencies) + errors,
        "ok": ok,
        "non_200": {str(k): v for k, v in statuses.items() if k != 200},
        "transport_errors": errors,
        "seconds": round(wall, 1),
        "requests_per_second": round(len(latencies) / wall, 1),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) if len(ms) else None for q in (50, 95, 99)},
    }


def start_server(
    command: list[str], env: dict[str, str], port: int, log: Path, cwd: Path, timeout: float = 120.0
) -> subprocess.Popen:
    """Start ``bentoml serve`` (``command``, output to ``log``) and return once ``/readyz`` answers 200;
    RuntimeError naming the log when it exits or is not ready within ``timeout`` seconds (then stopped with
    its workers, :func:`serving.lifecycle.stop_server`: they run in sessions of their own)."""
    from serving.lifecycle import stop_server

    with log.open("w") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; its log: {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"the server was not ready within {timeout:g} s; its log: {log}")


def bench_http(
    port: int,
    endpoints: list[str],
    customers: list[str],
    items: list[str],
    concurrency: int,
    seconds: float,
    warmup: float,
    api_key: str | None,
) -> dict[str, Any]:
    headers = {"X-API-Key": api_key} if api_key else {}
    out: dict[str, Any] = {}
    for endpoint in endpoints:
        payload = _payloads(endpoint, customers, items)
        url = f"http://127.0.0.1:{port}{endpoint}"
        asyncio.run(_load(url, payload, concurrency, warmup, headers))  # connections, caches, JIT
        out[endpoint] = asyncio.run(_load(url, payload, concurrency, seconds, headers))
    return out

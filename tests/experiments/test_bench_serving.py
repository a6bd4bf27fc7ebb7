"""The serving benchmarks on a small budget: `o2o bench serve`'s load loop against a real `bentoml serve`, and
`o2o bench score` on a few hundred customers. Figures are never asserted (docs/benchmarks.md holds them); what
is checked is that every request is counted, answered and timed, and that every customer is scored."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from experiments.bench_serving import bench_http, bench_scoring, replicated_snapshot

pytestmark = pytest.mark.slow

KEY = "bench-key"
ENDPOINTS = ["/recommend", "/intent", "/similar-items"]


def test_bench_serve_loads_every_endpoint_and_counts_every_answer(bentoml_server, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    customers = pq.read_table(tiny_pipeline.scores).column(S.CUSTOMER_ID).to_pylist()[:50]
    items = pq.read_table(tiny_pipeline.features / S.ITEMS_FILE).column(S.ITEM_ID).to_pylist()[:50]
    with bentoml_server("bench", [KEY]) as client:
        port = client.base_url.port
        assert port is not None
        got = bench_http(port, ENDPOINTS, customers, items, 4, seconds=1.5, warmup=0.3, api_key=KEY)
        refused = bench_http(port, ["/recommend"], customers, items, 2, seconds=0.5, warmup=0, api_key="nope")
    for endpoint in ENDPOINTS:
        r = got[endpoint]
        assert r["requests"] > 0 and r["ok"] == r["requests"], r  # every request answered 200
        assert r["non_200"] == {} and r["transport_errors"] == 0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["requests_per_second"] > 0
    bad = refused["/recommend"]
    assert bad["ok"] == 0 and bad["non_200"] == {"401": bad["requests"]}  # failures are counted, not hidden


def test_bench_score_scores_every_customer_and_times_both_runtimes(tiny_pipeline, tmp_path) -> None:  # type: ignore[no-untyped-def]
    snapshot = tiny_pipeline.features / S.SNAPSHOT_FILE
    runs = [tiny_pipeline.rec_run, tiny_pipeline.intent_run]
    got = bench_scoring(
        tiny_pipeline.bundle, runs, snapshot, customers=700, chunk_size=256, batch=8, threads=1
    )
    assert got["throughput"]["customers"] == 700 and got["throughput"]["customers_per_second"] > 0
    assert sorted(r["task"] for r in got["ort_vs_torch"]) == ["intent", "recommender"]
    for r in got["ort_vs_torch"]:
        for label, rows in (("batched", 8), ("single", 1)):
            assert r[label]["batch"] == rows and r[label]["ort_ms"] > 0 and r[label]["torch_ms"] > 0
    copies = pq.read_table(replicated_snapshot(snapshot, 700, tmp_path / "s.parquet"))
    assert copies.num_rows == 700 and len(set(copies.column(S.CUSTOMER_ID).to_pylist())) == 700

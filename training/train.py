"""``train(config)``: one entry point that fits a model, evaluates it beside its baselines, and leaves a run.

A run directory ``runs/<run_id>/`` holds: ``config.yaml`` (resolved), ``model.json`` (the model's spec,
:class:`models.spec.RecommenderSpec` or :class:`models.spec.IntentSpec`: what export needs to rebuild the
network), ``items.parquet`` (the fitted vocabulary), ``checkpoints/`` (``last.ckpt``: a killed
run resumes from it, :mod:`training.resume`), ``logs/metrics.csv`` and ``tensorboard/`` (Lightning's logs),
``provenance.json`` (git commit, package versions, seed, host: :mod:`training.provenance`) and
``metrics.json`` (validation and test metrics of the model and its baselines, data manifest hashes,
provenance).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from data_prep import schema as S
from data_prep.features import TimeSplits
from data_prep.manifest import read_manifest
from models.encoding import N_GAP_BUCKETS, flatten_sequences
from models.spec import (
    NET,
    IntentConfig,
    IntentSpec,
    RecommenderSpec,
    RunSpec,
    SASRecConfig,
    Stack,
    net_config,
    to_json,
)
from training import distributed
from training.baselines import (
    BetaGeoBaseline,
    ItemKNN,
    MostPopular,
    RepeatHistory,
    cooccurrence,
    drop_older_seen,
    gradient_boosting_baseline,
    logistic_regression_baseline,
    recent_popularity,
    whole_history_pairs,
)
from training.calibration import choose_calibration
from training.config import IntentRunConfig, RecommenderRunConfig, RunConfig, TrainConfig, dump_config
from training.data import CHANNEL_NAMES, TYPE_NAMES, IntentDataModule, RecommenderDataModule
from training.intent import IntentModule
from training.metrics import ranking_metrics, target_ranks, with_f1
from training.protocols import R1
from training.provenance import PROVENANCE_FILE, write_provenance
from training.recommender import EpochClock, RecommenderModule
from training.resume import LOGS_DIR, check_resumable, last_checkpoint, merge_log, set_aside_log
from training.stacking import apply_stack, choose_model, convert_components, run_component
from training.warm_start import warm_start_encoder

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.json"
TEST_RANKS_FILE = "test_ranks.parquet"  # per test example: customer, target rank of ours and each baseline
CONFIG_FILE = "config.yaml"
TENSORBOARD_DIR = "tensorboard"  # `tensorboard --logdir runs` shows every run
RECENT_DAYS = (7, 30, 90)  # recent-popularity windows tried on validation
KNN_NEIGHBOURS = (50, 200)  # ItemKNN baseline: neighbours per item (validated)
KNN_WINDOWS = (None, 50, 10)  # ItemKNN co-occurrence: whole history, or events this close (validated)
# Whole-history co-occurrence builds up to Σ distinct² entries (about 40 bytes each at its peak): above
# this it is left out of the grid, and the metrics say so (Complete Journey: ~5e8 over 2,469 households).
KNN_WHOLE_HISTORY_MAX_PAIRS = 150_000_000
SERVING_TABLES = (S.SEGMENT_POPULARITY_FILE, S.ASSORTMENT_FILE)  # prep tables a recommender bundle carries


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


def new_run_dir(runs_dir: Path, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    runs_dir.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        run_dir = runs_dir / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
        try:
            run_dir.mkdir()  # atomic: two processes starting in the same second get different folders
            return run_dir
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _trainer(
    tc: TrainConfig,
    run_dir: Path,
    monitor: str | None,
    progress_bar: bool,
    callbacks: list[L.Callback] | None = None,
) -> L.Trainer:
    """Lightning trainer; ``monitor`` None (training through validation): no validation, no early stopping,
    the last epoch's weights are the model."""
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor=monitor, mode="max", save_last=True)
    stop = [] if monitor is None else [EarlyStopping(monitor=monitor, mode="max", patience=tc.patience)]
    return L.Trainer(
        limit_val_batches=None if monitor is not None else 0,
        max_epochs=tc.max_epochs,
        accelerator=tc.accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=distributed.strategy(tc),
        use_distributed_sampler=False,  # the DataModules shard training only (training.distributed)
        precision=tc.precision,
        deterministic=tc.deterministic,
        callbacks=[ckpt, *stop, *(callbacks or [])],
        logger=[
            CSVLogger(run_dir, name=LOGS_DIR, version=""),
            TensorBoardLogger(run_dir, name=TENSORBOARD_DIR, version="", default_hp_metric=False),
        ],
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
    )


def _prepare(cfg: RunConfig, runs_dir: Path, resume_from: Path | None = None) -> tuple[Path, Path | None]:
    """Seed everything; a new run folder (config, vocabulary and provenance written) and no checkpoint, or
    with ``resume_from`` that killed run's folder and the checkpoint its training continues from."""
    needed = [cfg.data.features_dir / f for f in (S.ITEMS_FILE, S.SPLITS_FILE, S.MANIFEST_FILE)]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing} not found: run `o2o prep` first or fix data.features_dir")
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if distributed.process_rank() > 0:  # a data-parallel worker: rank 0's folder, nothing written
        run_dir = distributed.shared_run_dir()
        return run_dir, None if resume_from is None else last_checkpoint(run_dir)
    if resume_from is not None:
        if distributed.world_size(cfg.train) > 1:
            distributed.shared_run_dir(resume_from)
        return resume_from, _reopen(resume_from, cfg)
    run_dir = new_run_dir(runs_dir, cfg.name)
    if distributed.world_size(cfg.train) > 1:
        distributed.shared_run_dir(run_dir)
    (run_dir / CONFIG_FILE).write_text(dump_config(cfg))
    shutil.copy(cfg.data.features_dir / S.ITEMS_FILE, run_dir / S.ITEMS_FILE)
    write_provenance(run_dir, cfg.train.seed)
    return run_dir, None


def _reopen(run_dir: Path, cfg: RunConfig) -> Path:
    """Check ``run_dir`` is an unfinished run of ``cfg`` with a readable last checkpoint, set its CSV log
    aside (:mod:`training.resume`) and add this process to its provenance; returns the checkpoint."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir / CONFIG_FILE} not found: {run_dir} is not a run folder")
    if (run_dir / METRICS_FILE).is_file():
        raise ValueError(f"{run_dir} has finished ({METRICS_FILE} is there): there is nothing to resume")
    epoch = check_resumable(run_dir, (run_dir / CONFIG_FILE).read_text(), dump_config(cfg))
    set_aside_log(run_dir, epoch)
    write_provenance(run_dir, cfg.train.seed, resumed_from_epoch=epoch)
    return last_checkpoint(run_dir)


def _finish(run_dir: Path, cfg: RunConfig, spec: RunSpec, metrics: dict, t0: float) -> RunResult:
    if distributed.process_rank() > 0:  # rank 0 writes the run
        return RunResult(run_dir, metrics)
    merge_log(run_dir)  # a resumed run's CSV log: the epochs before the kill back in front
    metrics["train_seconds"] = round(time.perf_counter() - t0, 2)  # a resumed run: since the resume
    metrics["run_id"] = run_dir.name
    metrics["data_manifest"] = read_manifest(cfg.data.features_dir).get("outputs", {})
    metrics["provenance"] = json.loads((run_dir / PROVENANCE_FILE).read_text())
    (run_dir / MODEL_FILE).write_text(json.dumps(to_json(spec), indent=2))
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=float))
    return RunResult(run_dir, metrics)


def train_recommender(
    cfg: RecommenderRunConfig,
    runs_dir: Path,
    progress_bar: bool = True,
    probe: Callable[[RecommenderModule, RecommenderDataModule], dict[str, float]] | None = None,
    callbacks: Sequence[L.Callback] = (),
    evaluate_test: bool = True,
    resume_from: Path | None = None,
) -> RunResult:
    """Fit SASRec on the protocol's training sequences; early-stop on val NDCG@k; report val/test beside the
    baselines. ``probe`` (benchmarks only) runs after every epoch, off the clock (:class:`EpochClock`).
    ``callbacks`` join the trainer's (a tuning trial's pruner); ``evaluate_test=False`` leaves the test
    split untouched (tuning trials select on validation only). ``resume_from``: a killed run's folder,
    continued from its last checkpoint (``cfg`` must be its saved config).
    """
    t0 = time.perf_counter()
    run_dir, resume_ckpt = _prepare(cfg, runs_dir, resume_from)
    tc, m, ev = cfg.train, cfg.model, cfg.eval
    through_val = tc.fit_on == "train+val"
    dm = RecommenderDataModule(
        cfg.data.features_dir,
        m.max_len,
        tc.batch_size,
        tc.num_workers,
        tc.seed,
        ev.protocol,
        tc.window_stride,
        through_val=through_val,
    )
    dm.setup()
    if dm.vocab.n_items == 0:
        raise ValueError(
            f"{cfg.data.features_dir} has no items: the source has no item-level events (order totals only), "
            "so there is nothing to recommend; intent and churn models still train on it"
        )
    pq.write_table(dm.items, run_dir / S.ITEMS_FILE)  # the vocabulary this run trained with
    categories, category_idx = item_categories(dm.items)
    for name in SERVING_TABLES:  # the bundle serves them (cold start, store filter): the spec requires them
        if not (cfg.data.features_dir / name).is_file():
            raise FileNotFoundError(f"{cfg.data.features_dir / name} not found: run `o2o prep` again")
        shutil.copy(cfg.data.features_dir / name, run_dir / name)
    net = net_config(
        SASRecConfig, m, n_items=dm.vocab.n_items, **side_sizes(m.side_features, n_categories=len(categories))
    )
    module = RecommenderModule(
        dataclasses.asdict(net),
        tc.lr,
        tc.weight_decay,
        ev.k,
        ev.exclude_seen,
        loss=tc.loss,
        n_negatives=tc.n_negatives,
        gbce_t=tc.gbce_t,
        compile=tc.compile,
        loss_excludes_seen=tc.loss_excludes_seen,
    )
    module.set_sampling_popularity(dm.popularity)
    if "category" in m.side_features:
        module.model.set_item_categories(torch.from_numpy(category_idx))
    clock = EpochClock(None if probe is None else lambda mod: probe(mod, dm))
    monitor = None if through_val else f"val_ndcg{ev.k}"
    trainer = _trainer(tc, run_dir, monitor, progress_bar, [clock, *callbacks])
    t_fit = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume_ckpt)
    fit_seconds = time.perf_counter() - t_fit
    best = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    module = RecommenderModule.load_from_checkpoint(best)
    ranks, network, blend = None, None, None
    if module.model.neighbours is not None:  # not with through_val (the config refuses it)
        blend, network_val = choose_blend(module, trainer, dm, ev.k, ev.exclude_seen)
        network = _network_alone(module, trainer, dm, evaluate_test, network_val)
        best = str(save_blended(module, Path(best)))
    if not through_val:  # validation examples are training data when training through validation
        trainer.validate(module, datamodule=dm, verbose=False)
        ranks = distributed.rank_figures(trainer, module.results["val"][f"ndcg@{ev.k}"])
    test_ranks: dict[str, np.ndarray] = {}
    if evaluate_test:
        trainer.test(module, datamodule=dm, verbose=False)
        test_ranks["ours"] = module.ranks[S.SPLIT_TEST]
        if network is not None:
            test_ranks["network"] = network.pop("test_ranks")
    n_pairs = int((dm.train_tensors[2] > 0).sum())
    metrics: dict[str, Any] = {
        "task": "recommender",
        "k": ev.k,
        "protocol": _protocol_text(ev.protocol, ev.exclude_seen)
        + ("; trained on train + validation, validation not held out" if through_val else ""),
        "loss": tc.loss,
        "model": {
            split: module.results[split] for split in (S.SPLIT_VAL, S.SPLIT_TEST) if split in module.results
        },
        # baselines report test figures too: a run that must not touch test (a tuning trial) has none
        "baselines": recommender_baselines(dm, ev.k, ev.exclude_seen, test_ranks)
        if ev.baselines and evaluate_test and distributed.process_rank() == 0
        else {},
        "network": network,
        "blend": blend,
        "distributed": ranks,
        "best_epoch": int(torch.load(best, weights_only=False)["epoch"]),
        "epochs_trained": trainer.current_epoch,
        "global_step": trainer.global_step,
        "fit_seconds": round(fit_seconds, 2),
        "training_pairs": n_pairs,
        "training_pairs_per_second": round(n_pairs * trainer.current_epoch / max(fit_seconds, 1e-9)),
        "epochs": clock.history,
        "checkpoint": str(Path(best).resolve().relative_to(run_dir.resolve())),
    }
    if test_ranks and distributed.process_rank() == 0:
        write_test_ranks(run_dir, dm.splits[S.SPLIT_TEST].customer_id, test_ranks)
    spec = RecommenderSpec(
        model_config=net,
        **_sequence_encoding(m.side_features, categories),
        k=ev.k,
        exclude_seen=ev.exclude_seen,
    )
    return _finish(run_dir, cfg, spec, metrics, t0)


BLEND_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)  # w of model.knn_neighbours, chosen on validation
BLENDED_CHECKPOINT = "blended.ckpt"  # the best epoch's weights with the chosen neighbours and blend weight


def choose_blend(
    module: RecommenderModule, trainer: L.Trainer, dm: RecommenderDataModule, k: int, exclude_seen: bool
) -> tuple[dict[str, Any], dict[str, float]]:
    """Fit the neighbours of ``module``'s blend and choose its weight, all on validation NDCG@k.

    The neighbours' co-occurrence window and recency decay are chosen as the ItemKNN baseline's are, with
    the configured number of neighbours; then each weight of :data:`BLEND_WEIGHTS` ranks the validation
    split through the model's own head, and the best one stays in the model (ties: the smaller weight; 0 is
    the network alone). Returns the record for ``metrics.json`` and the network's own validation metrics
    (weight 0)."""
    neighbours = module.model.neighbours
    assert neighbours is not None
    n = module.model.cfg.knn_neighbours
    knn_grid, fit = _knn_grid(dm, k, exclude_seen)
    chosen = _best_on_val(
        {}, "blend", dm, k, exclude_seen, [p | {"neighbours": n} for p in knn_grid], fit, with_test=False
    )
    knn = fit(chosen["params"])
    index, similarity = neighbour_table(knn.sim_, n)
    neighbours.set_neighbours(
        torch.from_numpy(index), torch.from_numpy(similarity), chosen["params"]["decay"]
    )
    val: dict[float, dict[str, float]] = {}
    for w in BLEND_WEIGHTS:
        neighbours.weight.fill_(w)
        trainer.validate(module, datamodule=dm, verbose=False)
        val[w] = module.results[S.SPLIT_VAL]
    by_weight = {w: m[f"ndcg@{k}"] for w, m in val.items()}
    weight = max(by_weight, key=lambda w: (by_weight[w], -w))
    neighbours.weight.fill_(weight)
    record = {
        "neighbours": n,
        "window": chosen["params"]["window"],
        "decay": chosen["params"]["decay"],
        "weight": weight,
        f"val_ndcg@{k}_by_weight": {str(w): v for w, v in by_weight.items()},
        f"item_knn_val_ndcg@{k}": chosen[S.SPLIT_VAL][f"ndcg@{k}"],
    }
    return record, val[0.0]


def _network_alone(
    module: RecommenderModule,
    trainer: L.Trainer,
    dm: RecommenderDataModule,
    evaluate_test: bool,
    val: dict[str, float],
) -> dict[str, Any]:
    """The blended model's network without the neighbours (weight 0): its validation figures ``val`` (from
    :func:`choose_blend`), its (``evaluate_test``) test figures, and its test ranks under ``test_ranks``;
    the chosen weight is restored."""
    neighbours = module.model.neighbours
    assert neighbours is not None
    out: dict[str, Any] = {S.SPLIT_VAL: val}
    if evaluate_test:
        weight = float(neighbours.weight)
        neighbours.weight.fill_(0.0)
        trainer.test(module, datamodule=dm, verbose=False)
        out[S.SPLIT_TEST] = module.results[S.SPLIT_TEST]
        out["test_ranks"] = module.ranks[S.SPLIT_TEST]
        neighbours.weight.fill_(weight)
    return out


def neighbour_table(sim: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(V+1, n) int64 neighbour indices and float32 similarities of a CSR similarity matrix whose rows keep
    at most ``n`` entries (:class:`ItemKNN`), padded with index 0 and similarity 0."""
    sim = sim.tocsr()
    rows = sim.shape[0]
    index = np.zeros((rows, n), dtype=np.int64)
    similarity = np.zeros((rows, n), dtype=np.float32)
    counts = np.diff(sim.indptr)
    if counts.max(initial=0) > n:
        raise ValueError(f"a row holds {counts.max()} neighbours, more than the table's {n}")
    row = np.repeat(np.arange(rows), counts)
    slot = np.arange(sim.nnz) - np.repeat(sim.indptr[:-1], counts)
    index[row, slot] = sim.indices
    similarity[row, slot] = sim.data
    return index, similarity


def save_blended(module: RecommenderModule, best: Path) -> Path:
    """Write the best epoch's checkpoint again, beside it, with ``module``'s weights (its chosen neighbours
    and blend weight); export and warm start read the run's new file."""
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    ckpt["state_dict"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    path = best.parent / BLENDED_CHECKPOINT
    torch.save(ckpt, path)
    return path


def write_test_ranks(run_dir: Path, customer_id: np.ndarray, ranks: dict[str, np.ndarray]) -> Path:
    """``test_ranks.parquet``: each test example's customer and the rank of its target in the top k of ours
    and of each baseline (0 = not there), the rows a paired comparison across models and seeds resamples."""
    path = run_dir / TEST_RANKS_FILE
    columns = {S.CUSTOMER_ID: pa.array(customer_id)}
    columns.update({name: pa.array(r.astype(np.int16)) for name, r in ranks.items()})
    pq.write_table(pa.table(columns), path)
    return path


def side_sizes(side_features: Sequence[str], n_categories: int) -> dict[str, int]:
    """Embedding-table sizes of the model config for the chosen side features (0 = not used)."""
    return {
        "n_event_types": len(TYPE_NAMES) if "event_type" in side_features else 0,
        "n_channels": len(CHANNEL_NAMES) if "channel" in side_features else 0,
        "n_gap_buckets": N_GAP_BUCKETS if "time_gap" in side_features else 0,
        "n_categories": n_categories if "category" in side_features else 0,
    }


def activity_sizes(use: bool, feature_names: Sequence[str]) -> dict[str, int]:
    """The calendar's shape for the model config: weeks and measures when ``use`` and the features end with
    the weekly activity calendar (:data:`schema.ACTIVITY_FEATURES`), else 0 (its cells, if any, are plain
    features)."""
    n = len(S.ACTIVITY_FEATURES)
    if use and tuple(feature_names[-n:]) == S.ACTIVITY_FEATURES:
        return {"activity_weeks": S.ACTIVITY_WEEKS, "activity_measures": len(S.ACTIVITY_MEASURES)}
    return {"activity_weeks": 0, "activity_measures": 0}


def _sequence_encoding(side_features: Sequence[str], categories: list[str]) -> dict[str, Any]:
    """The spec fields that say how input events are encoded (the same for every task)."""
    return {
        "type_names": tuple(TYPE_NAMES),
        "channel_names": tuple(CHANNEL_NAMES),
        "side_features": tuple(side_features),
        "category_names": tuple(categories),
    }


def item_categories(items: pa.Table) -> tuple[list[str], np.ndarray]:
    """Sorted category names and each item's 1-based category index by item index (0: padding/unknown)."""
    items = items.sort_by(S.ITEM_IDX)
    cats = items.column(S.CATEGORY).to_pylist()
    names = sorted({c for c in cats if c is not None})
    lookup = {c: i + 1 for i, c in enumerate(names)}
    return names, np.array([0] + [lookup.get(c, 0) if c is not None else 0 for c in cats], dtype=np.int64)


def _protocol_text(protocol: str, exclude_seen: bool) -> str:
    seen = f"seen items {'removed' if exclude_seen else 'allowed'}"
    if protocol == R1:
        return f"R1 (leave-one-out, full ranking; {seen})"
    return f"R2 (global time split, first add-to-cart/order/store purchase in horizon; {seen})"


def recommender_baselines(
    dm: RecommenderDataModule, k: int, exclude_seen: bool, test_ranks: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Most popular (all time, and the last N days of training), the customer's own items again (only
    when seen items are allowed) and ItemKNN; every setting of a baseline chosen on validation NDCG@k.
    ``test_ranks`` (optional) receives each baseline's per-example test ranks (:func:`target_ranks`)."""
    out: dict[str, Any] = {}
    ranks = {} if test_ranks is None else test_ranks
    # with the seen filter, baselines rank k + S items and history items older than the input window
    # (up to S of them) are dropped afterwards, as for the model (:func:`_rank`)
    kw = k + max(s.older_idx.shape[1] for s in dm.splits.values()) if exclude_seen else k
    pop = MostPopular(kw, exclude_seen).fit(dm.popularity)
    out["most_popular"] = {S.SPLIT_VAL: _rank(pop.recommend, dm, S.SPLIT_VAL, k, exclude_seen)[0]}
    out["most_popular"][S.SPLIT_TEST], ranks["most_popular"] = _rank(
        pop.recommend, dm, S.SPLIT_TEST, k, exclude_seen
    )
    train = dm.tables.train
    if S.TIMESTAMPS_COL in train.column_names:
        item = dm.vocab.lookup(pc.list_flatten(train.column(S.ITEMS)).to_numpy(zero_copy_only=False))
        ts = pc.list_flatten(train.column(S.TIMESTAMPS_COL)).to_numpy(zero_copy_only=False)
        item, ts = item[item > 0], ts[item > 0].astype(np.int64)
        out["most_popular_recent"] = _best_on_val(
            ranks,
            "most_popular_recent",
            dm,
            k,
            exclude_seen,
            [{"days": d} for d in RECENT_DAYS],
            lambda p: MostPopular(kw, exclude_seen).fit(recent_popularity(item, ts, dm.vocab.n_items, **p)),
        )
    if not exclude_seen:  # with the seen filter a customer's own items can never be recommended
        out["repeat_history"] = _best_on_val(
            ranks,
            "repeat_history",
            dm,
            k,
            exclude_seen,
            [{"decay": d} for d in (1.0, 0.9, 0.7)],
            lambda p: RepeatHistory(kw, exclude_seen, **p).fit(dm.popularity),
        )
    grid, fit = _knn_grid(dm, k, exclude_seen)
    out["item_knn"] = _best_on_val(
        ranks,
        "item_knn",
        dm,
        k,
        exclude_seen,
        [p | {"neighbours": n} for p in grid for n in KNN_NEIGHBOURS],
        fit,
    )
    if all(p["window"] is not None for p in grid):
        row, item, _ = _whole_histories(dm)
        pairs = whole_history_pairs(row, item, dm.vocab.n_items)
        out["item_knn"]["note"] = (
            f"whole-history co-occurrence left out of the grid: {pairs:.3g} history pairs, over the "
            f"memory budget of {KNN_WHOLE_HISTORY_MAX_PAIRS:.3g}"
        )
    return out


def _whole_histories(dm: RecommenderDataModule) -> tuple[np.ndarray, np.ndarray, int]:
    flat = flatten_sequences(dm.tables.train.column(S.ITEMS), dm.vocab)  # whole histories, not windows
    return flat.row, flat.item, flat.n_rows


def _knn_grid(
    dm: RecommenderDataModule, k: int, exclude_seen: bool
) -> tuple[list[dict[str, Any]], Callable[[dict[str, Any]], ItemKNN]]:
    """ItemKNN's validated grid of co-occurrence window (slowest) and decay, and the function that fits one
    point (its ``neighbours`` added by the caller): lists long enough for the seen filter, co-occurrence
    counted once per window; whole-history co-occurrence only when it fits the memory budget."""
    row, item, n_rows = _whole_histories(dm)
    kw = k + max(s.older_idx.shape[1] for s in dm.splits.values()) if exclude_seen else k

    @functools.lru_cache(maxsize=1)  # the grid varies the window slowest: one matrix alive at a time
    def counted(window: int | None) -> tuple[Any, np.ndarray]:
        return cooccurrence(row, item, n_rows, dm.vocab.n_items, window)

    pairs = whole_history_pairs(row, item, dm.vocab.n_items)
    windows = [w for w in KNN_WINDOWS if w is not None or pairs <= KNN_WHOLE_HISTORY_MAX_PAIRS]
    grid = [{"window": w, "decay": d} for w, d in itertools.product(windows, (1.0, 0.7))]
    return grid, lambda p: ItemKNN(kw, exclude_seen, **p).fit_cooccurrence(*counted(p["window"]))


def _best_on_val(
    test_ranks: dict[str, np.ndarray],
    name: str,
    dm: RecommenderDataModule,
    k: int,
    exclude_seen: bool,
    grid: Sequence[dict[str, Any]],
    make: Callable[[dict[str, Any]], Any],
    with_test: bool = True,
) -> dict[str, Any]:
    """The grid point whose fitted baseline (``make(params)``) has the best validation NDCG@k, with its
    validation and test figures and its parameters; its per-example test ranks go to ``test_ranks[name]``."""
    best: tuple[float, dict[str, Any]] | None = None
    for params in grid:
        model = make(params)
        val = _rank(model.recommend, dm, S.SPLIT_VAL, k, exclude_seen)[0]
        if best is None or val[f"ndcg@{k}"] > best[0]:
            best = (val[f"ndcg@{k}"], {S.SPLIT_VAL: val, "params": params})
            if with_test:
                best[1][S.SPLIT_TEST], test_ranks[name] = _rank(
                    model.recommend, dm, S.SPLIT_TEST, k, exclude_seen
                )
    assert best is not None
    return best[1]


def _rank(
    recommend: Callable[[np.ndarray], np.ndarray],
    dm: RecommenderDataModule,
    split: str,
    k: int,
    exclude_seen: bool,
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics@k of ``recommend``'s lists and each example's target rank (0 = not in the top k); with the
    seen filter, items of the whole history are removed (the lists must be long enough: k + the split's
    ``older_idx`` width)."""
    s = dm.splits[split]
    top = recommend(s.item_idx)
    top = drop_older_seen(top, s.older_idx, k) if exclude_seen else top[:, :k]
    return ranking_metrics(top, s.target, k), target_ranks(top, s.target, k)


def train_intent(
    cfg: IntentRunConfig,
    runs_dir: Path,
    progress_bar: bool = True,
    callbacks: Sequence[L.Callback] = (),
    evaluate_test: bool = True,
    resume_from: Path | None = None,
) -> RunResult:
    """Fit the intent net on train cutoffs; early-stop on val ROC-AUC; calibrate on val; report val/test beside
    logistic regression and gradient boosting. ``callbacks``, ``evaluate_test`` and ``resume_from``: as
    :func:`train_recommender`."""
    t0 = time.perf_counter()
    splits = TimeSplits.from_json((cfg.data.features_dir / S.SPLITS_FILE).read_text())
    if cfg.target == "purchase" and splits.horizon_days != cfg.horizon_days:
        raise ValueError(
            f"config horizon_days={cfg.horizon_days} but {cfg.data.features_dir} was prepared with "
            f"{splits.horizon_days}; re-run prep with --horizon-days or fix the config"
        )
    run_dir, resume_ckpt = _prepare(cfg, runs_dir, resume_from)
    tc, m = cfg.train, cfg.model
    dm = IntentDataModule(
        cfg.data.features_dir, m.max_len, tc.batch_size, tc.num_workers, tc.seed, cfg.target
    )
    dm.setup()
    categories, category_idx = item_categories(pq.read_table(cfg.data.features_dir / S.ITEMS_FILE))
    net = net_config(
        IntentConfig,
        m,
        n_items=dm.vocab.n_items,
        n_features=len(dm.feature_names),
        **side_sizes(m.side_features, n_categories=len(categories)),
        **activity_sizes(m.activity, dm.feature_names),
    )
    module = IntentModule(dataclasses.asdict(net), tc.lr, tc.weight_decay)
    module.model.set_feature_scaling(*dm.feature_scaling())
    if "category" in m.side_features:
        module.model.encoder.set_item_categories(torch.from_numpy(category_idx))
    warm = None
    if m.init_from is not None:
        item_ids = dm.vocab.ids(np.arange(1, dm.vocab.n_items + 1)).tolist()
        warm = warm_start_encoder(module.model.encoder, item_ids, categories, m.init_from)
    trainer = _trainer(tc, run_dir, "val_roc_auc", progress_bar, list(callbacks))
    trainer.fit(module, datamodule=dm, ckpt_path=resume_ckpt)
    best = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    module = IntentModule.load_from_checkpoint(best)
    trainer.validate(module, datamodule=dm, verbose=False)
    ranks = distributed.rank_figures(trainer, module.results["val"]["roc_auc"])
    if evaluate_test:
        trainer.test(module, datamodule=dm, verbose=False)
    y_val, net_val = module.predictions["val"]
    net_test = module.predictions.get("test")
    # a tuning trial (no test) compares networks: no other candidate is fitted; rank 0 alone selects
    selecting = cfg.select == "best" and evaluate_test and distributed.process_rank() == 0
    components = _fit_components(dm, tc.seed) if selecting else {}
    stack, p_val, selection = _select(cfg, dm, run_dir, components, (y_val, net_val))
    test = None if net_test is None else (net_test[0], _stack_test(stack, net_test[1], components, dm))
    calibration, calibration_record = choose_calibration(y_val, p_val, tc.calibration, tc.seed)
    calibration_record["uncalibrated"] = with_f1((y_val, p_val), test)
    calibrated_test = None if test is None else (test[0], calibration.apply(test[1]))
    metrics: dict[str, Any] = {
        "task": "intent",
        "target": cfg.target,
        "protocol": _intent_protocol_text(cfg),
        "model": with_f1((y_val, calibration.apply(p_val)), calibrated_test),
        "network": with_f1((y_val, net_val), net_test),
        "selection": selection,
        "calibration": calibration_record,
        "warm_start": warm,
        "baselines": _intent_baselines(dm, tc.seed, cfg, components)
        if evaluate_test and distributed.process_rank() == 0
        else {},
        "distributed": ranks,
        "best_epoch": int(torch.load(best, weights_only=False)["epoch"]),
        "epochs_trained": trainer.current_epoch,
        "global_step": trainer.global_step,
        "checkpoint": str(Path(best).resolve().relative_to(run_dir.resolve())),
    }
    spec = IntentSpec(
        model_config=net,
        **_sequence_encoding(m.side_features, categories),
        target=cfg.target,
        feature_names=tuple(dm.feature_names),
        calibration=calibration,
        stack=stack,
    )
    return _finish(run_dir, cfg, spec, metrics, t0)


def _fit_components(dm: IntentDataModule, seed: int) -> dict[str, Any]:
    """Logistic regression and histogram gradient boosting on the features, fit on the training cutoffs
    (both are fit with log-loss): the baselines, and the stack's other components."""
    train = dm.splits[S.SPLIT_TRAIN]
    fitted = {
        "logistic_regression": logistic_regression_baseline(seed),
        "gradient_boosting": gradient_boosting_baseline(seed),
    }
    for model in fitted.values():
        model.fit(train.features, train.label.astype(int))
    return fitted


def _select(
    cfg: IntentRunConfig,
    dm: IntentDataModule,
    run_dir: Path,
    components: dict[str, Any],
    net_val: tuple[np.ndarray, np.ndarray],
) -> tuple[Stack, np.ndarray, dict[str, Any]]:
    """The shipped candidate (:mod:`training.stacking`), its validation probabilities and the record; with
    ``select: net`` the network alone. Components are converted to ONNX first (a conversion that disagrees
    with scikit-learn is no candidate) and selection sees their ONNX probabilities: what would be served."""
    y_val, p_net = net_val
    if not components:
        return Stack(), p_net, {"shipped": NET, "rule": "select: net (no other candidate)"}
    features = dm.splits[S.SPLIT_VAL].features
    paths, conversion = convert_components(components, features, run_dir)
    p_val = {NET: p_net} | {n: run_component(path, features) for n, path in paths.items()}
    stack, p_chosen, record = choose_model(y_val, p_val, cfg.train.seed)
    for n in set(paths) - set(stack.components):  # only what the shipped graph uses stays in the run
        paths[n].unlink()
    return stack, p_chosen, record | {"conversion": conversion}


def _stack_test(
    stack: Stack, p_net: np.ndarray, components: dict[str, Any], dm: IntentDataModule
) -> np.ndarray:
    """The shipped candidate's test probabilities (components as scikit-learn computes them on float32
    features, which their ONNX graphs match within :data:`training.stacking.CONVERSION_ATOL`)."""
    if stack.is_net_only:
        return p_net
    x = dm.splits[S.SPLIT_TEST].features.astype(np.float32).astype(np.float64)
    p = {NET: p_net} | {n: components[n].predict_proba(x)[:, 1] for n in stack.components if n != NET}
    return apply_stack(stack, p)


def _intent_baselines(
    dm: IntentDataModule, seed: int, cfg: IntentRunConfig, components: dict[str, Any]
) -> dict[str, dict[str, dict[str, float]]]:
    """Logistic regression and histogram gradient boosting on the features (the fitted components, or
    fitted here), fit on the training cutoffs; for purchase (I1) and churn also BG/NBD on the order
    histories, the buy-till-you-die model (churn: 1 − P(an order in 60 days))."""
    train = dm.splits[S.SPLIT_TRAIN]
    fitted = components or _fit_components(dm, seed)
    models: list[tuple[str, Any]] = list(fitted.items())
    if cfg.target in ("purchase", "churn") and set(BetaGeoBaseline.REQUIRED) <= set(dm.feature_names):
        bg_nbd = (
            BetaGeoBaseline(dm.feature_names, cfg.horizon_days)
            if cfg.target == "purchase"
            else BetaGeoBaseline(dm.feature_names, S.CHURN_HORIZON_DAYS, positive="lapse")
        )
        models.append(("bg_nbd", bg_nbd))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, model in models:
        if name not in fitted:
            model.fit(train.features, train.label.astype(int))
        val, test = (
            (dm.splits[s].label, model.predict_proba(dm.splits[s].features)[:, 1])
            for s in (S.SPLIT_VAL, S.SPLIT_TEST)
        )
        out[name] = with_f1(val, test)
    return out


def _intent_protocol_text(cfg: IntentRunConfig) -> str:
    if cfg.target == "session":
        return "I2 (an online session ends in an order; scored at its first add-to-cart)"
    if cfg.target == "churn":
        return (
            f"churn (no purchase in any channel within {S.CHURN_HORIZON_DAYS} days after the cutoff, "
            "among customers who purchased before it)"
        )
    return f"I1 (purchase in any channel within {cfg.horizon_days} days after the cutoff)"


def train(
    cfg: RunConfig,
    runs_dir: Path = Path("runs"),
    progress_bar: bool = True,
    callbacks: Sequence[L.Callback] = (),
    evaluate_test: bool = True,
    resume_from: Path | None = None,
) -> RunResult:
    """Train the model a config describes; returns the run directory and its metrics. ``callbacks`` join
    the trainer's; ``evaluate_test=False`` never touches the test split (and fits no baselines);
    ``resume_from`` continues a killed run in its own folder from its last checkpoint (``cfg`` must be the
    run's saved config)."""
    if isinstance(cfg, RecommenderRunConfig):
        return train_recommender(
            cfg,
            runs_dir,
            progress_bar,
            callbacks=callbacks,
            evaluate_test=evaluate_test,
            resume_from=resume_from,
        )
    return train_intent(
        cfg, runs_dir, progress_bar, callbacks=callbacks, evaluate_test=evaluate_test, resume_from=resume_from
    )


__all__ = ["CONFIG_FILE", "METRICS_FILE", "MODEL_FILE", "RunResult", "train"]

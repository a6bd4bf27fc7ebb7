"""``train(config)``: one entry point that fits a model, evaluates it beside its baselines, and leaves a run.

A run directory ``runs/<run_id>/`` holds: ``config.yaml`` (resolved), ``model.json`` (what export needs to
rebuild the network), ``items.parquet`` (the fitted vocabulary), ``checkpoints/``, ``logs/`` (CSV),
and ``metrics.json`` (validation and test metrics of the model and its baselines, data manifest hashes).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from data_prep import schema as S
from data_prep.features import TimeSplits
from data_prep.manifest import read_manifest
from training.baselines import MostPopular, logistic_regression_baseline
from training.config import IntentRunConfig, RecommenderRunConfig, RunConfig, TrainConfig, dump_config
from training.data import TYPE_NAMES, IntentDataModule, RecommenderDataModule, load_popularity
from training.intent import IntentModule
from training.metrics import binary_metrics, ranking_metrics
from training.recommender import RecommenderModule

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.json"
CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


def new_run_dir(runs_dir: Path, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = runs_dir / f"{name}-{stamp}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = runs_dir / f"{name}-{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def _trainer(tc: TrainConfig, run_dir: Path, monitor: str, progress_bar: bool) -> L.Trainer:
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor=monitor, mode="max", save_last=True)
    return L.Trainer(
        max_epochs=tc.max_epochs,
        accelerator=tc.accelerator,
        devices=1,
        deterministic=tc.deterministic,
        callbacks=[ckpt, EarlyStopping(monitor=monitor, mode="max", patience=tc.patience)],
        logger=CSVLogger(run_dir, name="logs", version=""),
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
    )


def _prepare(cfg: RunConfig, runs_dir: Path) -> Path:
    needed = [cfg.data.features_dir / f for f in (S.ITEMS_FILE, S.SPLITS_FILE, S.MANIFEST_FILE)]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing} not found: run `o2o prep` first or fix data.features_dir")
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run_dir = new_run_dir(runs_dir, cfg.name)
    (run_dir / CONFIG_FILE).write_text(dump_config(cfg))
    shutil.copy(cfg.data.features_dir / S.ITEMS_FILE, run_dir / S.ITEMS_FILE)
    return run_dir


def _finish(run_dir: Path, cfg: RunConfig, model_doc: dict, metrics: dict, t0: float) -> RunResult:
    metrics["train_seconds"] = round(time.perf_counter() - t0, 2)
    metrics["run_id"] = run_dir.name
    metrics["data_manifest"] = read_manifest(cfg.data.features_dir).get("outputs", {})
    (run_dir / MODEL_FILE).write_text(json.dumps(model_doc, indent=2))
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=float))
    return RunResult(run_dir, metrics)


def train_recommender(cfg: RecommenderRunConfig, runs_dir: Path, progress_bar: bool = True) -> RunResult:
    """Fit SASRec on sequences before T_val; early-stop on val NDCG@k; report val/test (R2) + most-popular."""
    t0 = time.perf_counter()
    run_dir = _prepare(cfg, runs_dir)
    tc, m = cfg.train, cfg.model
    dm = RecommenderDataModule(cfg.data.features_dir, m.max_len, tc.batch_size, tc.num_workers, tc.seed)
    model_config = {
        "n_items": dm.vocab.n_items,
        "max_len": m.max_len,
        "d_model": m.d_model,
        "n_heads": m.n_heads,
        "n_layers": m.n_layers,
        "dropout": m.dropout,
        "n_event_types": len(TYPE_NAMES) if m.use_event_types else 0,
    }
    module = RecommenderModule(model_config, tc.lr, tc.weight_decay, cfg.eval.k, cfg.eval.exclude_seen)
    trainer = _trainer(tc, run_dir, f"val_ndcg{cfg.eval.k}", progress_bar)
    trainer.fit(module, datamodule=dm)
    best = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    module = RecommenderModule.load_from_checkpoint(best)
    trainer.validate(module, datamodule=dm, verbose=False)
    trainer.test(module, datamodule=dm, verbose=False)
    metrics: dict[str, Any] = {
        "task": "recommender",
        "k": cfg.eval.k,
        "protocol": f"R2 (global time split, first add-to-cart/order/store purchase in horizon; "
        f"seen items {'removed' if cfg.eval.exclude_seen else 'allowed'})",
        "model": {"val": module.results["val"], "test": module.results["test"]},
        "baselines": {"most_popular": _most_popular(dm, cfg)},
        "best_epoch": int(torch.load(best, weights_only=False)["epoch"]),
        "epochs_trained": trainer.current_epoch,
        "checkpoint": str(Path(best).resolve().relative_to(run_dir.resolve())),
    }
    doc: dict[str, Any] = {
        "task": "recommender",
        "model_config": model_config,
        "type_names": list(TYPE_NAMES),
    }
    doc["k"], doc["exclude_seen"] = cfg.eval.k, cfg.eval.exclude_seen
    return _finish(run_dir, cfg, doc, metrics, t0)


def _most_popular(dm: RecommenderDataModule, cfg: RecommenderRunConfig) -> dict[str, dict[str, float]]:
    pop = MostPopular(cfg.eval.k, cfg.eval.exclude_seen).fit(load_popularity(cfg.data.features_dir))
    out = {}
    for split in (S.SPLIT_VAL, S.SPLIT_TEST):
        s = dm.splits[split]
        out[split] = ranking_metrics(pop.recommend(s.item_idx), s.target, cfg.eval.k)
    return out


def train_intent(cfg: IntentRunConfig, runs_dir: Path, progress_bar: bool = True) -> RunResult:
    """Fit the intent net on train cutoffs; early-stop on val ROC-AUC; report val/test (I1) + logistic regression."""
    t0 = time.perf_counter()
    splits = TimeSplits.from_json((cfg.data.features_dir / S.SPLITS_FILE).read_text())
    if splits.horizon_days != cfg.horizon_days:
        raise ValueError(
            f"config horizon_days={cfg.horizon_days} but {cfg.data.features_dir} was prepared with "
            f"{splits.horizon_days}; re-run prep with --horizon-days or fix the config"
        )
    run_dir = _prepare(cfg, runs_dir)
    tc, m = cfg.train, cfg.model
    dm = IntentDataModule(cfg.data.features_dir, m.max_len, tc.batch_size, tc.num_workers, tc.seed)
    dm.setup()
    model_config = {
        "n_items": dm.vocab.n_items,
        "n_features": len(S.INTENT_FEATURES),
        "n_event_types": len(TYPE_NAMES) if m.use_event_types else 0,
        "max_len": m.max_len,
        "d_model": m.d_model,
        "n_heads": m.n_heads,
        "n_layers": m.n_layers,
        "dropout": m.dropout,
        "hidden": m.hidden,
    }
    module = IntentModule(model_config, tc.lr, tc.weight_decay)
    module.model.set_feature_scaling(*dm.feature_scaling())
    trainer = _trainer(tc, run_dir, "val_roc_auc", progress_bar)
    trainer.fit(module, datamodule=dm)
    best = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    module = IntentModule.load_from_checkpoint(best)
    trainer.validate(module, datamodule=dm, verbose=False)
    trainer.test(module, datamodule=dm, verbose=False)
    metrics: dict[str, Any] = {
        "task": "intent",
        "protocol": f"I1 (purchase in any channel within {cfg.horizon_days} days after the cutoff)",
        "model": {"val": module.results["val"], "test": module.results["test"]},
        "baselines": {"logistic_regression": _logistic_regression(dm, tc.seed)},
        "best_epoch": int(torch.load(best, weights_only=False)["epoch"]),
        "epochs_trained": trainer.current_epoch,
        "checkpoint": str(Path(best).resolve().relative_to(run_dir.resolve())),
    }
    doc = {
        "task": "intent",
        "model_config": model_config,
        "type_names": list(TYPE_NAMES),
        "feature_names": list(S.INTENT_FEATURES),
    }
    return _finish(run_dir, cfg, doc, metrics, t0)


def _logistic_regression(dm: IntentDataModule, seed: int) -> dict[str, dict[str, float]]:
    train = dm.splits[S.SPLIT_TRAIN]
    lr = logistic_regression_baseline(seed).fit(train.features, train.label.astype(int))
    out = {}
    for split in (S.SPLIT_VAL, S.SPLIT_TEST):
        s = dm.splits[split]
        out[split] = binary_metrics(s.label, lr.predict_proba(s.features)[:, 1])
    return out


def train(cfg: RunConfig, runs_dir: Path = Path("runs"), progress_bar: bool = True) -> RunResult:
    """Train the model a config describes; returns the run directory and its metrics."""
    if isinstance(cfg, RecommenderRunConfig):
        return train_recommender(cfg, runs_dir, progress_bar)
    return train_intent(cfg, runs_dir, progress_bar)


__all__ = ["CONFIG_FILE", "METRICS_FILE", "MODEL_FILE", "RunResult", "train"]

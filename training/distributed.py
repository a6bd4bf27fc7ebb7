"""Data-parallel training from configuration: ``train.strategy: ddp`` with ``train.devices: N`` (and
``train.num_nodes``) runs N processes (CPU: the gloo backend; GPU: one per device, NCCL).

What is ours, around Lightning's DDP:

- **Training data is sharded, evaluation is not.** Each process trains on its shard of the training examples
  (a :class:`~torch.utils.data.DistributedSampler` made by the DataModule), but ranks every validation and
  test example itself: our metrics (NDCG over full rankings, ROC-AUC) are not averages of per-batch figures,
  and a full evaluation on identical weights gives every process the same figure, so early stopping and
  checkpoint choice agree on all ranks. ``metrics.json`` records each rank's figure to prove it.
- **One run folder.** Lightning starts ranks ≥ 1 by running the same command again; they find rank 0's run
  folder in :data:`RUN_DIR_ENV` and write nothing of their own (logs and checkpoints are rank 0's already).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DistributedSampler, TensorDataset

from training.config import TrainConfig

RUN_DIR_ENV = "O2O_DDP_RUN_DIR"  # rank 0's run folder, inherited by the processes Lightning starts


def process_rank() -> int:
    """This process's global rank (0 when not distributed), known before the trainer exists: Lightning's
    launcher sets the rank variables in the environment of the processes it starts."""
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def world_size(tc: TrainConfig) -> int:
    return tc.devices * tc.num_nodes


def strategy(tc: TrainConfig) -> str | Strategy:
    if tc.strategy != "ddp":
        return "auto"
    backend = "gloo" if tc.accelerator == "cpu" else None  # None: Lightning's default (NCCL on GPUs)
    return DDPStrategy(process_group_backend=backend)


def shared_run_dir(run_dir: Path | None = None) -> Path:
    """Rank 0 (``run_dir`` given, world > 1): publish its run folder to the processes it will start.
    Ranks ≥ 1: the published folder."""
    if run_dir is not None:
        os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
        return run_dir
    shared = os.environ.get(RUN_DIR_ENV)
    if not shared:
        raise RuntimeError(
            f"rank {process_rank()} has no run folder: {RUN_DIR_ENV} is unset (ranks ≥ 1 are started by "
            "rank 0 through Lightning's launcher; on several nodes, set it to a folder every node shares)"
        )
    return Path(shared)


def train_sampler(dataset: TensorDataset, trainer: L.Trainer | None, seed: int) -> DistributedSampler | None:
    """This rank's shard of the training examples (reshuffled every epoch: Lightning calls set_epoch), or
    None when training in one process."""
    if trainer is None or trainer.world_size <= 1:
        return None
    return DistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=True, seed=seed
    )


def rank_figures(trainer: L.Trainer, value: float) -> dict[str, Any] | None:
    """Every rank's value of one figure plus its number of training batches (all ranks must call this);
    None in one process."""
    if trainer.world_size <= 1:
        return None
    gathered = trainer.strategy.all_gather(torch.tensor([value, float(trainer.num_training_batches)]))
    rows = gathered.reshape(trainer.world_size, 2).tolist()
    return {
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "backend": getattr(trainer.strategy, "process_group_backend", None),
        "val_by_rank": [r[0] for r in rows],
        "train_batches_by_rank": [int(r[1]) for r in rows],
    }

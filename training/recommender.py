"""LightningModule for the SASRec recommender: a next-item loss on every position of every sequence.

Losses (``models.sasrec``): full cross-entropy over the catalogue (default), sampled softmax with log-q
correction, gBCE. Validation and test rank with the same top-k head that is exported (seen filter
included), and compute metrics with :func:`training.metrics.ranking_metrics`, so training, export and
baselines agree. :class:`EpochClock` records when each epoch's validation figure was reached, which the
peer benchmark needs for its time-to-quality figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch

from models.sasrec import (
    LOSSES,
    SASRec,
    SASRecConfig,
    SASRecTopK,
    full_ce_loss,
    gbce_loss,
    input_prefixes,
    sampled_softmax_loss,
)
from training.baselines import drop_older_seen
from training.metrics import ranking_metrics, target_ranks


class RecommenderModule(L.LightningModule):
    log_q: torch.Tensor

    def __init__(
        self,
        model_config: dict,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        k: int = 10,
        exclude_seen: bool = True,
        loss: str = "ce",
        n_negatives: int = 256,
        gbce_t: float = 0.75,
        compile: bool = False,
        loss_excludes_seen: bool = False,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}: expected one of {LOSSES}")
        self.save_hyperparameters()
        self.model = SASRec(SASRecConfig(**model_config))
        self.loss_name, self.n_negatives, self.gbce_t = loss, n_negatives, gbce_t
        if loss_excludes_seen and loss != "ce":
            raise ValueError(f"loss_excludes_seen needs loss 'ce', not {loss!r}")
        self.loss_excludes_seen = loss_excludes_seen
        n = self.model.cfg.n_items
        log_q = torch.full((n + 1,), -float(np.log(n)))  # uniform until set_sampling_popularity
        log_q[0] = -float("inf")
        self.register_buffer("log_q", log_q)  # (V+1,) sampled softmax proposal, padding never drawn
        self._encode: Callable[..., torch.Tensor] = (
            torch.compile(self.model.encode) if compile else self.model.encode  # type: ignore[assignment]
        )
        self.head = SASRecTopK(self.model, k)  # shares the model's weights; moves with it between devices
        self.k, self.exclude_seen = k, exclude_seen
        self.lr, self.weight_decay = lr, weight_decay
        self.results: dict[str, dict[str, float]] = {}  # last metrics per prefix ("val", "test")
        self.ranks: dict[str, np.ndarray] = {}  # last per-example target ranks per prefix (0 = not in top k)
        self._eval: dict[str, list[np.ndarray]] = {"topk": [], "target": []}

    def set_sampling_popularity(self, popularity: np.ndarray, power: float = 1.0) -> None:
        """Sampled-softmax proposal q ∝ (count + 1)^power from training counts (n_items,) in index order."""
        w = (np.asarray(popularity, dtype=np.float64) + 1.0) ** power
        log_q = np.concatenate([[-np.inf], np.log(w / w.sum())])
        self.log_q.copy_(torch.as_tensor(log_q, dtype=self.log_q.dtype))

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, tx, y = batch  # (B, T), (B, T), (B, T) with 0 = no target
        h = self._encode(x, tx)  # (B, T, D)
        has_target = y > 0
        h, target = h[has_target], y[has_target]  # (N, D), (N,): every position with a next item
        table = self.model.item_emb.weight  # (V+1, D), tied input/output embeddings
        bonus = self.model.repeat_bonus(x, h, has_target) if self.model.cfg.repeat_head else None
        if self.loss_name == "ce":
            seen = input_prefixes(x)[has_target] if self.loss_excludes_seen else None  # (N, T)
            loss = full_ce_loss(h, target, table, seen, bonus)
        elif self.loss_name == "sampled_softmax":
            loss = sampled_softmax_loss(h, target, table, self.log_q, self.n_negatives, bonus)
        else:
            loss = gbce_loss(h, target, table, self.n_negatives, self.gbce_t, bonus)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def top_k(self, x: torch.Tensor, ctx: torch.Tensor, older: torch.Tensor | None = None) -> torch.Tensor:
        """(B, k) item indices ranked by the exported head, with the run's seen filter, every item allowed.

        ``older`` (B, S) are history items before the input window (0 = none); with the seen filter on they
        are removed too, as serving does: the head ranks k + S items and the older ones are dropped.
        """
        flag = torch.full((x.shape[0],), float(self.exclude_seen), device=x.device)
        if older is None or not self.exclude_seen or not bool(older.any()):
            return self.head(x, ctx, flag, self.head.is_item)[1]
        wide = SASRecTopK(self.model, self.k + older.shape[1]).to(x.device)
        idx = wide(x, ctx, flag, self.head.is_item)[1]  # (B, k + S)
        kept = drop_older_seen(idx.cpu().numpy(), older.cpu().numpy(), self.k)  # (B, k), as the baselines
        return torch.from_numpy(kept).to(x.device)

    def _rank_batch(self, batch: tuple[torch.Tensor, ...]) -> None:
        x, tx, target, older = batch
        idx = self.top_k(x, tx, older)  # (B, k)
        self._eval["topk"].append(idx.cpu().numpy())
        self._eval["target"].append(target.cpu().numpy())

    def _finish(self, prefix: str) -> dict[str, float]:
        if not self._eval["topk"]:
            return {}
        topk, target = np.concatenate(self._eval["topk"]), np.concatenate(self._eval["target"])
        m = ranking_metrics(topk, target, self.k)
        self.results[prefix] = m
        self.ranks[prefix] = target_ranks(topk, target, self.k)
        self._eval = {"topk": [], "target": []}
        k = self.k
        for name in (f"ndcg@{k}", f"hr@{k}", f"mrr@{k}"):
            # every rank evaluates the whole split (training.distributed): the mean over ranks is the figure
            self.log(
                f"{prefix}_{name.replace('@', '')}", m[name], prog_bar=name.startswith("ndcg"), sync_dist=True
            )
        return m

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._rank_batch(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._rank_batch(batch)

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class EpochClock(L.Callback):
    """After each validation: seconds since fit started (training + validation, nothing else), the epoch's
    validation metrics, and, when ``probe`` is given, the figures it returns for that epoch.

    The probe (e.g. test metrics for a time-to-quality curve) runs off the clock: its time is not counted,
    and it never feeds model selection.
    """

    def __init__(self, probe: Callable[[RecommenderModule], dict[str, float]] | None = None) -> None:
        self.probe = probe
        self.history: list[dict[str, Any]] = []
        self._start = 0.0
        self._paused = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._paused = time.perf_counter(), 0.0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not isinstance(pl_module, RecommenderModule):
            return
        now = time.perf_counter()
        row: dict[str, Any] = {
            "epoch": trainer.current_epoch,
            "seconds": round(now - self._start - self._paused, 3),
            "val": dict(pl_module.results.get("val", {})),
        }
        if self.probe is not None:
            was_training = pl_module.training
            pl_module.eval()
            with torch.no_grad():
                row["probe"] = self.probe(pl_module)
            pl_module.train(was_training)
        self.history.append(row)
        self._paused += time.perf_counter() - now

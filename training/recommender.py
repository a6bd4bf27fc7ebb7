"""LightningModule for the SASRec recommender: full cross-entropy over the catalogue on every position.

Validation and test rank with the same top-k head that is exported (seen filter included), and compute
metrics with :func:`training.metrics.ranking_metrics`, so training, export and baselines agree.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from models.sasrec import SASRec, SASRecConfig, SASRecTopK
from training.metrics import ranking_metrics


class RecommenderModule(L.LightningModule):
    def __init__(
        self,
        model_config: dict,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        k: int = 10,
        exclude_seen: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = SASRec(SASRecConfig(**model_config))
        self.head = SASRecTopK(self.model, k)  # shares the model's weights; moves with it between devices
        self.k, self.exclude_seen = k, exclude_seen
        self.lr, self.weight_decay = lr, weight_decay
        self.results: dict[str, dict[str, float]] = {}  # last metrics per prefix ("val", "test")
        self._eval: dict[str, list[np.ndarray]] = {"topk": [], "target": []}

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, tx, y = batch  # (B, T), (B, T), (B, T) with 0 = no target
        logits = self.model(x, tx)  # (B, T, V+1)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=0)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def _rank_batch(self, batch: tuple[torch.Tensor, ...]) -> None:
        x, tx, target = batch
        flag = torch.full((x.shape[0],), float(self.exclude_seen), device=x.device)
        _, idx = self.head(x, tx, flag)  # (B, k)
        self._eval["topk"].append(idx.cpu().numpy())
        self._eval["target"].append(target.cpu().numpy())

    def _finish(self, prefix: str) -> dict[str, float]:
        if not self._eval["topk"]:
            return {}
        m = ranking_metrics(np.concatenate(self._eval["topk"]), np.concatenate(self._eval["target"]), self.k)
        self.results[prefix] = m
        self._eval = {"topk": [], "target": []}
        k = self.k
        for name in (f"ndcg@{k}", f"hr@{k}", f"mrr@{k}"):
            self.log(f"{prefix}_{name.replace('@', '')}", m[name], prog_bar=name.startswith("ndcg"))
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

"""LightningModule for the purchase-intent classifier (protocol I1): BCE on the purchase label."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from models.intent import IntentConfig, IntentNet
from training.metrics import binary_metrics


class IntentModule(L.LightningModule):
    def __init__(self, model_config: dict, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = IntentNet(IntentConfig(**model_config))
        self.lr, self.weight_decay = lr, weight_decay
        self.results: dict[str, dict[str, float]] = {}  # last metrics per prefix ("val", "test")
        self.predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # last (labels, probabilities)
        self._eval: dict[str, list[np.ndarray]] = {"p": [], "y": []}

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, tx, f, y = batch  # (B, T), (B, T), (B, F), (B,)
        loss = F.binary_cross_entropy_with_logits(self.model(x, tx, f), y)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def _collect(self, batch: tuple[torch.Tensor, ...]) -> None:
        x, tx, f, y = batch
        self._eval["p"].append(torch.sigmoid(self.model(x, tx, f)).cpu().numpy())
        self._eval["y"].append(y.cpu().numpy())

    def _finish(self, prefix: str) -> dict[str, float]:
        if not self._eval["p"]:
            return {}
        y, p = np.concatenate(self._eval["y"]), np.concatenate(self._eval["p"])
        m = binary_metrics(y, p)
        self.results[prefix], self.predictions[prefix] = m, (y, p)
        self._eval = {"p": [], "y": []}
        for name in ("roc_auc", "pr_auc", "log_loss"):
            # every rank evaluates the whole split (training.distributed): the mean over ranks is the figure
            self.log(f"{prefix}_{name}", m[name], prog_bar=name == "roc_auc", sync_dist=True)
        return m

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

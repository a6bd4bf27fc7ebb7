"""Purchase-intent classifier: a SASRec sequence encoder plus point-in-time aggregates → one logit.

The encoder is a :class:`models.sasrec.SASRec` held by composition, so it can start from a trained
recommender's weights. Aggregates are ``log1p``-transformed and standardised with statistics fitted on the
training split and stored as buffers, so the exported graph takes raw aggregates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.sasrec import SASRec, SASRecConfig


@dataclass(frozen=True)
class IntentConfig:
    n_items: int  # real items in the vocabulary
    n_features: int  # aggregate features per customer
    n_event_types: int  # event types in sequences (row 0 = padding)
    max_len: int = 50  # longest input sequence
    d_model: int = 64  # encoder width
    n_heads: int = 2  # attention heads
    n_layers: int = 2  # encoder blocks
    dropout: float = 0.2  # dropout in encoder and head
    hidden: int = 64  # width of the classification head
    n_channels: int = 0  # > 0: channel embedding on each event
    n_gap_buckets: int = 0  # > 0: time-gap embedding on each event
    n_categories: int = 0  # > 0: the item's category embedding
    item_identity: bool = True  # False: one shared embedding for every item (see SASRecConfig)

    def encoder_config(self) -> SASRecConfig:
        return SASRecConfig(
            n_items=self.n_items,
            max_len=self.max_len,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_layers=self.n_layers,
            dropout=self.dropout,
            n_event_types=self.n_event_types,
            n_channels=self.n_channels,
            n_gap_buckets=self.n_gap_buckets,
            n_categories=self.n_categories,
            item_identity=self.item_identity,
        )


class IntentNet(nn.Module):
    feat_mean: torch.Tensor
    feat_std: torch.Tensor

    def __init__(self, cfg: IntentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = SASRec(cfg.encoder_config())
        self.register_buffer("feat_mean", torch.zeros(cfg.n_features))  # fitted on train, log1p space
        self.register_buffer("feat_std", torch.ones(cfg.n_features))
        self.head = nn.Sequential(
            nn.Linear(cfg.d_model + cfg.n_features, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, 1),
        )

    def set_feature_scaling(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the train-split mean/std of ``log1p(features)`` (std floored to avoid division by 0)."""
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std.clamp(min=1e-6))

    def forward(self, item_idx: torch.Tensor, ctx_idx: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``item_idx`` (B, T), ``ctx_idx`` (B, T, C) int64, ``features`` (B, F) raw float → logit (B,)."""
        h = self.encoder.encode(item_idx, ctx_idx)[:, -1]  # (B, D) state after the newest event
        has_history = (item_idx[:, -1:] != 0).float()  # (B, 1): all-padding rows carry no sequence signal
        h = h * has_history  # (B, D)
        f = (torch.log1p(features.clamp(min=0.0)) - self.feat_mean) / self.feat_std  # (B, F)
        return self.head(torch.cat([h, f], dim=1)).squeeze(1)  # (B,)


class IntentProbability(nn.Module):
    """Serving head: sigmoid of the logit, so the exported graph returns a probability (B,)."""

    def __init__(self, model: IntentNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_idx: torch.Tensor, ctx_idx: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(item_idx, ctx_idx, features))  # (B,)

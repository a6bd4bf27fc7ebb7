"""Purchase-intent classifier: a SASRec sequence encoder, a weekly activity calendar read by a GRU, and
point-in-time aggregates → one logit.

The encoder is a :class:`models.sasrec.SASRec` held by composition, so it can start from a trained
recommender's weights. Features (aggregates, then the calendar's cells) are ``log1p``-transformed and
standardised with statistics fitted on the training split and stored as buffers, so the exported graph takes
raw values. The calendar (:data:`data_prep.schema.ACTIVITY_FEATURES`: per week back from the cutoff, orders by
channel, spend, active days, carts) is read oldest week first by a GRU whose last state joins the head: the
purchase rhythm, trend and lapse that buy-till-you-die models live on, also for customers without item
events (Valendin et al. 2022, "Customer base analysis with recurrent neural networks").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.sasrec import REPEAT_AGE_INIT, SASRec, positions_from_end
from models.spec import IntentConfig


class IntentNet(nn.Module):
    feat_mean: torch.Tensor
    feat_std: torch.Tensor

    def __init__(self, cfg: IntentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = SASRec(cfg.encoder_config())
        self.register_buffer("feat_mean", torch.zeros(cfg.n_features))  # fitted on train, log1p space
        self.register_buffer("feat_std", torch.ones(cfg.n_features))
        if cfg.revisit_features:
            # (max_len, R) weight of an earlier occurrence by its distance from the newest event, softplus'd;
            # starts at 1 for every age, so each count begins as the plain number of earlier occurrences
            self.revisit_age = nn.Parameter(torch.full((cfg.max_len, cfg.revisit_features), REPEAT_AGE_INIT))
        if cfg.n_activity:
            self.activity = nn.GRU(cfg.activity_measures, cfg.activity_hidden, batch_first=True)
        width = (
            cfg.d_model + cfg.n_flat + cfg.revisit_features + (cfg.activity_hidden if cfg.n_activity else 0)
        )
        self.head = nn.Sequential(
            nn.Linear(width, cfg.hidden),
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
        h = self.encoder.encode_last(item_idx, ctx_idx)  # (B, D) state after the newest event
        has_history = (item_idx[:, -1:] != 0).float()  # (B, 1): all-padding rows carry no sequence signal
        h = h * has_history  # (B, D)
        f = (torch.log1p(features.clamp(min=0.0)) - self.feat_mean) / self.feat_std  # (B, F)
        parts = [h]
        if self.cfg.n_activity:
            n_flat = self.cfg.n_flat
            parts += [f[:, :n_flat], self.read_calendar(f[:, n_flat:])]
        else:
            parts.append(f)
        if self.cfg.revisit_features:
            parts.append(self.revisits(item_idx))
        return self.head(torch.cat(parts, dim=1)).squeeze(1)  # (B,)

    def read_calendar(self, cells: torch.Tensor) -> torch.Tensor:
        """(B, W·M) scaled calendar cells, newest week first → (B, H): the GRU's state after the newest week."""
        weeks = cells.reshape(
            cells.shape[0], self.cfg.activity_weeks, self.cfg.activity_measures
        )  # (B, W, M)
        _, last = self.activity(weeks.flip(1))  # oldest week first; last: (1, B, H)
        return last[0]  # (B, H)

    def revisits(self, item_idx: torch.Tensor) -> torch.Tensor:
        """(B, R): log(1 + Σ w_r[age]) over the earlier occurrences of each row's newest item (0 when none)."""
        newest = item_idx[:, -1:]  # (B, 1)
        earlier = (item_idx == newest) & (newest != 0)  # (B, T)
        from_end = positions_from_end(item_idx, self.cfg.max_len)  # (T,)
        w = F.softplus(self.revisit_age)[from_end] * (from_end > 0)[:, None]  # (T, R): the newest itself is 0
        return torch.log1p(earlier.to(w.dtype) @ w)  # (B, R)


class IntentProbability(nn.Module):
    """Serving head: sigmoid of the logit, so the exported graph returns a probability (B,)."""

    def __init__(self, model: IntentNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_idx: torch.Tensor, ctx_idx: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(item_idx, ctx_idx, features))  # (B,)

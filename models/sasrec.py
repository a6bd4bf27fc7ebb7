"""SASRec-style causal transformer recommender: embeddings, pre-norm blocks, tied output head, top-k head.

Attention is written with ``scaled_dot_product_attention`` and an additive float mask (no
``nn.TransformerEncoder``: its fast path does not survive ``torch.export``). Every query may attend to
itself, so a left-padding query never has a fully masked row and ONNX Runtime never produces NaN.

Positions are counted from the newest item (position 0 = last item), which equals SASRec's absolute
positions after left-padding to ``max_len`` and makes outputs independent of how much padding there is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from models.spec import SASRecConfig

MASK_VALUE = -1e9  # finite, so a masked score is never -inf - -inf
REPEAT_AGE_INIT = math.log(math.e - 1.0)  # softplus⁻¹(1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 × (B, T, D)
        q = q.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)
        v = v.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.dropout(self.proj(y))  # (B, T, D)

    def forward_last(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The output at the newest position only (B, 1, D): keys and values from all T positions of ``x``
        (B, T, D), the query from the last; ``mask`` (B, 1, 1, T) is that query's row of the mask."""
        B, T, D = x.shape
        Dh = D // self.n_heads
        w, b = self.qkv.weight, self.qkv.bias  # (3D, D), (3D,): rows q | k | v
        q = F.linear(x[:, -1:], w[:D], b[:D]).view(B, 1, self.n_heads, Dh).transpose(1, 2)  # (B, H, 1, Dh)
        k, v = F.linear(x, w[D:], b[D:]).split(D, dim=2)  # 2 × (B, T, D)
        k = k.view(B, T, self.n_heads, Dh).transpose(1, 2)  # (B, H, T, Dh)
        v = v.view(B, T, self.n_heads, Dh).transpose(1, 2)  # (B, H, T, Dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, 1, Dh)
        return self.dropout(self.proj(y.transpose(1, 2).reshape(B, 1, D)))  # (B, 1, D)


class Block(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model),
            nn.GELU(),
            nn.Linear(4 * cfg.d_model, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)  # (B, T, D)
        return x + self.mlp(self.ln2(x))  # (B, T, D)

    def forward_last(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``forward(x, mask)[:, -1:]`` (B, 1, D) without the other positions' queries and feed-forward."""
        x_last = x[:, -1:] + self.attn.forward_last(self.ln1(x), mask[:, :, -1:])  # (B, 1, D)
        return x_last + self.mlp(self.ln2(x_last))  # (B, 1, D)


def attention_mask(item_idx: torch.Tensor) -> torch.Tensor:
    """Additive float mask (B, 1, T, T): query i sees keys j ≤ i that are not padding, and always itself."""
    T = item_idx.shape[1]
    pos = torch.arange(T, device=item_idx.device)
    causal = pos[None, :] <= pos[:, None]  # (T, T)
    key_real = (item_idx != 0)[:, None, None, :]  # (B, 1, 1, T)
    allowed = (causal[None, None] & key_real) | torch.eye(T, dtype=torch.bool, device=item_idx.device)
    zero = torch.zeros((), dtype=torch.float32, device=item_idx.device)
    return torch.where(allowed, zero, zero + MASK_VALUE)  # (B, 1, T, T)


def positions_from_end(item_idx: torch.Tensor, max_len: int) -> torch.Tensor:
    """(T,) int64: each input position counted from the newest (0 = newest), capped at ``max_len`` − 1."""
    T = item_idx.shape[1]
    return torch.arange(T - 1, -1, -1, device=item_idx.device).clamp(max=max_len - 1)


def full_precision(device: torch.device) -> AbstractContextManager[object]:
    """Autocast off where it is on (bf16/fp16 training): the repeat head's counts and gate stay float32,
    as they are in the exported graph, and its scatter never mixes dtypes."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()


def _side_table(n: int, d: int) -> nn.Embedding | None:
    return nn.Embedding(n + 1, d, padding_idx=0) if n else None


class ItemNeighbours(nn.Module):
    """Item-to-item neighbours blended into the ranking (an ItemKNN fitted on the training sequences).

    Buffers, so they travel in the checkpoint and the exported graph: ``index`` / ``similarity`` (V+1, N)
    hold each item's N most similar items and their similarity (row 0 and unused slots: index 0, value 0),
    ``decay`` the weight ratio of each older input item (the newest weighs 1) and ``weight`` the blend weight
    (0 until :func:`training.train` chooses it on validation). Scores of a history are
    Σ_i decay^age(i) · similarity[i, j] over its items i, as :class:`training.baselines.ItemKNN` ranks.
    """

    index: torch.Tensor
    similarity: torch.Tensor
    decay: torch.Tensor
    weight: torch.Tensor

    def __init__(self, n_items: int, n_neighbours: int) -> None:
        super().__init__()
        self.register_buffer("index", torch.zeros(n_items + 1, n_neighbours, dtype=torch.long))
        self.register_buffer("similarity", torch.zeros(n_items + 1, n_neighbours))
        self.register_buffer("decay", torch.tensor(1.0))
        self.register_buffer("weight", torch.tensor(0.0))

    def set_neighbours(self, index: torch.Tensor, similarity: torch.Tensor, decay: float) -> None:
        """Install (V+1, ≤N) neighbour indices and similarities (padded with 0 to N columns) and the decay."""
        self.index.zero_()
        self.similarity.zero_()
        n = index.shape[1]
        self.index[:, :n] = index.to(self.index.dtype)
        self.similarity[:, :n] = similarity.to(self.similarity.dtype)
        self.decay.fill_(decay)

    def scores(self, item_idx: torch.Tensor) -> torch.Tensor:
        """(B, V+1) neighbour scores of left-padded histories ``item_idx`` (B, T)."""
        B, T = item_idx.shape
        age = torch.arange(T - 1, -1, -1, device=item_idx.device, dtype=self.decay.dtype)  # (T,) newest = 0
        w = torch.pow(self.decay, age)[None] * (item_idx != 0).to(self.decay.dtype)  # (B, T)
        contrib = self.similarity[item_idx] * w[:, :, None]  # (B, T, N)
        out = torch.zeros(B, self.index.shape[0], dtype=contrib.dtype, device=item_idx.device)
        return out.scatter_add(1, self.index[item_idx].flatten(1), contrib.flatten(1))  # (B, V+1)

    def blend(self, logits: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """(B, V+1) standardised ``logits`` + weight · standardised neighbour scores; each standardised over
        the real items of its row (a monotone map: with weight 0 the ranking is the network's own)."""
        return _standardise(logits) + self.weight * _standardise(self.scores(item_idx).to(logits.dtype))


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """(B, V+1) centred and scaled per row by the mean and spread of columns 1.. (column 0 is padding)."""
    real = x[:, 1:]
    mean = real.mean(dim=1, keepdim=True)
    std = (real - mean).pow(2).mean(dim=1, keepdim=True).sqrt()
    return (x - mean) / (std + 1e-6)


class SASRec(nn.Module):
    item_category: torch.Tensor

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1 if cfg.item_identity else 2, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.type_emb = _side_table(cfg.n_event_types, cfg.d_model)
        self.channel_emb = _side_table(cfg.n_channels, cfg.d_model)
        self.gap_emb = _side_table(cfg.n_gap_buckets, cfg.d_model)
        self.category_emb = _side_table(cfg.n_categories, cfg.d_model)
        # (V+1,) category index of each item (0 = none); set from the vocabulary, saved with the weights
        self.register_buffer("item_category", torch.zeros(cfg.n_items + 1, dtype=torch.long))
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        if cfg.repeat_head:
            self.repeat_gate = nn.Linear(cfg.d_model, 1)  # g(h) = softplus(·): how much this context repeats
        self.neighbours = ItemNeighbours(cfg.n_items, cfg.knn_neighbours) if cfg.knn_neighbours else None
        self.apply(self._init_weights)
        if cfg.repeat_head:
            # softplus(0.5413) = 1: every occurrence counts once at the start, whatever its age
            self.repeat_age = nn.Parameter(torch.full((cfg.max_len,), REPEAT_AGE_INIT))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                nn.init.zeros_(m.weight[m.padding_idx])

    def set_item_categories(self, category_idx: torch.Tensor) -> None:
        """Category index (0 = unknown) of every item, by item index (padding first): (V+1,) int64."""
        self.item_category.copy_(category_idx.to(self.item_category.dtype))

    def encode(self, item_idx: torch.Tensor, ctx_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, D) for left-padded ``item_idx`` (B, T) and its context ``ctx_idx``
        (B, T, C) from :func:`models.encoding.encode_sequences`; position t sees items ≤ t only."""
        x, mask = self._embed(item_idx, ctx_idx)
        for block in self.blocks:
            x = block(x, mask)  # (B, T, D)
        return self.ln_f(x)  # (B, T, D)

    def encode_last(self, item_idx: torch.Tensor, ctx_idx: torch.Tensor | None = None) -> torch.Tensor:
        """``encode(item_idx, ctx_idx)[:, -1]`` (B, D), the state after the newest event, for serving: the
        last block computes its query, attention output and feed-forward at that position only (of its
        multiply-adds per position only the keys' and values' remain: about a sixth); the earlier blocks
        still run at every position, as the last block's keys and values need them."""
        x, mask = self._embed(item_idx, ctx_idx)
        if not self.blocks:
            return self.ln_f(x[:, -1])
        for block in self.blocks[:-1]:
            x = block(x, mask)  # (B, T, D)
        last = cast(Block, self.blocks[-1])
        return self.ln_f(last.forward_last(x, mask)[:, 0])  # (B, D)

    def _embed(
        self, item_idx: torch.Tensor, ctx_idx: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first block's input (B, T, D) and the attention mask (B, 1, T, T)."""
        from_end = positions_from_end(item_idx, self.cfg.max_len)  # (T,)
        ids = item_idx if self.cfg.item_identity else (item_idx != 0).long()  # (B, T)
        x = self.item_emb(ids) * math.sqrt(self.cfg.d_model)  # (B, T, D)
        x = x + self.pos_emb(from_end)[None]  # (B, T, D)
        if self.category_emb is not None:
            x = x + self.category_emb(self.item_category[item_idx])  # (B, T, D)
        if ctx_idx is not None:
            for col, table in ((0, self.type_emb), (1, self.channel_emb), (2, self.gap_emb)):
                if table is not None:
                    x = x + table(ctx_idx[:, :, col])  # (B, T, D)
        return self.emb_dropout(x), attention_mask(item_idx)

    def forward(self, item_idx: torch.Tensor, ctx_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Next-item logits (B, T, n_items + 1) at every position; output embeddings tied to the input."""
        h = self.encode(item_idx, ctx_idx)  # (B, T, D)
        logits = h @ self.item_emb.weight.T  # (B, T, V+1)
        if self.cfg.repeat_head:
            every = torch.ones_like(item_idx, dtype=torch.bool)  # (B, T): all positions, in row-major order
            bonus = self.repeat_bonus(item_idx, h.flatten(0, 1), every)(None)  # (B·T, V+1)
            logits = logits + bonus.view_as(logits)
        return logits

    def repeat_weights(self, item_idx: torch.Tensor) -> torch.Tensor:
        """(B, T, T): the weight w[t − s] of input item s for query position t (0 where s > t or s is padding)."""
        T = item_idx.shape[1]
        pos = torch.arange(T, device=item_idx.device)
        age = (pos[:, None] - pos[None, :]).clamp(0, self.cfg.max_len - 1)  # (T, T)
        w = F.softplus(self.repeat_age)[age] * (pos[None, :] <= pos[:, None])  # (T, T)
        return w[None] * (item_idx != 0)[:, None, :].to(w.dtype)  # (B, T, T)

    def repeat_bonus(
        self, item_idx: torch.Tensor, h: torch.Tensor, rows: torch.Tensor
    ) -> Callable[[torch.Tensor | None], torch.Tensor]:
        """The repeat head's score bonus for the ``rows`` (B, T) bool positions of ``item_idx`` (B, T), whose
        hidden states are ``h`` (N, D), N = rows.sum(). The result maps candidates to (N, C) bonuses:
        ``None`` = every item index (C = V+1), (C,) = one candidate list shared by all rows, (N, C) = a
        list per row. Only occurrences at or before each row's position count."""
        with full_precision(h.device):
            w = self.repeat_weights(item_idx)  # (B, T, S)
            gate = F.softplus(self.repeat_gate(h.float()))  # (N, 1)
        b, t = rows.nonzero(as_tuple=True)  # (N,), (N,): the rows' batch and position

        def bonus(cand: torch.Tensor | None) -> torch.Tensor:
            with full_precision(h.device):
                if cand is None:  # dense over the catalogue, built for the selected rows only
                    full = torch.zeros(b.shape[0], self.cfg.n_items + 1, dtype=w.dtype, device=w.device)
                    counts = full.scatter_add(1, item_idx[b], w[b, t])  # (N, V+1)
                elif cand.dim() == 1:  # shared candidates: batched matmul over the history
                    eq = (item_idx[:, :, None] == cand[None, None, :]).to(w.dtype)  # (B, S, C)
                    counts = torch.bmm(w, eq)[rows]  # (N, C)
                else:  # a candidate list per row
                    eq = (cand[:, :, None] == item_idx[b][:, None, :]).to(w.dtype)  # (N, C, S)
                    counts = torch.einsum("ncs,ns->nc", eq, w[b, t])  # (N, C)
                return gate * torch.log1p(counts)  # (N, C) float32

        return bonus

    def next_repeat_bonus(self, item_idx: torch.Tensor, h_last: torch.Tensor) -> torch.Tensor:
        """(B, V+1) float32: the repeat bonus of every item after the newest position, from ``h_last`` (B, D).
        The serving head's form: one scatter, no data-dependent shapes, so it exports to ONNX."""
        with full_precision(h_last.device):
            w = self.repeat_weights(item_idx)[:, -1]  # (B, T): each input item's weight for the next one
            counts = torch.zeros(w.shape[0], self.cfg.n_items + 1, dtype=w.dtype, device=w.device)
            counts = counts.scatter_add(1, item_idx, w)  # (B, V+1)
            return F.softplus(self.repeat_gate(h_last.float())) * torch.log1p(counts)


class SASRecTopK(nn.Module):
    """Serving head: top-k items after the newest position, with padding, seen items (optionally) and
    items a business filter blocks removed before the top-k."""

    is_item: torch.Tensor

    def __init__(self, model: SASRec, k: int) -> None:
        super().__init__()
        self.model = model
        self.k = min(k, model.cfg.n_items)
        is_item = torch.ones(model.cfg.n_items + 1)
        is_item[0] = 0.0
        self.register_buffer("is_item", is_item)  # (V+1,) 0 for padding

    def forward(
        self, item_idx: torch.Tensor, ctx_idx: torch.Tensor, exclude_seen: torch.Tensor, allowed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``item_idx`` (B, T) and ``ctx_idx`` (B, T, C) int64, ``exclude_seen`` (B,) float 0/1, ``allowed``
        (V+1,) float 0/1 (1 = may be recommended) → scores, indices (B, k)."""
        h = self.model.encode_last(item_idx, ctx_idx)  # (B, D)
        logits = h @ self.model.item_emb.weight.T  # (B, V+1)
        if self.model.cfg.repeat_head:
            logits = logits + self.model.next_repeat_bonus(item_idx, h)  # (B, V+1)
        if self.model.neighbours is not None:
            logits = self.model.neighbours.blend(logits, item_idx)  # (B, V+1)
        seen = torch.zeros_like(logits).scatter(1, item_idx, 1.0) * self.is_item  # (B, V+1)
        blocked = (1.0 - allowed) * self.is_item  # (V+1,)
        # seen (if asked) or blocked items sink by MASK_VALUE; padding sinks twice as far, so it ranks after
        remove = torch.clamp(seen * exclude_seen[:, None] + blocked[None, :], max=1.0)  # (B, V+1)
        remove = remove + 2.0 * (1.0 - self.is_item)  # (B, V+1)
        logits = logits + remove * MASK_VALUE  # (B, V+1)
        scores, idx = torch.topk(logits, self.k, dim=1)  # (B, k), (B, k)
        return scores, idx


# ---------------------------------------------------------------- losses
# All three take hidden states ``h`` (N, D) at the positions that have a target, the targets (N,) as item
# indices ≥ 1, and the item table (V+1, D) whose row 0 is padding; each returns a scalar mean loss.
# ``bonus`` (optional, :meth:`SASRec.repeat_bonus`) maps candidates to extra logits (N, C): None = all
# items, (C,) shared, (N, C) per row.

Bonus = Callable[[torch.Tensor | None], torch.Tensor]

LOSSES = ("ce", "sampled_softmax", "gbce")


def full_ce_loss(
    h: torch.Tensor,
    target: torch.Tensor,
    item_emb: torch.Tensor,
    seen: torch.Tensor | None = None,
    bonus: Bonus | None = None,
) -> torch.Tensor:
    """Cross-entropy over the whole catalogue (SASRec+, Klenitskiy & Vasilev 2023); padding is no class.

    ``seen`` (N, S) item indices (0 = none) leave the softmax of their row, except the row's own target:
    the loss then asks what ranking with the seen filter asks, "which *new* item comes next".
    """
    logits = h @ item_emb.T  # (N, V+1)
    if bonus is not None:
        logits = logits + bonus(None)  # (N, V+1)
    if seen is not None:
        own = logits.gather(1, target[:, None])  # (N, 1) kept even when the target repeats a seen item
        logits = logits.scatter(1, seen, MASK_VALUE).scatter(1, target[:, None], own)  # (N, V+1)
    logits[:, 0] = MASK_VALUE
    return F.cross_entropy(logits, target)


def input_prefixes(item_idx: torch.Tensor) -> torch.Tensor:
    """(B, T, T) int64: row t holds the items at positions ≤ t of ``item_idx`` (B, T), 0 elsewhere."""
    T = item_idx.shape[1]
    pos = torch.arange(T, device=item_idx.device)
    upto = pos[None, :] <= pos[:, None]  # (T, T): key j at or before query t
    return torch.where(upto[None], item_idx[:, None, :], 0)  # (B, T, T)


def sampled_softmax_loss(
    h: torch.Tensor,
    target: torch.Tensor,
    item_emb: torch.Tensor,
    log_q: torch.Tensor,
    n_negatives: int,
    bonus: Bonus | None = None,
) -> torch.Tensor:
    """Softmax over the target and ``n_negatives`` items drawn from q (shared by the batch), log-q corrected.

    ``log_q`` (V+1,) is the log sampling probability of each item (−inf for padding). A negative's logit
    is lowered by log(M·q), so Σ exp(logit) over the M draws estimates the full softmax's partition
    function without bias (importance sampling: Bengio & Senécal 2008; Yi et al. 2019) and the loss
    approaches full cross-entropy as M grows. A draw that is the row's own target is masked out.
    """
    neg = torch.multinomial(log_q.exp(), n_negatives, replacement=True)  # (M,)
    pos_logit = (h * item_emb[target]).sum(-1)  # (N,)
    neg_logit = h @ item_emb[neg].T - (log_q[neg] + math.log(n_negatives))  # (N, M)
    if bonus is not None:
        pos_logit = pos_logit + bonus(target[:, None])[:, 0]
        neg_logit = neg_logit + bonus(neg)
    neg_logit = neg_logit.masked_fill(neg[None, :] == target[:, None], MASK_VALUE)
    logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)  # (N, 1+M)
    return F.cross_entropy(logits, torch.zeros_like(target))


def gbce_loss(
    h: torch.Tensor,
    target: torch.Tensor,
    item_emb: torch.Tensor,
    n_negatives: int,
    t: float = 0.75,
    bonus: Bonus | None = None,
) -> torch.Tensor:
    """Generalised BCE (gSASRec, Petrov & Macdonald 2023) with ``n_negatives`` uniform negatives per row.

    The positive probability is raised to β = α(t(1 − 1/α) + 1/α), α = M / (V − 1), which undoes the
    overconfidence that negative sampling gives plain BCE; t = 0 is BCE, t = 1 fully calibrated.
    """
    n_items = item_emb.shape[0] - 1
    neg = torch.randint(1, n_items + 1, (h.shape[0], n_negatives), device=h.device)  # (N, M)
    alpha = n_negatives / max(n_items - 1, 1)
    beta = alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)
    pos_logit = (h * item_emb[target]).sum(-1)  # (N,)
    neg_logit = torch.einsum("nd,nmd->nm", h, item_emb[neg])  # (N, M)
    if bonus is not None:
        pos_logit = pos_logit + bonus(target[:, None])[:, 0]
        neg_logit = neg_logit + bonus(neg)
    neg_logit = neg_logit.masked_fill(neg == target[:, None], MASK_VALUE)  # softplus(−1e9) = 0
    pos_term = -beta * F.logsigmoid(pos_logit)  # −log σ(s+)^β
    neg_term = F.softplus(neg_logit)  # −log(1 − σ(s−))
    return (pos_term.sum() + neg_term.sum()) / (h.shape[0] * (1 + n_negatives))

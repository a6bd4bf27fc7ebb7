"""Model invariants: shapes, causality, padding invariance, no NaN on padding-only rows."""

from __future__ import annotations

import math

import pytest
import torch

from models.intent import IntentConfig, IntentNet
from models.sasrec import SASRec, SASRecConfig, SASRecTopK


def model(**kw: int) -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(n_items=50, max_len=12, d_model=16, n_heads=2, n_layers=2, **kw)).eval()


def no_ctx(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros((*x.shape, 3), dtype=torch.long)


def test_shapes() -> None:
    m = model(n_event_types=3)
    x = torch.randint(1, 51, (4, 7))
    assert m(x, torch.randint(1, 4, (4, 7, 3))).shape == (4, 7, 51)
    scores, idx = SASRecTopK(m, 10)(x, no_ctx(x), torch.ones(4), torch.ones(51))
    assert scores.shape == idx.shape == (4, 10)


@pytest.mark.parametrize("repeat_head", [False, True])
def test_causality_future_item_does_not_change_the_past(repeat_head: bool) -> None:
    m = model(repeat_head=repeat_head)
    x = torch.randint(1, 51, (2, 8))
    y = x.clone()
    y[:, 5] = (y[:, 5] % 50) + 1  # change item t = 5
    a, b = m(x), m(y)  # logits, repeat bonus included
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-5)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("repeat_head", [False, True])
def test_padding_invariance(repeat_head: bool) -> None:
    m = model(repeat_head=repeat_head)
    x = torch.randint(1, 51, (1, 5))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), x], dim=1)
    assert torch.allclose(m(x), m(padded)[:, 4:], atol=1e-5)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_encode_last_is_the_newest_state_of_encode(n_layers: int) -> None:
    torch.manual_seed(0)
    cfg = SASRecConfig(n_items=50, max_len=12, d_model=16, n_heads=2, n_layers=n_layers, n_event_types=3)
    m = SASRec(cfg).eval()
    x = torch.randint(1, 51, (5, 9))
    x[0, :6] = 0  # left padding
    x[1, :] = 0  # padding only
    ctx = torch.randint(0, 4, (5, 9, 3))
    assert torch.allclose(m.encode_last(x, ctx), m.encode(x, ctx)[:, -1], atol=1e-5)
    one = x[2:3, -1:]  # batch 1, length 1
    assert torch.allclose(m.encode_last(one), m.encode(one)[:, -1], atol=1e-5)
    assert torch.isfinite(m.encode_last(x, ctx)).all()


def test_padding_only_row_is_finite_and_pad_never_recommended() -> None:
    m = model()
    x = torch.zeros(2, 6, dtype=torch.long)
    x[1, -2:] = torch.tensor([3, 4])
    _, idx = SASRecTopK(m, 50)(x, no_ctx(x), torch.ones(2), torch.ones(51))
    assert torch.isfinite(m.encode(x)).all()
    assert (idx != 0).all()
    assert not set(idx[1, :48].tolist()) & {3, 4}  # seen items last, behind every unseen item


def test_seen_items_kept_when_not_excluded() -> None:
    m = model()
    x = torch.randint(1, 51, (3, 6))
    keep_scores, keep = SASRecTopK(m, 10)(x, no_ctx(x), torch.zeros(3), torch.ones(51))
    _, drop = SASRecTopK(m, 10)(x, no_ctx(x), torch.ones(3), torch.ones(51))
    logits = m(x)[:, -1]  # (B, V+1)
    for row in range(3):
        seen = set(x[row].tolist())
        assert not seen & set(drop[row].tolist())
        # without the filter, the top 10 are exactly the 10 best real items, seen or not
        best = torch.topk(logits[row, 1:], 10).indices + 1
        assert keep[row].tolist() == best.tolist()
        assert torch.allclose(keep_scores[row], logits[row, best], atol=1e-5)


def test_blocked_items_never_recommended() -> None:
    m = model()
    x = torch.randint(1, 51, (4, 6))
    allowed = torch.ones(51)
    allowed[1:41] = 0.0  # only items 41..50 may be recommended
    scores, idx = SASRecTopK(m, 10)(x, no_ctx(x), torch.zeros(4), allowed)
    top = set(idx[scores > -1e8].tolist())
    assert top <= set(range(41, 51))
    assert (idx[0].sort().values == torch.arange(41, 51)).all()  # all ten allowed items, seen filter off


def test_side_information_changes_the_encoding() -> None:
    torch.manual_seed(0)
    cfg = SASRecConfig(n_items=50, max_len=12, d_model=16, n_channels=4, n_gap_buckets=8, n_categories=5)
    m = SASRec(cfg).eval()
    x = torch.randint(1, 51, (2, 6))
    ctx = torch.randint(0, 5, (2, 6, 3))
    base = m.encode(x, ctx)
    other = ctx.clone()
    other[:, :, 1] = (other[:, :, 1] % 4) + 1  # different channels
    assert not torch.allclose(base, m.encode(x, other))
    m.set_item_categories(torch.randint(1, 6, (51,)))
    assert not torch.allclose(base, m.encode(x, ctx))  # categories come from the items themselves
    # a table the config does not enable is ignored: event types here
    ignored = ctx.clone()
    ignored[:, :, 0] = 1
    assert torch.allclose(m.encode(x, ctx), m.encode(x, ignored))


def test_without_item_identity_only_categories_and_context_tell_items_apart() -> None:
    torch.manual_seed(0)
    cfg = SASRecConfig(
        n_items=50, max_len=12, d_model=16, n_gap_buckets=8, n_categories=5, item_identity=False
    )
    m = SASRec(cfg).eval()
    assert m.item_emb.weight.shape == (2, 16)  # padding + one shared row, not one per item
    m.set_item_categories(torch.arange(51) % 5 + 1)  # item i has category i % 5 + 1
    x = torch.tensor([[0, 3, 7, 12], [0, 0, 9, 21]])
    same_categories = x + 5 * (x != 0)  # other items, same categories
    ctx = torch.randint(0, 8, (2, 4, 3))
    assert torch.allclose(m.encode(x, ctx), m.encode(same_categories, ctx), atol=1e-6)
    assert not torch.allclose(m.encode(x, ctx), m.encode(x + (x != 0), ctx))  # other categories
    net = IntentNet(
        IntentConfig(n_items=50, n_features=3, n_event_types=0, d_model=8, hidden=8, item_identity=False)
    )
    assert net.encoder.item_emb.weight.shape == (2, 8)


def test_revisit_features_count_the_newest_items_earlier_occurrences_by_age() -> None:
    torch.manual_seed(0)
    cfg = IntentConfig(
        n_items=20, n_features=2, n_event_types=0, max_len=6, d_model=8, hidden=8, revisit_features=3
    )
    net = IntentNet(cfg).eval()
    x = torch.tensor([[0, 5, 3, 5, 7, 5], [0, 0, 4, 3, 2, 1], [0, 0, 0, 0, 0, 0]])
    got = net.revisits(x)  # every age weighs 1 at the start: log(1 + the number of earlier occurrences)
    assert torch.allclose(got[0], torch.full((3,), math.log(3.0)))
    assert torch.equal(got[1], torch.zeros(3)) and torch.equal(got[2], torch.zeros(3))  # none; padding only
    with torch.no_grad():
        net.revisit_age[4] = -30.0  # the occurrence 4 events back stops counting
    assert torch.allclose(net.revisits(x)[0], torch.full((3,), math.log(2.0)), atol=1e-6)
    assert net(x, no_ctx(x), torch.rand(3, 2)).shape == (3,)


def test_intent_net_ignores_sequence_of_empty_history() -> None:
    torch.manual_seed(0)
    net = IntentNet(IntentConfig(n_items=20, n_features=4, n_event_types=2, d_model=8, hidden=8)).eval()
    f = torch.rand(2, 4)
    empty_short, empty_long = torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 9, dtype=torch.long)
    out = net(empty_short, no_ctx(empty_short), f)
    assert out.shape == (2,) and torch.allclose(out, net(empty_long, no_ctx(empty_long), f), atol=1e-6)


def test_losses_are_finite_and_train() -> None:
    from models.sasrec import full_ce_loss, gbce_loss, sampled_softmax_loss

    torch.manual_seed(0)
    table = torch.randn(21, 8, requires_grad=True)
    h = torch.randn(6, 8)
    target = torch.randint(1, 21, (6,))
    log_q = torch.log(torch.full((21,), 1 / 20))
    log_q[0] = -float("inf")
    for loss in (
        full_ce_loss(h, target, table),
        sampled_softmax_loss(h, target, table, log_q, 16),
        gbce_loss(h, target, table, 16, t=0.75),
    ):
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, table)
        assert torch.isfinite(grad).all() and grad[0].abs().sum() == 0  # padding row never scored


def test_sampled_softmax_with_many_uniform_negatives_approaches_full_ce() -> None:
    from models.sasrec import full_ce_loss, sampled_softmax_loss

    torch.manual_seed(0)
    table, h = torch.randn(11, 4), torch.randn(64, 4)
    target = torch.randint(1, 11, (64,))
    log_q = torch.log(torch.full((11,), 1 / 10))
    log_q[0] = -float("inf")
    full = full_ce_loss(h, target, table)
    sampled = torch.stack([sampled_softmax_loss(h, target, table, log_q, 2000) for _ in range(5)]).mean()
    assert abs(float(sampled) - float(full)) < 0.15 * float(full)


def test_ce_without_seen_items_is_ce_over_the_unseen_ones() -> None:
    import torch.nn.functional as F

    from models.sasrec import MASK_VALUE, full_ce_loss, input_prefixes

    torch.manual_seed(0)
    table, h = torch.randn(8, 4), torch.randn(3, 4)
    target = torch.tensor([5, 2, 3])
    seen = torch.tensor([[1, 2, 0], [4, 0, 0], [3, 6, 7]])  # last row: target 3 was seen before (a repeat)
    logits = h @ table.T
    logits[:, 0] = MASK_VALUE
    expected = []
    for row, drop in enumerate(([1, 2], [4], [6, 7])):  # a seen target stays a class of its own row
        keep = torch.ones(8, dtype=torch.bool)
        keep[drop] = False
        keep[0] = False
        kept = logits[row][keep]
        expected.append(-F.log_softmax(kept, 0)[int(keep[: target[row]].sum())])
    assert torch.allclose(full_ce_loss(h, target, table, seen), torch.stack(expected).mean(), atol=1e-5)
    assert full_ce_loss(h, target, table, seen) < full_ce_loss(h, target, table)  # fewer competitors
    x = torch.tensor([[0, 4, 9]])
    assert input_prefixes(x).tolist() == [[[0, 0, 0], [0, 4, 0], [0, 4, 9]]]


def _brute_repeat_counts(m: SASRec, x: torch.Tensor) -> torch.Tensor:
    """(B, T, V+1): Σ softplus(age weight) over each item's occurrences at or before every position."""
    w = torch.nn.functional.softplus(m.repeat_age)
    B, T = x.shape
    out = torch.zeros(B, T, m.cfg.n_items + 1)
    for b in range(B):
        for t in range(T):
            for s in range(t + 1):
                if x[b, s]:
                    out[b, t, x[b, s]] += w[min(t - s, m.cfg.max_len - 1)]
    return out


def test_repeat_head_bonus_is_causal_and_every_candidate_layout_agrees() -> None:
    m = model(repeat_head=True)
    with torch.no_grad():
        m.repeat_age.copy_(torch.linspace(1.0, -2.0, 12))  # weights that differ by age
        m.repeat_gate.bias.fill_(0.7)
    x = torch.tensor([[0, 0, 3, 5, 3, 7, 3, 5], [1, 2, 3, 4, 5, 6, 7, 8]])
    rows = torch.ones_like(x, dtype=torch.bool)
    rows[0, :2] = False  # padding positions have no target
    h = m.encode(x)[rows]  # (N, D)
    gate = torch.nn.functional.softplus(m.repeat_gate(h))  # (N, 1)
    expected = gate * torch.log1p(_brute_repeat_counts(m, x)[rows])  # (N, V+1)
    bonus = m.repeat_bonus(x, h, rows)
    cand = torch.tensor([3, 5, 7, 9, 1])
    assert torch.allclose(bonus(None), expected, atol=1e-5)
    assert torch.allclose(bonus(cand), expected[:, cand], atol=1e-5)
    per_row = cand[None].repeat(h.shape[0], 1).roll(1, dims=1)  # (N, C)
    assert torch.allclose(bonus(per_row), expected.gather(1, per_row), atol=1e-5)
    assert expected[0, 3] > 0 and expected[0, 5] == 0  # row 0 = position 2: only item 3 so far


def test_repeat_head_serving_scores_equal_the_last_position_logits() -> None:
    m = model(repeat_head=True)
    with torch.no_grad():
        m.repeat_gate.bias.fill_(3.0)  # a strong pull to repeats
    x = torch.tensor([[0, 0, 4, 9, 4, 2], [6, 6, 6, 6, 1, 2]])
    logits = m(x)[:, -1]  # (B, V+1)
    scores, idx = SASRecTopK(m, 5)(x, no_ctx(x), torch.zeros(2), torch.ones(51))
    assert torch.allclose(scores, logits.gather(1, idx), atol=1e-5)
    assert idx[0, 0] == 4 and idx[1, 0] == 6  # the most repeated item comes first
    _, dropped = SASRecTopK(m, 5)(x, no_ctx(x), torch.ones(2), torch.ones(51))
    assert not set(dropped[0].tolist()) & {4, 9, 2}  # the seen filter still wins over the bonus


def test_losses_accept_the_repeat_bonus() -> None:
    from models.sasrec import full_ce_loss, gbce_loss, sampled_softmax_loss

    m = model(repeat_head=True).train()
    x = torch.randint(1, 51, (3, 8))
    y = torch.randint(1, 51, (3, 8))
    rows = torch.ones_like(x, dtype=torch.bool)
    table = m.item_emb.weight
    log_q = torch.full((51,), -float(torch.log(torch.tensor(50.0))))
    log_q[0] = -float("inf")
    for loss_fn in (
        lambda h, b: full_ce_loss(h, y[rows], table, None, b),
        lambda h, b: sampled_softmax_loss(h, y[rows], table, log_q, 16, b),
        lambda h, b: gbce_loss(h, y[rows], table, 16, 0.75, b),
    ):
        m.zero_grad()
        h = m.encode(x)[rows]
        loss = loss_fn(h, m.repeat_bonus(x, h, rows))
        loss.backward()
        assert torch.isfinite(loss)
        assert m.repeat_age.grad is not None and m.repeat_age.grad.abs().sum() > 0
        assert m.repeat_gate.weight.grad is not None and m.repeat_gate.weight.grad.abs().sum() > 0


def test_repeat_head_runs_under_bf16_autocast_and_keeps_its_bonus_in_float32() -> None:
    """Mixed-precision training: the bonus's scatter must not mix dtypes, and its counts stay float32."""
    m = model(repeat_head=True)
    x = torch.tensor([[0, 3, 5, 3, 7, 3]])
    rows = x > 0
    with torch.no_grad():
        exact = m.repeat_bonus(x, m.encode(x)[rows], rows)(None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = m.encode(x)
            bonus = m.repeat_bonus(x, h[rows], rows)
            dense, shared = bonus(None), bonus(torch.tensor([3, 5, 9]))
            scores, idx = SASRecTopK(m, 5)(x, no_ctx(x), torch.zeros(1), torch.ones(51))
    assert dense.dtype == shared.dtype == torch.float32
    assert torch.allclose(dense, exact, atol=0.05)  # only the gate's input went through bf16
    assert torch.allclose(shared, dense[:, [3, 5, 9]])
    assert torch.isfinite(scores).all() and idx.shape == (1, 5)

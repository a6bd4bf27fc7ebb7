"""The item-neighbour blend of the recommender (``model.knn_neighbours``): its scores are ItemKNN's, weight 0
is the network's own ranking, the weight is chosen on validation, and it ships inside the ONNX graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from pydantic import ValidationError

from models.sasrec import SASRec, SASRecTopK
from models.spec import SASRecConfig
from training import export as ex
from training.baselines import ItemKNN, cooccurrence
from training.config import load_config
from training.train import BLEND_WEIGHTS, BLENDED_CHECKPOINT, METRICS_FILE, neighbour_table, train


def _histories(rng: np.random.Generator, n: int, t: int, v: int) -> np.ndarray:
    x = rng.integers(1, v + 1, size=(n, t))
    for i, pad in enumerate(rng.integers(0, t - 1, size=n)):
        x[i, :pad] = 0  # left padding of random length, at least two items kept
    return x


def test_neighbour_scores_are_itemknns_scores() -> None:
    rng = np.random.default_rng(0)
    v, t, n_nb = 30, 8, 5
    train_x = _histories(rng, 60, t, v)
    rows, cols = np.nonzero(train_x)
    knn = ItemKNN(k=v, exclude_seen=False, neighbours=n_nb, decay=0.7, window=3)
    knn.fit_cooccurrence(*cooccurrence(rows, train_x[rows, cols], len(train_x), v, 3))
    index, similarity = neighbour_table(knn.sim_, n_nb)
    assert (np.count_nonzero(similarity, axis=1) <= n_nb).all()
    net = SASRec(SASRecConfig(n_items=v, max_len=t, d_model=8, n_heads=1, n_layers=1, knn_neighbours=n_nb))
    assert net.neighbours is not None
    net.neighbours.set_neighbours(torch.from_numpy(index), torch.from_numpy(similarity), 0.7)
    x = _histories(rng, 16, t, v)
    got = net.neighbours.scores(torch.from_numpy(x)).numpy()
    r, c = np.nonzero(x)
    w = 0.7 ** np.arange(t - 1, -1, -1)
    h = sp.csr_matrix((w[c], (r, x[r, c])), shape=(len(x), v + 1))
    want = np.asarray((h @ knn.sim_).todense())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_neighbour_table_refuses_rows_longer_than_it() -> None:
    sim = sp.csr_matrix(np.array([[0, 0.5, 0.2], [0.5, 0, 0.1], [0.2, 0.1, 0]], dtype=np.float32))
    index, similarity = neighbour_table(sim, 2)
    assert index.tolist() == [[1, 2], [0, 2], [0, 1]]
    np.testing.assert_allclose(similarity, [[0.5, 0.2], [0.5, 0.1], [0.2, 0.1]])
    with pytest.raises(ValueError, match="more than the table's 1"):
        neighbour_table(sim, 1)


def test_weight_zero_ranks_as_the_network_alone() -> None:
    rng = np.random.default_rng(1)
    v, t = 40, 10
    torch.manual_seed(0)
    cfg = dict(n_items=v, max_len=t, d_model=8, n_heads=1, n_layers=1)
    plain = SASRec(SASRecConfig(**cfg)).eval()
    blended = SASRec(SASRecConfig(**cfg, knn_neighbours=4)).eval()
    blended.load_state_dict(plain.state_dict(), strict=False)
    assert blended.neighbours is not None
    index = torch.from_numpy(rng.integers(1, v + 1, size=(v + 1, 4)))
    blended.neighbours.set_neighbours(index, torch.rand(v + 1, 4), 0.8)
    x = torch.from_numpy(_histories(rng, 12, t, v))
    ctx = torch.zeros(12, t, 3, dtype=torch.long)
    flag, allowed = torch.ones(12), torch.ones(v + 1)
    with torch.no_grad():
        want = SASRecTopK(plain, 10)(x, ctx, flag, allowed)[1]
        assert torch.equal(SASRecTopK(blended, 10)(x, ctx, flag, allowed)[1], want)  # weight 0
        blended.neighbours.weight.fill_(5.0)
        assert not torch.equal(SASRecTopK(blended, 10)(x, ctx, flag, allowed)[1], want)


def test_blend_needs_a_validation_split() -> None:
    with pytest.raises(ValidationError, match="knn_neighbours"):
        load_config("recommender", None, ["model.knn_neighbours=50", "train.fit_on=train+val"])


def test_blend_is_chosen_on_validation_and_exports_with_parity(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    overrides = [
        f"data.features_dir={tiny_pipeline.features}",
        "train.max_epochs=2",
        "model.d_model=16",
        "model.knn_neighbours=20",
    ]
    run = train(load_config("recommender", None, overrides), tmp_path / "runs", progress_bar=False)
    metrics = json.loads((run.run_dir / METRICS_FILE).read_text())
    blend = metrics["blend"]
    by_weight = {float(w): v for w, v in blend["val_ndcg@10_by_weight"].items()}
    assert sorted(by_weight) == sorted(BLEND_WEIGHTS)
    assert blend["weight"] == min(w for w, v in by_weight.items() if v == max(by_weight.values()))
    assert metrics["model"]["val"]["ndcg@10"] == pytest.approx(by_weight[blend["weight"]])
    assert metrics["network"]["val"]["ndcg@10"] == pytest.approx(by_weight[0.0])  # the network alone
    assert {"test"} <= metrics["network"].keys()
    assert Path(metrics["checkpoint"]).name == BLENDED_CHECKPOINT
    e = ex.rebuild(run.run_dir)
    net = cast(SASRec, e.module.model)
    assert net.neighbours is not None
    assert float(net.neighbours.weight) == blend["weight"]
    assert float(net.neighbours.decay) == blend["decay"]
    assert net.neighbours.similarity.count_nonzero() > 0  # fitted, and saved in the checkpoint export reads
    net.neighbours.weight.fill_(1.0)  # a nonzero weight whatever validation chose: the blend is in the graph
    path = tmp_path / "m.onnx"
    ex.to_onnx(e, path)
    ex.check_parity(e, path, seed=3)  # raises on a mismatch

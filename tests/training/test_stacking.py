"""Selection among the network, the scikit-learn baselines and their stack; ONNX components and composition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from data_prep import schema as S
from models.intent import IntentNet, IntentProbability
from models.spec import NET, IntentConfig, Stack
from training.baselines import gradient_boosting_baseline, logistic_regression_baseline
from training.export import Exported, check_parity, to_onnx
from training.stacking import apply_stack, choose_model, compose, convert_components, run_component

N_FEATURES = len(S.INTENT_FEATURES)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.gamma(1.0, 5.0, size=(n, N_FEATURES))
    z = 0.4 * (x[:, 0] - 5) - 0.3 * (x[:, 1] - 5) + rng.normal(0, 1.5, n)
    return x, (z > 0).astype(int)


@pytest.fixture(scope="module")
def fitted() -> dict[str, object]:
    x, y = _data(1500, 0)
    return {
        "logistic_regression": logistic_regression_baseline(0).fit(x, y),
        "gradient_boosting": gradient_boosting_baseline(0).fit(x, y),
    }


def test_components_convert_to_onnx_matching_scikit_learn(fitted: dict, tmp_path: Path) -> None:
    x, _ = _data(500, 1)
    paths, record = convert_components(fitted, x, tmp_path)
    assert set(paths) == set(fitted)
    for name, path in paths.items():
        want = fitted[name].predict_proba(x.astype(np.float32).astype(np.float64))[:, 1]
        np.testing.assert_allclose(run_component(path, x), want, atol=1e-4)
        assert record[name]["max_abs_diff"] <= 1e-4
        assert run_component(path, x[:1]).shape == (1,)  # a batch of one keeps its batch axis


def test_a_conversion_that_disagrees_is_left_out(
    fitted: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import stacking

    wrong = stacking.to_onnx_component(fitted["logistic_regression"], N_FEATURES)
    # failure injection: the converter hands back another model's graph for gradient boosting
    monkeypatch.setattr(stacking, "to_onnx_component", lambda model, n: wrong)
    x, _ = _data(200, 2)
    paths, record = convert_components({"gradient_boosting": fitted["gradient_boosting"]}, x, tmp_path)
    assert paths == {} and "left_out" in record["gradient_boosting"]
    assert record["gradient_boosting"]["max_abs_diff"] > stacking.CONVERSION_ATOL
    assert not (tmp_path / stacking.COMPONENTS_DIR / "gradient_boosting.onnx").exists()


def test_selection_scores_the_stack_out_of_fold_and_keeps_a_clear_winner_alone() -> None:
    rng = np.random.default_rng(3)
    n = 4000
    y = rng.integers(0, 2, n)
    strong = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.2, n), 0.01, 0.99)
    noise = {f"noise{i}": rng.uniform(0.01, 0.99, n) for i in range(2)}
    stack, p, record = choose_model(y, {NET: strong} | noise)
    assert record["shipped"] == NET and stack == Stack() and p is not None
    np.testing.assert_array_equal(p, strong)
    assert set(record["candidates"]) == {NET, "noise0", "noise1", "stack"}
    # two informative, complementary components: the stack wins, scored out of fold (below its in-sample AUC)
    a = np.clip(0.5 + (y - 0.5) * 0.3 + rng.normal(0, 0.25, n), 0.01, 0.99)
    b = np.clip(0.5 + (y - 0.5) * 0.3 + rng.normal(0, 0.25, n), 0.01, 0.99)
    stack, p, record = choose_model(y, {NET: a, "gradient_boosting": b})
    assert record["shipped"] == "stack" and stack.components == (NET, "gradient_boosting")
    from sklearn.metrics import roc_auc_score

    in_sample = roc_auc_score(y, apply_stack(stack, {NET: a, "gradient_boosting": b}))
    assert record["candidates"]["stack"]["val_roc_auc"] <= in_sample
    assert record["candidates"]["stack"]["val_roc_auc"] > max(roc_auc_score(y, a), roc_auc_score(y, b))


def test_composed_graph_outputs_the_stack_and_passes_parity(fitted: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = IntentConfig(
        n_items=12, n_features=N_FEATURES, n_event_types=5, d_model=16, n_layers=1, max_len=8, hidden=8,
        activity_weeks=S.ACTIVITY_WEEKS, activity_measures=len(S.ACTIVITY_MEASURES),
    )  # fmt: skip
    head = IntentProbability(IntentNet(cfg)).eval()
    e = Exported("intent", head, ["item_idx", "ctx_idx", "features"], ["probability"], 8, 12, 5, N_FEATURES)
    x, _ = _data(300, 4)
    paths, _ = convert_components(fitted, x, tmp_path)
    stack = Stack((NET, "logistic_regression", "gradient_boosting"), (0.7, 0.5, 1.2), -0.3)
    plain, graph = tmp_path / "net.onnx", tmp_path / "model.onnx"
    to_onnx(e, plain)
    compose(plain, stack, paths, graph)  # the network's graph is read, the composed one written beside it
    parity = check_parity(e, graph, stack=stack, components=paths)
    assert parity["max_abs_diff"] <= 1e-4
    # by hand: the composed output is the stack of the network's graph and the components' graphs
    rng = np.random.default_rng(5)
    items = rng.integers(1, 13, size=(4, 8))
    ctx = np.ones((4, 8, 3), dtype=np.int64)
    feeds = {"item_idx": items, "ctx_idx": ctx, "features": x[:4].astype(np.float32)}
    (got,) = ort.InferenceSession(str(graph)).run(None, feeds)
    (net,) = ort.InferenceSession(str(plain)).run(None, feeds)
    parts = {NET: net.astype(np.float64)} | {n: run_component(p, x[:4]) for n, p in paths.items()}
    np.testing.assert_allclose(got, apply_stack(stack, parts), atol=1e-5)
    assert not np.allclose(got, net, atol=1e-3)  # the stack is not the network alone
    # a confident component (probability 1.0 in float32) sits at the clip bound: the graph computes its
    # logit in double precision as apply_stack does (in float32, 1 − 1e-6 moves that logit by 0.013)
    sure = x[:4].copy()
    sure[:, 0] = 1e4
    feeds["features"] = sure.astype(np.float32)
    assert (run_component(paths["logistic_regression"], sure) == 1.0).all()
    (got,) = ort.InferenceSession(str(graph)).run(None, feeds)
    (net,) = ort.InferenceSession(str(plain)).run(None, feeds)
    parts = {NET: net.astype(np.float64)} | {n: run_component(p, sure) for n, p in paths.items()}
    np.testing.assert_allclose(got, apply_stack(stack, parts), atol=1e-6)


def test_validation_with_one_class_ships_the_network() -> None:
    y = np.zeros(50, dtype=int)
    p = {NET: np.full(50, 0.2), "gradient_boosting": np.full(50, 0.1)}
    stack, q, record = choose_model(y, p)
    assert stack == Stack() and record["shipped"] == NET and "one class" in record["rule"]
    np.testing.assert_array_equal(q, p[NET])

"""Honest selection of the shipped intent model among the network, the scikit-learn baselines and a stack.

The candidates are each component alone — the sequence network, logistic regression and gradient boosting
on the aggregates, all fitted on the training cutoffs only — and a stack: logistic regression on the
components' logits, fitted on the validation split. Every candidate is scored on validation; the stack's
score is out-of-fold (K folds inside validation: fitted on K − 1, scored on the held-out one), so it earns
no credit for fitting validation. The candidate with the best validation ROC-AUC is shipped; its weights
(:class:`models.spec.Stack`) travel in the spec, and the exporter composes the network's graph with the
components' ONNX graphs (converted here by skl2onnx, each checked against scikit-learn) into one graph with
the network's inputs and output, so serving stays ONNX-only and unchanged.

One caveat, stated in the metrics: the network's epoch was early-stopped on validation ROC-AUC, so its
validation figure is slightly optimistic beside the baselines' (which never saw validation).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from models.calibration import EPS, logit
from models.spec import NET, Stack

N_FOLDS = 5
CONVERSION_ATOL = 1e-4  # |ONNX − scikit-learn| probability on validation rows, else the component is dropped
COMPONENTS_DIR = "components"  # a run's converted components: components/<name>.onnx


def stack_features(p: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """(N, K) logits of the components' probabilities, in ``names`` order."""
    return np.column_stack([logit(p[n]) for n in names])


def apply_stack(stack: Stack, p: Mapping[str, np.ndarray]) -> np.ndarray:
    """The stack's probability from its components' probabilities (what the composed graph computes)."""
    z = stack_features(p, stack.components) @ np.asarray(stack.weights) + stack.bias
    return 1.0 / (1.0 + np.exp(-z))


def fit_stack(y: np.ndarray, p: Mapping[str, np.ndarray], names: Sequence[str], seed: int) -> Stack:
    """Logistic regression of ``y`` on the components' logits (lightly regularised: few inputs, many rows)."""
    lr = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(stack_features(p, names), y)
    return Stack(tuple(names), tuple(float(w) for w in lr.coef_[0]), float(lr.intercept_[0]))


def choose_model(
    y_val: np.ndarray, p_val: Mapping[str, np.ndarray], seed: int = 0
) -> tuple[Stack, np.ndarray, dict[str, Any]]:
    """The shipped candidate, its validation probabilities (out-of-fold for the stack: what calibration is
    fitted on) and the record of every candidate's validation ROC-AUC and log-loss.

    ``p_val``: validation probabilities of each component (``net`` first). With too few positives or
    negatives for K folds the stack is not a candidate."""
    y = np.asarray(y_val).astype(int)
    names = list(p_val)
    if len(np.unique(y)) < 2:  # no ranking to compare on: the network, as trained
        why = "validation holds one class only: no candidate can be compared, the network is shipped"
        return Stack(), np.asarray(p_val[NET], dtype=np.float64), {"shipped": NET, "rule": why}
    scored: dict[str, tuple[float, float, Stack, np.ndarray]] = {}
    for n in names:
        q = np.asarray(p_val[n], dtype=np.float64)
        scored[n] = (float(roc_auc_score(y, q)), float(log_loss(y, q, labels=[0, 1])), Stack.single(n), q)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if len(names) > 1 and min(n_pos, n_neg) >= N_FOLDS:
        oof = np.zeros(len(y))
        folds = StratifiedKFold(n_splits=N_FOLDS, shuffle=True, random_state=seed)
        for fit_idx, held_idx in folds.split(oof, y):
            fitted = fit_stack(y[fit_idx], {n: np.asarray(p_val[n])[fit_idx] for n in names}, names, seed)
            oof[held_idx] = apply_stack(fitted, {n: np.asarray(p_val[n])[held_idx] for n in names})
        stack = fit_stack(y, p_val, names, seed)
        scored["stack"] = (float(roc_auc_score(y, oof)), float(log_loss(y, oof, labels=[0, 1])), stack, oof)
    best = max(scored, key=lambda n: scored[n][0])
    record = {
        "shipped": best,
        "rule": f"best validation ROC-AUC (the stack's out-of-fold over {N_FOLDS} folds)",
        "candidates": {n: {"val_roc_auc": s[0], "val_log_loss": s[1]} for n, s in scored.items()},
        "weights": scored[best][2].to_dict(),
        "caveat": "the network's epoch was early-stopped on validation ROC-AUC (slightly optimistic)",
    }
    return scored[best][2], scored[best][3], record


def _leaf_flags_as_ints() -> None:
    """skl2onnx 1.20 passes ``False`` (a bool) as a leaf's ``nodes_missing_value_tracks_true`` for
    histogram gradient boosting, which onnx ≥ 1.20 refuses in an integer attribute; wrap its ``add_node`` so
    the flag arrives as 0/1 (same meaning). Idempotent."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node
    if getattr(original, "o2o_int_flags", False):
        return

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    add_node.o2o_int_flags = True  # type: ignore[attr-defined]
    tree_ensemble.add_node = add_node


def to_onnx_component(model: Any, n_features: int) -> onnx.ModelProto:
    """A fitted scikit-learn classifier as an ONNX graph ``features`` (B, F) float32 → ``probability`` (B,).

    A pipeline whose first step is ``log1p`` (:func:`training.baselines.logistic_regression_baseline`) gets
    that step as ONNX operators (clip at 0, log(1 + x)) in front of its converted remainder."""
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    _leaf_flags_as_ints()
    steps: Any = model
    pre_log1p = isinstance(model, Pipeline) and getattr(model.steps[0][1], "func", None) is np.log1p
    if pre_log1p:
        steps = Pipeline(model.steps[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_sklearn(
            steps,
            initial_types=[("x", FloatTensorType([None, n_features]))],
            options={id(steps if not isinstance(steps, Pipeline) else steps.steps[-1][1]): {"zipmap": False}},
            target_opset={"": 21, "ai.onnx.ml": 3},
        )
    g = converted.graph
    prob_name = next(o.name for o in g.output if o.name != "label")
    nodes = list(g.node)
    constants = [helper.make_tensor("col1", TensorProto.INT64, [], [1])]  # scalar index: (B, 2) → (B,)
    front = [helper.make_node("Identity", ["features"], ["x"])]
    if pre_log1p:
        constants += [
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ]
        front = [
            helper.make_node("Max", ["features", "zero"], ["nonneg"]),
            helper.make_node("Add", ["nonneg", "one"], ["plus1"]),
            helper.make_node("Log", ["plus1"], ["x"]),
        ]
    back = [
        helper.make_node("Gather", [prob_name, "col1"], ["probability"], axis=1),  # the positive class
    ]
    graph = helper.make_graph(
        front + nodes + back,
        "component",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None])],
        initializer=[*g.initializer, *constants],
    )
    out = helper.make_model(graph, opset_imports=list(converted.opset_import))
    out.ir_version = converted.ir_version
    onnx.checker.check_model(out)
    return out


def run_component(path_or_model: Path | onnx.ModelProto, features: np.ndarray) -> np.ndarray:
    """(N,) probabilities of a component graph on a (N, F) matrix."""
    source = str(path_or_model) if isinstance(path_or_model, Path) else path_or_model.SerializeToString()
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    (p,) = sess.run(None, {"features": np.asarray(features, dtype=np.float32)})
    return np.asarray(p, dtype=np.float64).reshape(-1)


def convert_components(
    models: Mapping[str, Any], features: np.ndarray, run_dir: Path
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Convert each fitted model, check it against scikit-learn on ``features`` (validation rows, as float32:
    what serving feeds) and write ``components/<name>.onnx``; a model whose conversion disagrees beyond
    :data:`CONVERSION_ATOL` is left out (recorded), so it can never be shipped."""
    out_dir = run_dir / COMPONENTS_DIR
    out_dir.mkdir(exist_ok=True)
    x32 = np.asarray(features, dtype=np.float32)
    paths: dict[str, Path] = {}
    record: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        if name == NET:
            continue
        graph = to_onnx_component(model, x32.shape[1])
        want = model.predict_proba(x32.astype(np.float64))[:, 1]
        diff = float(np.abs(run_component(graph, x32) - want).max()) if len(x32) else 0.0
        record[name] = {"max_abs_diff": diff, "atol": CONVERSION_ATOL, "rows": len(x32)}
        if diff <= CONVERSION_ATOL:
            path = out_dir / f"{name}.onnx"
            onnx.save(graph, str(path))
            paths[name] = path
        else:
            record[name]["left_out"] = "its ONNX conversion disagrees with scikit-learn"
    return paths, record


def compose(net_graph: Path, stack: Stack, components: Mapping[str, Path], out: Path) -> None:
    """Rewrite the network's exported graph (inputs item_idx, ctx_idx, features → ``probability``) so it
    outputs the stack's probability: each component graph joins it under its own name prefix, reading the
    same ``features`` input, and σ(bias + Σ w·logit(clip(p))) replaces the output. The network alone: the
    graph is left as it is (copied to ``out``)."""
    from onnx import TensorProto, compose, helper

    if stack.is_net_only:
        if Path(out).resolve() != Path(net_graph).resolve():
            shutil.copyfile(net_graph, out)
        return
    model = onnx.load(str(net_graph))
    g = model.graph
    (out_name,) = [o.name for o in g.output]
    renamed = {out_name: "net/probability"}
    for node in g.node:
        node.output[:] = [renamed.get(n, n) for n in node.output]
    for node in g.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
    nodes, inits = list(g.node), list(g.initializer)
    opsets = {o.domain: o.version for o in model.opset_import}
    sources = {NET: "net/probability"}
    for name in stack.components:
        if name == NET:
            continue
        part = compose.add_prefix(onnx.load(str(components[name])), f"{name}/")
        nodes += [helper.make_node("Identity", ["features"], [f"{name}/features"]), *part.graph.node]
        inits += list(part.graph.initializer)
        for o in part.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
        sources[name] = f"{name}/probability"
    # the stack in double precision, as apply_stack computes it: a probability at the clip bound (a confident
    # component) has a logit of ±13.8, and 1 − EPS rounded to float32 would move that logit by 0.013
    double = TensorProto.DOUBLE
    inits += [
        helper.make_tensor("stack/lo", double, [], [EPS]),
        helper.make_tensor("stack/hi", double, [], [1 - EPS]),
        helper.make_tensor("stack/one", double, [], [1.0]),
        helper.make_tensor("stack/bias", double, [], [stack.bias]),
    ]
    terms = []
    for name, w in zip(stack.components, stack.weights, strict=True):
        q, t = f"stack/{name}/q", f"stack/{name}"
        inits.append(helper.make_tensor(f"{t}/w", double, [], [w]))
        nodes += [
            helper.make_node("Cast", [sources[name]], [f"{t}/p64"], to=double),
            helper.make_node("Clip", [f"{t}/p64", "stack/lo", "stack/hi"], [q]),
            helper.make_node("Sub", ["stack/one", q], [f"{t}/1-q"]),
            helper.make_node("Div", [q, f"{t}/1-q"], [f"{t}/odds"]),
            helper.make_node("Log", [f"{t}/odds"], [f"{t}/logit"]),
            helper.make_node("Mul", [f"{t}/logit", f"{t}/w"], [f"{t}/term"]),
        ]
        terms.append(f"{t}/term")
    nodes += [
        helper.make_node("Sum", [*terms, "stack/bias"], ["stack/z"]),
        helper.make_node("Sigmoid", ["stack/z"], ["stack/p64"]),
        helper.make_node("Cast", ["stack/p64"], [out_name], to=TensorProto.FLOAT),
    ]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(inits)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
    onnx.checker.check_model(model)
    onnx.save(model, str(out))

"""Export trained runs to an ONNX bundle, with a parity check against torch that fails the export.

Bundle layout (``artifacts/o2o/<version>/``)::

    bundle.json            spec and bundle version, data schema version, models (source run, graph inputs
                           and outputs, parity), data manifest (:class:`models.spec.BundleSpec`)
    model_card.md          what each model is for, its metrics beside baselines, known limits
    checksums.json         SHA-256 of every other file; checksums.sig: its HMAC-SHA256 (serving.checksums)
    recommender/model.onnx top-k head: (item_idx, ctx_idx, exclude_seen, allowed) → (scores, indices)
    recommender/config.json  the model's spec (:class:`models.spec.ServedRecommender`); recommender/items.parquet
    recommender/segment_popularity.parquet, recommender/assortment.parquet  (cold start, store filter)
    recommender/item_embeddings.npy  float32 (n_items + 1, d_model): the tied item table, row = item index
                           (row 0 padding); nearest neighbours for /similar-items
    intent/model.onnx      (item_idx, ctx_idx, features) → probability
    intent/config.json, intent/items.parquet  (:class:`models.spec.ServedIntent`); churn/: the same
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript.optimizer
import torch
import yaml

from data_prep import schema as S
from models.encoding import N_GAP_BUCKETS
from models.intent import IntentNet, IntentProbability
from models.sasrec import MASK_VALUE, SASRec, SASRecTopK
from models.spec import (
    INTENT_INPUTS,
    INTENT_OUTPUTS,
    NET,
    RECOMMENDER_INPUTS,
    RECOMMENDER_OUTPUTS,
    BundleModel,
    BundleSpec,
    IntentSpec,
    RecommenderSpec,
    RunSpec,
    ServedIntent,
    ServedRecommender,
    ServedSpec,
    SpecError,
    Stack,
    parse_run,
    role_of,
    to_json,
)
from serving.checksums import write_checksums
from training.metrics import headline_metrics
from training.stacking import COMPONENTS_DIR, apply_stack, compose, run_component
from training.train import CONFIG_FILE, METRICS_FILE, MODEL_FILE, SERVING_TABLES

__all__ = ["export_bundle", "rebuild", "write_checksums"]

BUNDLE_FILE = S.BUNDLE_FILE
CHECKSUMS_FILE = S.CHECKSUMS_FILE
CARD_FILE = S.MODEL_CARD_FILE
ONNX_FILE = S.ONNX_FILE
MODEL_CONFIG_FILE = S.MODEL_CONFIG_FILE
# 23: scaled_dot_product_attention and GELU export as ONNX's own Attention and Gelu operators (fused kernels in
# ONNX Runtime ≥ 1.23: a fifth fewer nodes, ~20% faster than the opset-18 decomposition)
OPSET = 23
PARITY_ATOL = 1e-4
MAX_K = S.MAX_K


class ExportParityError(RuntimeError):
    """ONNX Runtime and torch disagree beyond tolerance: the artifact is not written."""


@dataclass(frozen=True)
class Exported:
    task: str
    module: torch.nn.Module
    input_names: list[str]
    output_names: list[str]
    max_len: int
    n_items: int
    n_types: int
    n_features: int
    item_embeddings: np.ndarray | None = None  # (n_items + 1, D) float32; recommenders with item identity
    spec: RunSpec | None = None  # the run's model.json


def _state_dict(run_dir: Path, checkpoint: str) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def run_spec(run_dir: Path) -> RunSpec:
    """The run's validated ``model.json``; ValueError naming the file when it is not a spec of this version."""
    path = run_dir / MODEL_FILE
    try:
        return parse_run(json.loads(path.read_text()))
    except (SpecError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a model spec this code reads ({e}); retrain the run") from None


def rebuild(run_dir: Path) -> Exported:
    """Rebuild the serving head of a run from its ``model.json`` and best checkpoint (eval mode)."""
    spec = run_spec(run_dir)
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    weights = _state_dict(run_dir, metrics["checkpoint"])
    embeddings = None
    if isinstance(spec, RecommenderSpec):
        net = SASRec(spec.model_config)
        net.load_state_dict(weights)
        head: torch.nn.Module = SASRecTopK(net, MAX_K)
        names = (list(RECOMMENDER_INPUTS), list(RECOMMENDER_OUTPUTS))
        n_features = 0
        if net.cfg.item_identity:  # else one shared row: no per-item vectors to compare
            embeddings = net.item_emb.weight.detach().cpu().numpy().astype(np.float32)  # (V+1, D)
    else:
        inet = IntentNet(spec.model_config)
        inet.load_state_dict(weights)
        head = IntentProbability(inet)
        names = (list(INTENT_INPUTS), list(INTENT_OUTPUTS))
        n_features = spec.model_config.n_features
    mc = spec.model_config
    n_types = len(spec.type_names)
    return Exported(
        spec.task, head.eval(), *names, mc.max_len, mc.n_items, n_types, n_features, embeddings, spec
    )


def example_inputs(e: Exported, batch: int, length: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random valid inputs: left-padded histories (some rows padding only), types, and the model's other
    inputs (recommender: seen flags and an allowed-items mask that blocks about a tenth of the catalogue)."""
    items = (
        rng.integers(1, e.n_items + 1, size=(batch, length)) if e.n_items else np.zeros((batch, length), int)
    )
    n_pad = rng.integers(0, length + 1, size=batch)
    n_pad[0] = 0  # at least one full row
    items[np.arange(length)[None, :] < n_pad[:, None]] = 0
    sizes = (e.n_types, len(S.CHANNELS), N_GAP_BUCKETS)  # context columns: type, channel, time gap
    ctx = np.stack([rng.integers(1, n + 1, size=(batch, length)) for n in sizes], axis=2)
    ctx = np.where(items[:, :, None] > 0, ctx, 0)
    if e.task == "recommender":
        flags = rng.integers(0, 2, size=batch).astype(np.float32)
        allowed = (rng.random(e.n_items + 1) > 0.1).astype(np.float32)
        return [items.astype(np.int64), ctx.astype(np.int64), flags, allowed]
    feats = rng.gamma(1.0, 5.0, size=(batch, e.n_features)).astype(np.float32)
    return [items.astype(np.int64), ctx.astype(np.int64), feats]


def to_onnx(e: Exported, path: Path) -> None:
    """Dynamo export with dynamic batch and sequence length."""
    rng = np.random.default_rng(0)
    args = tuple(torch.from_numpy(a) for a in example_inputs(e, 3, min(e.max_len, 5), rng))
    batch = torch.export.Dim("batch", min=1)
    seq = torch.export.Dim("seq", min=1, max=e.max_len)
    dyn = {
        e.input_names[0]: {0: batch, 1: seq},
        e.input_names[1]: {0: batch, 1: seq},
        e.input_names[2]: {0: batch},
    }
    if len(e.input_names) > 3:
        dyn[e.input_names[3]] = {}  # the allowed-items mask has the catalogue's fixed size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            e.module,
            args,
            str(path),
            dynamo=True,
            input_names=e.input_names,
            output_names=e.output_names,
            dynamic_shapes=dyn,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    fold_weight_slices(path)


def fold_weight_slices(path: Path) -> None:
    """Fold the graph's constant subexpressions of weights into initializers, however large: the last
    block's query and key/value weights are slices of its ``qkv`` weight (``SASRec.encode_last``), which the
    exporter's own folding (8,192 elements at most) leaves as ``Slice`` operators, and the int8 quantiser
    quantises only matrix multiplications whose weight is an initializer."""
    model = onnx.load(str(path))
    onnx.save(onnxscript.optimizer.optimize(model, input_size_limit=1 << 26), str(path))


def _tied(scores: np.ndarray) -> np.ndarray:
    """(B, k) True where a score is within tolerance of its neighbour (its rank may legitimately swap)."""
    gap = np.abs(np.diff(scores, axis=1)) <= PARITY_ATOL  # (B, k-1)
    pad = np.zeros((len(scores), 1), dtype=bool)
    return np.concatenate([gap, pad], axis=1) | np.concatenate([pad, gap], axis=1)


def component_graphs(run_dir: Path, stack: Stack) -> dict[str, Path]:
    """The run's converted component graphs the shipped stack needs (``components/<name>.onnx``)."""
    paths = {n: run_dir / COMPONENTS_DIR / f"{n}.onnx" for n in stack.components if n != NET}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing} not found: the run's shipped stack needs them; retrain the run")
    return paths


def check_parity(
    e: Exported,
    path: Path,
    seed: int = 0,
    stack: Stack | None = None,
    components: dict[str, Path] | None = None,
) -> dict[str, float]:
    """Compare ONNX Runtime with torch on random batches, batch 1 and length 1 included.

    Scores/probabilities must agree within ``PARITY_ATOL``; top-k indices must agree except where two
    scores tie within tolerance. A stacked intent graph is compared with the stack computed outside it:
    the network in torch, each component's own graph (itself checked against scikit-learn at training).
    Raises :class:`ExportParityError` otherwise.
    """
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    shapes = [(1, 1), (1, e.max_len), (7, 1), (5, min(3, e.max_len)), (64, e.max_len)]
    worst = 0.0
    for b, t in shapes:
        inputs = example_inputs(e, b, t, rng)
        with torch.no_grad():
            ref = e.module(*[torch.from_numpy(a) for a in inputs])
        ref_out = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        if stack is not None and not stack.is_net_only:
            parts = {NET: ref_out[0].astype(np.float64)}
            parts |= {n: run_component(p, inputs[2]) for n, p in (components or {}).items()}
            ref_out[0] = apply_stack(stack, parts)
        got = sess.run(None, dict(zip(e.input_names, inputs, strict=True)))
        if any(np.isnan(g).any() for g in got):
            raise ExportParityError(f"ONNX output has NaN for batch={b}, length={t}")
        diff = float(np.abs(got[0] - ref_out[0]).max())
        worst = max(worst, diff)
        if diff > PARITY_ATOL:
            raise ExportParityError(
                f"max |onnx - torch| = {diff:.2e} > {PARITY_ATOL} for batch={b}, length={t}"
            )
        if e.task == "recommender" and ((got[1] != ref_out[1]) & ~_tied(ref_out[0])).any():
            raise ExportParityError(f"top-k indices differ for batch={b}, length={t}")
    return {"max_abs_diff": worst, "n_shapes": len(shapes), "atol": PARITY_ATOL}


def _model_card(version: str, models: list[tuple[BundleModel, dict[str, Any]]]) -> str:
    """The bundle's model card from each model's entry and its run's metrics."""
    lines = [f"# O2O Sequence Lab model bundle `{version}`", ""]
    for info, m in models:
        names = headline_metrics(m["task"], int(m.get("k", 10)))
        lines += [f"## {info.role}", "", f"- Source run: `{info.run_id}`; protocol: {m['protocol']}"]
        lines += [f"- Inputs: {', '.join(info.inputs)}; outputs: {', '.join(info.outputs)}"]
        lines += [f"- Parity ONNX Runtime vs torch: max |diff| {info.parity['max_abs_diff']:.2e}"]
        if "calibration" in m:  # intent: the map the scorer and the API apply after the graph
            cal, raw = m["calibration"], m["calibration"].get("uncalibrated", {})
            before = f"{raw['test']['ece']:.4f} → " if "test" in raw else ""
            lines += [
                f"- Probability calibration: **{cal['method']}**, fitted on validation ({cal['reason']}); "
                f"test ECE {before}{m['model']['test']['ece']:.4f}. The table shows calibrated figures."
            ]
        lines += [""]
        lines += ["| model | split | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for name, res in [("ours", m["model"]), *m["baselines"].items()]:
            for split in (s for s in ("val", "test") if s in res):  # a train+val retrain has no val
                lines.append(
                    f"| {name} | {split} | " + " | ".join(f"{res[split][h]:.4f}" for h in names) + " |"
                )
        lines.append("")
    lines += [
        "## Intended use and limits",
        "",
        "- Trained on pseudonymised data; the bundle holds no raw email, phone, card or account number.",
        "- Items first seen after the training window are unknown to the models and are never recommended.",
        "- Models are fit on data before the validation cutoff and not refit on later data: at the end of the "
        "data they are about two label horizons old.",
        "- Scores are valid for customers whose history looks like the training data; re-train when the "
        "catalogue or the customer mix shifts.",
        "- Intent probabilities are calibrated on the validation cutoff; when the purchase rate shifts "
        "(season, campaigns) they drift again until the model is retrained.",
        "",
    ]
    return "\n".join(lines)


def served_spec(spec: RunSpec, e: Exported, run_config: dict[str, Any]) -> ServedSpec:
    """The run's spec as the bundle serves it: plus the graph's inputs and outputs and the run's config."""
    if isinstance(spec, RecommenderSpec):
        return ServedRecommender(
            **_fields(spec),
            inputs=tuple(e.input_names),
            outputs=tuple(e.output_names),
            max_k=min(MAX_K, e.n_items),  # the graph's top-k; requests may ask for 1..max_k
            masked_below=MASK_VALUE / 2,  # scores under this are removed items (seen, blocked, padding)
            run_config=run_config,
        )
    return ServedIntent(
        **_fields(spec), inputs=tuple(e.input_names), outputs=tuple(e.output_names), run_config=run_config
    )


def _fields(spec: RunSpec) -> dict[str, Any]:
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


def _export_one(run_dir: Path, bundle_dir: Path) -> dict[str, Any]:
    e = rebuild(run_dir)
    assert e.spec is not None
    role = role_of(e.spec)
    model_dir = bundle_dir / role
    model_dir.mkdir(parents=True)
    to_onnx(e, model_dir / ONNX_FILE)
    stack = e.spec.stack if isinstance(e.spec, IntentSpec) else None
    components = {} if stack is None else component_graphs(run_dir, stack)
    if stack is not None:
        compose(model_dir / ONNX_FILE, stack, components, model_dir / ONNX_FILE)
    parity = check_parity(e, model_dir / ONNX_FILE, stack=stack, components=components)
    shutil.copy(run_dir / S.ITEMS_FILE, model_dir / S.ITEMS_FILE)
    if e.task == "recommender":
        for name in SERVING_TABLES:  # cold-start and store-filter tables the run kept from prep
            shutil.copy(run_dir / name, model_dir / name)
        if e.item_embeddings is not None:
            np.save(model_dir / S.ITEM_EMBEDDINGS_FILE, e.item_embeddings, allow_pickle=False)
    spec = served_spec(e.spec, e, yaml.safe_load((run_dir / CONFIG_FILE).read_text()))
    (model_dir / MODEL_CONFIG_FILE).write_text(json.dumps(to_json(spec), indent=2))
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    return {
        "entry": BundleModel(
            role=role, run_id=run_dir.name, inputs=spec.inputs, outputs=spec.outputs, parity=parity
        ),
        "metrics": metrics,
    }


def _check_runs(run_dirs: list[Path]) -> None:
    """Before any work: every run is finished, its spec valid, and no task appears twice."""
    tasks: dict[str, Path] = {}
    for run_dir in run_dirs:
        for name in (MODEL_FILE, METRICS_FILE, CONFIG_FILE, S.ITEMS_FILE):
            if not (run_dir / name).is_file():
                raise FileNotFoundError(f"{run_dir / name} is missing: is {run_dir} a finished training run?")
        spec = run_spec(run_dir)
        try:
            task = role_of(spec)
        except ValueError as err:
            raise ValueError(f"{run_dir}: {err}") from None
        if task == "recommender":
            for name in SERVING_TABLES:
                if not (run_dir / name).is_file():
                    raise FileNotFoundError(f"{run_dir / name} is missing: retrain the recommender")
        if task in tasks:
            raise ValueError(f"{tasks[task]} and {run_dir} are both {task} runs; a bundle holds one per task")
        tasks[task] = run_dir


def export_bundle(run_dirs: list[Path], out_root: Path, version: str | None = None) -> Path:
    """Export one or more runs (at most one per task) into ``out_root/o2o/<version>/``, signed
    (:mod:`serving.checksums`).

    Nothing is left behind when any step fails (parity included).
    """
    _check_runs(run_dirs)
    version = version or datetime.now(UTC).strftime("v%Y%m%d-%H%M%S")
    bundle_dir = out_root / "o2o" / version
    if bundle_dir.exists():
        raise FileExistsError(f"{bundle_dir} exists: choose another version")
    bundle_dir.mkdir(parents=True)
    try:
        exported = [_export_one(r, bundle_dir) for r in run_dirs]
        spec = BundleSpec(
            version=version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            schema_version=S.SCHEMA_VERSION,
            models={x["entry"].role: x["entry"] for x in exported},
            data_manifest=exported[0]["metrics"].get("data_manifest", {}),
        )
        (bundle_dir / BUNDLE_FILE).write_text(json.dumps(to_json(spec), indent=2))
        (bundle_dir / CARD_FILE).write_text(
            _model_card(version, [(x["entry"], x["metrics"]) for x in exported])
        )
        write_checksums(bundle_dir)
    except BaseException:
        shutil.rmtree(bundle_dir)
        raise
    return bundle_dir

"""Optional int8 dynamic quantisation of a bundle's recommender (``o2o export --int8``), with its cost in
ranking quality measured, not assumed.

ONNX Runtime's dynamic quantisation stores the weights of the graph's MatMul/Gemm nodes as int8 and
quantises activations at run time. The exported fp32 graph has passed the torch parity check; the int8 one
cannot (that is the point), so instead both are run through the serving scorer
(:func:`serving.scoring.recommend`, seen filter and cold start included, exactly as the API and the batch
scorer answer) on the run's validation and test examples, and the NDCG@k of each goes into the bundle's
config, ``bundle.json`` and the model card. The int8 graph then replaces ``model.onnx``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from data_prep import schema as S
from serving.artifact import OnnxModel, load_bundle, session_options
from serving.scoring import recommend
from training.config import RecommenderRunConfig
from training.export import write_checksums
from training.metrics import ranking_metrics
from training.protocols import load_tables

K = 10
QUANT_KEY = "quantization"


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def served_ndcg(model: OnnxModel, table: Any, k: int = K) -> dict[str, float]:
    """Ranking metrics@k of what the scorer serves for each example's history against its target item."""
    side = [table.column(c) if c in table.column_names else None for c in (S.CHANNELS_COL, S.TIMESTAMPS_COL)]
    recs = recommend(
        model, table.column(S.ITEMS), table.column(S.EVENT_TYPES_COL), k, None, None, None, *side
    )
    top = np.full((len(recs.item_ids), k), -1, dtype=np.int64)  # -1: a shorter list never hits
    for row, ids in enumerate(recs.item_ids):
        top[row, : len(ids)] = model.vocab.lookup(ids)
    target = model.vocab.lookup(table.column(S.TARGET_ITEM).to_numpy(zero_copy_only=False))
    return ranking_metrics(top, target, k)


def quantize_bundle(bundle_dir: Path) -> dict[str, Any]:
    """Quantise ``bundle_dir``'s recommender to int8 in place and record what it costs; returns the record."""
    rec_dir = bundle_dir / "recommender"
    fp32_path = rec_dir / S.ONNX_FILE
    if not fp32_path.is_file():
        raise FileNotFoundError(f"{bundle_dir} has no recommender to quantise")
    config_path = rec_dir / S.MODEL_CONFIG_FILE
    config = json.loads(config_path.read_text())
    run_cfg = RecommenderRunConfig.model_validate(config["run_config"])
    tables = load_tables(run_cfg.data.features_dir, run_cfg.eval.protocol)
    fp32 = load_bundle(bundle_dir, threads=None).recommender
    assert fp32 is not None
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = Path(tmp) / "model.int8.onnx"
        root = logging.getLogger()
        advice = _DropPreprocessAdvice()
        root.addFilter(advice)  # its "consider pre-processing" hint is about static quantisation
        try:
            # the weight matrices only: ONNX Runtime's quantiser takes the opset-23 Attention operator for
            # its own com.microsoft one of that name and would write an invalid graph
            quantize_dynamic(
                fp32_path, int8_path, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
            )
        finally:
            root.removeFilter(advice)
        session = ort.InferenceSession(
            str(int8_path), session_options(None), providers=["CPUExecutionProvider"]
        )
        int8 = dataclasses.replace(fp32, session=session)
        figures: dict[str, Any] = {}
        for split, table in ((S.SPLIT_VAL, tables.val), (S.SPLIT_TEST, tables.test)):
            before, after = served_ndcg(fp32, table), served_ndcg(int8, table)
            figures[split] = {
                "n_examples": table.num_rows,
                f"ndcg@{K}_fp32": before[f"ndcg@{K}"],
                f"ndcg@{K}_int8": after[f"ndcg@{K}"],
                f"ndcg@{K}_change": after[f"ndcg@{K}"] - before[f"ndcg@{K}"],
                f"hr@{K}_fp32": before[f"hr@{K}"],
                f"hr@{K}_int8": after[f"hr@{K}"],
            }
        record = {
            "method": "onnxruntime dynamic quantisation, int8 weights (QInt8), activations quantised at run time",
            "bytes_fp32": fp32_path.stat().st_size,
            "bytes_int8": int8_path.stat().st_size,
            "served_by_scorer": figures,
        }
        int8_path.replace(fp32_path)  # the bundle now serves the int8 graph
    config[QUANT_KEY] = record
    config_path.write_text(json.dumps(config, indent=2))
    bundle_json = bundle_dir / S.BUNDLE_FILE
    doc = json.loads(bundle_json.read_text())
    doc["models"]["recommender"][QUANT_KEY] = record
    bundle_json.write_text(json.dumps(doc, indent=2))
    card = bundle_dir / S.MODEL_CARD_FILE
    card.write_text(card.read_text() + _card_section(record))
    write_checksums(bundle_dir)
    return record


def _card_section(record: dict[str, Any]) -> str:
    lines = [
        "## int8 quantisation (recommender)",
        "",
        f"`recommender/model.onnx` is the int8 graph ({record['method']}): "
        f"{record['bytes_fp32'] / 1e6:.2f} MB → {record['bytes_int8'] / 1e6:.2f} MB. The parity figure above is "
        "the fp32 graph's against torch; the int8 graph's cost, measured through the serving scorer (seen "
        "filter and cold start as served):",
        "",
        f"| split | examples | NDCG@{K} fp32 | NDCG@{K} int8 | change | HR@{K} fp32 | HR@{K} int8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, f in record["served_by_scorer"].items():
        lines.append(
            f"| {split} | {f['n_examples']} | {f[f'ndcg@{K}_fp32']:.4f} | {f[f'ndcg@{K}_int8']:.4f} | "
            f"{f[f'ndcg@{K}_change']:+.4f} | {f[f'hr@{K}_fp32']:.4f} | {f[f'hr@{K}_int8']:.4f} |"
        )
    return "\n".join(lines) + "\n"

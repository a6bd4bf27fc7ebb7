"""Load an exported bundle for ONNX Runtime: verify checksums, open sessions, fit vocabularies.

Shared by the online service and the batch scorer, so both see exactly the same models. No torch here.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq

from data_prep import schema as S
from data_prep.manifest import file_sha256
from models.calibration import Calibration
from models.encoding import ItemVocabulary, ListInput, encode_sequences

THREADS_ENV = "O2O_ORT_THREADS"
log = logging.getLogger(__name__)


class BundleError(RuntimeError):
    """A bundle is missing, incomplete or altered; the message says which file."""


@dataclass(frozen=True)
class OnnxModel:
    task: str
    session: ort.InferenceSession
    config: dict[str, Any]
    vocab: ItemVocabulary
    popularity: np.ndarray  # (n_items + 1,) training-window counts by item index, padding = -inf
    categories: np.ndarray  # (n_items + 1,) object: each item's category (None when unknown or padding)
    segment_popularity: dict[str, np.ndarray] = field(default_factory=dict)  # segment → (n_items + 1,)
    assortment: dict[str, np.ndarray] = field(default_factory=dict)  # store_id → item indices it sells
    # (n_items + 1, D) float32 item table of the recommender, row = item index (0 = padding); None when the
    # bundle predates it or the model has no per-item rows
    item_embeddings: np.ndarray | None = None

    @property
    def max_len(self) -> int:
        return int(self.config["model_config"]["max_len"])

    @functools.cached_property
    def calibration(self) -> Calibration:
        """The intent model's probability calibration (identity for bundles exported before it existed)."""
        return Calibration.from_dict(self.config.get("calibration"))

    @functools.cached_property
    def unit_item_embeddings(self) -> np.ndarray | None:
        """``item_embeddings`` with every row scaled to unit length (the padding row stays zero)."""
        if self.item_embeddings is None:
            return None
        norms = np.linalg.norm(self.item_embeddings, axis=1, keepdims=True)  # (V+1, 1)
        return self.item_embeddings / np.maximum(norms, np.finfo(np.float32).tiny)  # (V+1, D)

    @property
    def type_names(self) -> list[str]:
        return list(self.config["type_names"])

    @property
    def channel_names(self) -> list[str]:
        return list(self.config.get("channel_names", []))

    def sequence_feeds(
        self,
        items: ListInput,
        event_types: ListInput | None,
        channels: ListInput | None = None,
        timestamps: ListInput | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Encoded item indices and the graph's sequence inputs (``item_idx`` and ``ctx_idx``; a bundle
        exported before context inputs existed takes ``type_idx``, the context's event-type column)."""
        item_idx, ctx_idx = encode_sequences(
            items,
            self.vocab,
            self.max_len,
            event_types,
            self.type_names,
            channels,
            self.channel_names,
            timestamps,
        )
        if "type_idx" in self.config["inputs"]:
            return item_idx, {"item_idx": item_idx, "type_idx": np.ascontiguousarray(ctx_idx[:, :, 0])}
        return item_idx, {"item_idx": item_idx, "ctx_idx": ctx_idx}


@dataclass(frozen=True)
class Bundle:
    path: Path
    version: str
    recommender: OnnxModel | None
    intent: OnnxModel | None
    churn: OnnxModel | None = None  # churn risk: probability of no purchase in the next 60 days


def verify_checksums(bundle_dir: Path) -> None:
    """Refuse a bundle whose files are missing or differ from ``checksums.json``."""
    sums_path = bundle_dir / S.CHECKSUMS_FILE
    if not sums_path.exists():
        raise BundleError(f"{bundle_dir}: no {S.CHECKSUMS_FILE}; not an exported bundle")
    for rel, expected in json.loads(sums_path.read_text()).items():
        path = bundle_dir / rel
        if not path.exists():
            raise BundleError(f"{path}: listed in {S.CHECKSUMS_FILE} but missing")
        if file_sha256(path) != expected:
            raise BundleError(f"{path}: checksum mismatch (file altered or truncated); re-export the bundle")


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """ORT options with intra-op threads set explicitly (``$O2O_ORT_THREADS``, default: all cores)."""
    opts = ort.SessionOptions()
    n = threads or int(os.environ.get(THREADS_ENV, 0)) or os.cpu_count() or 1
    opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def _load_model(model_dir: Path, threads: int | None) -> OnnxModel:
    config = json.loads((model_dir / S.MODEL_CONFIG_FILE).read_text())
    items = pq.read_table(model_dir / S.ITEMS_FILE).sort_by(S.ITEM_IDX)
    vocab = ItemVocabulary().fit(items.column(S.ITEM_ID).to_pylist())
    pop = np.concatenate([[-np.inf], items.column(S.POPULARITY).to_numpy().astype(np.float64)])
    cats = np.concatenate([[None], np.asarray(items.column(S.CATEGORY).to_pylist(), dtype=object)])
    sess = ort.InferenceSession(
        str(model_dir / S.ONNX_FILE),
        sess_options=session_options(threads),
        providers=["CPUExecutionProvider"],
    )
    seg_pop, stores = _serving_tables(model_dir, vocab)
    embeddings = _item_embeddings(model_dir, vocab)
    return OnnxModel(config["task"], sess, config, vocab, pop, cats, seg_pop, stores, embeddings)


def _item_embeddings(model_dir: Path, vocab: ItemVocabulary) -> np.ndarray | None:
    """The exported item table (n_items + 1, D) float32, or None when the bundle has none."""
    path = model_dir / S.ITEM_EMBEDDINGS_FILE
    if not path.is_file():
        return None
    table = np.load(path, allow_pickle=False)
    if table.ndim != 2 or table.shape[0] != vocab.n_items + 1:
        raise BundleError(
            f"{path}: shape {table.shape} does not match {vocab.n_items} items (+ padding); re-export the bundle"
        )
    return table.astype(np.float32, copy=False)


def _serving_tables(
    model_dir: Path, vocab: ItemVocabulary
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Segment popularity (segment → counts by item index) and store assortments (store → item indices),
    restricted to the model's vocabulary; empty when the bundle has no such table."""
    seg_pop: dict[str, np.ndarray] = {}
    path = model_dir / S.SEGMENT_POPULARITY_FILE
    if path.is_file():
        df = pq.read_table(path).to_pandas()
        df["idx"] = vocab.lookup(df[S.ITEM_ID].to_numpy())
        for seg, part in df[df["idx"] > 0].groupby(S.SEGMENT):
            counts = np.zeros(vocab.n_items + 1)
            counts[part["idx"].to_numpy()] = part[S.POPULARITY].to_numpy()
            seg_pop[str(seg)] = counts
    stores: dict[str, np.ndarray] = {}
    path = model_dir / S.ASSORTMENT_FILE
    if path.is_file():
        df = pq.read_table(path, columns=[S.STORE_ID, S.ITEM_ID]).to_pandas()
        df["idx"] = vocab.lookup(df[S.ITEM_ID].to_numpy())
        for store, part in df[df["idx"] > 0].groupby(S.STORE_ID):
            stores[str(store)] = np.unique(part["idx"].to_numpy())
    return seg_pop, stores


def load_bundle(path: Path | str, threads: int | None = None) -> Bundle:
    """Open a bundle folder (``artifacts/o2o/<version>``) after verifying every checksum."""
    bundle_dir = Path(path)
    if not (bundle_dir / S.BUNDLE_FILE).exists():
        raise BundleError(f"{bundle_dir}: no {S.BUNDLE_FILE}; pass the folder that `o2o export` printed")
    verify_checksums(bundle_dir)
    if (bundle_dir / S.RETRAIN_MARKER).exists():
        log.warning(
            "%s was built from data that has since had people erased: retrain and re-export", bundle_dir
        )
    meta = json.loads((bundle_dir / S.BUNDLE_FILE).read_text())
    models = {t: _load_model(bundle_dir / t, threads) for t in meta["models"]}
    return Bundle(
        bundle_dir, meta["version"], models.get("recommender"), models.get("intent"), models.get("churn")
    )

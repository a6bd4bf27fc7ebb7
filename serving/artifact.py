"""Load an exported bundle for ONNX Runtime: verify checksums, open sessions, fit vocabularies.

Shared by the online service and the batch scorer, so both see exactly the same models. No torch here.

A bundle is named by its folder (``artifacts/o2o/<version>``) or by its tag in the BentoML model store
(``o2o-bundle:<version>``, ``o2o-bundle:latest``), where :func:`register_bundle` copies it. The store copy is
checked exactly like a folder, and its ``checksums.json`` must also match the digest recorded at registration.
BentoML is imported only when the store is used: the batch scorer on Spark executors never needs it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
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
BUNDLE_MODEL_NAME = "o2o-bundle"  # model-store name of exported bundles; the tag's version = bundle version
CHECKSUMS_DIGEST = "checksums_sha256"  # model metadata: SHA-256 of checksums.json when registered
# a BentoML tag's name or version (bentoml._internal.tag.tag_regex, at most 63 characters); BentoML would
# lowercase "V1" with only a warning, so it is refused here instead: tag version = bundle version, exactly
_TAG_PART = re.compile(r"[a-z0-9](?:[-._a-z0-9]{0,61}[a-z0-9])?")
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


def _verify_folder(bundle_dir: Path) -> None:
    if not (bundle_dir / S.BUNDLE_FILE).exists():
        raise BundleError(f"{bundle_dir}: no {S.BUNDLE_FILE}; pass the folder that `o2o export` printed")
    verify_checksums(bundle_dir)


def is_store_tag(ref: str) -> bool:
    """``ref`` names a model-store bundle (``o2o-bundle:<version>``, ``o2o-bundle``), not an existing folder."""
    return not Path(ref).is_dir() and _is_tag(ref)


def _is_tag(ref: str) -> bool:
    name, sep, version = ref.partition(":")
    return bool(_TAG_PART.fullmatch(name)) and (not sep or bool(_TAG_PART.fullmatch(version)))


def bundle_path(ref: Path | str) -> Path:
    """The local folder of a bundle, every checksum verified.

    ``ref`` is a bundle folder, or a model-store tag: ``o2o-bundle:<version>``, ``o2o-bundle:latest`` or
    ``o2o-bundle`` (latest), looked up in the store of ``$BENTOML_HOME`` (inside a bento: the bento's own
    models). An existing folder wins over a tag spelled the same. Raises :class:`BundleError` when neither
    exists, or a file is missing or altered.
    """
    folder = Path(ref)
    if isinstance(ref, Path) or folder.is_dir() or not _is_tag(ref):
        _verify_folder(folder)
        return folder
    return _store_bundle(ref)


def _store_bundle(tag: str) -> Path:
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound as e:
        raise BundleError(
            f"{tag} is neither a bundle folder nor a model in the BentoML model store: {e}"
        ) from None
    except BentoMLException as e:  # a version prefix that matches several versions
        raise BundleError(f"{tag}: {e}") from None
    version = tag.partition(":")[2]
    if version not in ("", "latest") and model.tag.version != version:  # BentoML matches version prefixes
        raise BundleError(
            f"{tag} is not in the model store (only {model.tag} starts with it): give the full tag"
        )
    folder = Path(model.path)
    hint = f" (this is the model store's copy: `bentoml models delete {model.tag}` first)"
    try:
        _verify_folder(folder)
    except BundleError as e:
        raise BundleError(f"model {model.tag}: {e}{hint}") from None
    registered = model.info.metadata.get(CHECKSUMS_DIGEST)
    if registered is not None and registered != file_sha256(folder / S.CHECKSUMS_FILE):
        raise BundleError(
            f"model {model.tag}: {folder / S.CHECKSUMS_FILE} differs from the one registered "
            f"(file altered); re-export the bundle{hint}"
        )
    return folder


def bundle_tag(version: str, name: str = BUNDLE_MODEL_NAME) -> str:
    """``name:version``; BundleError unless ``version`` can be a BentoML version as it is (lowercase letters,
    digits, ``-``, ``_``, ``.``; alphanumeric at both ends; at most 63 characters)."""
    if not _TAG_PART.fullmatch(version):
        raise BundleError(
            f"bundle version {version!r} cannot be a BentoML model version (lowercase letters, digits, '-', "
            "'_' or '.', alphanumeric at both ends, at most 63 characters): choose another version"
        )
    return f"{name}:{version}"


def check_unregistered(version: str, name: str = BUNDLE_MODEL_NAME) -> str:
    """The tag ``version`` would be registered under; BundleError when it is invalid or already taken."""
    import bentoml

    tag = bundle_tag(version, name)
    taken = bentoml.models.list(tag)  # exact version (get() would also match a longer one)
    if taken:
        raise BundleError(
            f"{tag} is already in the BentoML model store ({taken[0].path}): export with another --version, "
            f"or remove it first with `bentoml models delete {tag}`"
        )
    return tag


def register_bundle(bundle_dir: Path, name: str = BUNDLE_MODEL_NAME) -> str:
    """Copy a bundle folder (checksums verified first) into the BentoML model store as
    ``name:<bundle version>`` and return that tag. BundleError when the tag is taken (see
    :func:`check_unregistered`).

    Labels (strings, for ``bentoml models list``): ``bundle_version``, ``tasks`` (comma-separated),
    ``schema_version``. Metadata: the same, plus ``checksums_sha256`` (the manifest digest :func:`bundle_path`
    checks), ``created_at``, ``source_runs`` (task → run id) and ``exported_from`` (the folder).
    """
    import bentoml

    folder = bundle_path(Path(bundle_dir))  # an altered bundle is never registered
    meta = json.loads((folder / S.BUNDLE_FILE).read_text())
    tag = check_unregistered(str(meta["version"]), name)
    tasks = sorted(meta["models"])
    labels = {
        "bundle_version": str(meta["version"]),
        "tasks": ",".join(tasks),
        "schema_version": str(meta.get("schema_version", "")),
    }
    metadata = {
        **labels,
        "tasks": tasks,
        CHECKSUMS_DIGEST: file_sha256(folder / S.CHECKSUMS_FILE),
        "created_at": str(meta.get("created_at", "")),
        "source_runs": {t: str(m.get("run_id", "")) for t, m in meta["models"].items()},
        "exported_from": str(folder.resolve()),
    }
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        shutil.copytree(folder, model.path, dirs_exist_ok=True)
    return tag


def registered_bundles(name: str = BUNDLE_MODEL_NAME) -> list[Path]:
    """The folders of every version of ``name`` in the BentoML model store (empty when none)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return [Path(m.path) for m in bentoml.models.list(name)]
    except NotFound:
        return []


def load_bundle(path: Path | str, threads: int | None = None) -> Bundle:
    """Open a bundle after verifying every checksum: a folder (``artifacts/o2o/<version>``) or a model-store
    tag (``o2o-bundle:<version>``; see :func:`bundle_path`)."""
    bundle_dir = bundle_path(path)
    if (bundle_dir / S.RETRAIN_MARKER).exists():
        log.warning(
            "%s was built from data that has since had people erased: retrain and re-export", bundle_dir
        )
    meta = json.loads((bundle_dir / S.BUNDLE_FILE).read_text())
    models = {t: _load_model(bundle_dir / t, threads) for t in meta["models"]}
    return Bundle(
        bundle_dir, meta["version"], models.get("recommender"), models.get("intent"), models.get("churn")
    )

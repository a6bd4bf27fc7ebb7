"""Load an exported bundle for ONNX Runtime: verify its signed checksums, validate its spec, open sessions.

Shared by the online service and the batch scorer, so both see exactly the same models. No torch here.

Loading checks, in order: ``checksums.sig`` signs ``checksums.json`` (:mod:`serving.checksums`), every listed
file matches its SHA-256, ``bundle.json`` and each model's ``config.json`` are valid specs of this major
version (:mod:`models.spec`) built on this data schema, and the manifest lists every file those specs
require. A file the manifest does not list is never opened. Any failure is a :class:`BundleError` naming the
file and what to do (usually: re-export the bundle).

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
from models.spec import (
    BundleSpec,
    ServedIntent,
    ServedRecommender,
    ServedSpec,
    SpecError,
    parse_bundle,
    parse_served,
    role_of,
    to_json,
)
from serving.checksums import BundleError, verified_checksums

__all__ = ["Bundle", "BundleError", "OnnxModel", "bundle_path", "load_bundle", "register_bundle"]

THREADS_ENV = "O2O_ORT_THREADS"
BUNDLE_MODEL_NAME = "o2o-bundle"  # model-store name of exported bundles; the tag's version = bundle version
CHECKSUMS_DIGEST = "checksums_sha256"  # model metadata: SHA-256 of checksums.json when registered
# a BentoML tag's name or version (bentoml._internal.tag.tag_regex, at most 63 characters); BentoML would
# lowercase "V1" with only a warning, so it is refused here instead: tag version = bundle version, exactly
_TAG_PART = re.compile(r"[a-z0-9](?:[-._a-z0-9]{0,61}[a-z0-9])?")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnnxModel:
    spec: ServedSpec  # the model's config.json, validated
    session: ort.InferenceSession
    vocab: ItemVocabulary
    popularity: np.ndarray  # (n_items + 1,) training-window counts by item index, padding = -inf
    categories: np.ndarray  # (n_items + 1,) object: each item's category (None when unknown or padding)
    segment_popularity: dict[str, np.ndarray] = field(default_factory=dict)  # segment → (n_items + 1,)
    assortment: dict[str, np.ndarray] = field(default_factory=dict)  # store_id → item indices it sells
    # (n_items + 1, D) float32 item table of the recommender, row = item index (0 = padding); None for a
    # classifier (no per-item output rows)
    item_embeddings: np.ndarray | None = None

    @property
    def task(self) -> str:
        return self.spec.task

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """The spec as the JSON object of ``config.json`` (for code that reads it by key)."""
        return to_json(self.spec)

    @property
    def ranking(self) -> ServedRecommender:
        """The recommender's spec (TypeError for a classifier)."""
        if not isinstance(self.spec, ServedRecommender):
            raise TypeError(f"a {self.spec.task} model has no ranking settings")
        return self.spec

    @property
    def classifier(self) -> ServedIntent:
        """The classifier's spec (TypeError for a recommender)."""
        if not isinstance(self.spec, ServedIntent):
            raise TypeError(f"a {self.spec.task} model is not a classifier")
        return self.spec

    @property
    def max_len(self) -> int:
        return self.spec.model_config.max_len

    @property
    def calibration(self) -> Calibration:
        """The classifier's probability calibration (fitted on validation at training time)."""
        return self.classifier.calibration

    @functools.cached_property
    def unit_item_embeddings(self) -> np.ndarray | None:
        """``item_embeddings`` with every row scaled to unit length (the padding row stays zero)."""
        if self.item_embeddings is None:
            return None
        norms = np.linalg.norm(self.item_embeddings, axis=1, keepdims=True)  # (V+1, 1)
        return self.item_embeddings / np.maximum(norms, np.finfo(np.float32).tiny)  # (V+1, D)

    @property
    def type_names(self) -> list[str]:
        return list(self.spec.type_names)

    @property
    def channel_names(self) -> list[str]:
        return list(self.spec.channel_names)

    def sequence_feeds(
        self,
        items: ListInput,
        event_types: ListInput | None,
        channels: ListInput | None = None,
        timestamps: ListInput | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Encoded item indices and the graph's sequence inputs ``item_idx`` and ``ctx_idx``."""
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
        return item_idx, {"item_idx": item_idx, "ctx_idx": ctx_idx}


@dataclass(frozen=True)
class Bundle:
    path: Path
    version: str
    recommender: OnnxModel | None
    intent: OnnxModel | None
    churn: OnnxModel | None = None  # churn risk: probability of no purchase in the next 60 days
    spec: BundleSpec | None = None  # bundle.json, validated (None only for a bundle assembled in code)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """ORT options with intra-op threads set explicitly (``$O2O_ORT_THREADS``, default: all cores).

    The intra-op threads sleep between calls instead of spinning: a spinning pool took the cores that the
    event loop and the HTTP clients need (`/intent` on 2 cores: 600-650 → 890-930 req/s, p99 50 → 25 ms;
    batch scoring unchanged within noise; docs/benchmarks.md)."""
    opts = ort.SessionOptions()
    n = threads or int(os.environ.get(THREADS_ENV, 0)) or os.cpu_count() or 1
    opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


@dataclass(frozen=True)
class _Files:
    """A bundle folder whose signed checksums were verified: it opens only the files they list."""

    root: Path
    sums: dict[str, str]

    def path(self, rel: str) -> Path:
        if rel not in self.sums:
            raise BundleError(
                f"{self.root / rel}: not listed in {S.CHECKSUMS_FILE}, so not opened; re-export the bundle"
            )
        return self.root / rel

    def require(self, rels: list[str]) -> None:
        """BundleError unless the manifest lists every one of ``rels`` (files the spec requires)."""
        missing = [r for r in rels if r not in self.sums]
        if missing:
            raise BundleError(
                f"{self.root / S.CHECKSUMS_FILE} does not list {missing}, which the bundle's spec requires; "
                "re-export the bundle"
            )

    def spec_doc(self, rel: str) -> object:
        path = self.path(rel)
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise BundleError(f"{path}: not JSON ({e}); re-export the bundle") from None


def _spec_error(path: Path, e: SpecError) -> BundleError:
    return BundleError(f"{path}: not a bundle this code reads ({e}); re-export the bundle with this version")


def _open_folder(bundle_dir: Path) -> tuple[_Files, BundleSpec]:
    """The folder's verified files and its validated ``bundle.json``; BundleError naming the file."""
    if not (bundle_dir / S.BUNDLE_FILE).exists():
        raise BundleError(f"{bundle_dir}: no {S.BUNDLE_FILE}; pass the folder that `o2o export` printed")
    files = _Files(bundle_dir, verified_checksums(bundle_dir))
    try:
        spec = parse_bundle(files.spec_doc(S.BUNDLE_FILE))
    except SpecError as e:
        raise _spec_error(bundle_dir / S.BUNDLE_FILE, e) from None
    major = S.SCHEMA_VERSION.split(".")[0]
    if spec.schema_version.split(".")[0] != major:
        raise BundleError(
            f"{bundle_dir / S.BUNDLE_FILE}: trained on data schema {spec.schema_version}, this code reads "
            f"schema {S.SCHEMA_VERSION}: run `o2o prep`, retrain and re-export"
        )
    files.require([f"{role}/{name}" for role in spec.models for name in _required_files(role)])
    return files, spec


def _required_files(role: str, spec: ServedSpec | None = None) -> list[str]:
    """Files of a model's folder the loader opens: always the graph, the spec and the vocabulary; the
    recommender's serving tables; its item table when the network has one row per item."""
    names = [S.MODEL_CONFIG_FILE, S.ONNX_FILE, S.ITEMS_FILE]
    if role == "recommender":
        names += [S.SEGMENT_POPULARITY_FILE, S.ASSORTMENT_FILE]
    if isinstance(spec, ServedRecommender) and spec.model_config.item_identity:
        names.append(S.ITEM_EMBEDDINGS_FILE)
    return names


def _model_spec(files: _Files, role: str) -> ServedSpec:
    """A model's validated ``config.json``, refused when it is not the model its folder says."""
    rel = f"{role}/{S.MODEL_CONFIG_FILE}"
    try:
        spec = parse_served(files.spec_doc(rel))
        found = role_of(spec)
    except (SpecError, ValueError) as e:
        raise _spec_error(files.root / rel, SpecError(str(e))) from None
    if found != role:
        raise BundleError(f"{files.root / rel}: a {found} model in the {role} folder; re-export the bundle")
    files.require([f"{role}/{name}" for name in _required_files(role, spec)])
    return spec


def _load_model(files: _Files, role: str, threads: int | None) -> OnnxModel:
    spec = _model_spec(files, role)
    items_path = files.path(f"{role}/{S.ITEMS_FILE}")
    items = pq.read_table(items_path).sort_by(S.ITEM_IDX)
    if items.num_rows != spec.model_config.n_items:
        raise BundleError(
            f"{items_path}: {items.num_rows} items for a network of {spec.model_config.n_items}; re-export"
        )
    vocab = ItemVocabulary().fit(items.column(S.ITEM_ID).to_pylist())
    pop = np.concatenate([[-np.inf], items.column(S.POPULARITY).to_numpy().astype(np.float64)])
    cats = np.concatenate([[None], np.asarray(items.column(S.CATEGORY).to_pylist(), dtype=object)])
    sess = ort.InferenceSession(
        str(files.path(f"{role}/{S.ONNX_FILE}")),
        sess_options=session_options(threads),
        providers=["CPUExecutionProvider"],
    )
    if not isinstance(spec, ServedRecommender):
        return OnnxModel(spec, sess, vocab, pop, cats)
    seg_pop, stores = _serving_tables(files, role, vocab)
    embeddings = _item_embeddings(files, role, vocab) if spec.model_config.item_identity else None
    return OnnxModel(spec, sess, vocab, pop, cats, seg_pop, stores, embeddings)


def _item_embeddings(files: _Files, role: str, vocab: ItemVocabulary) -> np.ndarray:
    """The exported item table (n_items + 1, D) float32."""
    path = files.path(f"{role}/{S.ITEM_EMBEDDINGS_FILE}")
    table = np.load(path, allow_pickle=False)
    if table.ndim != 2 or table.shape[0] != vocab.n_items + 1:
        raise BundleError(
            f"{path}: shape {table.shape} does not match {vocab.n_items} items (+ padding); re-export the bundle"
        )
    return table.astype(np.float32, copy=False)


def _serving_tables(
    files: _Files, role: str, vocab: ItemVocabulary
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Segment popularity (segment → counts by item index) and store assortments (store → item indices),
    restricted to the model's vocabulary."""
    seg_pop: dict[str, np.ndarray] = {}
    df = pq.read_table(files.path(f"{role}/{S.SEGMENT_POPULARITY_FILE}")).to_pandas()
    df["idx"] = vocab.lookup(df[S.ITEM_ID].to_numpy())
    for seg, part in df[df["idx"] > 0].groupby(S.SEGMENT):
        counts = np.zeros(vocab.n_items + 1)
        counts[part["idx"].to_numpy()] = part[S.POPULARITY].to_numpy()
        seg_pop[str(seg)] = counts
    stores: dict[str, np.ndarray] = {}
    df = pq.read_table(files.path(f"{role}/{S.ASSORTMENT_FILE}"), columns=[S.STORE_ID, S.ITEM_ID]).to_pandas()
    df["idx"] = vocab.lookup(df[S.ITEM_ID].to_numpy())
    for store, part in df[df["idx"] > 0].groupby(S.STORE_ID):
        stores[str(store)] = np.unique(part["idx"].to_numpy())
    return seg_pop, stores


def is_store_tag(ref: str) -> bool:
    """``ref`` names a model-store bundle (``o2o-bundle:<version>``, ``o2o-bundle``), not an existing folder."""
    return not Path(ref).is_dir() and _is_tag(ref)


def _is_tag(ref: str) -> bool:
    name, sep, version = ref.partition(":")
    return bool(_TAG_PART.fullmatch(name)) and (not sep or bool(_TAG_PART.fullmatch(version)))


def bundle_path(ref: Path | str) -> Path:
    """The local folder of a bundle, its signature, checksums and ``bundle.json`` verified.

    ``ref`` is a bundle folder, or a model-store tag: ``o2o-bundle:<version>``, ``o2o-bundle:latest`` or
    ``o2o-bundle`` (latest), looked up in the store of ``$BENTOML_HOME`` (inside a bento: the bento's own
    models). An existing folder wins over a tag spelled the same. Raises :class:`BundleError` when neither
    exists, or a file is missing, altered or unlisted.
    """
    return _open(ref)[0].root


def _open(ref: Path | str) -> tuple[_Files, BundleSpec]:
    folder = Path(ref)
    if isinstance(ref, Path) or folder.is_dir() or not _is_tag(ref):
        return _open_folder(folder)
    return _store_bundle(ref)


def _store_bundle(tag: str) -> tuple[_Files, BundleSpec]:
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
        opened = _open_folder(folder)
    except BundleError as e:
        raise BundleError(f"model {model.tag}: {e}{hint}") from None
    if model.info.metadata.get(CHECKSUMS_DIGEST) != file_sha256(folder / S.CHECKSUMS_FILE):
        raise BundleError(
            f"model {model.tag}: {folder / S.CHECKSUMS_FILE} differs from the one registered "
            f"(file altered); re-export the bundle{hint}"
        )
    return opened


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
    ``schema_version``. Metadata: the same, plus ``spec_version``, ``checksums_sha256`` (the manifest digest
    :func:`bundle_path` checks), ``created_at``, ``source_runs`` (task → run id) and ``exported_from``.
    """
    import bentoml

    files, spec = _open_folder(Path(bundle_dir))  # an altered bundle is never registered
    folder = files.root
    tag = check_unregistered(spec.version, name)
    tasks = sorted(spec.models)
    labels = {"bundle_version": spec.version, "tasks": ",".join(tasks), "schema_version": spec.schema_version}
    metadata = {
        **labels,
        "tasks": tasks,
        CHECKSUMS_DIGEST: file_sha256(folder / S.CHECKSUMS_FILE),
        "spec_version": spec.spec_version,
        "created_at": spec.created_at,
        "source_runs": {t: m.run_id for t, m in spec.models.items()},
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
    """Open a bundle once everything is verified (see the module doc): a folder (``artifacts/o2o/<version>``)
    or a model-store tag (``o2o-bundle:<version>``; see :func:`bundle_path`)."""
    files, spec = _open(path)
    if (files.root / S.RETRAIN_MARKER).exists():  # a marker beside the bundle, never opened or listed
        log.warning(
            "%s was built from data that has since had people erased: retrain and re-export", files.root
        )
    models = {role: _load_model(files, role, threads) for role in spec.models}
    return Bundle(
        files.root,
        spec.version,
        models.get("recommender"),
        models.get("intent"),
        models.get("churn"),
        spec,
    )

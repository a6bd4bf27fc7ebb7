"""The bundle contract on load: a signed checksum manifest that must list every file the loader opens, and
typed, versioned specs (bundle.json, each config.json) refused when they are of another version or shape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from data_prep.manifest import file_sha256
from serving import checksums as C
from serving.artifact import BundleError, load_bundle
from serving.scoring import intent_probability


@pytest.fixture
def copy(tiny_pipeline, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_pipeline.bundle, folder)
    return folder


def sums_of(folder: Path) -> dict[str, str]:
    return dict(json.loads((folder / S.CHECKSUMS_FILE).read_text()))


def resign(folder: Path, sums: dict[str, str]) -> None:
    """checksums.json := ``sums``, signed with this machine's bundle key (what only a key holder can do)."""
    manifest = json.dumps(sums, indent=2).encode()
    (folder / S.CHECKSUMS_FILE).write_bytes(manifest)
    doc = {"algorithm": C.ALGORITHM, "hmac": C.signature(manifest, C.signing_key())}
    (folder / C.SIGNATURE_FILE).write_text(json.dumps(doc))


def rewrite_json(folder: Path, rel: str, change: dict) -> None:  # type: ignore[type-arg]
    """Edit a JSON file of the bundle and update and re-sign its checksum: only the spec check is left."""
    path = folder / rel
    doc = json.loads(path.read_text())
    doc.update(change)
    doc = {k: v for k, v in doc.items() if v is not None}
    path.write_text(json.dumps(doc))
    resign(folder, {**sums_of(folder), rel: file_sha256(path)})


# --- finding 12: a manifest that omits a file, or is {}, no longer lets a tampered model load ---------------


@pytest.mark.parametrize("emptied", [False, True])
def test_a_manifest_edited_to_hide_a_tampered_model_is_refused(copy: Path, emptied: bool) -> None:
    rel = f"intent/{S.ONNX_FILE}"
    other = copy / "recommender" / S.ONNX_FILE
    shutil.copy(other, copy / rel)  # a valid graph, but not the one exported as the intent model
    sums = {} if emptied else {k: v for k, v in sums_of(copy).items() if k != rel}
    (copy / S.CHECKSUMS_FILE).write_text(json.dumps(sums))
    with pytest.raises(BundleError, match=r"checksums\.json does not match its signature .*checksums\.sig"):
        load_bundle(copy)


@pytest.mark.parametrize(
    "rel",
    [
        f"intent/{S.ONNX_FILE}",
        f"recommender/{S.ITEM_EMBEDDINGS_FILE}",
    ],  # a graph; the recommender's item table
)
def test_a_signed_manifest_must_list_every_file_the_spec_requires(copy: Path, rel: str) -> None:
    resign(copy, {k: v for k, v in sums_of(copy).items() if k != rel})
    with pytest.raises(BundleError, match=rf"does not list \['{rel}'\], which the bundle's spec requires"):
        load_bundle(copy)
    resign(copy, {})
    with pytest.raises(BundleError, match=r"bundle\.json: not listed in checksums\.json, so not opened"):
        load_bundle(copy)


def test_signature_missing_malformed_or_under_another_key_is_refused(
    copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_bundle(copy)
    monkeypatch.setenv(C.BUNDLE_KEY_ENV, "another-key")
    with pytest.raises(BundleError, match=f"re-export the bundle, or set {C.BUNDLE_KEY_ENV}"):
        load_bundle(copy)
    monkeypatch.delenv(C.BUNDLE_KEY_ENV)
    monkeypatch.setenv(C.HOME_ENV, str(copy.parent / "empty-home"))  # no key file there
    with pytest.raises(
        BundleError, match=f"cannot check .*checksums.sig: no bundle-signing key: {C.BUNDLE_KEY_ENV}"
    ):
        load_bundle(copy)
    monkeypatch.undo()
    (copy / C.SIGNATURE_FILE).write_text("not json")
    with pytest.raises(BundleError, match=r"checksums\.sig is not a bundle signature"):
        load_bundle(copy)
    (copy / C.SIGNATURE_FILE).unlink()
    with pytest.raises(BundleError, match=r"checksums\.sig is missing: the bundle is unsigned"):
        load_bundle(copy)


def test_the_env_key_signs_and_verifies_and_no_key_file_is_made(
    tiny_pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """With ``O2O_BUNDLE_KEY`` set, export and load use it and nothing is written to ``$O2O_HOME``."""
    monkeypatch.setenv(C.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setenv(C.BUNDLE_KEY_ENV, "prod-secret")
    folder = tmp_path / "b"
    shutil.copytree(tiny_pipeline.bundle, folder)
    C.write_checksums(folder)
    assert load_bundle(folder).version == "test"
    assert not (tmp_path / "home").exists()
    monkeypatch.delenv(C.BUNDLE_KEY_ENV)
    with pytest.raises(BundleError, match="no bundle-signing key"):
        load_bundle(folder)
    assert not (tmp_path / "home").exists()  # loading never creates a key


def test_the_retrain_marker_is_outside_the_manifest(copy: Path) -> None:
    (copy / S.RETRAIN_MARKER).write_text("{}")
    C.write_checksums(copy)
    assert S.RETRAIN_MARKER not in sums_of(copy) and C.SIGNATURE_FILE not in sums_of(copy)
    assert load_bundle(copy).recommender is not None


# --- the typed, versioned spec ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "change", "message"),
    [
        (S.BUNDLE_FILE, {"spec_version": "3.0"}, "spec_version 3.0, this code reads major version 2"),
        (S.BUNDLE_FILE, {"spec_version": None}, "no spec_version: written before the typed contract"),
        (S.BUNDLE_FILE, {"surprise": 1}, r"surprise: unknown field"),
        (S.BUNDLE_FILE, {"created_at": None}, r"created_at: Field required"),
        ("intent/config.json", {"spec_version": "1.0"}, "spec_version 1.0, this code reads major version 2"),
        ("intent/config.json", {"calibration": None}, r"calibration: Field required"),
        ("intent/config.json", {"temperature": 2.0}, r"temperature: unknown field"),
        (
            "recommender/config.json",
            {"inputs": ["item_idx", "type_idx"]},
            r"graph \['item_idx', 'type_idx'\]",
        ),
        ("recommender/config.json", {"max_k": "many"}, r"max_k: Input should be a valid integer"),
    ],
)
def test_a_spec_of_another_version_or_shape_is_refused_naming_the_file(
    copy: Path,
    rel: str,
    change: dict,
    message: str,  # type: ignore[type-arg]
) -> None:
    rewrite_json(copy, rel, change)
    with pytest.raises(BundleError, match=message) as e:
        load_bundle(copy)
    assert str(copy / rel) in str(e.value) and "re-export the bundle" in str(e.value)


def test_a_model_in_the_wrong_folder_is_refused(copy: Path) -> None:
    config = json.loads((copy / "intent" / S.MODEL_CONFIG_FILE).read_text())
    rewrite_json(copy, "intent/config.json", {"target": "churn"})
    with pytest.raises(BundleError, match="a churn model in the intent folder"):
        load_bundle(copy)
    assert config["target"] == "purchase"


def test_a_bundle_built_on_another_data_schema_is_refused(copy: Path) -> None:
    rewrite_json(copy, S.BUNDLE_FILE, {"schema_version": "9.0"})
    with pytest.raises(
        BundleError, match=r"trained on data schema 9\.0, .*run `o2o prep`, retrain and re-export"
    ):
        load_bundle(copy)


def test_the_vocabulary_must_match_the_network(copy: Path) -> None:
    rel = f"intent/{S.ITEMS_FILE}"
    items = pq.read_table(copy / rel)
    pq.write_table(items.slice(0, items.num_rows - 1), copy / rel)
    resign(copy, {**sums_of(copy), rel: file_sha256(copy / rel)})
    with pytest.raises(BundleError, match=r"items\.parquet: \d+ items for a network of \d+"):
        load_bundle(copy)


def test_the_loaded_spec_is_typed_and_the_dict_view_matches_the_file(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    bundle = load_bundle(tiny_pipeline.bundle)
    assert bundle.spec is not None and set(bundle.spec.models) == {"recommender", "intent"}
    rec, intent = bundle.recommender, bundle.intent
    assert rec is not None and intent is not None
    on_disk = json.loads((tiny_pipeline.bundle / "recommender" / S.MODEL_CONFIG_FILE).read_text())
    assert rec.config == on_disk and rec.ranking.max_k == on_disk["max_k"]
    assert intent.classifier.feature_names == tuple(on_disk_features(tiny_pipeline.bundle))
    with pytest.raises(TypeError):
        intent.ranking  # noqa: B018
    snap = pq.read_table(tiny_pipeline.features / S.SNAPSHOT_FILE).slice(0, 5)
    feats = np.column_stack([snap.column(n).to_numpy() for n in intent.classifier.feature_names])
    assert intent_probability(intent, snap.column(S.ITEMS), snap.column(S.EVENT_TYPES_COL), feats).shape == (
        5,
    )


def on_disk_features(bundle: Path) -> list[str]:
    return list(json.loads((bundle / "intent" / S.MODEL_CONFIG_FILE).read_text())["feature_names"])

"""Bundles in the BentoML model store: `o2o export` registers them, a tag loads the same bundle as its folder,
and a store copy is checked like a folder (a tampered file is refused)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from data_prep import schema as S
from data_prep.manifest import file_sha256
from experiments import cli
from models.spec import BundleSpec, to_json
from serving.artifact import (
    BUNDLE_MODEL_NAME,
    CHECKSUMS_DIGEST,
    BundleError,
    bundle_path,
    bundle_tag,
    load_bundle,
    register_bundle,
    registered_bundles,
)
from serving.checksums import ALGORITHM, SIGNATURE_FILE, signature, signing_key, write_checksums
from serving.scoring import recommend

runner = CliRunner()


def fake_bundle(folder: Path, version: str) -> Path:
    """A signed bundle folder with a valid bundle.json and one listed file (no model: nothing is loaded)."""
    (folder / "recommender").mkdir(parents=True)
    doc = BundleSpec(
        version=version,
        created_at="2026-12-01T00:00:00+00:00",
        schema_version=S.SCHEMA_VERSION,
        models={},
        data_manifest={},
    )
    (folder / S.BUNDLE_FILE).write_text(json.dumps(to_json(doc)))
    (folder / "recommender" / S.ONNX_FILE).write_bytes(b"not really onnx")
    write_checksums(folder)
    return folder


def resign(folder: Path, sums: dict[str, str]) -> None:
    """Write ``sums`` as the folder's checksums.json and sign it with the bundle key (someone holding it)."""
    manifest = json.dumps(sums).encode()
    (folder / S.CHECKSUMS_FILE).write_bytes(manifest)
    sig = {"algorithm": ALGORITHM, "hmac": signature(manifest, signing_key())}
    (folder / SIGNATURE_FILE).write_text(json.dumps(sig))


def files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_sha256(p) for p in folder.rglob("*") if p.is_file()}


def test_export_registers_the_bundle_and_its_tag_loads_the_same_bundle(
    tiny_pipeline, bentoml_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    runs = ["--run", str(tiny_pipeline.rec_run), "--run", str(tiny_pipeline.intent_run)]
    r = runner.invoke(cli.app, ["export", *runs, "--out", str(tmp_path / "artifacts"), "--version", "t1"])
    assert r.exit_code == 0, r.output
    assert "registered o2o-bundle:t1" in r.output
    folder = tmp_path / "artifacts" / "o2o" / "t1"

    model = bentoml.models.get("o2o-bundle:t1")
    assert Path(model.path).is_relative_to(bentoml_home / "models")  # $BENTOML_HOME respected
    assert model.info.labels == {
        "bundle_version": "t1",
        "tasks": "intent,recommender",
        "schema_version": str(S.SCHEMA_VERSION),
    }
    assert model.info.metadata[CHECKSUMS_DIGEST] == file_sha256(folder / S.CHECKSUMS_FILE)
    assert model.info.metadata["source_runs"] == {
        "recommender": tiny_pipeline.rec_run.name,
        "intent": tiny_pipeline.intent_run.name,
    }
    store_files = files(Path(model.path))
    assert store_files.pop("model.yaml") and store_files == files(
        folder
    )  # byte for byte, plus BentoML's yaml

    for ref in ("o2o-bundle:t1", "o2o-bundle:latest", "o2o-bundle"):
        assert bundle_path(ref) == Path(model.path)
    by_tag, by_folder = load_bundle("o2o-bundle:t1"), load_bundle(folder)
    assert by_tag.version == by_folder.version == "t1"
    assert by_tag.recommender is not None and by_folder.recommender is not None
    known = list(by_folder.recommender.vocab.item_ids_[:4])
    items, types = [known, known[:1]], [[S.EV_VIEW] * 4, [S.EV_ORDER]]
    a = recommend(by_tag.recommender, items, types, k=5)
    b = recommend(by_folder.recommender, items, types, k=5)
    assert list(a.source) == ["history", "history"]
    assert np.array_equal(a.item_ids, b.item_ids) and np.array_equal(a.scores, b.scores)

    # score and serve take the tag: the same scores; the server is handed the store copy's folder
    out_tag, out_dir = tmp_path / "by_tag", tmp_path / "by_folder"
    feats = ["--features", str(tiny_pipeline.features)]
    assert (
        runner.invoke(
            cli.app, ["score", "--artifact", "o2o-bundle:t1", *feats, "--out", str(out_tag)]
        ).exit_code
        == 0
    )
    assert (
        runner.invoke(cli.app, ["score", "--artifact", str(folder), *feats, "--out", str(out_dir)]).exit_code
        == 0
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(out_tag / "scores.parquet"), pd.read_parquet(out_dir / "scores.parquet")
    )
    seen: dict[str, str] = {}
    monkeypatch.setattr("serving.lifecycle.run_server", lambda cmd, env, cwd: seen.update(env) or 0)
    r = runner.invoke(cli.app, ["serve", "--artifact", "o2o-bundle:t1", *feats])
    assert r.exit_code == 0, r.output
    assert seen["O2O_BUNDLE"] == str(Path(model.path).resolve())


def test_export_of_a_registered_version_fails_before_exporting(
    tiny_pipeline, bentoml_home: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    register_bundle(fake_bundle(tmp_path / "old", "t2"))
    out = tmp_path / "artifacts"
    r = runner.invoke(
        cli.app, ["export", "--run", str(tiny_pipeline.rec_run), "--out", str(out), "--version", "t2"]
    )
    flat = " ".join(r.output.split())  # the console wraps long lines
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "o2o-bundle:t2 is already in the BentoML model store" in flat
    assert "bentoml models delete o2o-bundle:t2" in flat
    assert not (out / "o2o" / "t2").exists()
    with pytest.raises(BundleError, match="already in the BentoML model store"):
        register_bundle(tmp_path / "old")


@pytest.mark.parametrize("version", ["V1", "-v1", "v1/x", "v" * 64])
def test_a_version_that_cannot_be_a_tag_is_refused_as_it_is(version: str) -> None:
    with pytest.raises(BundleError, match="cannot be a BentoML model version"):
        bundle_tag(version)
    assert bundle_tag("v20261202-150000") == "o2o-bundle:v20261202-150000"


def test_a_tampered_file_in_the_store_copy_is_refused(bentoml_home: Path, tmp_path: Path) -> None:
    source = fake_bundle(tmp_path / "b", "t3")
    tag = register_bundle(source)
    copy = bundle_path(tag)
    onnx = copy / "recommender" / S.ONNX_FILE
    onnx.write_bytes(onnx.read_bytes() + b"!")
    message = re.escape(f"model {tag}: {onnx}: checksum mismatch (file altered or truncated)")
    with pytest.raises(BundleError, match=message):
        bundle_path(tag)
    with pytest.raises(BundleError, match="bentoml models delete o2o-bundle:t3"):
        load_bundle(tag)
    r = runner.invoke(cli.app, ["score", "--artifact", tag])
    assert r.exit_code == 2 and "checksum mismatch" in r.output and "Traceback" not in r.output
    assert bundle_path(str(source)) == source  # the exported folder itself is untouched

    # altered consistently (file and checksums.json): the manifest no longer matches its signature
    sums = json.loads((copy / S.CHECKSUMS_FILE).read_text())
    sums[f"recommender/{S.ONNX_FILE}"] = file_sha256(onnx)
    (copy / S.CHECKSUMS_FILE).write_text(json.dumps(sums))
    with pytest.raises(BundleError, match=r"checksums.json does not match its signature"):
        bundle_path(tag)
    # re-signed by someone holding the key: the digest recorded at registration still catches it
    resign(copy, sums)
    with pytest.raises(BundleError, match=r"checksums.json differs from the one registered"):
        bundle_path(tag)


def test_a_missing_file_in_the_store_copy_is_refused(bentoml_home: Path, tmp_path: Path) -> None:
    tag = register_bundle(fake_bundle(tmp_path / "b", "t4"))
    (bundle_path(tag) / "recommender" / S.ONNX_FILE).unlink()
    with pytest.raises(
        BundleError, match=rf"model {tag}: .*model.onnx: listed in checksums.json but missing"
    ):
        bundle_path(tag)


def test_refs_that_name_no_bundle(
    bentoml_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BundleError, match="o2o-bundle:nope is neither a bundle folder nor a model"):
        bundle_path("o2o-bundle:nope")
    assert registered_bundles() == []
    register_bundle(fake_bundle(tmp_path / "b", "t50"))
    with pytest.raises(BundleError, match=r"only o2o-bundle:t50 starts with it\): give the full tag"):
        bundle_path("o2o-bundle:t5")  # BentoML alone would resolve a version prefix
    with pytest.raises(BundleError, match=r"no bundle\.json"):
        bundle_path(tmp_path / "b" / "recommender")  # a folder that is not a bundle
    with pytest.raises(BundleError, match=r"no bundle\.json"):
        bundle_path("artifacts/o2o/v-missing")  # a path, not a tag
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{BUNDLE_MODEL_NAME}:t50").mkdir()
    with pytest.raises(BundleError, match=r"no bundle\.json"):
        bundle_path(f"{BUNDLE_MODEL_NAME}:t50")  # an existing folder wins over the tag spelled the same
    assert registered_bundles() == [bentoml_home / "models" / BUNDLE_MODEL_NAME / "t50"]


def test_a_tagged_bundle_is_a_bentoml_model_of_the_service(bentoml_home: Path, tmp_path: Path) -> None:
    """O2O_BUNDLE naming a tag makes the bundle a class-level BentoModel of the service (what `bentoml build`
    packs into the bento); a folder declares no model."""
    tag = register_bundle(fake_bundle(tmp_path / "b", "m1"))
    probe = (
        "from serving.service import O2OService as s; m = s.inner.bundle_model; "
        "print([str(x.tag) for x in s.models], None if m is None else m.resolve().path)"
    )
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    tagged = subprocess.run(
        [sys.executable, "-c", probe], env={**env, "O2O_BUNDLE": str(tag)}, capture_output=True, text=True
    )
    assert tagged.returncode == 0, tagged.stderr[-2000:]
    models, path = tagged.stdout.strip().split("] ")
    assert models == f"['{tag}'" and Path(path) == bundle_path(str(tag))
    folder = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "O2O_BUNDLE": str(tmp_path / "b")},
        capture_output=True,
        text=True,
    )
    assert folder.returncode == 0 and folder.stdout.strip() == "[] None", folder.stderr[-2000:]

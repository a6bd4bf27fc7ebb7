"""`o2o score` checks its inputs before scoring: the snapshot's columns and types, its SHA-256 against the one
prep recorded, and that it (or a scores part being resumed) is readable Parquet. Every refusal is one error
line naming the file and the remedy, exit code 2, no traceback (issue 18, finding 13)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from data_prep import schema as S
from data_prep.manifest import file_sha256
from experiments import cli
from serving.artifact import load_bundle
from serving.batch import SCORES_FILE, part_name
from serving.inputs import ScoringInputError, check_snapshot

runner = CliRunner()


@pytest.fixture
def features(tiny_pipeline, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A private copy of the prepared features folder (snapshot, held-out examples, manifest)."""
    folder = tmp_path / "04_features"
    folder.mkdir()
    for name in (S.SNAPSHOT_FILE, S.MANIFEST_FILE, S.split_file("intent", S.SPLIT_TEST)):
        shutil.copy(tiny_pipeline.features / name, folder / name)
    return folder


def score(bundle: Path, features: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = ["score", "--artifact", str(bundle), "--features", str(features), "--out", str(out), *extra]
    return runner.invoke(cli.app, args)


def refused(result, *fragments: str, scoring_started: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Exit 2 with one ``error:`` message holding every fragment, and no traceback; nothing before the
    message unless scoring had started (its progress bar)."""
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and flat.count("error:") == 1
    assert scoring_started or flat.startswith("error:"), flat
    for fragment in fragments:  # the console may break a line inside a long path: compared without spaces
        assert "".join(fragment.split()) in "".join(flat.split()), (fragment, flat)


def record_in_manifest(features: Path, name: str) -> None:
    """What prep (and an erasure) does after writing a file: its SHA-256 into the layer's manifest."""
    doc = json.loads((features / S.MANIFEST_FILE).read_text())
    doc["outputs"][name]["sha256"] = file_sha256(features / name)
    (features / S.MANIFEST_FILE).write_text(json.dumps(doc))


def flip_one_byte_that_still_parses(path: Path) -> None:
    """Change one byte of a segment name inside the file (a literal in its compressed dictionary page): the
    file still reads, and some customers now carry another segment."""
    raw, before = path.read_bytes(), pq.read_table(path).column(S.SEGMENT)
    for name in sorted({s for s in before.to_pylist() if s}):
        at = raw.find(name.encode())
        if at < 0:
            continue
        flipped = bytearray(raw)
        flipped[at] ^= 0x20  # lower → upper case
        try:
            after = pq.read_table(io.BytesIO(bytes(flipped))).column(S.SEGMENT)
        except (pa.ArrowException, OSError):
            continue
        if after != before:
            path.write_bytes(bytes(flipped))
            return
    pytest.skip("no byte of this snapshot could be flipped and still parse")


def test_a_snapshot_missing_a_column_is_refused_naming_it(
    tiny_pipeline, features: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    snapshot = features / S.SNAPSHOT_FILE
    table = pq.read_table(snapshot)
    pq.write_table(table.drop_columns([S.EVENT_TYPES_COL, "recency_days"]), snapshot)
    record_in_manifest(
        features, S.SNAPSHOT_FILE
    )  # consistent with prep's manifest: only the columns are wrong
    r = score(tiny_pipeline.bundle, features, tmp_path / "out")
    refused(r, str(snapshot), "no column 'event_types'", "no column 'recency_days'", "rerun `o2o prep`")
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_column_of_the_wrong_type_is_refused(tiny_pipeline, features: Path) -> None:  # type: ignore[no-untyped-def]
    snapshot = features / S.SNAPSHOT_FILE
    table = pq.read_table(snapshot)
    i = table.schema.get_field_index(S.ITEMS)
    as_text = pc.binary_join(table.column(S.ITEMS), " ")
    pq.write_table(table.set_column(i, S.ITEMS, as_text), snapshot)
    with pytest.raises(ScoringInputError, match=r"column 'items' is string, expected list<string>"):
        check_snapshot(load_bundle(tiny_pipeline.bundle), snapshot)


def test_a_corrupt_snapshot_names_the_file_and_the_remedy(
    tiny_pipeline, features: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    snapshot = features / S.SNAPSHOT_FILE
    snapshot.write_bytes(snapshot.read_bytes()[:-100])  # footer cut off
    r = score(tiny_pipeline.bundle, features, tmp_path / "out")
    refused(r, f"{snapshot}: not a readable Parquet file", "rerun `o2o prep`")


def test_a_snapshot_changed_after_prep_is_refused(tiny_pipeline, features: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    snapshot = features / S.SNAPSHOT_FILE
    flip_one_byte_that_still_parses(snapshot)
    r = score(tiny_pipeline.bundle, features, tmp_path / "out")
    refused(r, str(snapshot), "SHA-256 differs from the one `o2o prep` recorded", "rerun `o2o prep`")
    assert not (tmp_path / "out").exists()


def test_held_out_examples_changed_after_prep_are_refused(
    tiny_pipeline, features: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    examples = features / S.split_file("intent", S.SPLIT_TEST)
    table = pq.read_table(examples)
    pq.write_table(table.slice(1), examples)  # one example fewer
    r = score(tiny_pipeline.bundle, features, tmp_path / "out", "--split", "test")
    refused(r, str(examples), "SHA-256 differs", "rerun `o2o prep`")


def test_an_erased_but_consistent_snapshot_still_scores(
    tiny_pipeline, features: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """``o2o erase`` rewrites the snapshot without the person and refreshes the manifest's hashes."""
    snapshot = features / S.SNAPSHOT_FILE
    table = pq.read_table(snapshot)
    pq.write_table(table.slice(1), snapshot)
    record_in_manifest(features, S.SNAPSHOT_FILE)
    r = score(tiny_pipeline.bundle, features, tmp_path / "out")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "out" / S.MANIFEST_FILE).read_text())
    assert manifest["rows_in"] == table.num_rows - 1
    assert manifest["snapshot_sha256"] == file_sha256(snapshot)


def test_a_snapshot_without_a_recorded_checksum_is_refused(
    tiny_pipeline, features: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads((features / S.MANIFEST_FILE).read_text())
    del doc["outputs"][S.SNAPSHOT_FILE]
    (features / S.MANIFEST_FILE).write_text(json.dumps(doc))
    r = score(tiny_pipeline.bundle, features, tmp_path / "out")
    refused(r, "records no SHA-256 for snapshot.parquet", "rerun `o2o prep`")
    (features / S.MANIFEST_FILE).unlink()
    r = score(tiny_pipeline.bundle, features, tmp_path / "out")
    refused(r, f"{features / S.MANIFEST_FILE} not found", "rerun `o2o prep`")


def test_a_damaged_part_on_resume_names_the_part_and_restart(
    tiny_pipeline, features: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    assert score(tiny_pipeline.bundle, features, out, "--chunk-size", "100").exit_code == 0
    part = out / SCORES_FILE / part_name(1)
    part.write_bytes(part.read_bytes()[:50])  # a disk error after the run
    r = score(tiny_pipeline.bundle, features, out, "--chunk-size", "100")
    refused(r, f"{part} is damaged", "start over with --restart", scoring_started=True)
    r = score(tiny_pipeline.bundle, features, out, "--chunk-size", "100", "--restart")
    assert r.exit_code == 0, r.output
    assert (
        pq.read_table(out / SCORES_FILE).num_rows
        == json.loads((out / S.MANIFEST_FILE).read_text())["rows_scored"]
    )


def test_features_of_another_data_schema_are_refused(tiny_pipeline, features: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads((features / S.MANIFEST_FILE).read_text())
    (features / S.MANIFEST_FILE).write_text(json.dumps(doc | {"schema_version": "0.9"}))
    r = score(tiny_pipeline.bundle, features, tmp_path / "out")
    refused(
        r,
        "written by a prep of data schema 0.9",
        f"this code reads schema {S.SCHEMA_VERSION}",
        "rerun `o2o prep`",
    )

"""`o2o score` is resumable: killed with SIGKILL midway and rerun, the output holds every customer exactly
once; a rerun with other settings is refused instead of mixing two runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from serving.artifact import load_bundle
from serving.batch import SCORES_FILE, ScoringStateError, score_snapshot

CHUNK = 40  # the tiny snapshot (300 customers) in 8 chunks

# Scores chunk by chunk and kills its own process (SIGKILL: no cleanup, no finally) after the third chunk
KILLER = """
import os, signal, sys
from pathlib import Path
from serving.artifact import load_bundle
from serving.batch import score_snapshot

def tick(done, total):
    if done >= 3 * {chunk}:
        os.kill(os.getpid(), signal.SIGKILL)

score_snapshot(load_bundle(Path(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3]), chunk_size={chunk}, progress=tick)
"""


def _consenting(snapshot: Path) -> list[str]:
    t = pq.read_table(snapshot, columns=[S.CUSTOMER_ID, S.CONSENT_MARKETING])
    return sorted(
        t.filter(pc.fill_null(t.column(S.CONSENT_MARKETING), False)).column(S.CUSTOMER_ID).to_pylist()
    )


def test_killed_scoring_resumes_with_every_customer_once(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    snapshot = tiny_pipeline.features / S.SNAPSHOT_FILE
    out = tmp_path / "scores"
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLER.format(chunk=CHUNK),
            str(tiny_pipeline.bundle),
            str(snapshot),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    parts = sorted(p.name for p in (out / SCORES_FILE).glob("part-*.parquet"))
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert not (out / S.MANIFEST_FILE).exists()  # the run did not finish

    seen: list[int] = []
    path = score_snapshot(
        load_bundle(tiny_pipeline.bundle),
        snapshot,
        out,
        chunk_size=CHUNK,
        progress=lambda d, t: seen.append(d),
    )
    ids = pq.read_table(path, columns=[S.CUSTOMER_ID]).column(S.CUSTOMER_ID).to_pylist()
    assert len(ids) == len(set(ids))  # nobody twice
    assert sorted(ids) == _consenting(snapshot)  # nobody missing, nobody without consent
    manifest = json.loads((out / S.MANIFEST_FILE).read_text())
    assert manifest["rows_from_earlier_attempt"] == 3 * CHUNK and seen[-1] == manifest["rows_in"]
    assert manifest["rows_scored"] + manifest["excluded_no_marketing_consent"] == manifest["rows_in"]

    # the same scores as one uninterrupted run
    fresh = score_snapshot(load_bundle(tiny_pipeline.bundle), snapshot, tmp_path / "fresh", chunk_size=CHUNK)
    a = pq.read_table(path).sort_by(S.CUSTOMER_ID).replace_schema_metadata(None)
    b = pq.read_table(fresh).sort_by(S.CUSTOMER_ID).replace_schema_metadata(None)
    assert a.equals(b)


def test_rerun_with_other_settings_is_refused_unless_restarted(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle = load_bundle(tiny_pipeline.bundle)
    snapshot = tiny_pipeline.features / S.SNAPSHOT_FILE
    score_snapshot(bundle, snapshot, tmp_path, chunk_size=CHUNK)
    with pytest.raises(ScoringStateError, match="k"):
        score_snapshot(bundle, snapshot, tmp_path, k=5, chunk_size=CHUNK)
    path = score_snapshot(bundle, snapshot, tmp_path, k=5, chunk_size=CHUNK, restart=True)
    assert {len(r) for r in pq.read_table(path).column("recommended_items").to_pylist()} == {5}

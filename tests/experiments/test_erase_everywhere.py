"""`o2o erase` on a demo-shaped workdir leaves no byte of the person anywhere (issue 18, findings 1-3).

The workdir holds what `o2o demo` leaves (raw exports, every layer, scores as a part folder, the held-out test
set with its scores and campaign targets, runs, a bundle) plus the two persistent history stores a service
registered when it loaded the snapshot. After the erasure, every file under the workdir is scanned byte by byte
(Parquet files also decoded, as their pages are compressed), and so is every Redis value of the store.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis
from typer.testing import CliRunner

from data_prep import pii
from data_prep import schema as S
from data_prep.erasure import JOURNAL_FILE, erase_person, erased_keys
from experiments.campaign import campaign_report
from experiments.cli import app
from serving.artifact import load_bundle
from serving.batch import held_out_examples, score_snapshot
from serving.history import open_history_store
from serving.history_stores import SqliteHistoryStore
from tests.conftest import Pipeline
from tests.experiments.conftest import REDIS_PREFIX, REDIS_URL

runner = CliRunner()


@pytest.fixture
def workdir(tiny_pipeline: Pipeline, tmp_path: Path) -> Path:
    """A copy of the tiny pipeline's root, completed to the demo's shape (held-out scores, campaign)."""
    root = tmp_path / "work"
    for name in ("data", "runs", "artifacts"):  # what the demo leaves (other tests add files of their own)
        shutil.copytree(tiny_pipeline.data.parent / name, root / name)
    data, features = root / "data", root / "data" / S.FEATURES_DIR
    bundle = load_bundle(root / "artifacts" / "o2o" / tiny_pipeline.bundle.name)
    held_out = data / "05_scores" / f"held_out_{S.SPLIT_TEST}"
    scores = score_snapshot(bundle, held_out_examples(features, S.SPLIT_TEST, held_out), held_out)
    n = pq.read_table(scores, columns=[S.CUSTOMER_ID]).num_rows
    campaign_report(scores, max(1, n // 3), held_out / "campaign")
    return root


def best_known_person(data: Path) -> tuple[str, str]:
    """(raw email as an account export holds it, customer_id) of the account whose customer appears in the
    most files: a snapshot history, marketing scores and the held-out set."""
    accounts = pd.read_csv(data / S.RAW_DIR / S.RAW_ONLINE_DIR / S.RAW_ACCOUNTS_FILE, dtype=str)
    id_map = pd.read_parquet(data / S.CUSTOMERS_DIR / S.IDENTITY_MAP_FILE)
    by_key = dict(zip(id_map[S.IDENTIFIER_KEY], id_map[S.CUSTOMER_ID], strict=True))
    scored = set(pq.read_table(data / "05_scores" / "scores.parquet", columns=[S.CUSTOMER_ID])[0].to_pylist())
    held = data / "05_scores" / f"held_out_{S.SPLIT_TEST}" / "scores.parquet"
    held_out = set(pq.read_table(held, columns=[S.CUSTOMER_ID])[0].to_pylist())
    key = pii.load_key()
    best: tuple[int, str, str] | None = None
    for email in accounts[S.ACC_EMAIL].dropna():
        customer = by_key.get(pii.pseudonymise(S.ID_EMAIL, email, key))
        if customer is None or "@" not in email:
            continue
        score = (customer in scored) + (customer in held_out)
        if best is None or score > best[0]:
            best = (score, email.strip(), customer)
    assert best is not None and best[0] == 2, (
        "the tiny retailer should have a scored, held-out account holder"
    )
    return best[1], best[2]


def leftovers(root: Path, needles: list[str]) -> list[str]:
    """Every file under ``root`` holding one of ``needles``: raw bytes, and decoded Parquet values."""
    found = []
    raw = [n.encode() for n in needles]
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits = {n.decode() for n in raw if n in data}
        if path.suffix == ".parquet":
            text = str(pq.read_table(path).to_pylist())
            hits |= {f"decoded {n}" for n in needles if n in text}
        if hits:
            found.append(f"{path.relative_to(root)}: {sorted(hits)}")
    return found


def redis_leftovers(client: redis.Redis, needles: list[str]) -> list[str]:
    found = []
    for key in client.scan_iter(match=REDIS_PREFIX + "*", count=1_000):
        dumped = key + (client.dump(key) or b"")
        found += [f"redis {key!r}: {n}" for n in needles if n.encode() in dumped]
    return found


def test_erase_leaves_nothing_in_any_file_or_store(
    workdir: Path, redis_db: redis.Redis, monkeypatch: pytest.MonkeyPatch, bentoml_home: Path
) -> None:
    data = workdir / "data"
    email, customer = best_known_person(data)
    snapshot = data / S.FEATURES_DIR / S.SNAPSHOT_FILE
    monkeypatch.setenv("O2O_HOME", str(workdir / "home"))  # the registries are scanned too
    sqlite_url = f"sqlite:///{workdir}/history.db"
    service_stores = [open_history_store(u, snapshot) for u in (sqlite_url, REDIS_URL)]  # as a service does
    assert all(s.get(customer) is not None for s in service_stores)
    needles = [email, email.lower(), customer]
    assert leftovers(workdir, needles) and redis_leftovers(redis_db, needles)  # the scan can see them

    # no --history-url: the stores a service registered are found; the SQLite one stays open, as it would
    r = runner.invoke(
        app,
        [
            "erase",
            "--identifier",
            f"email:{email}",
            "--data",
            str(data),
            "--runs-dir",
            str(workdir / "runs"),
            "--artifacts",
            str(workdir / "artifacts"),
        ],
    )

    assert r.exit_code == 0, r.output
    assert "history store #1 (sqlite): 1 customer(s) deleted" in r.output
    assert "history store #2 (redis): 1 customer(s) deleted" in r.output
    assert leftovers(workdir, needles) == []
    assert redis_leftovers(redis_db, needles) == []
    assert all(s.get(customer) is None for s in service_stores)
    assert not (workdir / "home" / JOURNAL_FILE).exists() and len(erased_keys()) > 0
    # the service restarts on the erased snapshot: nobody comes back, everybody else is still served
    for store in service_stores:
        store.close()
    with SqliteHistoryStore(workdir / "history.db", snapshot) as again:
        assert again.get(customer) is None and len(again) == pq.read_metadata(snapshot).num_rows
    again_r = runner.invoke(app, ["erase", "--identifier", f"email:{email}", "--data", str(data)])
    assert again_r.exit_code == 0 and "already erased" in again_r.output, again_r.output


def test_an_erasure_a_crash_interrupted_finishes_on_rerun(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies after the files are clean but before the erasure is recorded (the store deletion
    fails): the identity map no longer names the person, yet the rerun finishes from the journal."""
    data = workdir / "data"
    email, customer = best_known_person(data)
    monkeypatch.setenv("O2O_HOME", str(workdir / "home"))

    def crash(customer_ids: list[str]) -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        erase_person(data, S.ID_EMAIL, email, [workdir / "runs"], before_record=crash)
    assert (workdir / "home" / JOURNAL_FILE).exists() and erased_keys().empty
    assert leftovers(data, [customer]) == []  # the files were already clean

    result = erase_person(data, S.ID_EMAIL, email, [workdir / "runs"])

    assert result.resumed and result.customer_ids == [customer]
    assert not (workdir / "home" / JOURNAL_FILE).exists() and not erased_keys().empty
    assert leftovers(workdir, [customer, email]) == []  # the journal held the customer id: gone with it


def test_an_unreadable_file_refuses_the_erasure_before_anything_changes(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = workdir / "data"
    email, _ = best_known_person(data)
    monkeypatch.setenv("O2O_HOME", str(workdir / "home"))
    part = next((data / "05_scores" / "scores.parquet").glob("part-*.parquet"))
    part.write_bytes(part.read_bytes()[:-20])  # a truncated footer
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}

    r = runner.invoke(app, ["erase", "--identifier", f"email:{email}", "--data", str(data)])

    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "not readable Parquet" in " ".join(r.output.split()) and part.name in r.output.replace("\n", "")
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
    assert erased_keys().empty and not (workdir / "home" / JOURNAL_FILE).exists()

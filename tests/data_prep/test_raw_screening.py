"""Rows that cannot be read (bytes that are not UTF-8, malformed CSV records, lines that are not JSON) are
rejects with their file and line, not a stopped run; a file that cannot be read at all still stops it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from data_prep import engine, screening
from data_prep import schema as S
from data_prep.generate import RetailerSpec, generate_retailer
from data_prep.pipeline import RawInputError, run_prep

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate_retailer(root, RetailerSpec(n_customers=120, seed=3, n_days=120))
    _write_orders(root)
    return root


def _write_orders(root: Path) -> None:
    """An order-level export (the generator writes none), so that every source kind is present."""
    store = pd.read_csv(root / S.RAW_DIR / S.RAW_CATALOG_DIR / S.RAW_STORES_FILE, dtype=str)[S.CAT_STORE_ID][
        0
    ]
    rows = [
        {S.ORD_ORDER_ID: f"R{i}", S.ORD_TS: f"2026-02-{i + 1:02d} 10:00:00", S.ORD_CHANNEL: "store",
         S.ORD_STORE_ID: store, S.ORD_LOYALTY_CARD: f"LC{i:010d}", S.ORD_TOTAL: "25.5"}
        for i in range(20)
    ]  # fmt: skip
    orders = root / S.RAW_DIR / S.RAW_ORDERS_DIR / S.RAW_ORDERS_FILE
    orders.parent.mkdir(parents=True)
    pd.DataFrame(rows, columns=list(S.RAW_ORDER_COLUMNS)).to_csv(orders, index=False)


RAW_FILES = {
    "online": (S.RAW_ONLINE_DIR, S.RAW_ONLINE_FILE),
    "accounts": (S.RAW_ONLINE_DIR, S.RAW_ACCOUNTS_FILE),
    "pos": (S.RAW_POS_DIR, S.RAW_POS_FILE),
    "crm": (S.RAW_CRM_DIR, S.RAW_CRM_FILE),
    "orders": (S.RAW_ORDERS_DIR, S.RAW_ORDERS_FILE),
}


def _latin1_line(path: Path, line: int) -> None:
    """Give line ``line`` (1-based) a Latin-1 'é' (byte 0xE9, invalid UTF-8 where it stands)."""
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].replace(b",", b",Zo\xe9 ", 1).replace(b'":"', b'":"Zo\xe9 ', 1)
    path.write_bytes(b"".join(lines))


def _insert_line(path: Path, line: int, text: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(line - 1, text + b"\n")
    path.write_bytes(b"".join(lines))


def test_bad_bytes_in_every_source_are_rejected_with_file_and_line(
    raw_template: Path, tmp_path: Path
) -> None:
    d = tmp_path / "d"
    shutil.copytree(raw_template, d)
    paths = {name: d / S.RAW_DIR / folder / file for name, (folder, file) in RAW_FILES.items()}
    n_rows = {name: len(p.read_bytes().splitlines()) - (name != "online") for name, p in paths.items()}
    for name, path in paths.items():
        _latin1_line(path, 7 if name == "online" else 3)
    _insert_line(
        paths["pos"], 5, b"T999,1,2026-01-05 10:00:00,ST001,,+86 139-1111-2222,SKU00001,1,9.9,,EXTRA"
    )
    _insert_line(paths["online"], 4, b'{"event_id":"ev-x","ts":')  # cut short

    result = run_prep(d, d)

    ledger = result.ledger["sources"]
    assert result.ledger["balanced"] and set(RAW_FILES) <= set(ledger)
    for name in RAW_FILES:
        extra = {"pos": 1, "online": 1}.get(name, 0)
        assert ledger[name]["n_raw"] == n_rows[name] + extra, name
        assert ledger[name]["rejected_by_reason"].get("bad_encoding") == 1, name
    assert ledger["pos"]["rejected_by_reason"]["malformed_row"] == 1
    assert ledger["online"]["rejected_by_reason"]["malformed_json"] == 1
    rejects = pd.read_parquet(d / S.EVENTS_DIR / S.REJECTS_FILE)
    unread = rejects[rejects[S.RAW_LINE].notna()]
    got = {(r[S.SOURCE], r[S.RAW_FILE], int(r[S.RAW_LINE]), r[S.REJECT_REASON]) for _, r in unread.iterrows()}
    rel = {name: f"{S.RAW_DIR}/{folder}/{file}" for name, (folder, file) in RAW_FILES.items()}
    assert got == {
        ("online", rel["online"], 4, "malformed_json"),
        ("online", rel["online"], 8, "bad_encoding"),  # line 7 before the inserted line 4
        ("pos", rel["pos"], 3, "bad_encoding"),
        ("pos", rel["pos"], 5, "malformed_row"),
        ("accounts", rel["accounts"], 3, "bad_encoding"),
        ("crm", rel["crm"], 3, "bad_encoding"),
        ("orders", rel["orders"], 3, "bad_encoding"),
    }
    assert unread[S.EVENT_ID].isna().all() and unread[S.TS].isna().all()
    other = rejects[rejects[S.RAW_LINE].isna()]
    assert len(other) and other[S.RAW_FILE].notna().all()  # value-level rejects name their file too
    assert not rejects.astype(str).apply(lambda c: c.str.contains("139-1111")).any().any()


def test_an_undecodable_header_stops_the_run_naming_file_and_line(raw_template: Path, tmp_path: Path) -> None:
    d = tmp_path / "d"
    shutil.copytree(raw_template, d)
    crm = d / S.RAW_DIR / S.RAW_CRM_DIR / S.RAW_CRM_FILE
    crm.write_bytes(b"loyalty_card\xff" + crm.read_bytes())
    with pytest.raises(RawInputError, match=r"members\.csv: line 1 \(the header\) is not valid UTF-8"):
        run_prep(d, d)


def test_screen_keeps_valid_lines_byte_for_byte(tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    src.write_bytes(
        b'a,b\n1,"x\ny"\n2,\xff\n"3,4\n5,6\n\n7,"q""r"\n8,9,10\n'
    )  # a quoted newline, bad bytes, an unterminated quote, a blank line, an escaped quote, a long row
    assert not screening.is_utf8(src)
    out = screening.screen_file(src, "csv", tmp_path / "out.csv", structure=True)
    assert out.path.read_bytes() == b'a,b\n1,"x\ny"\n5,6\n\n7,"q""r"\n'
    assert [(r.line, r.reason) for r in out.rejects] == [
        (4, "bad_encoding"),
        (5, "malformed_row"),
        (9, "malformed_row"),
    ]


def test_out_of_memory_is_one_line_naming_the_step_and_the_remedy(raw_template: Path, tmp_path: Path) -> None:
    """`o2o prep` with too small a DuckDB memory cap: exit 2, one line, no traceback."""
    env = {**os.environ, engine.DUCKDB_MEMORY_ENV: "8MB", "COLUMNS": "1000"}
    env.pop("O2O_DEBUG", None)
    cmd = [
        sys.executable,
        "-m",
        "experiments.cli",
        "prep",
        "--raw",
        str(raw_template),
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stdout.rstrip().endswith(errors[0]), proc.stdout
    assert "prep step 'unify + clean + pseudonymise (02_events)' ran out of memory" in errors[0]
    assert f"raise {engine.DUCKDB_MEMORY_ENV} (now 8MB)" in errors[0]

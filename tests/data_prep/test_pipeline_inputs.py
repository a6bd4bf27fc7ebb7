"""Prep on awkward inputs: malformed files stop with file and line (and no raw PII), empty sources work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_prep import schema as S
from data_prep.generate import RetailerSpec, generate_retailer
from data_prep.pipeline import RawInputError, run_prep


@pytest.fixture(scope="module")
def raw_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate_retailer(root, RetailerSpec(n_customers=120, seed=3))
    return root


def copy_of(template: Path, tmp_path: Path) -> Path:
    shutil.copytree(template, tmp_path / "d")
    return tmp_path / "d"


def test_malformed_csv_row_names_file_and_line_without_raw_values(raw_template: Path, tmp_path: Path) -> None:
    d = copy_of(raw_template, tmp_path)
    pos = d / S.RAW_DIR / S.RAW_POS_DIR / S.RAW_POS_FILE
    lines = pos.read_text().splitlines()
    lines.insert(5, "T999,1,2026-01-05 10:00:00,ST001,,+86 139-1111-2222,SKU00001,1,9.9,EXTRA")
    pos.write_text("\n".join(lines) + "\n")
    with pytest.raises(RawInputError) as err:
        run_prep(d, d)
    msg = str(err.value)
    assert str(pos) in msg and "Line: 6" in msg
    assert "139-1111" not in msg


def test_missing_column_is_named(raw_template: Path, tmp_path: Path) -> None:
    d = copy_of(raw_template, tmp_path)
    crm = d / S.RAW_DIR / S.RAW_CRM_DIR / S.RAW_CRM_FILE
    text = crm.read_text().replace(S.CRM_PHONE, "mobile", 1)
    crm.write_text(text)
    with pytest.raises(RawInputError, match=r"missing column\(s\) \['phone'\]"):
        run_prep(d, d)


def test_empty_identifier_columns_and_empty_sources(raw_template: Path, tmp_path: Path) -> None:
    """A retailer with no store data and no CRM members still preps (identifier columns all empty)."""
    d = copy_of(raw_template, tmp_path)
    for sub, name in ((S.RAW_POS_DIR, S.RAW_POS_FILE), (S.RAW_CRM_DIR, S.RAW_CRM_FILE)):
        path = d / S.RAW_DIR / sub / name
        path.write_text(path.read_text().splitlines()[0] + "\n")  # header only
    result = run_prep(d, d)
    assert result.ledger["sources"]["pos"]["n_raw"] == 0 and result.ledger["balanced"]
    ledger = json.loads((d / S.EVENTS_DIR / S.LEDGER_FILE).read_text())
    assert ledger["sources"]["online"]["n_accepted"] > 0

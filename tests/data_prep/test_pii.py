"""Pseudonymisation: normalisation, keyed hashing, and no raw identifier in any output of a run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import pii
from data_prep import schema as S


def test_normalisation_makes_formats_agree() -> None:
    assert pii.normalise_identifier(S.ID_EMAIL, "  Alice@Mail.com ") == "alice@mail.com"
    for typed in (
        "+86 138-0013-8000",
        "13800138000",
        "(+86) 138 0013 8000",
        "0086 13800138000",
        "138 0013 8000",
    ):
        assert pii.normalise_identifier(S.ID_PHONE, typed, "CN") == "+8613800138000", typed
    assert pii.normalise_identifier(S.ID_PHONE, "+1 650 253 0000", "CN") == "+16502530000"
    assert pii.normalise_identifier(S.ID_PHONE, "650 253 0000", "US") == "+16502530000"
    assert pii.normalise_identifier(S.ID_PHONE, "call me") is None
    assert pii.normalise_identifier(S.ID_CARD, " lc 123 ") == "LC123"
    assert pii.normalise_identifier(S.ID_EMAIL, "not-an-email") is None
    assert pii.normalise_identifier(S.ID_PHONE, "12") is None
    assert pii.normalise_identifier(S.ID_ACCOUNT, "   ") is None


def test_hash_is_keyed_typed_and_stable() -> None:
    a = pii.pseudonymise(S.ID_EMAIL, "Alice@Mail.com", b"k1")
    assert a == pii.pseudonymise(S.ID_EMAIL, " alice@mail.com", b"k1")
    assert a != pii.pseudonymise(S.ID_EMAIL, "alice@mail.com", b"k2")
    assert a != pii.pseudonymise(S.ID_ACCOUNT, "alice@mail.com", b"k1")
    assert a is not None and len(a) == pii.KEY_HEX_CHARS and "alice" not in a


def test_key_file_is_created_once_when_env_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pii.KEY_ENV, raising=False)
    monkeypatch.setenv(pii.HOME_ENV, str(tmp_path))
    k1 = pii.load_key()
    assert (tmp_path / "pii.key").exists() and pii.load_key() == k1
    monkeypatch.setenv(pii.KEY_ENV, "from-env")
    assert pii.load_key() == b"from-env"


def _raw_identifiers(data: Path) -> set[str]:
    gt = pd.read_csv(data / S.GROUND_TRUTH_DIR / S.GT_IDENTIFIERS_FILE, dtype=str, keep_default_na=False)
    pii_rows = gt[gt[S.IDENTIFIER_TYPE].isin(S.PII_IDENTIFIER_TYPES)]
    values = {v for v in pii_rows[S.GT_IDENTIFIER] if len(v) >= 6}
    online = pd.read_json(data / S.RAW_DIR / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE, lines=True, dtype=str)
    ips = {v for v in online[S.ON_IP].dropna() if len(v) >= 10}  # client addresses are personal data too
    assert ips
    # names and birth dates of accounts and members, as typed and normalised (postcodes are six digits
    # that any number may contain, so they are left to tests/data_prep/test_matching.py's narrower scan)
    profiles = [
        pd.read_csv(data / S.RAW_DIR / S.RAW_ONLINE_DIR / S.RAW_ACCOUNTS_FILE, dtype=str),
        pd.read_csv(data / S.RAW_DIR / S.RAW_CRM_DIR / S.RAW_CRM_FILE, dtype=str),
    ]
    names = {n for p in profiles for n in p[S.PROFILE_NAME].dropna()}
    names |= {" ".join(pii.normalise_name(n)) for n in names}
    dates = {d.strip() for p in profiles for d in p[S.PROFILE_BIRTH_DATE].dropna()}
    assert names and dates
    return values | ips | {n.strip() for n in names if len(n.strip()) >= 6} | dates


def test_no_raw_identifier_outside_raw_layer(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    """Scan every file the run wrote after 01_raw (data layers, runs, artifacts) for raw PII values."""
    raw_values = _raw_identifiers(tiny_pipeline.data)
    assert len(raw_values) > 50
    roots = [tiny_pipeline.features.parent, tiny_pipeline.rec_run.parent, tiny_pipeline.bundle.parent]
    files = [
        p
        for root in roots
        for p in root.rglob("*")
        if p.is_file() and S.RAW_DIR not in p.parts and S.GROUND_TRUTH_DIR not in p.parts
    ]
    assert len(files) > 20
    needles = [v.encode() for v in raw_values]
    for path in files:
        blob = decoded_text(path) if path.suffix == ".parquet" else path.read_bytes()
        leaked = [n for n in needles if n in blob]
        assert not leaked, f"{path} contains raw identifiers, e.g. {leaked[0][:4]!r}…"


def decoded_text(path: Path) -> bytes:
    """Every value of a Parquet file as text (compression would hide strings from a byte scan)."""
    table = pq.read_table(path)
    return "\n".join(str(v) for col in table.columns for v in col.to_pylist()).encode()


def test_decoded_scan_finds_a_planted_value(tmp_path: Path) -> None:
    """The scan itself must be able to fail: a compressed Parquet file hides nothing from it."""
    values = [f"person{i}@mail.com" for i in range(2000)]
    pq.write_table(pa.table({"x": values}), tmp_path / "p.parquet", compression="snappy")
    assert b"person1234@mail.com" in decoded_text(tmp_path / "p.parquet")

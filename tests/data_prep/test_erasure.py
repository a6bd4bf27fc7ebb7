"""Erasure: a person leaves every layer (raw included), stays out of later prep runs, and stale models are flagged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from data_prep import schema as S
from data_prep.erasure import RETRAIN_MARKER, erase_person, erased_keys
from data_prep.pipeline import run_prep
from tests.conftest import Prepared, copy_prepared


@pytest.fixture
def prepared(prepared_150: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("O2O_HOME", str(tmp_path / "home"))
    copy = copy_prepared(prepared_150, tmp_path)
    return copy.template, copy.data


def omni_email(data: Path) -> str:
    """A raw email of a person who shops both online and in stores (present in CRM and online orders)."""
    crm = pd.read_csv(data / S.RAW_DIR / S.RAW_CRM_DIR / S.RAW_CRM_FILE, dtype=str).dropna(
        subset=[S.CRM_EMAIL]
    )
    online = duckdb.sql(
        f"SELECT DISTINCT email FROM read_json_auto('{data / S.RAW_DIR / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE}') "
        "WHERE email IS NOT NULL"
    ).df()["email"]
    both = sorted(set(crm[S.CRM_EMAIL]) & set(online))
    assert both, "the tiny retailer should have an omni customer"
    return both[0]


def test_erasure_removes_the_person_everywhere_and_keeps_them_out(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    template, data = prepared
    email = omni_email(data)
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    old = json.loads((data / S.FEATURES_DIR / S.MANIFEST_FILE).read_text())["outputs"]
    (run / "metrics.json").write_text(json.dumps({"data_manifest": old}))
    other = tmp_path / "runs" / "r2"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({"data_manifest": {"x.parquet": {"sha256": "0" * 64}}}))

    result = erase_person(data, S.ID_EMAIL, f"  {email.upper()} ", [tmp_path / "runs"])  # any typed format

    assert len(result.customer_ids) == 1 and result.n_identifiers >= 3
    cust = result.customer_ids[0]
    for p in data.rglob("*.parquet"):
        if "customer_id" in pd.read_parquet(p).columns:
            assert cust not in set(pd.read_parquet(p)[S.CUSTOMER_ID].dropna()), p
    for p in (data / S.RAW_DIR).rglob("*.*"):
        assert email not in p.read_text(), p
    assert result.marked_for_retraining == [run] and (run / RETRAIN_MARKER).exists()
    assert len(erased_keys()) == result.n_identifiers

    # the retailer re-delivers the same exports: the person stays out, and the ledger still balances
    shutil.rmtree(data / S.RAW_DIR)
    shutil.copytree(template / S.RAW_DIR, data / S.RAW_DIR)
    again = run_prep(data, data)
    assert again.ledger["balanced"]
    assert sum(src["n_erased"] for src in again.ledger["sources"].values()) > 0
    keys = erased_keys()
    id_map = pd.read_parquet(data / S.CUSTOMERS_DIR / S.IDENTITY_MAP_FILE)
    assert not set(zip(keys.identifier_type, keys.identifier_key, strict=True)) & set(
        zip(id_map.identifier_type, id_map.identifier_key, strict=True)
    )
    rejects = pd.read_parquet(data / S.EVENTS_DIR / S.REJECTS_FILE)
    assert "erased" not in set(rejects[S.REJECT_REASON])  # nothing of an erased person is kept


def test_unknown_or_malformed_identifier(prepared) -> None:  # type: ignore[no-untyped-def]
    _, data = prepared
    assert erase_person(data, S.ID_EMAIL, "nobody@nowhere.test").customer_ids == []
    with pytest.raises(ValueError, match="malformed"):
        erase_person(data, S.ID_EMAIL, "not an email")
    with pytest.raises(ValueError, match="identifier type"):
        erase_person(data, "passport", "X1")

"""Erasure: a person leaves every layer (raw included), stays out of later prep runs, and stale models are flagged."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_prep import datasets as ds
from data_prep import pii
from data_prep import schema as S
from data_prep.erasure import JOURNAL_FILE, RETRAIN_MARKER, erase_person, erased_keys
from data_prep.pipeline import run_prep
from data_prep.sources import import_sources
from tests.conftest import Prepared, copy_prepared, serve_fake_journey_wheel


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


# ---------------------------------------------------------------- the files an import read (issue 19)
HOUSEHOLD = 70001234  # the household erased below: a number no hash or other id contains


def fake_complete_journey(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """complete-journey-orders pointed at a wheel-shaped zip of 600 baskets of 30 households, in ``cache``."""
    rng = np.random.default_rng(0)
    households = [HOUSEHOLD] + [71_000_000 + i for i in range(29)]
    baskets = pd.DataFrame(
        {
            "household_id": rng.choice(households, 600),
            "store_id": rng.choice([7, 8], 600),
            "basket_id": np.arange(600) + 9_000_000,
            "transaction_timestamp": pd.Timestamp("2017-01-01")
            + pd.to_timedelta(np.arange(600) * 7, unit="h"),
        }
    )
    lines = baskets.loc[baskets.index.repeat(2)].assign(
        product_id=100, quantity=1, sales_value=rng.integers(1, 500, 1200) / 100
    )
    serve_fake_journey_wheel(lines, cache, monkeypatch)


def files_holding(root: Path, needles: list[str]) -> list[str]:
    """Every file under ``root`` whose bytes (Parquet also decoded) contain one of ``needles``."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        text = path.read_bytes().decode("utf-8", "replace")
        if path.suffix == ".parquet":
            text += str(pq.read_table(path).to_pylist())
        found += [f"{path.relative_to(root)}: {n}" for n in needles if n in text]
    return found


@pytest.mark.slow
def test_erasing_a_household_cleans_the_export_a_fetch_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`o2o data fetch complete-journey-orders` leaves exports/complete_journey_baskets.csv beside 01_raw:
    after the household is erased, no file of the dataset folder holds a row of it."""
    monkeypatch.setenv("O2O_HOME", str(tmp_path / "home"))
    fake_complete_journey(tmp_path / "cache", monkeypatch)
    data = tmp_path / "complete-journey-orders"
    (export,) = ds.fetch_dataset("complete-journey-orders", data, cache_dir=tmp_path / "cache").exports
    run_prep(data, data, consent_default=True)
    before = export.read_bytes().splitlines(keepends=True)
    card_key = pii.pseudonymise(S.ID_CARD, str(HOUSEHOLD), pii.load_key())
    assert card_key is not None
    assert files_holding(data, [str(HOUSEHOLD)])  # the scan can see the household

    result = erase_person(data, S.ID_CARD, str(HOUSEHOLD))

    (customer,) = result.customer_ids
    assert files_holding(data, [str(HOUSEHOLD), card_key, customer]) == []
    kept = [line for line in before if not line.startswith(f"{HOUSEHOLD},".encode())]
    assert export.read_bytes() == b"".join(kept) and len(kept) < len(before)  # the others' bytes as they were
    assert result.rows_removed[str(export)] == len(before) - len(kept)
    assert result.inputs_outside == ()


def import_into(data: Path, mapping: str) -> None:
    (data / "mapping.yaml").write_text(textwrap.dedent(mapping))
    import_sources(data / "mapping.yaml", data)


def test_inputs_in_the_data_folder_are_cleaned_in_their_own_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A till export in GBK with ';', a JSONL clickstream with numeric account ids and a Parquet member list
    with integer cards, all read by an import from the data folder: the person's rows leave each file, every
    other row keeps its bytes (CSV, JSONL) or its values (Parquet)."""
    monkeypatch.setenv("O2O_HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    (data / "exports").mkdir(parents=True)
    till = data / "exports" / "till.csv"
    till.write_bytes(
        "单号;时间;会员卡;商品;数量;金额\n"
        'T1;2026-01-05 09:15:00;7;A1;1;2.5\nT2;2026-01-05 09:16:00;"8";A1;1;2.5\n'
        'T3;2026-01-05 09:17:00;" 7 ";A1;1;2.5\n'.encode("gbk")
    )
    web = data / "exports" / "web.jsonl"
    web.write_text(
        '{"id":"e1","t":"2026-01-05T10:00:00Z","cookie":"d1","acct":4711}\n'
        '{"id":"e2","t":"2026-01-05T10:01:00Z","cookie":"d2","acct":4712}\n'
    )
    members = data / "exports" / "members.parquet"
    pd.DataFrame({"card": [7, 8], "joined": ["2026-01-01 10:00:00"] * 2}).to_parquet(members)
    import_into(
        data,
        """
        sources:
          - {name: till, kind: pos, path: exports/till.csv, format: csv, csv: {delimiter: ";", encoding: gbk},
             timestamp: {column: 时间}, columns: {transaction_id: 单号, loyalty_card: 会员卡, item_id: 商品,
             quantity: 数量, amount: 金额}, constants: {line_no: "1", store_id: ST1}}
          - {name: web, kind: online, path: exports/web.jsonl, format: jsonl, timestamp: {column: t},
             columns: {event_id: id, device_id: cookie, account_id: acct}, constants: {channel: web, event_type: view}}
          - {name: members, kind: crm, path: exports/members.parquet, format: parquet,
             timestamp: {column: joined}, columns: {loyalty_card: card}}
        """,
    )
    web_before = web.read_bytes().splitlines(keepends=True)

    erase_person(data, S.ID_CARD, "7")
    erase_person(data, S.ID_ACCOUNT, "4711")

    assert till.read_bytes() == (
        '单号;时间;会员卡;商品;数量;金额\nT2;2026-01-05 09:16:00;"8";A1;1;2.5\n'
    ).encode("gbk")
    assert web.read_bytes() == web_before[1]
    assert pd.read_parquet(members)["card"].tolist() == [8]
    assert files_holding(data, ["4711"]) == []  # 01_raw too


def test_an_input_it_cannot_clean_stops_the_erasure_and_one_outside_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card built by a template matches no single column: refused before anything changes. Inputs of every
    import into the folder are cleaned, not only the last one's; an input outside the data folder is left
    alone and named (the operator's to erase)."""
    monkeypatch.setenv("O2O_HOME", str(tmp_path / "home"))
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for folder in (data / "exports", elsewhere):
        folder.mkdir(parents=True)
        (folder / "orders.csv").write_text("id,t,card,total\nO1,2026-01-05 09:15:00,7,9.5\n")
    built = data / "exports" / "built.csv"
    built.write_bytes((data / "exports" / "orders.csv").read_bytes())
    orders = (
        "sources:\n  - {{name: orders, kind: orders, path: '{path}', format: csv, timestamp: {{column: t}},\n"
        "     constants: {{channel: store, store_id: ST1}}, {fields}}}\n"
    )
    built_card = 'columns: {order_id: id, total: total}, templates: {loyalty_card: "CJ-{card}"}'
    import_into(data, orders.format(path=built, fields=built_card))
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    with pytest.raises(ValueError, match=r"built\.csv.*templates or recoded values.*nothing was erased"):
        erase_person(data, S.ID_CARD, "CJ-7")

    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files
    assert erased_keys().empty and not (tmp_path / "home" / JOURNAL_FILE).exists()

    built.unlink()  # the remedy the refusal names
    plain_card = "columns: {order_id: id, total: total, loyalty_card: card}"
    import_into(data, orders.format(path="exports/orders.csv", fields=plain_card))
    import_into(data, orders.format(path=elsewhere / "orders.csv", fields=plain_card))  # later, from outside

    result = erase_person(data, S.ID_CARD, "7")

    assert (data / "exports" / "orders.csv").read_text() == "id,t,card,total\n"
    assert result.inputs_outside == (elsewhere / "orders.csv",)
    assert (elsewhere / "orders.csv").read_bytes() == files[elsewhere / "orders.csv"]


def test_erasure_reaches_the_id_registry_and_its_log(prepared) -> None:  # type: ignore[no-untyped-def]
    from data_prep.registry import registry_paths

    _, data = prepared
    email = omni_email(data)
    ids_file, log_file = registry_paths(data)
    registry = pd.read_parquet(ids_file)
    key = pii.pseudonymise(S.ID_EMAIL, email, pii.load_key())
    person = registry.loc[registry[S.IDENTIFIER_KEY] == key, S.CUSTOMER_ID].iloc[0]
    others = registry[registry[S.CUSTOMER_ID] != person]
    nodes = (registry[S.IDENTIFIER_TYPE] + ":" + registry[S.IDENTIFIER_KEY])[
        registry[S.CUSTOMER_ID] == person
    ]
    other_node = others[S.IDENTIFIER_TYPE].iloc[0] + ":" + others[S.IDENTIFIER_KEY].iloc[0]
    other_id = others[S.CUSTOMER_ID].iloc[0]
    # a log as earlier runs would have left it: the person's identifiers merged into their id, an identifier
    # split off from them to someone else, and a change that does not concern them
    log = pd.DataFrame(
        {
            S.LOGGED_AT: pd.Timestamp("2026-09-01", tz="UTC"),
            "change": ["merge", "split", "merge"],
            S.CUSTOMER_ID: [person, other_id, other_id],
            S.PREVIOUS_CUSTOMER_ID: ["c-old-of-person", person, "c-old-of-other"],
            "node": [nodes.iloc[0], other_node, other_node],
        }
    )
    log.to_parquet(log_file)

    erase_person(data, S.ID_EMAIL, email)

    assert person not in set(pd.read_parquet(ids_file)[S.CUSTOMER_ID])
    assert not set(nodes) & set(
        pd.read_parquet(ids_file).pipe(lambda r: r[S.IDENTIFIER_TYPE] + ":" + r[S.IDENTIFIER_KEY])
    )
    left = pd.read_parquet(log_file)
    assert left[S.PREVIOUS_CUSTOMER_ID].tolist() == ["c-old-of-other"]  # only the row about someone else
    assert person not in set(left[S.CUSTOMER_ID]) | set(left[S.PREVIOUS_CUSTOMER_ID])

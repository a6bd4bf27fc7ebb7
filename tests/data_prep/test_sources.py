"""Mapped imports: hand-written exports in CSV/JSONL/Parquet + a YAML mapping → exact canonical raw files."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from data_prep import schema as S
from data_prep.sources import ImportResult, SourceError, import_sources


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding=encoding)
    return path


def run(root: Path, mapping: str) -> ImportResult:
    return import_sources(write(root / "mapping.yaml", mapping), root / "out")


def raw_file(root: Path, folder: str, name: str) -> Path:
    return root / "out" / S.RAW_DIR / folder / name


def online_rows(root: Path) -> list[dict[str, str | None]]:
    text = raw_file(root, S.RAW_ONLINE_DIR, S.RAW_ONLINE_FILE).read_text()
    return [json.loads(line) for line in text.splitlines()]


def online(**kw: str | None) -> dict[str, str | None]:
    row: dict[str, str | None] = dict.fromkeys(S.RAW_ONLINE_COLUMNS)
    row.update(kw)
    return row


def csv_records(root: Path, folder: str, name: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a canonical CSV, after checking its header is exactly ``columns``."""
    with raw_file(root, folder, name).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == columns
    return rows


def record(columns: tuple[str, ...], **kw: str) -> dict[str, str]:
    """A canonical CSV row: ``kw`` set, every other column empty."""
    return {c: kw.get(c, "") for c in columns}


def test_online_jsonl_glob_timezone_recoding_templates_currency(tmp_path: Path) -> None:
    write(
        tmp_path / "exports/web/a.jsonl",
        """
        {"id": "e1", "t": "2026-01-05 18:22:33", "cookie": "c1", "uid": "u1", "visit": "7", "action": "pv", "sku": "S1", "cur": "USD", "p": "10"}
        {"id": "e2", "t": "2026-01-05 08:00:00.250", "cookie": "c1", "uid": null, "visit": 7, "action": "buy", "sku": "S1", "n": 2, "cur": "cny", "p": 12.5, "order": "o1", "mail": "a@b.c"}
        """,
    )
    write(
        tmp_path / "exports/web/b.jsonl",
        """
        {"id": "e3", "t": "yesterday", "cookie": "c2", "visit": "1", "action": "zzz", "p": "abc", "cur": "USD"}
        {"id": "e4", "t": "2026-01-01 00:30:00", "cookie": "c2", "visit": "1", "action": "cart", "sku": "S2", "n": "1", "cur": "EUR", "p": "3"}
        {"id": "e5", "t": "2026-01-05T10:00:00+01:00", "cookie": null, "action": "pv", "sku": "S3"}
        """,
    )
    result = run(
        tmp_path,
        """
        sources:
          - name: web
            kind: online
            path: exports/web/*.jsonl
            format: jsonl
            timestamp: {column: t, format: iso, timezone: Asia/Shanghai}
            columns: {event_id: id, device_id: cookie, account_id: uid, event_type: action, item_id: sku,
                      quantity: n, price: p, order_id: order, email: mail}
            templates: {session_id: "{cookie}-{visit}"}
            constants: {channel: web}
            values: {event_type: {pv: view, cart: add_to_cart, buy: order}}
            currency: {column: cur, rates: {USD: 7.1}, target: CNY}
        """,
    )
    assert online_rows(tmp_path) == [
        online(event_id="e1", ts="2026-01-05T10:22:33.000Z", channel="web", device_id="c1", account_id="u1",
               session_id="c1-7", event_type="view", item_id="S1", price="71.0"),
        online(event_id="e2", ts="2026-01-05T00:00:00.250Z", channel="web", device_id="c1", session_id="c1-7",
               event_type="order", item_id="S1", quantity="2", price="12.5", order_id="o1", email="a@b.c"),
        # bad timestamp → empty; unknown type passes unchanged; a price that is not a number passes as-is
        online(event_id="e3", channel="web", device_id="c2", session_id="c2-1", event_type="zzz", price="abc"),
        # a currency without a rate → empty price (prep must not read it as CNY)
        online(event_id="e4", ts="2025-12-31T16:30:00.000Z", channel="web", device_id="c2", session_id="c2-1",
               event_type="add_to_cart", item_id="S2", quantity="1"),
        online(event_id="e5", ts="2026-01-05T09:00:00.000Z", channel="web", event_type="view", item_id="S3"),
    ]  # fmt: skip
    assert result.n_rows_by_source == {"web": 5}
    assert result.n_rows == {
        "online": 5,
        "accounts": 0,
        "pos": 0,
        "crm": 0,
        "orders": 0,
        "items": 0,
        "stores": 0,
    }


def test_pos_csv_delimiter_encoding_pattern_amounts_and_order_level_rows(tmp_path: Path) -> None:
    write(
        tmp_path / "kasse/zeilen.csv",
        """
        bon;datum;filiale;karte;artikel;menge;summe
        T1;05.01.2026 09:15;Köln;K1;A1;2;5.00
        T1;05.01.2026 09:15;Köln;K1;A2;3;1.00
        T2;31.12.2025 23:30;Köln;;A1;0;2.50
        T3;kaputt;Köln;K2;A3;1;4,20
        """,
        encoding="latin-1",
    )
    write(tmp_path / "kasse/orders.csv", "order,when,shop,total\nO9,1767607200123,ST1,99.5\n")
    result = run(
        tmp_path,
        """
        sources:
          - name: till
            kind: pos
            path: kasse/zeilen.csv
            format: csv
            csv: {delimiter: ";", encoding: latin-1}
            timestamp: {column: datum, format: "%d.%m.%Y %H:%M", timezone: Europe/Berlin}
            row_number: {name: line, partition_by: [bon]}
            columns: {transaction_id: bon, line_no: line, store_id: filiale, loyalty_card: karte,
                      item_id: artikel, quantity: menge, amount: summe}
          - name: order_totals          # order level: no item lines, only the order's total
            kind: orders
            path: kasse/orders.csv
            format: csv
            timestamp: {column: when, format: epoch_ms}
            columns: {order_id: order, store_id: shop, total: total}
            constants: {channel: store}
        """,
    )
    pos = csv_records(tmp_path, S.RAW_POS_DIR, S.RAW_POS_FILE, S.RAW_POS_COLUMNS)
    line = dict(transaction_id="T1", ts="2026-01-05 08:15:00", store_id="Köln", loyalty_card="K1")
    assert pos == [
        record(S.RAW_POS_COLUMNS, **line, line_no="1", item_id="A1", quantity="2", unit_price="2.5"),
        record(S.RAW_POS_COLUMNS, **line, line_no="2", item_id="A2", quantity="3", unit_price="0.333333"),
        # quantity 0: the total passes as it came; prep rejects the row (bad_quantity)
        record(S.RAW_POS_COLUMNS, transaction_id="T2", line_no="1", ts="2025-12-31 22:30:00", store_id="Köln",
               item_id="A1", quantity="0", unit_price="2.50"),
        # timestamp and amount that do not parse: empty / as they came
        record(S.RAW_POS_COLUMNS, transaction_id="T3", line_no="1", store_id="Köln", loyalty_card="K2",
               item_id="A3", quantity="1", unit_price="4,20"),
    ]  # fmt: skip
    orders = csv_records(tmp_path, S.RAW_ORDERS_DIR, S.RAW_ORDERS_FILE, S.RAW_ORDER_COLUMNS)
    assert orders == [
        record(S.RAW_ORDER_COLUMNS, order_id="O9", ts="2026-01-05 10:00:00", channel="store", store_id="ST1",
               total="99.5"),
    ]  # fmt: skip
    assert result.n_rows_by_source == {"till": 4, "order_totals": 1}
    assert csv_records(tmp_path, S.RAW_CRM_DIR, S.RAW_CRM_FILE, S.RAW_CRM_COLUMNS) == []
    assert raw_file(tmp_path, S.RAW_ONLINE_DIR, S.RAW_ONLINE_FILE).read_text() == ""


def test_zero_total_option_keeps_free_orders_of_its_source_only_and_the_ledger_balances(
    tmp_path: Path,
) -> None:
    """Two order exports, one with ``zero_total: keep``: its 0.00 receipt becomes a purchase with spend 0; the
    other's stays ``bad_price``, and negative or non-numeric totals are rejected under either rule."""
    from data_prep import engine, pii
    from data_prep.pipeline import build_events_layer

    receipts = "receipt,at,shop,card,paid\n" + "".join(
        f"{{p}}{i},2026-01-0{4 + i} 10:00:00,ST1,K{i},{paid}\n"
        for i, paid in enumerate(("12.5", "0.00", "-4", "free"), start=1)
    )
    write(tmp_path / "vouchers.csv", receipts.format(p="V"))
    write(tmp_path / "franchise.csv", receipts.format(p="F"))
    source = "{{name: {name}, kind: orders, path: {name}.csv, format: csv, timestamp: {{column: at}}, "
    source += "columns: {{order_id: receipt, store_id: shop, loyalty_card: card, total: paid}}, "
    source += "constants: {{channel: store}}{option}}}"
    result = run(
        tmp_path,
        f"""
        sources:
          - {source.format(name="vouchers", option=", zero_total: keep")}
          - {source.format(name="franchise", option="")}
          - {{name: shops, kind: stores, path: vouchers.csv, format: csv, columns: {{store_id: shop}},
             distinct: true}}
        """,
    )
    assert result.n_rows_by_source == {"vouchers": 4, "franchise": 4, "shops": 1}
    orders = csv_records(tmp_path, S.RAW_ORDERS_DIR, S.RAW_ORDERS_FILE, S.RAW_ORDER_COLUMNS)
    assert [(r[S.ORD_ORDER_ID], r[S.ORD_ZERO_TOTAL]) for r in orders] == [
        ("V1", "keep"), ("V2", "keep"), ("V3", "keep"), ("V4", "keep"),
        ("F1", ""), ("F2", ""), ("F3", ""), ("F4", ""),
    ]  # fmt: skip

    out = tmp_path / "out"
    ledger = build_events_layer(engine.connect(), out, out, pii.load_key())[2]["sources"]["orders"]
    assert ledger["n_raw"] == 8 and ledger["balanced"]
    assert (ledger["n_accepted"], ledger["n_rejected"], ledger["rejected_by_reason"]) == (
        3,
        5,
        {"bad_price": 5},
    )
    events = pd.read_parquet(out / S.EVENTS_DIR / S.EVENTS_FILE).set_index(S.EVENT_ID)
    assert events[S.AMOUNT].to_dict() == {"orders:V1": 12.5, "orders:V2": 0.0, "orders:F1": 12.5}
    assert (events[S.EVENT_TYPE] == S.EV_PURCHASE).all()
    rejects = pd.read_parquet(out / S.EVENTS_DIR / S.REJECTS_FILE)
    assert sorted(rejects[S.EVENT_ID]) == ["orders:F2", "orders:F3", "orders:F4", "orders:V3", "orders:V4"]


@pytest.mark.parametrize(
    ("fmt", "zone", "value", "expected"),
    [
        ("iso", "UTC", "2026-01-05T10:00:00Z", "2026-01-05T10:00:00.000Z"),
        ("iso", "UTC", "2026-01-05 10:00:00", "2026-01-05T10:00:00.000Z"),
        ("iso", "Asia/Shanghai", "2026-01-05 18:00:00", "2026-01-05T10:00:00.000Z"),
        ("iso", "Asia/Shanghai", "2026-01-05T11:00:00+01:00", "2026-01-05T10:00:00.000Z"),
        ("iso", "America/New_York", "2026-07-01 06:00:00", "2026-07-01T10:00:00.000Z"),  # summer time
        ("epoch_s", "UTC", "1767607200", "2026-01-05T10:00:00.000Z"),
        ("epoch_s", "UTC", "1767607200.5", "2026-01-05T10:00:00.500Z"),
        ("epoch_ms", "UTC", "1767607200123", "2026-01-05T10:00:00.123Z"),
        ("%d/%m/%Y %H:%M", "Europe/Paris", "05/01/2026 11:00", "2026-01-05T10:00:00.000Z"),
        ("%Y-%m-%d %H:%M:%S %z", "UTC", "2026-01-05 18:00:00 +0800", "2026-01-05T10:00:00.000Z"),
        ("iso", "UTC", "not a time", None),
        ("epoch_s", "UTC", "1e30", None),
        ("%d/%m/%Y %H:%M", "UTC", "2026-01-05 10:00", None),  # another layout than the pattern
    ],
)
def test_timestamp_formats_to_utc(
    tmp_path: Path, fmt: str, zone: str, value: str, expected: str | None
) -> None:
    pd.DataFrame({"id": ["e1"], "t": [value], "dev": ["d"]}).to_parquet(tmp_path / "ev.parquet")
    run(
        tmp_path,
        f"""
        sources:
          - {{name: ev, kind: online, path: ev.parquet, format: parquet,
              timestamp: {{column: t, format: "{fmt}", timezone: {zone}}},
              columns: {{event_id: id, device_id: dev}}}}
        """,
    )
    assert online_rows(tmp_path)[0][S.ON_TS] == expected


def test_parquet_crm_catalogue_one_hot_coalesce_and_distinct_stores(tmp_path: Path) -> None:
    pd.DataFrame(
        {
            "card": ["C1", "C2", None],
            "mobile": ["+86 1", None, "+86 3"],
            "joined": pd.to_datetime(["2025-03-01 08:00:00", "2025-03-02 09:30:00", None]),
            "shop": [1, 2, 1],
        }
    ).to_parquet(tmp_path / "members.parquet")
    pd.DataFrame(
        {"mid": [1, 2, 3], "Action": [0, 1, 0], "Comedy": [1, 1, 0], "p": [9.5, None, 3.0]}
    ).to_parquet(tmp_path / "films.parquet")
    write(tmp_path / "sku.csv", "sku,sub,dept\nS1,cola,drinks\nS2,,drinks\n")
    write(tmp_path / "lines.csv", "shop,city\n2,Köln\n1,Paris\n2,Köln\n1,Paris\n")
    result = run(
        tmp_path,
        """
        sources:
          - name: members
            kind: crm
            path: members.parquet
            format: parquet
            timestamp: {column: joined, timezone: Europe/Paris}
            columns: {loyalty_card: card, phone: mobile, signup_store_id: shop}
          - name: films
            kind: items
            path: films.parquet
            format: parquet
            columns: {item_id: mid, price: p}
            one_hot: {category: {columns: [Action, Comedy], true_value: 1}}
            currency: {code: EUR, rates: {EUR: 2}, target: CNY}
          - name: skus
            kind: items
            path: sku.csv
            format: csv
            columns: {item_id: sku, category: [sub, dept]}
          - name: stores
            kind: stores
            path: lines.csv
            format: csv
            columns: {store_id: shop, city: city}
            distinct: true
        """,
    )
    crm = csv_records(tmp_path, S.RAW_CRM_DIR, S.RAW_CRM_FILE, S.RAW_CRM_COLUMNS)
    assert crm == [
        record(S.RAW_CRM_COLUMNS, loyalty_card="C1", phone="+86 1", signup_ts="2025-03-01 07:00:00", signup_store_id="1"),
        record(S.RAW_CRM_COLUMNS, loyalty_card="C2", signup_ts="2025-03-02 08:30:00", signup_store_id="2"),
        record(S.RAW_CRM_COLUMNS, phone="+86 3", signup_store_id="1"),
    ]  # fmt: skip
    items = csv_records(tmp_path, S.RAW_CATALOG_DIR, S.RAW_ITEMS_FILE, S.RAW_ITEM_COLUMNS)
    assert [tuple(r.values()) for r in items] == [
        ("1", "Comedy", "19.0"),  # first flag set, in the listed order; EUR 9.5 × 2
        ("2", "Action", ""),
        ("3", "", "6.0"),
        ("S1", "cola", ""),
        ("S2", "drinks", ""),  # first non-empty of [sub, dept]
    ]
    stores = csv_records(tmp_path, S.RAW_CATALOG_DIR, S.RAW_STORES_FILE, S.RAW_STORE_COLUMNS)
    assert [tuple(r.values()) for r in stores] == [("2", "Köln"), ("1", "Paris")]  # first-seen order
    assert result.n_rows == {
        "online": 0,
        "accounts": 0,
        "pos": 0,
        "crm": 3,
        "orders": 0,
        "items": 5,
        "stores": 2,
    }


def test_row_numbers_follow_file_order_across_a_glob(tmp_path: Path) -> None:
    write(tmp_path / "d/2.csv", "dev,item\nz,I3\n")
    write(tmp_path / "d/1.csv", "item,dev\nI1,y\nI2,x\n")  # other column order
    run(
        tmp_path,
        """
        sources:
          - name: views
            kind: online
            path: d/*.csv
            format: csv
            row_number: {name: n, pad: 4}
            columns: {device_id: dev, item_id: item}
            templates: {event_id: "r-{n}"}
            constants: {event_type: view, channel: app}
        """,
    )
    rows = online_rows(tmp_path)
    assert [(r[S.ON_EVENT_ID], r[S.ON_DEVICE_ID], r[S.ON_ITEM_ID]) for r in rows] == [
        ("r-0001", "y", "I1"),
        ("r-0002", "x", "I2"),
        ("r-0003", "z", "I3"),
    ]


# ------------------------------------------------------------------------------------------ errors
WEB_CSV = "id,cookie,sku\ne1,c1,S1\n"
BASE = """
sources:
  - name: web
    kind: {kind}
    path: {path}
    format: {format}
    columns: {columns}
"""


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"path": "nope/*.csv"}, ["source 'web'", "no file matches", "nope/*.csv"]),
        ({"columns": "{event_id: id, item_id: skuu}"}, ["source 'web'", "web.csv", "['skuu']"]),
        ({"columns": "{event_id: id, itemid: sku}"}, ["source 'web'", "unknown canonical column 'itemid'"]),
        ({"kind": "onlin"}, ["source 'web'", "kind", "'onlin'"]),
        ({"format": "xlsx"}, ["source 'web'", "format", "'xlsx'"]),
        ({"columns": "{event_id: id}\n    colums: {}"}, ["source 'web'", "colums", "Extra inputs"]),
        (
            {"columns": "{event_id: id, channel: sku}\n    constants: {channel: web}"},
            ["source 'web'", "constants.channel", "also set in columns"],
        ),
        (
            {"columns": "{event_id: id}\n    values: {event_type: {pv: view}}"},
            ["source 'web'", "values.event_type", "not read from the source"],
        ),
        (
            {"columns": "{event_id: id}\n    timestamp: {column: t, timezone: Mars/Olympus}"},
            ["source 'web'", "Mars/Olympus"],
        ),
        ({"kind": "stores", "columns": "{store_id: id}\n    timestamp: {column: t}"}, ["kind 'stores'"]),
        ({"kind": "pos", "columns": "{amount: id, unit_price: sku}"}, ["either amount or unit_price"]),
        ({"columns": "{event_id: id}\n    distinct: true"}, ["source 'web'", "distinct"]),
        ({"columns": "{event_id: id}\n    templates: {session_id: '{cookie!r}'}"}, ["session_id"]),
        (
            {"kind": "orders", "columns": "{order_id: id}\n    zero_total: kepp"},
            ["source 'web'", "zero_total: Input should be 'keep' or 'reject' (got 'kepp')"],
        ),
        ({"columns": "{event_id: id}\n    zero_total: keep"}, ["zero_total: only for kind orders"]),
        (
            {"kind": "orders", "columns": "{order_id: id}\n    constants: {zero_total: keep}"},
            ["constants.zero_total", "set by the source option 'zero_total: keep | reject'"],
        ),
    ],
)
def test_mapping_errors_name_the_mapping_source_and_column(
    tmp_path: Path, fields: dict[str, str], expected: list[str]
) -> None:
    write(tmp_path / "web.csv", WEB_CSV)
    values = {"kind": "online", "path": "web.csv", "format": "csv", "columns": "{event_id: id}", **fields}
    with pytest.raises(SourceError) as err:
        run(tmp_path, BASE.format(**values))
    msg = str(err.value)
    assert str(tmp_path / "mapping.yaml") in msg
    for part in expected:
        assert part in msg


def test_missing_parquet_column_and_json_key_are_named(tmp_path: Path) -> None:
    pd.DataFrame({"id": ["e1"]}).to_parquet(tmp_path / "a.parquet")
    write(tmp_path / "a.jsonl", '{"id": "e1"}\n{"id": "e2", "cookie": "c"}\n')
    for fmt, col in (("parquet", "cookie"), ("jsonl", "sku")):
        mapping = BASE.format(kind="online", path=f"a.{fmt}", format=fmt, columns=f"{{device_id: {col}}}")
        with pytest.raises(SourceError, match=rf"source 'web'.*\['{col}'\]"):
            run(tmp_path, mapping)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sources: [", "invalid YAML"),
        ("- just a list", "expected a YAML mapping"),
        ("sources: []", "sources"),
        (
            "sources:\n  - {name: a, kind: items, path: x, format: csv}\n"
            "  - {name: a, kind: items, path: y, format: csv}",
            "repeated: ['a']",
        ),
    ],
)
def test_bad_mapping_files(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(SourceError, match=r"mapping .*mapping\.yaml") as err:
        run(tmp_path, text)
    assert expected in str(err.value)


def test_malformed_csv_row_stops_with_the_source_named(tmp_path: Path) -> None:
    write(tmp_path / "web.csv", 'id,cookie,sku\ne1,c1,S1\ne2,"c2,S2\n')
    with pytest.raises(SourceError, match="source 'web': cannot be read"):
        run(tmp_path, BASE.format(kind="online", path="web.csv", format="csv", columns="{event_id: id}"))


@pytest.mark.parametrize(
    ("text", "delimiter", "expected"),
    [
        ("id    cookie  sku\ne1    c1      S1\n", " ", r"empty column name.*aligned with runs of spaces"),
        ("id,id,sku\ne1,c1,S1\n", ",", r"repeated name\(s\) \['id'\]"),
    ],
    ids=["space-aligned", "repeated"],
)
def test_a_header_no_query_can_name_is_refused_saying_why(
    tmp_path: Path, text: str, delimiter: str, expected: str
) -> None:
    """A whitespace-aligned export read with a space delimiter gave DuckDB's 'Binder Error: Need named
    argument for struct pack'; the import now says what is wrong with the header."""
    write(tmp_path / "web.txt", text)
    mapping = BASE.format(kind="online", path="web.txt", format="csv", columns="{event_id: id}")
    mapping += f"    csv: {{delimiter: {delimiter!r}}}\n"
    with pytest.raises(SourceError, match=expected):
        run(tmp_path, mapping)


def test_refuses_an_output_folder_with_synthetic_ground_truth(tmp_path: Path) -> None:
    write(tmp_path / "web.csv", WEB_CSV)
    (tmp_path / "out" / S.GROUND_TRUTH_DIR).mkdir(parents=True)
    with pytest.raises(SourceError, match="ground_truth"):
        run(tmp_path, BASE.format(kind="online", path="web.csv", format="csv", columns="{event_id: id}"))


# ------------------------------------------------------------------------------------------ end to end
# The synthetic retailer re-exported in another retailer's formats: renamed columns, coded event types,
# Shanghai wall-clock times, epoch milliseconds, line totals, a ';' CSV, JSONL members, a GBK store list.
# Canonical columns not renamed here keep their names (so new schema columns travel too).
ONLINE_NAMES = {
    S.ON_EVENT_ID: "id", S.ON_CHANNEL: "src", S.ON_DEVICE_ID: "cookie", S.ON_ACCOUNT_ID: "member",
    S.ON_SESSION_ID: "sess", S.ON_EVENT_TYPE: "action", S.ON_ITEM_ID: "sku", S.ON_QUERY: "q",
    S.ON_QUANTITY: "qty", S.ON_PRICE: "unit_cost", S.ON_ORDER_ID: "order_no", S.ON_EMAIL: "mail",
}  # fmt: skip
POS_NAMES = {
    S.POS_TRANSACTION_ID: "receipt", S.POS_LINE_NO: "line", S.POS_STORE_ID: "shop", S.POS_LOYALTY_CARD: "card",
    S.POS_PHONE: "tel", S.POS_ITEM_ID: "sku", S.POS_QUANTITY: "qty",
}  # fmt: skip
CRM_NAMES = {
    S.CRM_LOYALTY_CARD: "card",
    S.CRM_PHONE: "tel",
    S.CRM_EMAIL: "mail",
    S.CRM_SIGNUP_STORE_ID: "shop",
}
ACTIONS = {
    "view": "pv",
    "search": "srch",
    "add_to_cart": "cart",
    "remove_from_cart": "uncart",
    "order": "buy",
}


def retailer_mapping() -> dict[str, object]:
    def named(columns: tuple[str, ...], names: dict[str, str], skip: tuple[str, ...]) -> dict[str, str]:
        return {c: names.get(c, c) for c in columns if c not in skip}

    return {
        "sources": [
            {"name": "online", "kind": "online", "path": "exports/online/*.parquet", "format": "parquet",
             "timestamp": {"column": "event_time", "timezone": "Asia/Shanghai"},
             "columns": named(S.RAW_ONLINE_COLUMNS, ONLINE_NAMES, (S.ON_TS,)),
             "values": {S.ON_EVENT_TYPE: {v: k for k, v in ACTIONS.items()}}},
            {"name": "till", "kind": "pos", "path": "exports/pos.csv", "format": "csv", "csv": {"delimiter": ";"},
             "timestamp": {"column": "epoch_ms", "format": "epoch_ms"},
             "columns": {**named(S.RAW_POS_COLUMNS, POS_NAMES, (S.POS_TS, S.POS_UNIT_PRICE)), "amount": "total"}},
            {"name": "members", "kind": "crm", "path": "exports/members.jsonl", "format": "jsonl",
             "timestamp": {"column": "joined", "format": "%d/%m/%Y %H:%M:%S"},
             "columns": named(S.RAW_CRM_COLUMNS, CRM_NAMES, (S.CRM_SIGNUP_TS,))},
            {"name": "accounts", "kind": "accounts", "path": "exports/accounts.csv", "format": "csv",
             "timestamp": {"column": S.ACC_CREATED_TS, "format": "iso"},
             "columns": {c: c for c in S.RAW_ACCOUNT_COLUMNS if c != S.ACC_CREATED_TS}},
            {"name": "items", "kind": "items", "path": "exports/items.csv", "format": "csv",
             "columns": {c: c for c in S.RAW_ITEM_COLUMNS}},
            {"name": "stores", "kind": "stores", "path": "exports/stores.csv", "format": "csv",
             "csv": {"encoding": "gbk"}, "columns": {c: c for c in S.RAW_STORE_COLUMNS}},
        ]
    }  # fmt: skip


def read_raw_csv(raw: Path, folder: str, name: str) -> pd.DataFrame:
    return pd.read_csv(raw / folder / name, dtype=str, keep_default_na=False)


def export_as_retailer(raw: Path, dest: Path) -> None:
    """Write the canonical synthetic files the way another retailer might export them.

    Values that do not parse (injected faults) are exported as they are, so prep rejects them either way.
    """
    with (raw / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE).open() as f:
        records = [json.loads(line) for line in f]
    text = [{k: v if v is None or isinstance(v, str) else str(v) for k, v in r.items()} for r in records]
    on = pd.DataFrame(text, columns=list(S.RAW_ONLINE_COLUMNS), dtype="string")
    ts = pd.to_datetime(on[S.ON_TS], errors="coerce", format="ISO8601", utc=True)
    local = ts.dt.tz_convert("Asia/Shanghai").dt.strftime("%Y-%m-%d %H:%M:%S.%f")
    web = on.rename(columns=ONLINE_NAMES).drop(columns=[S.ON_TS])
    web["event_time"] = local.where(ts.notna(), on[S.ON_TS])
    web["action"] = web["action"].map(lambda v: ACTIONS.get(v, v))
    (dest / "online").mkdir(parents=True)
    for i, (_, part) in enumerate(web.groupby("src", dropna=False)):
        part.to_parquet(dest / "online" / f"part-{i}.parquet", index=False)

    pos = read_raw_csv(raw, S.RAW_POS_DIR, S.RAW_POS_FILE)
    ts = pd.to_datetime(pos[S.POS_TS], errors="coerce", format="%Y-%m-%d %H:%M:%S").dt.tz_localize("UTC")
    total = pd.to_numeric(pos[S.POS_QUANTITY], errors="coerce") * pd.to_numeric(
        pos[S.POS_UNIT_PRICE], errors="coerce"
    )
    till = pos.rename(columns=POS_NAMES).drop(columns=[S.POS_TS, S.POS_UNIT_PRICE])
    till["epoch_ms"] = (
        ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1))
        .astype("string")
        .where(ts.notna(), pos[S.POS_TS])
    )
    till["total"] = total.astype("string").where(total.notna(), pos[S.POS_UNIT_PRICE])
    till.to_csv(dest / "pos.csv", sep=";", index=False)

    crm = read_raw_csv(raw, S.RAW_CRM_DIR, S.RAW_CRM_FILE)
    joined = pd.to_datetime(crm[S.CRM_SIGNUP_TS], errors="coerce", format="%Y-%m-%d %H:%M:%S")
    members = crm.rename(columns=CRM_NAMES).drop(columns=[S.CRM_SIGNUP_TS])
    members["joined"] = joined.dt.strftime("%d/%m/%Y %H:%M:%S").where(joined.notna(), crm[S.CRM_SIGNUP_TS])
    members.to_json(dest / "members.jsonl", orient="records", lines=True, force_ascii=False)

    read_raw_csv(raw, S.RAW_ONLINE_DIR, S.RAW_ACCOUNTS_FILE).to_csv(dest / "accounts.csv", index=False)
    read_raw_csv(raw, S.RAW_CATALOG_DIR, S.RAW_ITEMS_FILE).to_csv(dest / "items.csv", index=False)
    stores = read_raw_csv(raw, S.RAW_CATALOG_DIR, S.RAW_STORES_FILE)
    stores.assign(city=stores[S.CAT_CITY] + "市").to_csv(dest / "stores.csv", index=False, encoding="gbk")


def test_mapped_retailer_preps_to_the_same_events_as_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round trip: synthetic raw → another retailer's formats → mapping → prep gives identical events."""
    from data_prep.generate import RetailerSpec, generate_retailer
    from data_prep.pipeline import run_prep

    monkeypatch.setenv("O2O_PII_KEY", "test")
    original = tmp_path / "original"
    generate_retailer(original, RetailerSpec(n_customers=80, seed=5))
    export_as_retailer(original / S.RAW_DIR, tmp_path / "exports")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump(retailer_mapping(), allow_unicode=True))
    result = import_sources(mapping, tmp_path / "mapped")
    with (original / S.RAW_DIR / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE).open() as f:
        assert result.n_rows_by_source["online"] == sum(1 for _ in f)

    mapped = run_prep(tmp_path / "mapped", tmp_path / "mapped")
    expected = run_prep(original, tmp_path / "prepped")
    assert mapped.ledger == expected.ledger and mapped.ledger["balanced"]
    assert mapped.ledger["sources"]["pos"]["n_accepted"] > 0
    events = pd.read_parquet(mapped.events_dir / S.EVENTS_FILE)
    pd.testing.assert_frame_equal(events, pd.read_parquet(expected.events_dir / S.EVENTS_FILE))


def test_undecodable_lines_pass_to_prep_which_rejects_them(tmp_path: Path) -> None:
    """A till writing Latin-1 into a UTF-8 export, a JSONL line with a stray byte and a GBK line that is not
    GBK: the import goes through, those lines reach the canonical files as they came (at the end), and prep
    rejects each one (bad_encoding) with the canonical file and line; the ledger balances."""
    from data_prep import engine, pii
    from data_prep.pipeline import build_events_layer

    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "till.csv").write_bytes(
        b"bon,datum,artikel,menge,summe\nT1,2026-01-05 09:15:00,A1,1,2.5\n"
        b"T2,2026-01-05 09:16:00,Caf\xe9,1,2.5\nT3,2026-01-05 09:17:00,A1,1,2.5\n"
    )
    (exports / "web.jsonl").write_bytes(
        b'{"id":"e1","t":"2026-01-05T10:00:00Z"}\n{"id":"e2\xff","t":"2026-01-05T10:01:00Z"}\n'
    )
    (exports / "members.csv").write_bytes(
        "card,joined\nK1,2026-01-01 10:00:00\n".encode("gbk") + b"K2\x81\x20,x\n"
    )
    result = run(
        tmp_path,
        """
        sources:
          - {name: till, kind: pos, path: exports/till.csv, format: csv, timestamp: {column: datum},
             columns: {transaction_id: bon, item_id: artikel, quantity: menge, amount: summe},
             constants: {line_no: "1", store_id: ST1}}
          - {name: web, kind: online, path: exports/web.jsonl, format: jsonl, timestamp: {column: t},
             columns: {event_id: id}, constants: {channel: web, event_type: view}}
          - {name: members, kind: crm, path: exports/members.csv, format: csv, csv: {encoding: gbk},
             timestamp: {column: joined}, columns: {loyalty_card: card}}
        """,
    )
    assert result.n_unread == {"till": 1, "web": 1, "members": 1}
    assert result.n_rows_by_source == {"till": 3, "web": 2, "members": 2}
    pos = raw_file(tmp_path, S.RAW_POS_DIR, S.RAW_POS_FILE).read_bytes().splitlines()
    assert pos[-1] == b"T2,2026-01-05 09:16:00,Caf\xe9,1,2.5" and len(pos) == 4
    web = raw_file(tmp_path, S.RAW_ONLINE_DIR, S.RAW_ONLINE_FILE).read_bytes().splitlines()
    assert web[-1] == b'{"id":"e2\xff","t":"2026-01-05T10:01:00Z"}' and len(web) == 2

    out = tmp_path / "out"
    ledger = build_events_layer(engine.connect(), out, out, pii.load_key())[2]
    assert ledger["balanced"]
    for source in ("pos", "online", "crm"):
        assert ledger["sources"][source]["rejected_by_reason"].get("bad_encoding") == 1, source
    rejects = pd.read_parquet(out / S.EVENTS_DIR / S.REJECTS_FILE)
    unread = rejects[rejects[S.REJECT_REASON] == "bad_encoding"]
    assert set(zip(unread[S.SOURCE], unread[S.RAW_LINE], strict=True)) == {
        ("pos", 4),
        ("online", 2),
        ("crm", 3),
    }

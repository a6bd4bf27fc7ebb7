"""The floor of prep (issue 21): the least work any prep of a raw export must do, as one plain DuckDB script.

`o2o bench prep --floor` runs it beside `o2o prep` on the same raw files and reports both, so prep's cost
is a multiple of a floor measured in the same run, not of a number from another day. The floor:

1. reads the online JSONL and the POS CSV with declared column types (what they are in ``01_raw``);
2. normalises emails (trimmed, lower-cased) and cards (trimmed, upper-cased, no inner spaces) in the engine,
   and keyed-hashes every identifier (device, account, email, phone, card; HMAC-SHA256 as prep does) —
   phones are normalised to E.164 in Python, over distinct values only, as prep does;
3. drops re-sent events (online: the same ``event_id``; POS: the same transaction and line);
4. writes one Parquet event table;
5. then one ordered item sequence per customer key (the first identifier of the record: account, card,
   phone, device), from that table.

No identity graph, no as-of resolution, no labels, no report: that is what prep does on top, and what
its multiple of the floor pays for. Run as ``python -m experiments.prep_floor --raw R --out O``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import duckdb
import pyarrow as pa

from data_prep import pii
from data_prep import schema as S
from data_prep.engine import DUCKDB_MEMORY_ENV

ONLINE_TYPES = {
    S.ON_EVENT_ID: "VARCHAR",
    S.ON_TS: "VARCHAR",
    S.ON_CHANNEL: "VARCHAR",
    S.ON_DEVICE_ID: "VARCHAR",
    S.ON_ACCOUNT_ID: "VARCHAR",
    S.ON_SESSION_ID: "VARCHAR",
    S.ON_EVENT_TYPE: "VARCHAR",
    S.ON_ITEM_ID: "VARCHAR",
    S.ON_QUERY: "VARCHAR",
    S.ON_QUANTITY: "VARCHAR",
    S.ON_PRICE: "VARCHAR",
    S.ON_ORDER_ID: "VARCHAR",
    S.ON_EMAIL: "VARCHAR",
    S.ON_IP: "VARCHAR",
    S.ON_USER_AGENT: "VARCHAR",
}
# raw text column → identifier type, and the SQL that normalises it in the engine (phones: in Python)
IDENTIFIERS = {
    "device": (S.ID_DEVICE, "trim({c})"),
    "account": (S.ID_ACCOUNT, "trim({c})"),
    "email": (S.ID_EMAIL, "lower(trim({c}))"),
    "card": (S.ID_CARD, "upper(replace(trim({c}), ' ', ''))"),
    "phone": (S.ID_PHONE, "trim({c})"),
}


def _sql_text(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def run_floor(raw: Path, out: Path, key: bytes) -> dict[str, int]:
    """Write ``out/events.parquet`` and ``out/sequences.parquet`` from ``raw/01_raw``; returns row counts."""
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # DuckDB's own memory limit (80% of RAM), not prep's 1 GB cap: sequence lists are aggregated in memory
    # and cannot spill, and the floor is the least work, done the simplest way (its peak RSS is reported)
    if DUCKDB_MEMORY_ENV in os.environ:
        con.execute(f"SET memory_limit = '{os.environ[DUCKDB_MEMORY_ENV]}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    online_path = raw / S.RAW_DIR / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE
    pos_path = raw / S.RAW_DIR / S.RAW_POS_DIR / S.RAW_POS_FILE
    columns = "{" + ", ".join(f"{_sql_text(c)}: '{t}'" for c, t in ONLINE_TYPES.items()) + "}"
    pos_columns = "{" + ", ".join(f"{_sql_text(c)}: 'VARCHAR'" for c in S.RAW_POS_COLUMNS) + "}"
    con.execute(
        f"""CREATE TEMP TABLE raw_events AS
        SELECT event_id, try_cast(ts AS TIMESTAMPTZ) AS ts, channel, event_type, item_id,
               try_cast(quantity AS INTEGER) AS quantity, try_cast(price AS DOUBLE) AS price,
               device_id AS device, account_id AS account, email, NULL::VARCHAR AS card, NULL::VARCHAR AS phone
        FROM read_json({_sql_text(str(online_path))}, format = 'newline_delimited', columns = {columns},
                       ignore_errors = true)
        UNION ALL
        SELECT transaction_id || ':' || line_no, try_cast(ts AS TIMESTAMPTZ), 'store', 'purchase', item_id,
               try_cast(quantity AS INTEGER), try_cast(unit_price AS DOUBLE),
               NULL, NULL, NULL, nullif(loyalty_card, ''), nullif(phone, '')
        FROM read_csv({_sql_text(str(pos_path))}, header = true, columns = {pos_columns},
                      ignore_errors = true)"""
    )
    keyed = []
    for col, (id_type, norm) in IDENTIFIERS.items():
        normalised = norm.format(c=col)
        query = f"SELECT DISTINCT {normalised} FROM raw_events WHERE {col} IS NOT NULL"
        values = [row[0] for row in con.execute(query).fetchall()]
        keys = pii.pseudonymise_many(id_type, values, key)
        con.register(
            f"k_{col}", pa.table({"v": pa.array(values, pa.string()), "k": pa.array(keys, pa.string())})
        )
        keyed.append((col, normalised))
    joins = " ".join(f"LEFT JOIN k_{c} ON k_{c}.v = {n.format(c='e.' + c)}" for c, n in keyed)
    key_cols = ", ".join(f"k_{c}.k AS {c}_key" for c, _ in keyed)
    events = out / S.EVENTS_FILE
    con.execute(
        f"""COPY (
            SELECT e.event_id, e.ts, e.channel, e.event_type, e.item_id, e.quantity, e.price, {key_cols}
            FROM (SELECT * FROM raw_events QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ts) = 1) e
            {joins}
        ) TO {_sql_text(str(events))} (FORMAT parquet)"""
    )
    sequences = out / S.SEQUENCES_FILE
    con.execute(
        f"""COPY (
            SELECT coalesce(account_key, card_key, phone_key, device_key) AS customer_key,
                   list(item_id ORDER BY ts, event_id) AS items
            FROM read_parquet({_sql_text(str(events))})
            WHERE item_id IS NOT NULL AND ts IS NOT NULL
            GROUP BY 1
        ) TO {_sql_text(str(sequences))} (FORMAT parquet)"""
    )

    def count(table: str) -> int:
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0

    counts = {
        "raw_rows": count("raw_events"),
        "events": count(f"read_parquet({_sql_text(str(events))})"),
        "sequences": count(f"read_parquet({_sql_text(str(sequences))})"),
    }
    con.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=Path, required=True, help="folder holding 01_raw/")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for events.parquet, sequences.parquet"
    )
    args = parser.parse_args()
    print(run_floor(args.raw, args.out, pii.load_key()))


if __name__ == "__main__":
    main()

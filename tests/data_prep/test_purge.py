"""Erasure's file rewrites: only the person's records leave; everyone else's bytes stay exactly as they were,
undecodable bytes and malformed records included."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep import pii
from data_prep import schema as S
from data_prep.purge import Target, purge_parquet, purge_raw_csv, purge_raw_jsonl

KEY = b"purge-test-key"
ALICE = "Alice.W@Mail.com"


def target(raw: set[str] | None = None) -> Target:
    key = pii.pseudonymise(S.ID_EMAIL, ALICE, KEY)
    keys = pd.DataFrame({S.IDENTIFIER_TYPE: [S.ID_EMAIL], S.IDENTIFIER_KEY: [key]}, dtype="string")
    return Target(["c_alice"], keys, raw or set())


def test_raw_csv_loses_the_person_and_keeps_every_other_byte(tmp_path: Path) -> None:
    keep = [
        b"id,email,name\r\n",
        b"1,bob@mail.com,Bob\r\n",
        b'2,"carol@mail.com","Car\xe9ol, with a comma\nand a newline"\r\n',  # Latin-1 byte, quoted newline
        b"3,dan@mail.com\r\n",  # too few fields
    ]
    drop = [
        b"4, alice.w@mail.com ,Alice\r\n",  # another typing of the same email
        b"5,ALICE.W@MAIL.COM,Al\xffice\r\n",  # undecodable, but her value is readable in it
    ]
    path = tmp_path / "members.csv"
    path.write_bytes(keep[0] + drop[0] + keep[1] + keep[2] + drop[1] + keep[3])

    n = purge_raw_csv(path, {"email": S.ID_EMAIL}, target(), KEY)

    assert n == 2 and path.read_bytes() == b"".join(keep)


def test_raw_jsonl_drops_unparseable_lines_only_when_they_carry_her_value(tmp_path: Path) -> None:
    ok = json.dumps({"email": "bob@mail.com", "event": "view"}).encode() + b"\n"
    hers = json.dumps({"email": ALICE, "event": "view"}).encode() + b"\n"
    broken_hers = b'{"email": "' + ALICE.encode() + b'", "event": "vi\xff\n'
    broken_other = b'{"email": "eve@mail.com", \xff\n'
    path = tmp_path / "events.jsonl"
    path.write_bytes(broken_hers + ok + hers + broken_other)

    n = purge_raw_jsonl(path, {"email": S.ID_EMAIL}, target({ALICE}), KEY)

    assert n == 2 and path.read_bytes() == ok + broken_other


def test_parquet_rewrite_keeps_schema_metadata_and_other_rows(tmp_path: Path) -> None:
    table = pa.table({S.CUSTOMER_ID: ["c_bob", "c_alice", None], "x": [1, 2, 3]}).replace_schema_metadata(
        {"rows_in": "3"}
    )
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table, path)
    untouched = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["c_alice"]}), untouched)  # no customer column: not hers
    before = untouched.read_bytes()

    assert purge_parquet(path, target()) == 1 and purge_parquet(untouched, target()) == 0

    out = pq.read_table(path)
    assert (
        out.column(S.CUSTOMER_ID).to_pylist() == ["c_bob", None]
        and out.schema.metadata == table.schema.metadata
    )
    assert untouched.read_bytes() == before and not list(tmp_path.glob("*.erasing"))

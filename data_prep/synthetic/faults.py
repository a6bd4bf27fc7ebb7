"""Data-quality faults injected into one chunk's raw rows at known rates, with their ``faults.csv`` rows.

Each eligible row draws one uniform number; consecutive intervals of the fault menu (one per fault, as wide
as its rate) decide its fault, so a row gets at most one and the rates hold per eligible row. Copies (exact
duplicates, re-sends) are made of clean rows and follow the chunk's rows, as a late re-delivery would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep import schema as S
from data_prep.synthetic import identities as I
from data_prep.synthetic import text as T
from data_prep.synthetic.spec import FaultRates, RetailerSpec
from data_prep.synthetic.world import World

_COPIES = (S.FAULT_EXACT_DUPLICATE, S.FAULT_RESENT)
_GARBAGE = ("N/A", "#VALUE!", "0000-00-00 00:00:00")  # besides the day-first "05/01/2026 10:22"


@dataclass(frozen=True)
class _Source:
    name: str  # "online" | "pos" | "crm"
    ts: str
    item: str | None
    price: str | None
    quantity: str | None
    key: Callable[[pa.Table], pa.Array]  # row key of faults.csv


_ONLINE = _Source("online", S.ON_TS, S.ON_ITEM_ID, S.ON_PRICE, None, lambda t: t[S.ON_EVENT_ID])
_POS = _Source(
    "pos",
    S.POS_TS,
    S.POS_ITEM_ID,
    S.POS_UNIT_PRICE,
    S.POS_QUANTITY,
    lambda t: T.join(t[S.POS_TRANSACTION_ID], ":", t[S.POS_LINE_NO]),
)
_CRM = _Source("crm", S.CRM_SIGNUP_TS, None, None, None, lambda t: t[S.CRM_LOYALTY_CARD])


def inject_faults(
    spec: RetailerSpec,
    world: World,
    chunk: int,
    tables: dict[str, pa.Table],
    pos_returns: pa.Table,
    rng: np.random.Generator,
) -> tuple[dict[str, pa.Table], pa.Table]:
    """Faulty versions of the "online", "pos" and "crm" tables and the faults.csv rows, by source (the
    return lines already in the POS table, ``pos_returns``, after the POS faults). Re-sent events get event
    ids from the same bijection as the chunk's events, past their indices."""
    out, rows = dict(tables), []
    for source in (_ONLINE, _POS, _CRM):
        out[source.name], found = _inject(spec, world, chunk, source, tables[source.name], rng)
        rows.append(found)
        if source is _POS:
            rows.append(pos_returns)
    return out, pa.concat_tables(rows)


def _menu(rates: FaultRates, source: _Source, table: pa.Table) -> list[tuple[str, float, np.ndarray]]:
    """(fault, rate, eligible rows) in interval order."""
    n = table.num_rows
    base = ~_bools(table, "_locked") if "_locked" in table.column_names else np.ones(n, bool)
    has_item = base & _bools(table, source.item) if source.item else np.zeros(n, bool)
    priced = base & _bools(table, source.price) if source.price else np.zeros(n, bool)
    return [
        (S.FAULT_EXACT_DUPLICATE, rates.exact_duplicate, base),
        (S.FAULT_RESENT, rates.resent if source is _ONLINE else 0.0, base),
        (S.FAULT_MISSING_TIMESTAMP, rates.missing_field / 2, base),
        (S.FAULT_MISSING_ITEM, rates.missing_field / 2, has_item),
        (S.FAULT_MALFORMED_TIMESTAMP, rates.malformed_timestamp, base),
        (S.FAULT_NEGATIVE_QUANTITY, rates.negative_quantity if source.quantity else 0.0, base),
        (S.FAULT_ZERO_PRICE, rates.absurd_price / 2, priced),
        (S.FAULT_INFLATED_PRICE, rates.absurd_price / 2, priced),
        (S.FAULT_UNKNOWN_ITEM, rates.unknown_item, has_item),
    ]


def _bools(table: pa.Table, column: str) -> np.ndarray:
    """A bool column as numpy, or whether a column is non-null."""
    col = table[column]
    values = col if pa.types.is_boolean(col.type) else col.is_valid()
    return values.to_numpy(zero_copy_only=False)


def _draw_codes(spec: RetailerSpec, source: _Source, table: pa.Table, rng: np.random.Generator) -> np.ndarray:
    """(n,) index into S.FAULTS of each row's fault, -1 for a clean row."""
    u = rng.random(table.num_rows)
    code = np.full(table.num_rows, -1, dtype=np.int8)
    lo = 0.0
    for name, rate, eligible in _menu(spec.faults, source, table):
        code[(u >= lo) & (u < lo + rate) & eligible] = S.FAULTS.index(name)
        lo += rate
    if source is _POS and spec.faults.unknown_store > 0:  # every line of a transaction, none locked
        txn = pc.dictionary_encode(table[S.POS_TRANSACTION_ID].combine_chunks())
        index = txn.indices.to_numpy()
        n_txn = len(txn.dictionary)
        locked = np.bincount(index, weights=_bools(table, "_locked"), minlength=n_txn) > 0
        chosen = (rng.random(n_txn) < spec.faults.unknown_store) & ~locked
        code[chosen[index]] = S.FAULTS.index(S.FAULT_UNKNOWN_STORE)
    return code


def _inject(
    spec: RetailerSpec, world: World, chunk: int, source: _Source, table: pa.Table, rng: np.random.Generator
) -> tuple[pa.Table, pa.Table]:
    """The faulty table (copies appended after the chunk's rows, as a late re-delivery) and its faults."""
    code = _draw_codes(spec, source, table, rng)
    table = _mutate(spec, source, table, code, rng)
    copies = np.isin(code, [S.FAULTS.index(f) for f in _COPIES])
    copy_of = np.flatnonzero(copies)
    copied = table.take(pa.array(copy_of))
    resent = code[copy_of] == S.FAULTS.index(S.FAULT_RESENT)
    original_key = source.key(copied)
    if resent.any():
        index = (chunk << 40) + (1 << 39) + np.arange(int(resent.sum()))  # past any event of the chunk
        number = I.permute(index, 16**14, world.keys["event"])
        new_ids = T.strings(T.literal("ev-", number.size), T.hexadecimal(number, 14))
        copied = _replace(copied, S.ON_EVENT_ID, resent, new_ids)
    in_place = np.flatnonzero(~copies & (code >= 0))
    faults = pa.table(
        {
            S.GT_FAULT_SOURCE: pa.array([source.name] * (in_place.size + copy_of.size), pa.string()),
            S.GT_FAULT_ROW_KEY: pa.concat_arrays(
                [
                    source.key(table).take(pa.array(in_place)).combine_chunks(),
                    source.key(copied).combine_chunks(),
                ]
            ),
            S.GT_FAULT: T.vocabulary(
                S.FAULTS, np.concatenate([code[in_place], code[copy_of]]).astype(np.int64)
            ),
            S.GT_FAULT_ORIGINAL_KEY: T.with_nulls(
                pa.concat_arrays([pa.nulls(in_place.size, pa.string()), original_key.combine_chunks()]),
                np.r_[np.zeros(in_place.size, bool), resent],
            ),
        }
    )
    return pa.concat_tables([table, copied]), faults


def _replace(table: pa.Table, column: str, mask: np.ndarray, values: pa.Array | None) -> pa.Table:
    """``column`` with the rows of ``mask`` replaced by ``values`` (null when None)."""
    if not mask.any():
        return table
    col = table[column].combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    new = pa.nulls(int(mask.sum()), col.type) if values is None else values.cast(col.type)
    return table.set_column(
        table.column_names.index(column), column, pc.replace_with_mask(col, pa.array(mask), new)
    )


def _mutate(
    spec: RetailerSpec, source: _Source, table: pa.Table, code: np.ndarray, rng: np.random.Generator
) -> pa.Table:
    """Apply every in-place fault of ``code`` (everything but copies)."""
    hit = {name: code == k for k, name in enumerate(S.FAULTS)}
    table = _replace(table, source.ts, hit[S.FAULT_MISSING_TIMESTAMP], None)
    bad_ts = hit[S.FAULT_MALFORMED_TIMESTAMP]
    table = _replace(table, source.ts, bad_ts, _malformed(table[source.ts].filter(pa.array(bad_ts)), rng))
    if source.item:
        table = _replace(table, source.item, hit[S.FAULT_MISSING_ITEM], None)
        unknown = spec.n_items + 1 + rng.integers(0, 9000, int(hit[S.FAULT_UNKNOWN_ITEM].sum()))
        table = _replace(table, source.item, hit[S.FAULT_UNKNOWN_ITEM], T.join("SKU", T.padded(unknown, 5)))
    if source.price:
        table = _mutate_prices(source, table, hit[S.FAULT_ZERO_PRICE], hit[S.FAULT_INFLATED_PRICE])
    if source.quantity:
        negative = hit[S.FAULT_NEGATIVE_QUANTITY]
        flipped = T.join("-", table[source.quantity].filter(pa.array(negative)).combine_chunks())
        table = _replace(table, source.quantity, negative, flipped)
    if source is _POS:
        stores = spec.n_stores + 1 + rng.integers(0, 20, int(hit[S.FAULT_UNKNOWN_STORE].sum()))
        table = _replace(table, S.POS_STORE_ID, hit[S.FAULT_UNKNOWN_STORE], T.join("ST", T.padded(stores, 3)))
    return table


def _mutate_prices(source: _Source, table: pa.Table, zero: np.ndarray, inflated: np.ndarray) -> pa.Table:
    """Price 0, or 1000x (online prices are numbers, POS prices text with two decimals)."""
    assert source.price is not None
    price = table[source.price].filter(pa.array(inflated)).combine_chunks()
    if pa.types.is_string(price.type):
        table = _replace(table, source.price, zero, pa.array(["0.00"] * int(zero.sum())))
        return _replace(
            table, source.price, inflated, T.money(pc.multiply(pc.cast(price, pa.float64()), 1000.0))
        )
    table = _replace(table, source.price, zero, pa.array(np.zeros(int(zero.sum()))))
    return _replace(table, source.price, inflated, pc.round(pc.multiply(price, 1000.0), 2))


def _malformed(ts: pa.ChunkedArray, rng: np.random.Generator) -> pa.Array:
    """Half day-first without seconds ("05/01/2026 10:22" for 2026-01-05 10:22:33), half garbage."""
    ts = ts.combine_chunks()
    n = len(ts)

    def part(start: int, stop: int) -> pa.Array:
        return pc.utf8_slice_codeunits(ts, start, stop)

    day_first = T.join(part(8, 10), "/", part(5, 7), "/", part(0, 4), " ", part(11, 16))
    garbage = [pa.array([g] * n, pa.string()) for g in _GARBAGE]
    which = np.where(rng.random(n) < 0.5, 0, rng.integers(1, len(_GARBAGE) + 1, n))
    return pc.choose(pa.array(which.astype(np.int8)), day_first, *garbage)

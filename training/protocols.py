"""Next-item evaluation protocols (shared/PROTOCOLS.md) as tables of training sequences and examples.

Both protocols give the same three things, so one DataModule, one set of baselines and one evaluation
command serve both:

- ``train``: customer_id, items, event_types — sequences the model learns from (every position);
- ``val`` / ``test``: the same columns plus ``target_item`` — the input history and the single target.

R1 (leave-one-out, public benchmarks): from ``04_features/sequences.parquet`` (each customer's whole
history, ties in time broken by the original row order that prep keeps in ``event_id``). Test target =
last event, validation target = the one before, training = everything earlier; the test input includes
the validation event. Customers with fewer than 3 item events have no validation target and are left out.

R2 (global time split, retail): prep writes ``rec_{train,val,test}.parquet`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep import schema as S

R1 = "R1"
R2 = "R2"
PROTOCOLS = (R1, R2)
R1_MIN_EVENTS = 3  # one to train on, one to validate, one to test
LIST_COLUMNS = (S.ITEMS, S.EVENT_TYPES_COL, S.CHANNELS_COL, S.TIMESTAMPS_COL)


@dataclass(frozen=True)
class NextItemTables:
    protocol: str
    train: pa.Table  # customer_id + list columns
    val: pa.Table  # customer_id + list columns + target_item
    test: pa.Table


def through_validation(tables: NextItemTables) -> NextItemTables:
    """The tables with training extended over the validation window (retraining a tuned config on train +
    validation): each customer's training sequence becomes their test input — everything before T_test
    (R2), or all but the last item (R1) — which holds the validation targets; customers with no test example
    keep their training sequence. Validation examples stay as they are but are now seen in training."""
    cols = tables.train.column_names
    test = tables.test.select(cols)
    in_test = pc.is_in(tables.train.column(S.CUSTOMER_ID), value_set=test.column(S.CUSTOMER_ID))
    rest = tables.train.filter(pc.invert(in_test))
    train = pa.concat_tables([test.cast(tables.train.schema), rest]).combine_chunks()
    return NextItemTables(tables.protocol, train, tables.val, tables.test)


def drop_last(lists: pa.ListArray | pa.ChunkedArray, n: int) -> pa.ListArray:
    """Each list without its last ``n`` entries (empty when shorter); nulls become empty lists."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    kept = np.maximum(lengths - n, 0)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat_pos = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)  # position inside its list
    keep = flat_pos < np.repeat(kept, lengths)
    values = pc.list_flatten(lists).filter(pa.array(keep))
    offsets = pa.array(np.concatenate([[0], np.cumsum(kept)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, values)


def nth_from_end(lists: pa.ListArray | pa.ChunkedArray, n: int) -> pa.Array:
    """Entry ``n`` places from the end of each list (1 = last); lists must be long enough."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    if (lengths < n).any():
        raise ValueError(f"every list needs at least {n} entries")
    ends = np.cumsum(lengths)
    return pc.list_flatten(lists).take(pa.array(ends - n))


def leave_one_out(sequences: pa.Table) -> NextItemTables:
    """Protocol R1 tables from full histories (customer_id, items, event_types[, channels, timestamps])."""
    lengths = pc.list_value_length(sequences.column(S.ITEMS))
    seqs = sequences.filter(pc.greater_equal(lengths, R1_MIN_EVENTS)).sort_by(S.CUSTOMER_ID)
    lists = [c for c in LIST_COLUMNS if c in seqs.column_names]

    def cut(n: int) -> dict[str, pa.Array]:
        return {c: drop_last(seqs.column(c), n) for c in lists}

    ids = {S.CUSTOMER_ID: seqs.column(S.CUSTOMER_ID)}
    train = pa.table(ids | cut(2))
    val = pa.table(ids | cut(2) | {S.TARGET_ITEM: nth_from_end(seqs.column(S.ITEMS), 2)})
    test = pa.table(ids | cut(1) | {S.TARGET_ITEM: nth_from_end(seqs.column(S.ITEMS), 1)})
    return NextItemTables(R1, train, val, test)


def load_tables(features_dir: Path, protocol: str) -> NextItemTables:
    """The protocol's tables from a prep output folder (``04_features``)."""
    if protocol == R1:
        path = features_dir / S.SEQUENCES_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: re-run `o2o prep` (R1 needs the full sequences)")
        return leave_one_out(pq.read_table(path))
    if protocol == R2:
        read = {s: pq.read_table(features_dir / S.split_file("rec", s)) for s in S.SPLITS}
        return NextItemTables(R2, read[S.SPLIT_TRAIN], read[S.SPLIT_VAL], read[S.SPLIT_TEST])
    raise ValueError(f"unknown protocol {protocol!r}: expected one of {PROTOCOLS}")


def item_counts(train: pa.Table) -> pa.Table:
    """item_id, popularity: item events in the training sequences, most frequent first (ties by id)."""
    flat = pa.table({S.ITEM_ID: pc.list_flatten(train.column(S.ITEMS))})
    counts = flat.group_by(S.ITEM_ID).aggregate([(S.ITEM_ID, "count")])
    counts = counts.rename_columns([S.ITEM_ID, S.POPULARITY])
    return counts.sort_by([(S.POPULARITY, "descending"), (S.ITEM_ID, "ascending")])

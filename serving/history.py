"""Customer-history store behind the API: the embedded default loads the prep snapshot into memory.

Keys are the pseudonymous ``customer_id`` values that prep resolved; no raw identifier is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from data_prep import schema as S


@dataclass(frozen=True)
class CustomerHistory:
    items: list[str]  # oldest first
    event_types: list[str]
    features: dict[str, float]  # raw point-in-time aggregates by name (schema.INTENT_FEATURES)
    segment: str | None = None  # RFM segment as of the end of the data (cold-start fallback)


class InMemoryHistoryStore:
    """customer_id → :class:`CustomerHistory`, read once from ``04_features/snapshot.parquet``."""

    def __init__(self, snapshot: Path) -> None:
        table = pq.read_table(snapshot)
        feats = table.select(list(S.INTENT_FEATURES)).to_pylist()
        ids = table.column(S.CUSTOMER_ID).to_pylist()
        items = table.column(S.ITEMS).to_pylist()
        types = table.column(S.EVENT_TYPES_COL).to_pylist()
        segs = table.column(S.SEGMENT).to_pylist() if S.SEGMENT in table.column_names else [None] * len(ids)
        self._rows = {
            c: CustomerHistory(i or [], t or [], f, g)
            for c, i, t, f, g in zip(ids, items, types, feats, segs, strict=True)
        }

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, customer_id: str) -> CustomerHistory | None:
        return self._rows.get(customer_id)

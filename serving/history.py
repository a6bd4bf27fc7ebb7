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
    channels: list[str] | None = None  # aligned with items, when prep recorded them
    timestamps: list[int] | None = None  # epoch seconds, aligned with items

    def side_lists(self) -> tuple[list[list[str]] | None, list[list[int]] | None]:
        """(channels, timestamps) as one-row batches for the scorer; None when prep recorded none."""
        if self.channels is None or self.timestamps is None:
            return None, None
        return [self.channels], [self.timestamps]


class InMemoryHistoryStore:
    """customer_id → :class:`CustomerHistory`, read once from ``04_features/snapshot.parquet``."""

    def __init__(self, snapshot: Path) -> None:
        table = pq.read_table(snapshot)
        feats = table.select(list(S.INTENT_FEATURES)).to_pylist()
        ids = table.column(S.CUSTOMER_ID).to_pylist()
        items = table.column(S.ITEMS).to_pylist()
        types = table.column(S.EVENT_TYPES_COL).to_pylist()

        def column(name: str) -> list:
            return table.column(name).to_pylist() if name in table.column_names else [None] * len(ids)

        rows = zip(
            ids,
            items,
            types,
            feats,
            column(S.SEGMENT),
            column(S.CHANNELS_COL),
            column(S.TIMESTAMPS_COL),
            strict=True,
        )
        self._rows = {c: CustomerHistory(i or [], t or [], f, g, ch, ts) for c, i, t, f, g, ch, ts in rows}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, customer_id: str) -> CustomerHistory | None:
        return self._rows.get(customer_id)

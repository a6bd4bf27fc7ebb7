"""Per-customer steps built a share of the customers at a time (memory) give the rows built all at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from data_prep import engine, pipeline
from data_prep import features as fe
from data_prep import schema as S


def test_sequences_built_piece_by_piece_equal_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [
        {S.EVENT_ID: f"e{i}", S.CUSTOMER_ID: f"c{i % 7}", S.TS: t0 + timedelta(hours=i), S.ORDER_ID: None,
         S.ITEM_ID: f"I{i % 5}", S.EVENT_TYPE: S.EV_VIEW, S.CHANNEL: "web"}
        for i in range(60)
    ]  # fmt: skip
    con = engine.connect()
    events = engine.temp_table(con, pd.DataFrame(rows).astype({S.ORDER_ID: "string"}))
    cutoff = t0 + timedelta(days=30)

    def build(e: object) -> object:
        return fe.customer_sequences(e, cutoff)  # type: ignore[arg-type]

    whole = build(events).to_pandas()
    monkeypatch.setattr(pipeline, "EVENTS_PER_PIECE", 20)  # 3 pieces
    pieces = pipeline.per_customer(con, build, events).to_pandas()  # type: ignore[arg-type]
    key = lambda df: df.sort_values(S.CUSTOMER_ID).reset_index(drop=True)  # noqa: E731
    assert len(whole) == 7
    pd.testing.assert_frame_equal(key(pieces).map(str), key(whole).map(str))

"""The floor of `o2o bench prep --floor`: the same shape of work as prep's core, done right."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from data_prep import pii
from data_prep import schema as S
from experiments.prep_floor import run_floor


def test_floor_keys_every_identifier_drops_resends_and_orders_sequences(prepared_150, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key = b"floor-test-key"
    counts = run_floor(prepared_150.template, tmp_path, key)
    events = pd.read_parquet(tmp_path / S.EVENTS_FILE)
    online = pd.read_json(
        prepared_150.template / S.RAW_DIR / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE, lines=True, dtype=str
    )
    pos = pd.read_csv(prepared_150.template / S.RAW_DIR / S.RAW_POS_DIR / S.RAW_POS_FILE, dtype=str)
    assert counts["raw_rows"] == len(online) + len(pos)  # every raw row read (bad ones as nulls)
    assert events.event_id.is_unique and counts["events"] == len(events) < counts["raw_rows"]  # re-sends gone
    # keyed as prep keys them: a device's key is its HMAC, and no raw value is left
    device = online[S.ON_DEVICE_ID].dropna().iloc[0]
    assert pii.pseudonymise(S.ID_DEVICE, device, key) in set(events.device_key)
    card = pos[S.POS_LOYALTY_CARD].dropna().iloc[0]
    assert pii.pseudonymise(S.ID_CARD, card.lower(), key) in set(events.card_key)
    text = " ".join(map(str, events[[c for c in events.columns if c.endswith("_key")]].to_numpy().ravel()))
    assert device not in text and card not in text
    # one sequence per customer key, items in time order
    sequences = pd.read_parquet(tmp_path / S.SEQUENCES_FILE)
    assert sequences.customer_key.is_unique and len(sequences) == counts["sequences"]
    first = sequences.iloc[0]
    mine = events[
        (
            events[["account_key", "card_key", "phone_key", "device_key"]].bfill(axis=1).iloc[:, 0]
            == first.customer_key
        )
        & events.item_id.notna()
        & events.ts.notna()
    ].sort_values(["ts", "event_id"])
    assert list(first["items"]) == list(mine.item_id)

"""The demo's closing table: built from real run metrics, with the intent baselines, the shipped candidate and
the calibration."""

from __future__ import annotations

import json

from rich.console import Console

from experiments.demo import print_summary, summarise


def test_summary_carries_every_baseline_and_the_calibration(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    rec = json.loads((tiny_pipeline.rec_run / "metrics.json").read_text())
    intent = json.loads((tiny_pipeline.intent_run / "metrics.json").read_text())
    s = summarise(rec, intent, None, 12.0)
    assert {"logistic_regression", "gradient_boosting"} <= set(s["intent"])
    assert s["intent"]["calibration"] == intent["calibration"]["method"]
    assert s["intent"]["shipped"] == intent["selection"]["shipped"]  # which candidate validation chose
    console = Console(record=True, width=140)
    print_summary(console, s, [])
    text = console.export_text()
    assert "gradient boosting" in text and "ece" in text and "ItemKNN" in text
    assert f"shipped candidate (chosen on validation): {intent['selection']['shipped']}" in text

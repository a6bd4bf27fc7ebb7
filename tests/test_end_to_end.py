"""The whole chain on a tiny retailer: files handed from stage to stage, one score row per customer,
and the batch scorer and the online scoring path agree for the same customer."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from experiments.report import write_report
from serving.artifact import load_bundle
from serving.batch import INTENT_PROBABILITY, REC_ITEMS, REC_SCORES
from serving.history import InMemoryHistoryStore
from serving.scoring import feature_matrix, intent_probability, recommend


def test_every_layer_writes_a_manifest(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    for layer in (S.EVENTS_DIR, S.CUSTOMERS_DIR, S.FEATURES_DIR, "05_scores"):
        doc = json.loads((tiny_pipeline.data / layer / S.MANIFEST_FILE).read_text())
        assert doc.get("layer") == layer
    ledger = json.loads((tiny_pipeline.data / S.EVENTS_DIR / S.LEDGER_FILE).read_text())
    assert ledger["balanced"]


def test_training_tables_hold_only_customers_with_analytics_consent(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    customers = pq.read_table(tiny_pipeline.data / S.CUSTOMERS_DIR / S.CUSTOMERS_FILE).to_pandas()
    denied = customers.loc[~customers[S.CONSENT_ANALYTICS], S.CUSTOMER_ID]
    assert len(denied) > 10
    events = pq.read_table(tiny_pipeline.data / S.CUSTOMERS_DIR / S.EVENTS_FILE).to_pandas()
    denied_events = set(events.loc[events[S.CUSTOMER_ID].isin(denied), S.EVENT_ID])
    assert denied_events
    # Session ids are stable (customer ids per cutoff are not): no session of a denied customer may reach I2.
    denied_sessions = set(events.loc[events[S.CUSTOMER_ID].isin(denied), S.SESSION_ID].dropna())
    atc = events[(events[S.EVENT_TYPE] == S.EV_ADD_TO_CART) & events[S.SESSION_ID].isin(denied_sessions)]
    assert len(atc) > 0  # denied customers do have sessions that would qualify
    for split in S.SPLITS:
        sessions = pq.read_table(tiny_pipeline.features / S.split_file("session", split)).column(S.SESSION_ID)
        assert not denied_sessions & set(sessions.to_pylist()), split


def test_cleaning_audit_scores_every_injected_fault(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    faults = pd.read_csv(tiny_pipeline.data / S.GROUND_TRUTH_DIR / S.GT_FAULTS_FILE, dtype=str)
    metrics = json.loads((tiny_pipeline.data / S.EVENTS_DIR / S.CLEANING_METRICS_FILE).read_text())
    assert metrics["n_faults_scored"] == len(faults) > 20
    assert set(metrics["by_fault"]) == set(faults[S.GT_FAULT])
    assert metrics["share_as_intended"] > 0.9


def test_prep_writes_a_data_report_with_plots(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    text = (tiny_pipeline.data / "data_report.md").read_text()
    for section in (
        "## Cleaning ledger",
        "## Identity resolution",
        "## Customers: RFM segments",
        "## Sequences",
    ):
        assert section in text
    pngs = sorted((tiny_pipeline.data / "data_report_files").glob("*.png"))
    assert {p.name for p in pngs} >= {"events_per_day.png", "ledger.png", "identity.png", "segments.png"}
    assert all(p.stat().st_size > 5_000 for p in pngs)


def test_campaign_scores_have_one_row_per_consenting_customer(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    snap = pq.read_table(tiny_pipeline.features / S.SNAPSHOT_FILE).to_pandas()
    scores = pq.read_table(tiny_pipeline.scores).to_pandas()
    consenting = set(snap.loc[snap[S.CONSENT_MARKETING], S.CUSTOMER_ID])
    assert 50 < len(consenting) < len(snap)  # the gate really removes people
    assert scores[S.CUSTOMER_ID].is_unique
    assert set(scores[S.CUSTOMER_ID]) == consenting
    manifest = json.loads((tiny_pipeline.data / "05_scores" / S.MANIFEST_FILE).read_text())
    assert manifest["excluded_no_marketing_consent"] == len(snap) - len(consenting)
    assert scores[REC_ITEMS].map(len).eq(10).all()
    assert scores[INTENT_PROBABILITY].between(0, 1).all()


def test_batch_and_online_paths_agree(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    bundle = load_bundle(tiny_pipeline.bundle)
    history = InMemoryHistoryStore(tiny_pipeline.features / S.SNAPSHOT_FILE)
    scores = pq.read_table(tiny_pipeline.scores).to_pandas().sample(20, random_state=0)
    for _, row in scores.iterrows():
        h = history.get(row[S.CUSTOMER_ID])
        assert h is not None
        recs = recommend(bundle.recommender, [h.items], [h.event_types], 10)  # type: ignore[arg-type]
        assert list(recs.item_ids[0]) == list(row[REC_ITEMS])
        np.testing.assert_allclose(recs.scores[0], row[REC_SCORES], rtol=1e-6)
        feats = feature_matrix(bundle.intent, {n: [v] for n, v in h.features.items()})  # type: ignore[arg-type]
        p = intent_probability(bundle.intent, [h.items], [h.event_types], feats)  # type: ignore[arg-type]
        np.testing.assert_allclose(p[0], row[INTENT_PROBABILITY], rtol=1e-6)


def test_k_is_bounded_by_the_model_and_seen_items_never_return(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    model = load_bundle(tiny_pipeline.bundle).recommender
    assert model is not None
    max_k = model.config["max_k"]
    with pytest.raises(ValueError, match=f"between 1 and {max_k}"):
        recommend(model, [["x"]], None, max_k + 1)
    history = InMemoryHistoryStore(tiny_pipeline.features / S.SNAPSHOT_FILE)
    longest = max(
        (history.get(c) for c in pq.read_table(tiny_pipeline.scores).column(S.CUSTOMER_ID).to_pylist()),
        key=lambda h: len(h.items),
    )  # type: ignore[arg-type, union-attr]
    assert longest is not None and len(longest.items) > model.max_len  # older items than the graph sees
    recs = recommend(model, [longest.items], [longest.event_types], max_k, exclude_seen=True)
    assert not set(recs.item_ids[0]) & set(longest.items)
    assert recs.source == ["history"]


def test_report_has_table_and_plot(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    for run in (tiny_pipeline.rec_run, tiny_pipeline.intent_run):
        report = write_report(run).read_text()
        assert "| ours | test |" in report and "training_curve.png" in report
        assert (run / "training_curve.png").stat().st_size > 5_000


def test_every_raw_identifier_gets_its_key_in_every_source(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    """Regression: lookup tables shared by name across sources once left most online emails unhashed.

    For every accepted row, a raw identifier that normalises to something must have its key.
    """
    import duckdb

    from data_prep import pii

    raw = tiny_pipeline.data / S.RAW_DIR
    events = tiny_pipeline.data / S.EVENTS_DIR / S.EVENTS_FILE
    online = f"read_json_auto('{raw / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE}')"
    pos = f"read_csv('{raw / S.RAW_POS_DIR / S.RAW_POS_FILE}', all_varchar=true)"
    cases = [
        (online, "'online:' || trim(r.event_id)", S.ON_EMAIL, S.ID_EMAIL, S.EMAIL_KEY),
        (online, "'online:' || trim(r.event_id)", S.ON_ACCOUNT_ID, S.ID_ACCOUNT, S.ACCOUNT_KEY),
        (pos, "'pos:' || r.transaction_id || ':' || r.line_no", S.POS_PHONE, S.ID_PHONE, S.PHONE_KEY),
        (pos, "'pos:' || r.transaction_id || ':' || r.line_no", S.POS_LOYALTY_CARD, S.ID_CARD, S.CARD_KEY),
    ]
    for reader, event_id, raw_col, id_type, key_col in cases:
        rows = duckdb.sql(
            f"SELECT CAST(r.{raw_col} AS VARCHAR) AS v, e.{key_col} AS k FROM {reader} r "
            f"JOIN read_parquet('{events}') e ON e.{S.EVENT_ID} = {event_id} WHERE r.{raw_col} IS NOT NULL"
        ).fetchall()
        usable = [(v, k) for v, k in rows if pii.normalise_identifier(id_type, v) is not None]
        assert len(usable) > 20, (raw_col, len(usable))
        missing = [v for v, k in usable if k is None]
        assert not missing, (raw_col, len(missing), len(usable))

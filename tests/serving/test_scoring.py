"""Inference behaviour apps rely on: seen filter, business filters and the cold-start fallback, through the
shared scoring functions (API and batch scorer) on the tiny pipeline's real ONNX bundle."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from models.calibration import Calibration
from serving.artifact import Bundle, OnnxModel, load_bundle
from serving.batch import REC_ITEMS, REC_SOURCE, score_snapshot
from serving.scoring import (
    SOURCE_HISTORY,
    SOURCE_POPULAR,
    SOURCE_SEGMENT,
    ItemFilter,
    feature_matrix,
    intent_probability,
    recommend,
    similar_items,
)


@pytest.fixture(scope="module")
def bundle(tiny_pipeline) -> Bundle:  # type: ignore[no-untyped-def]
    return load_bundle(tiny_pipeline.bundle)


@pytest.fixture(scope="module")
def rec(bundle: Bundle) -> OnnxModel:
    assert bundle.recommender is not None
    return bundle.recommender


def histories(tiny_pipeline, n: int = 40) -> tuple[list[list[str]], list[list[str]]]:  # type: ignore[no-untyped-def]
    snap = pq.read_table(tiny_pipeline.features / S.SNAPSHOT_FILE).to_pandas()
    snap = snap[snap[S.ITEMS].map(len) > 0].head(n)
    return snap[S.ITEMS].map(list).tolist(), snap[S.EVENT_TYPES_COL].map(list).tolist()


def test_seen_filter_is_configurable(rec: OnnxModel, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    items, types = histories(tiny_pipeline)
    removed = recommend(rec, items, types, 20, exclude_seen=True)
    kept = recommend(rec, items, types, 20, exclude_seen=False)
    assert all(not set(r) & set(h) for r, h in zip(removed.item_ids, items, strict=True))
    # grocery wants repeats: with the filter off, a customer's own items do come back
    assert any(set(r) & set(h) for r, h in zip(kept.item_ids, items, strict=True))
    assert set(removed.source) == {SOURCE_HISTORY}


def test_excluded_items_and_categories_never_come_back(rec: OnnxModel, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    items, types = histories(tiny_pipeline)
    plain = recommend(rec, items, types, 10)
    top_items = sorted({i for r in plain.item_ids for i in r[:3]})
    category = rec.categories[rec.vocab.lookup([plain.item_ids[0][0]])[0]]
    rules = ItemFilter(exclude_items=tuple(top_items), exclude_categories=(category,))
    got = recommend(rec, items, types, 10, rules=rules)
    cats = {rec.categories[i] for r in got.item_ids for i in rec.vocab.lookup(r)}
    assert all(len(r) == 10 for r in got.item_ids)
    assert not {i for r in got.item_ids for i in r} & set(top_items)
    assert category not in cats


def test_a_long_history_still_gets_k_items_when_older_items_fill_the_graph_top_k(
    rec: OnnxModel, tiny_pipeline
) -> None:  # type: ignore[no-untyped-def]
    items, types = histories(tiny_pipeline, 1)
    reps = -(-rec.max_len // len(items[0]))
    window, window_types = (items[0] * reps)[-rec.max_len :], (types[0] * reps)[-rec.max_len :]
    max_k = int(rec.config["max_k"])
    ranked = recommend(rec, [window], [window_types], max_k, exclude_seen=True).item_ids[0]
    assert len(ranked) > 10, "the tiny catalogue is too small for this test"
    # the customer's older events (before the window the graph sees) are all but 4 of the graph's candidates
    older = ranked[:-4]
    history, history_types = older + window, [window_types[0]] * len(older) + window_types
    got = recommend(rec, [history], [history_types], 10, exclude_seen=True)
    assert len(got.item_ids[0]) == 10
    assert got.item_ids[0][:4] == ranked[-4:]
    assert not set(got.item_ids[0]) & set(history)
    assert got.scores[0] == sorted(got.scores[0], reverse=True)


def test_store_filter_keeps_to_the_assortment(rec: OnnxModel, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    assortment = pq.read_table(tiny_pipeline.features / S.ASSORTMENT_FILE).to_pandas()
    store = assortment[S.STORE_ID].value_counts().index[0]
    sold = set(assortment.loc[assortment[S.STORE_ID] == store, S.ITEM_ID])
    items, types = histories(tiny_pipeline)
    got = recommend(rec, items, types, 10, rules=ItemFilter(store_id=store))
    assert {i for r in got.item_ids for i in r} <= sold
    with pytest.raises(ValueError, match="unknown store_id"):
        recommend(rec, items, types, 10, rules=ItemFilter(store_id="no-such-store"))
    with pytest.raises(ValueError, match="unknown categories"):
        recommend(rec, items, types, 10, rules=ItemFilter(exclude_categories=("no-such-category",)))


def test_cold_start_uses_the_segment_then_overall_popularity(rec: OnnxModel) -> None:
    segment = max(rec.segment_popularity, key=lambda s: int((rec.segment_popularity[s] > 0).sum()))
    counts = rec.segment_popularity[segment]
    got = recommend(rec, [[], ["unknown-item"]], None, 5, segments=[segment, None])
    assert got.source == [SOURCE_SEGMENT, SOURCE_POPULAR]
    want_segment = np.argsort(-counts, kind="stable")[:5]
    assert got.item_ids[0] == rec.vocab.ids(want_segment).tolist()
    want_overall = np.argsort(-rec.popularity, kind="stable")[:5]
    assert got.item_ids[1] == rec.vocab.ids(want_overall).tolist()
    # a segment the bundle does not know falls back on the overall list
    assert recommend(rec, [[]], None, 5, segments=["no-such-segment"]).item_ids[0] == got.item_ids[1]
    # filters apply to the fallback too
    blocked = tuple(got.item_ids[1][:2])
    again = recommend(rec, [[]], None, 5, rules=ItemFilter(exclude_items=blocked))
    assert not set(again.item_ids[0]) & set(blocked) and len(again.item_ids[0]) == 5


def test_batch_scorer_applies_the_filters(bundle: Bundle, tiny_pipeline, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assortment = pq.read_table(tiny_pipeline.features / S.ASSORTMENT_FILE).to_pandas()
    store = assortment[S.STORE_ID].value_counts().index[0]
    sold = set(assortment.loc[assortment[S.STORE_ID] == store, S.ITEM_ID])
    path = score_snapshot(
        bundle, tiny_pipeline.features / S.SNAPSHOT_FILE, tmp_path, k=5, rules=ItemFilter(store_id=store)
    )
    scores = pq.read_table(path).to_pandas()
    assert len(scores) > 0 and {i for r in scores[REC_ITEMS] for i in r} <= sold
    assert set(scores[REC_SOURCE]) <= {SOURCE_HISTORY, SOURCE_SEGMENT, SOURCE_POPULAR}


def test_intent_probability_is_the_graph_output_through_the_bundle_calibration(
    bundle: Bundle, tiny_pipeline
) -> None:  # type: ignore[no-untyped-def]
    model = bundle.intent
    assert model is not None
    snap = pq.read_table(tiny_pipeline.features / S.SNAPSHOT_FILE).slice(0, 50)
    items, types = snap.column(S.ITEMS), snap.column(S.EVENT_TYPES_COL)
    feats = feature_matrix(model, {n: snap.column(n).to_numpy() for n in model.classifier.feature_names})
    got = intent_probability(model, items, types, feats)
    _, feeds = model.sequence_feeds(items, types)
    feeds["features"] = feats
    (raw,) = model.session.run(None, feeds)
    assert np.allclose(got, model.calibration.apply(raw))
    # the map itself: a bundle with a temperature map changes the figure the same way for everyone
    hot = dataclasses.replace(
        model, spec=dataclasses.replace(model.classifier, calibration=Calibration("temperature", 2.0))
    )
    assert np.allclose(
        intent_probability(hot, items, types, feats),
        1 / (1 + np.exp(-np.log(raw / (1 - raw)) / 2)),
        atol=1e-6,
    )


def test_similar_items_are_the_nearest_by_cosine_never_the_item_or_padding(rec: OnnxModel) -> None:
    table = rec.item_embeddings
    assert table is not None and table.shape == (rec.vocab.n_items + 1, 16)  # d_model of the tiny run
    assert not table[0].any()  # padding row
    item = str(rec.vocab.ids(np.array([3]))[0])
    ids, scores = similar_items(rec, item, 10)
    assert len(ids) == 10 and item not in ids
    # brute force over the raw table: cosine of every other real item, best first
    unit = table[1:] / np.linalg.norm(table[1:], axis=1, keepdims=True)
    sims = unit @ unit[2]
    sims[2] = -np.inf
    best = np.argsort(-sims, kind="stable")[:10] + 1
    assert ids == rec.vocab.ids(best).tolist()
    np.testing.assert_allclose(scores, sims[best - 1], atol=1e-5)
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)
    # asking for more than the catalogue's other items returns every one of them, still not the item
    everything, _ = similar_items(rec, item, int(rec.config["max_k"]))
    assert len(everything) == min(int(rec.config["max_k"]), rec.vocab.n_items - 1) and item not in everything


def test_similar_items_reject_unknown_items_and_k_out_of_range(rec: OnnxModel) -> None:
    with pytest.raises(LookupError, match="unknown item_id 'no-such-item'"):
        similar_items(rec, "no-such-item", 5)
    item = str(rec.vocab.ids(np.array([1]))[0])
    for k in (0, int(rec.config["max_k"]) + 1):
        with pytest.raises(ValueError, match="k must be between 1 and"):
            similar_items(rec, item, k)
    with pytest.raises(ValueError, match="no item embeddings"):
        similar_items(dataclasses.replace(rec, item_embeddings=None), item, 5)


def test_a_batch_of_requests_gets_what_each_would_get_alone(rec: OnnxModel, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    from serving.logs import ApiError
    from serving.service import RecommendJob, recommend_batch

    items, types = histories(tiny_pipeline, 6)
    store = next(iter(rec.assortment))
    jobs = [
        RecommendJob(items[0], types[0], None, None, 5, None, ItemFilter(), None),
        RecommendJob(items[1], types[1], None, None, 5, None, ItemFilter(), "no-such-segment"),
        RecommendJob(items[2], types[2], None, None, 3, False, ItemFilter(), None),  # other k, seen kept
        RecommendJob(items[3], types[3], None, None, 5, None, ItemFilter(store_id=store), None),
        RecommendJob(items[4], types[4], None, None, 5, None, ItemFilter(store_id="no-such-store"), None),
        RecommendJob([], [], None, None, 5, None, ItemFilter(), None),  # cold start
        RecommendJob(items[5], types[5], None, None, 5, None, ItemFilter(), None),
    ]
    got = recommend_batch(rec, jobs)
    assert isinstance(got[4], ApiError) and got[4].error_code == 400 and "unknown store_id" in str(got[4])
    for job, answer in zip(jobs, got, strict=True):
        if job.rules.store_id == "no-such-store":
            continue
        alone = recommend(
            rec, [job.items], [job.event_types], job.k, job.exclude_seen, job.rules, [job.segment]
        )
        assert not isinstance(answer, ApiError)
        ids, scores, source = answer
        assert ids == alone.item_ids[0] and source == alone.source[0]
        np.testing.assert_allclose(scores, alone.scores[0], rtol=1e-5, atol=1e-5)  # float order of a batch


def test_intent_batch_gives_each_customer_their_own_probability(bundle: Bundle, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    from serving.history import read_snapshot
    from serving.service import IntentJob, intent_batch

    rows = [h for _, h in read_snapshot(tiny_pipeline.features / S.SNAPSHOT_FILE)][:6]
    jobs = [IntentJob(h.items, h.event_types, h.channels, h.timestamps, h.features) for h in rows]
    jobs[2] = dataclasses.replace(jobs[2], channels=None, timestamps=None)  # scored in a call of its own
    assert bundle.intent is not None
    got = intent_batch({"intent": bundle.intent}, jobs)
    for job, answer in zip(jobs, got, strict=True):
        side = ([job.channels], [job.timestamps]) if job.channels is not None else (None, None)
        features = feature_matrix(bundle.intent, {n: [v] for n, v in job.features.items()})
        alone = intent_probability(bundle.intent, [job.items], [job.event_types], features, *side)
        assert set(answer) == {"intent"} and abs(answer["intent"] - float(alone[0])) < 1e-5


def test_a_job_that_fails_fails_alone_and_its_batch_is_answered(bundle: Bundle, tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    from serving.history import read_snapshot
    from serving.logs import ApiError
    from serving.service import IntentJob, RecommendJob, intent_batch, recommend_batch

    rows = [h for _, h in read_snapshot(tiny_pipeline.features / S.SNAPSHOT_FILE) if len(h.items) > 2][:4]
    assert bundle.recommender is not None and bundle.intent is not None
    jobs = [
        RecommendJob(h.items, h.event_types, h.channels, h.timestamps, 5, None, ItemFilter(), None)
        for h in rows
    ]
    broken = dataclasses.replace(jobs[1], channels=jobs[1].channels[:1])  # type: ignore[index]  # lists misalign
    got = recommend_batch(bundle.recommender, [jobs[0], broken, jobs[2], jobs[3]])
    assert isinstance(got[1], ApiError) and "must align" in str(got[1])
    for job, answer in zip([jobs[0], jobs[2], jobs[3]], [got[0], got[2], got[3]], strict=True):
        alone = recommend_batch(bundle.recommender, [job])[0]
        assert not isinstance(answer, Exception) and not isinstance(alone, Exception)
        assert answer[0] == alone[0]
    ijobs = [IntentJob(h.items, h.event_types, h.channels, h.timestamps, h.features) for h in rows]
    ijobs[2] = dataclasses.replace(ijobs[2], timestamps=ijobs[2].timestamps[:1])  # type: ignore[index]
    probs = intent_batch({"intent": bundle.intent}, ijobs)
    assert isinstance(probs[2], ValueError)  # a stored history the scorer cannot read: that request's 500
    assert all(isinstance(p, dict) and 0.0 <= p["intent"] <= 1.0 for i, p in enumerate(probs) if i != 2)

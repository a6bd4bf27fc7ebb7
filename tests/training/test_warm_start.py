"""model.init_from: an intent encoder starts from a trained recommender, items matched by id."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from data_prep import schema as S
from models.sasrec import SASRec, SASRecConfig
from training.config import load_config
from training.train import train
from training.warm_start import recommender_state, warm_start_encoder


def test_weights_are_copied_by_item_id_and_by_name(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    weights, doc, source_items = recommender_state(tiny_pipeline.rec_run)
    mc = doc["model_config"]
    # a vocabulary in another order, with one item the recommender never saw
    item_ids = [*reversed(source_items[:50]), "item-the-recommender-never-saw"]
    enc = SASRec(
        SASRecConfig(
            n_items=len(item_ids),
            max_len=10,
            d_model=mc["d_model"],
            n_heads=mc["n_heads"],
            n_layers=mc["n_layers"],
            n_event_types=5,
        )
    )
    fresh_unknown_row = enc.item_emb.weight[len(item_ids)].detach().clone()
    record = warm_start_encoder(enc, item_ids, [], tiny_pipeline.rec_run)
    assert record["items_matched"] == 50 and record["items"] == 51
    src = {item: i + 1 for i, item in enumerate(source_items)}
    for j, item in enumerate(item_ids[:50]):
        assert torch.equal(enc.item_emb.weight[j + 1], weights["item_emb.weight"][src[item]])
    assert torch.equal(enc.item_emb.weight[51], fresh_unknown_row)  # unmatched rows keep their init
    assert torch.equal(enc.pos_emb.weight, weights["pos_emb.weight"][:10])  # the 10 newest positions
    assert torch.equal(enc.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"])
    assert record["skipped"]["type_emb.weight"] == "not in the recommender"
    shared = SASRec(SASRecConfig(**{**enc.cfg.__dict__, "item_identity": False}))
    record = warm_start_encoder(shared, item_ids, [], tiny_pipeline.rec_run)  # one shared item row
    assert record["items_matched"] == 0 and "item_emb.weight" in record["skipped"]
    assert torch.equal(shared.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"])


def test_intent_trains_from_the_recommender_and_records_it(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d_model = json.loads((tiny_pipeline.rec_run / "model.json").read_text())["model_config"]["d_model"]
    base = [f"data.features_dir={tiny_pipeline.features}", "train.max_epochs=1", "model.hidden=8"]
    cfg = load_config(
        "intent", None, [*base, f"model.d_model={d_model}", f"model.init_from={tiny_pipeline.rec_run}"]
    )
    m = train(cfg, tmp_path / "runs", progress_bar=False).metrics
    n_items = pq.read_metadata(tiny_pipeline.features / S.ITEMS_FILE).num_rows
    assert m["warm_start"]["items_matched"] == n_items  # same prep: every item found
    wrong = load_config(
        "intent", None, [*base, f"model.d_model={2 * d_model}", f"model.init_from={tiny_pipeline.rec_run}"]
    )
    with pytest.raises(ValueError, match="d_model"):
        train(wrong, tmp_path / "runs", progress_bar=False)
    with pytest.raises(ValueError, match="needs a recommender run"):
        train(
            load_config("intent", None, [*base, f"model.init_from={tiny_pipeline.intent_run}"]),
            tmp_path / "r",
            progress_bar=False,
        )

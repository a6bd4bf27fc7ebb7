"""Start a sequence encoder from a trained recommender's weights (``model.init_from``).

The intent, session and churn classifiers encode the same event sequences the recommender was trained on,
so its item embeddings and transformer blocks already know which items go together. Vocabularies may
differ (another prep, another window), so item rows are matched **by item id** and category rows by
category name; every other tensor is copied when its name and shape agree. Positions count from the
newest event, so a recommender with a longer ``max_len`` gives its newest rows. What was copied and what
was not is returned for the run's metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from data_prep import schema as S
from models.sasrec import SASRec

MATCHED_BY_KEY = {"item_emb.weight", "category_emb.weight", "pos_emb.weight", "item_category"}


def recommender_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str]]:
    """(encoder weights, model.json, item ids by index) of a finished recommender run."""
    model_file, metrics_file = run_dir / "model.json", run_dir / "metrics.json"
    for path in (model_file, metrics_file, run_dir / S.ITEMS_FILE):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: model.init_from must be a finished recommender run")
    doc = json.loads(model_file.read_text())
    if doc["task"] != "recommender":
        raise ValueError(f"{run_dir} is a {doc['task']!r} run; model.init_from needs a recommender run")
    checkpoint = run_dir / json.loads(metrics_file.read_text())["checkpoint"]
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    items = pq.read_table(run_dir / S.ITEMS_FILE, columns=[S.ITEM_ID, S.ITEM_IDX]).sort_by(S.ITEM_IDX)
    return weights, doc, items.column(S.ITEM_ID).to_pylist()


def _rows_by_name(
    target: torch.Tensor, source: torch.Tensor, target_names: list[str], source_names: list[str]
) -> int:
    """Copy source row i+1 into target row j+1 where the names match (row 0 is padding); returns matches."""
    where = {name: i + 1 for i, name in enumerate(source_names)}
    pairs = [(j + 1, where[n]) for j, n in enumerate(target_names) if n in where]
    if pairs:
        dst, src = (torch.tensor(x) for x in zip(*pairs, strict=True))
        target[dst] = source[src]
    return len(pairs)


def warm_start_encoder(
    encoder: SASRec, item_ids: list[str], category_names: list[str], run_dir: Path
) -> dict[str, Any]:
    """Load ``run_dir``'s recommender weights into ``encoder`` (whose vocabulary is ``item_ids`` by index
    1..n and categories ``category_names``); returns a record of what was copied."""
    weights, doc, source_items = recommender_state(run_dir)
    if int(doc["model_config"]["d_model"]) != encoder.cfg.d_model:
        raise ValueError(
            f"model.init_from {run_dir} has d_model {doc['model_config']['d_model']}, this model "
            f"{encoder.cfg.d_model}: set model.d_model to match"
        )
    own = encoder.state_dict()
    copied, skipped = [], {}
    with torch.no_grad():
        if encoder.cfg.item_identity:
            matched = _rows_by_name(
                own["item_emb.weight"], weights["item_emb.weight"], item_ids, source_items
            )
            copied.append("item_emb.weight")
        else:  # one shared item row: nothing to match by id
            matched = 0
            skipped["item_emb.weight"] = "model.item_identity is false"
        if "category_emb.weight" in own and "category_emb.weight" in weights:
            _rows_by_name(
                own["category_emb.weight"],
                weights["category_emb.weight"],
                category_names,
                doc["category_names"],
            )
            copied.append("category_emb.weight")
        n = min(len(own["pos_emb.weight"]), len(weights["pos_emb.weight"]))
        own["pos_emb.weight"][:n] = weights["pos_emb.weight"][:n]  # row p = the p-th newest event in both
        copied.append("pos_emb.weight")
        for name, value in own.items():
            if name in MATCHED_BY_KEY:
                continue
            if name not in weights:
                skipped[name] = "not in the recommender"
            elif weights[name].shape != value.shape:
                skipped[name] = f"shape {tuple(weights[name].shape)} there, {tuple(value.shape)} here"
            else:
                value.copy_(weights[name])
                copied.append(name)
    encoder.load_state_dict(own)
    return {
        "run": str(run_dir),
        "items_matched": matched,
        "items": len(item_ids),
        "share_matched": matched / max(len(item_ids), 1),
        "tensors_copied": len(copied),
        "skipped": skipped,
    }

"""Every YAML config loads; unknown keys and bad values are errors; overrides apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from training.config import IntentRunConfig, RecommenderRunConfig, dump_config, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "experiments" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads_and_names_its_command(path: Path) -> None:
    text = path.read_text()
    task = "intent" if "task: intent" in text else "recommender"
    cfg = load_config(task, path)
    assert isinstance(cfg, RecommenderRunConfig | IntentRunConfig)
    assert f"o2o train {task} --config experiments/configs/{path.name}" in text
    assert (
        load_config(task, None, [f"{k}={json.dumps(v)}" for k, v in _flat(cfg.model_dump(mode="json"))])
        == cfg
    )
    assert dump_config(cfg)


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        leaf = not isinstance(v, dict) or f"{prefix}{k}" == "tune.space"  # its keys are dotted themselves
        out += [(f"{prefix}{k}", v)] if leaf else _flat(v, f"{prefix}{k}.")
    return out


def test_at_least_one_config_per_task() -> None:
    assert {"recommender_synthetic.yaml", "intent_synthetic.yaml"} <= {p.name for p in CONFIGS}


def test_unknown_key_and_bad_values_are_errors() -> None:
    with pytest.raises(ValidationError, match="extra"):
        load_config("recommender", None, ["train.learning_rate=0.1"])
    with pytest.raises(ValidationError, match="divisible"):
        load_config("recommender", None, ["model.d_model=30", "model.n_heads=4"])
    with pytest.raises(ValidationError):
        load_config("intent", None, ["train.lr=-1"])
    with pytest.raises(ValueError, match=r"section\.key=value"):
        load_config("intent", None, ["train.lr"])
    with pytest.raises(ValueError, match="unknown task"):
        load_config("ranker")
    with pytest.raises(ValidationError, match="loss_excludes_seen needs loss 'ce'"):
        load_config("recommender", None, ["train.loss=gbce", "train.loss_excludes_seen=true"])
    with pytest.raises(ValidationError, match=r"eval\.exclude_seen"):
        load_config("recommender", None, ["train.loss_excludes_seen=true", "eval.exclude_seen=false"])


def test_override_wins_over_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("task: intent\ntrain:\n  lr: 0.5\n")
    assert load_config("intent", p).train.lr == 0.5
    assert load_config("intent", p, ["train.lr=3e-4"]).train.lr == pytest.approx(3e-4)
    with pytest.raises(ValueError, match="not 'recommender'"):
        load_config("recommender", p)

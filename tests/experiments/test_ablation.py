"""``o2o evaluate`` and ``o2o ablate`` on the tiny retailer: seeds, paired differences, files a person reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from experiments.ablation import (
    ABLATION_JSON,
    ABLATION_MD,
    ABLATION_PNG,
    Variant,
    ablate,
    parse_variant,
    side_feature_variants,
)
from experiments.cli import app
from experiments.evaluate import EVALUATION_JSON
from training.config import load_config

runner = CliRunner()


def _cfg(features: Path):  # type: ignore[no-untyped-def]
    overrides = [f"data.features_dir={features}", "train.max_epochs=1", "model.d_model=16", "name=tiny"]
    return load_config("recommender", None, overrides)


def test_ablation_compares_variants_seed_by_seed(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    variants = [
        Variant("none", ("model.side_features=[]",)),
        Variant("channel", ("model.side_features=[channel]",)),
    ]
    result = ablate(_cfg(tiny_pipeline.features), variants, [0, 1], tmp_path / "runs")
    s = result.summary
    assert [r["variant"] for r in s["variants"]] == ["none", "channel"]
    ref, other = s["variants"]
    assert ref["paired_diff"] == {"mean": 0.0, "std": 0.0, "wins": 0, "n": 2}
    diffs = [a - b for a, b in zip(other["per_seed"], ref["per_seed"], strict=True)]
    assert other["paired_diff"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert other["paired_diff"]["wins"] == sum(d > 0 for d in diffs)
    # each variant is a full evaluation with its own runs; the baselines were fitted for the reference only
    first_runs = [tmp_path / "runs" / r["evaluation"][0] / "metrics.json" for r in s["variants"]]
    ref_run, other_run = (json.loads(p.read_text()) for p in first_runs)
    assert ref_run["baselines"] and not other_run["baselines"]
    assert other_run["model"]["test"]  # the variant itself was evaluated
    assert {"most_popular", "item_knn"} <= set(s["baselines"])
    assert s["seeds"] == [0, 1] and len(ref["per_seed"]) == 2
    for name in (ABLATION_JSON, ABLATION_MD, ABLATION_PNG):
        assert (result.out_dir / name).stat().st_size > 0
    md = (result.out_dir / ABLATION_MD).read_text()
    assert "| channel |" in md and "baseline: most_popular" in md
    evals = sorted((tmp_path / "runs").glob("tiny-eval-*"))
    assert len(evals) == 2 and all((e / EVALUATION_JSON).is_file() for e in evals)

    # --reuse: finished evaluation folders stand in for their variants, after a check of their settings
    runs_before = set((tmp_path / "runs").iterdir())
    folder = {
        name: next(
            e for e in evals if json.loads((e / EVALUATION_JSON).read_text())["runs"] == r["evaluation"]
        )
        for name, r in zip(["none", "channel"], s["variants"], strict=True)
    }
    again = ablate(_cfg(tiny_pipeline.features), variants, [0, 1], tmp_path / "runs", reuse=folder)
    assert [r["per_seed"] for r in again.summary["variants"]] == [r["per_seed"] for r in s["variants"]]
    assert set((tmp_path / "runs").iterdir()) - runs_before == {again.out_dir}  # nothing was trained
    wrong = [variants[0], Variant("channel", ("model.side_features=[category]",))]
    with pytest.raises(ValueError, match="side_features"):
        ablate(_cfg(tiny_pipeline.features), wrong, [0, 1], tmp_path / "runs", reuse=folder)
    with pytest.raises(ValueError, match="seeds"):
        ablate(_cfg(tiny_pipeline.features), variants, [0], tmp_path / "runs", reuse=folder)


def test_a_bad_variant_fails_before_any_training(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    variants = [Variant("none", ()), Variant("typo", ("model.side_features=[colour]",))]
    with pytest.raises(ValueError, match="colour"):
        ablate(_cfg(tiny_pipeline.features), variants, [0], tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_variants_are_parsed_and_generated() -> None:
    assert parse_variant("small: model.d_model=32; train.lr=3e-4") == Variant(
        "small", ("model.d_model=32", "train.lr=3e-4")
    )
    assert parse_variant("as is:") == Variant("as is", ())
    with pytest.raises(ValueError, match="NAME"):
        parse_variant("model.d_model=32")
    got = side_feature_variants(["category", "time_gap"])
    assert [v.name for v in got] == ["none", "category", "time_gap", "all: category, time_gap"]
    assert got[-1].overrides == ("model.side_features=[category,time_gap]",)
    with pytest.raises(ValueError, match="side features"):
        side_feature_variants(["colour"])


def test_cli_wants_variants_or_side_features(tmp_path: Path) -> None:
    both = ["ablate", "recommender", "--variant", "a:", "--side-features", "channel"]
    for args in (["ablate", "recommender"], both):
        r = runner.invoke(app, [*args, "--runs-dir", str(tmp_path)])
        assert r.exit_code == 2 and "--side-features" in r.output and "Traceback" not in r.output


def test_plots_survive_means_that_round_past_their_extremes(tmp_path: Path) -> None:
    """Three equal figures can average to one bit below them; the error bars must not go negative."""
    import math

    from experiments import ablation, evaluate

    mean = 0.0522
    stats = {"ndcg@10": {"mean": mean, "std": 0.0, "min": math.nextafter(mean, 1.0), "max": mean, "n": 3}}
    evaluate._plot({"ours": stats, "most_popular": stats}, "t", tmp_path / "e.png")
    row = {"variant": "none", "test": stats}
    ablation._plot(
        {"metric": "ndcg@10", "variants": [row], "baselines": {"x": stats}}, "t", tmp_path / "a.png"
    )
    assert (tmp_path / "e.png").stat().st_size > 0 and (tmp_path / "a.png").stat().st_size > 0

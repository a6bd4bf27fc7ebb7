"""``o2o report campaign``: exact figures on a hand-made list, and the real flow score --split test → report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from data_prep import schema as S
from experiments.campaign import (
    BREAKDOWN_PNG,
    CAMPAIGN_JSON,
    CAMPAIGN_MD,
    DECILES_PNG,
    GAIN_PNG,
    TARGETS_FILE,
    campaign_report,
)
from experiments.cli import app

runner = CliRunner()


def _scores(tmp_path: Path, labelled: bool = True) -> Path:
    # 20 customers, scores 0.95, 0.90, ... ; the 5 best and customer 10 buy
    p = np.round(np.linspace(0.95, 0.0, 20), 4)
    df = pd.DataFrame(
        {
            S.CUSTOMER_ID: [f"c{i:02d}" for i in range(20)],
            "intent_probability": p,
            S.SEGMENT: ["champions"] * 5 + ["at risk"] * 15,
            S.CHANNEL_MIX: ["omnichannel", "online only"] * 10,
        }
    )
    if labelled:
        df[S.LABEL] = [1] * 5 + [0] * 5 + [1] + [0] * 9
    path = tmp_path / "scores.parquet"
    df.sample(frac=1.0, random_state=0).to_parquet(path, index=False)  # order must not matter
    return path


def test_figures_for_a_budget_are_exact(tmp_path: Path) -> None:
    r = campaign_report(_scores(tmp_path), budget=4, out_dir=tmp_path / "c")
    s = r.summary
    p = np.round(np.linspace(0.95, 0.0, 20), 4)
    assert s["targeted"] == 4 and s["expected_conversions"] == pytest.approx(p[:4].sum())
    assert s["expected_conversions_random"] == pytest.approx(4 * p.mean())
    assert s["actual_conversions"] == 4 and s["actual_conversions_random"] == pytest.approx(4 * 6 / 20)
    assert s["captured_at_budget"] == pytest.approx(4 / 6) and s["lift_at_budget"] == pytest.approx(1 / 0.3)
    assert s["captured@10%"] == pytest.approx(2 / 6)  # top 10% = 2 customers, both buyers
    assert [d["customers"] for d in s["deciles"]] == [2] * 10 and s["deciles"][0]["actual_rate"] == 1.0
    seg = {row["group"]: row for row in s["breakdown"][S.SEGMENT]}
    assert seg["champions"]["targeted"] == 4 and seg["at risk"]["targeted"] == 0
    assert sum(row["customers"] for row in s["breakdown"][S.CHANNEL_MIX]) == 20
    targets = pd.read_parquet(r.out_dir / TARGETS_FILE)
    assert targets[S.CUSTOMER_ID].tolist() == ["c00", "c01", "c02", "c03"]
    for name in (CAMPAIGN_MD, CAMPAIGN_JSON, GAIN_PNG, DECILES_PNG, BREAKDOWN_PNG):
        assert (r.out_dir / name).stat().st_size > 0
    md = (r.out_dir / CAMPAIGN_MD).read_text()
    assert "held-out outcomes" in md and "## By RFM segment" in md and "## By decile" in md


def test_live_scores_without_outcomes_plan_the_campaign(tmp_path: Path) -> None:
    r = campaign_report(_scores(tmp_path, labelled=False), budget=50, out_dir=tmp_path / "c")
    assert r.summary["targeted"] == 20 and "exceeds" in r.summary["note"]
    assert not r.summary["labelled"] and not (r.out_dir / DECILES_PNG).exists()
    assert "o2o score --split test" in (r.out_dir / CAMPAIGN_MD).read_text()


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    path = _scores(tmp_path)
    with pytest.raises(ValueError, match="no column 'churn_risk'"):
        campaign_report(path, 5, tmp_path / "c", score="churn_risk")
    other = pd.read_parquet(path).assign(churn_risk=0.5)
    other.to_parquet(tmp_path / "other.parquet")
    r = campaign_report(tmp_path / "other.parquet", 5, tmp_path / "o", score="churn_risk")
    assert not r.summary["labelled"] and "do not grade" in r.summary["note"]  # purchase labels, churn ranking
    df = pd.read_parquet(path)
    df.loc[0, "intent_probability"] = 1.5
    df.to_parquet(path)
    with pytest.raises(ValueError, match="probability in"):
        campaign_report(path, 5, tmp_path / "c")
    r = runner.invoke(app, ["report", "campaign", "--scores", str(tmp_path / "nope"), "--budget", "3"])
    assert r.exit_code == 2 and "o2o score" in r.output and "Traceback" not in r.output


def test_held_out_scores_feed_an_honest_campaign_report(tiny_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    args = ["score", "--artifact", str(tiny_pipeline.bundle), "--features", str(tiny_pipeline.features)]
    r = runner.invoke(app, [*args, "--out", str(tmp_path), "--split", "test"])
    assert r.exit_code == 0, r.output
    scores = pd.read_parquet(tmp_path / "held_out_test" / "scores.parquet")
    test = pd.read_parquet(tiny_pipeline.features / S.split_file("intent", "test"))
    snap = pd.read_parquet(
        tiny_pipeline.features / S.SNAPSHOT_FILE, columns=[S.CUSTOMER_ID, S.CONSENT_MARKETING]
    )
    consented = set(snap.loc[snap[S.CONSENT_MARKETING].fillna(False), S.CUSTOMER_ID])
    assert set(scores[S.CUSTOMER_ID]) == set(test[S.CUSTOMER_ID]) & consented  # no one without consent
    merged = scores.merge(test[[S.CUSTOMER_ID, S.LABEL, S.SEGMENT]], on=S.CUSTOMER_ID, suffixes=("", "_t"))
    assert (merged[S.LABEL] == merged[f"{S.LABEL}_t"]).all() and (
        merged[S.SEGMENT] == merged[f"{S.SEGMENT}_t"]
    ).all()
    r = runner.invoke(
        app, ["report", "campaign", "--scores", str(tmp_path / "held_out_test"), "--budget", "30"]
    )
    assert r.exit_code == 0, r.output
    out = tmp_path / "held_out_test" / "campaign"
    assert "held-out actual" in r.output and (out / GAIN_PNG).is_file() and (out / BREAKDOWN_PNG).is_file()


def test_report_run_still_works_and_needs_a_run(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    assert runner.invoke(app, ["report", "--run", str(tiny_pipeline.rec_run)]).exit_code == 0
    r = runner.invoke(app, ["report"])
    assert r.exit_code == 2 and "--run" in r.output

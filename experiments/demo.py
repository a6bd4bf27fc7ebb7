"""The end-to-end demo on the embedded synthetic retailer: every stage, real files, a closing summary."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from data_prep import schema as S
from data_prep.generate import RetailerSpec, generate_retailer
from data_prep.pipeline import run_prep
from experiments.campaign import CAMPAIGN_MD, campaign_report
from experiments.report import headline, write_report
from serving.artifact import load_bundle
from serving.batch import held_out_examples, score_snapshot
from training.config import load_config
from training.export import export_bundle
from training.train import train

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class DemoResult:
    data_dir: Path
    rec_run: Path
    intent_run: Path
    bundle: Path
    scores: Path
    seconds: float
    summary: dict[str, Any]


def _step(console: Console, name: str) -> None:
    console.rule(f"[bold]{name}")


def run_demo(
    workdir: Path,
    customers: int = 5000,
    seed: int = 0,
    max_epochs: int | None = None,
    console: Console | None = None,
) -> DemoResult:
    """Run every stage into ``workdir`` (data/synthetic, runs/, artifacts/) and print a summary."""
    console = console or Console()
    t0 = time.perf_counter()
    data = workdir / "data" / "synthetic"
    _step(console, "1/6 generate")
    generate_retailer(data, RetailerSpec(n_customers=customers, seed=seed), progress=console.print)
    _step(console, "2/6 prep")
    prep = run_prep(data, data, progress=console.print)
    features = prep.features_dir
    overrides = [f"data.features_dir={features}", f"train.seed={seed}"]
    if max_epochs:
        overrides.append(f"train.max_epochs={max_epochs}")
    _step(console, "3/6 train recommender")
    rec = train(
        load_config("recommender", CONFIG_DIR / "recommender_synthetic.yaml", overrides), workdir / "runs"
    )
    _step(console, "3/6 train intent")
    intent = train(load_config("intent", CONFIG_DIR / "intent_synthetic.yaml", overrides), workdir / "runs")
    runs = [rec.run_dir, intent.run_dir]
    if (features / S.split_file(S.CHURN_PREFIX, S.SPLIT_TRAIN)).is_file():
        _step(console, "3/6 train churn")
        churn = train(load_config("intent", CONFIG_DIR / "churn_synthetic.yaml", overrides), workdir / "runs")
        runs.append(churn.run_dir)
    else:
        console.print(
            "no churn model: the data is too short for three 60-day windows (04_features/manifest.json)"
        )
    _step(console, "4/6 export")
    bundle_dir = export_bundle(runs, workdir / "artifacts")
    _step(console, "5/6 score")
    bundle = load_bundle(bundle_dir)
    scores = score_snapshot(bundle, features / S.SNAPSHOT_FILE, data / "05_scores")
    held_out = data / "05_scores" / f"held_out_{S.SPLIT_TEST}"
    test_scores = score_snapshot(bundle, held_out_examples(features, S.SPLIT_TEST, held_out), held_out)
    _step(console, "6/6 report")
    n_test = pq.read_table(test_scores, columns=[S.CUSTOMER_ID]).num_rows
    campaign = campaign_report(test_scores, max(1, n_test // 10), held_out / "campaign")
    reports = [write_report(r) for r in runs] + [campaign.out_dir / CAMPAIGN_MD]
    seconds = time.perf_counter() - t0
    summary = summarise(rec.metrics, intent.metrics, prep.identity_metrics, seconds)
    summary["campaign"] = {
        k: campaign.summary.get(k)
        for k in ("targeted", "customers", "expected_conversions", "actual_conversions", "captured_at_budget")
    }
    (workdir / "runs" / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(console, summary, [data, *reports, bundle_dir, scores])
    return DemoResult(data, rec.run_dir, intent.run_dir, bundle_dir, scores, seconds, summary)


INTENT_BASELINES = {  # metrics.json name → label in the summary
    "logistic_regression": "logistic regression",
    "gradient_boosting": "gradient boosting",
    "bg_nbd": "BG/NBD",
}


def summarise(rec: dict, intent: dict, identity: dict | None, seconds: float) -> dict[str, Any]:
    r_model, r_pop = rec["model"]["test"], rec["baselines"]["most_popular"]["test"]
    names = headline(rec)
    i_model = intent["model"]["test"]
    return {
        "seconds": round(seconds, 1),
        "recommender": {
            "protocol": rec["protocol"],
            "metrics": names,
            "sasrec": {k: r_model[k] for k in (*names, "n_examples")},
            "most_popular": {k: r_pop[k] for k in names},
            "item_knn": {k: rec["baselines"]["item_knn"]["test"][k] for k in names},
        },
        "intent": {
            "protocol": intent["protocol"],
            "positive_rate": i_model["positive_rate"],
            "calibration": intent.get("calibration", {}).get("method", "none"),
            "shipped": intent.get("selection", {}).get("shipped", "net"),
            "sequence_model": {k: i_model[k] for k in ("roc_auc", "pr_auc", "log_loss", "ece", "n_examples")},
            **{
                b: {k: intent["baselines"][b]["test"][k] for k in ("roc_auc", "pr_auc", "log_loss", "ece")}
                for b in INTENT_BASELINES
                if b in intent["baselines"]
            },
        },
        "identity": identity,
    }


def print_summary(console: Console, s: dict[str, Any], paths: list[Path]) -> None:
    table = Table(title=f"O2O demo — test split (finished in {s['seconds']:.0f} s)")
    for col in ("model", "metric", "ours", "baseline", "baseline name"):
        table.add_column(col)
    rec, intent = s["recommender"], s["intent"]
    for m in rec["metrics"][:2]:
        for base, label in (("most_popular", "most popular"), ("item_knn", "ItemKNN")):
            table.add_row("recommender (R2)", m, f"{rec['sasrec'][m]:.4f}", f"{rec[base][m]:.4f}", label)
    for m in ("roc_auc", "pr_auc", "ece"):
        for base, label in INTENT_BASELINES.items():
            if base in intent:
                ours, theirs = intent["sequence_model"][m], intent[base][m]
                table.add_row("intent (I1)", m, f"{ours:.4f}", f"{theirs:.4f}", label)
    console.print(table)
    console.print(
        f"intent positive rate {intent['positive_rate']:.3f}; shipped candidate (chosen on validation): "
        f"{intent.get('shipped', 'net')}; calibration: {intent['calibration']}"
    )
    c = s.get("campaign")
    if c and c.get("actual_conversions") is not None:
        console.print(
            f"campaign on the held-out test cutoff: top {c['targeted']:,} of {c['customers']:,} customers, "
            f"expected {c['expected_conversions']:.1f} conversions, actual {c['actual_conversions']}, "
            f"{c['captured_at_budget']:.1%} of buyers captured"
        )
    console.print("[bold green]paths[/]")
    for p in paths:
        console.print(f"  {p}")

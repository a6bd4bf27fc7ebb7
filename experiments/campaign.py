"""``o2o report campaign``: what a marketer asks of a scored customer list, for a contact budget.

Input is a scores table from ``o2o score`` (one row per customer with marketing consent). Sorting by a
probability column (calibrated purchase intent by default, or churn risk for a retention campaign), the
report answers:

- **Who to contact:** the top ``budget`` customers (``targets.parquet``).
- **What to expect:** expected conversions among them = Σ of their calibrated probabilities, beside what
  the same budget spent at random would expect.
- **How good the ranking is** (when the table carries held-out labels: ``o2o score --split test`` scores
  the customers at the test cutoff, whose outcomes no model saw): actual conversions in the top N, lift,
  share of all buyers captured in the top 10% and in the top N, the gain curve against random and perfect
  targeting, lift by decile, and predicted-versus-actual per decile (is the calibration honest?).
- **Where they are:** the breakdown by RFM segment and by channel mix.

Everything goes to ``campaign.md`` (tables and charts), ``campaign.json`` and PNG charts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from data_prep import schema as S

CAMPAIGN_MD = "campaign.md"
CAMPAIGN_JSON = "campaign.json"
TARGETS_FILE = "targets.parquet"
GAIN_PNG = "gain.png"
DECILES_PNG = "deciles.png"
BREAKDOWN_PNG = "breakdown.png"
DEFAULT_SCORE = "intent_probability"
BREAKDOWNS = ((S.SEGMENT, "RFM segment"), (S.CHANNEL_MIX, "channel mix"))


@dataclass(frozen=True)
class CampaignReport:
    out_dir: Path
    summary: dict[str, Any]


def load_scores(path: Path, score: str) -> pd.DataFrame:
    """The scores table (``o2o score``'s output folder, its ``scores.parquet`` dataset folder, or one Parquet
    file), checked for what the report needs."""
    file = path / "scores.parquet" if (path / "scores.parquet").exists() else path
    if not file.exists() or (file.is_dir() and not any(file.glob("*.parquet"))):
        raise FileNotFoundError(f"{file} not found: run `o2o score` (or `o2o score --split test`) first")
    df = pd.read_parquet(file)
    if score not in df.columns:
        have = [c for c in df.columns if df[c].dtype.kind == "f"]
        raise ValueError(f"{file} has no column {score!r}; probability columns there: {have}")
    if df.empty:
        raise ValueError(f"{file} holds no customers (did everyone lack marketing consent?)")
    if df[score].isna().any() or not df[score].between(0, 1).all():
        raise ValueError(f"{score!r} must be a probability in [0, 1] for every customer")
    return df


def campaign_report(scores: Path, budget: int, out_dir: Path, score: str = DEFAULT_SCORE) -> CampaignReport:
    """Rank ``scores`` by ``score``, target the top ``budget``, write the report into ``out_dir``."""
    if budget < 1:
        raise ValueError(f"budget must be at least 1 customer, got {budget}")
    df = load_scores(scores, score)
    n = len(df)
    df = df.sort_values([score, S.CUSTOMER_ID], ascending=[False, True], kind="stable").reset_index(drop=True)
    top_n = min(budget, n)
    p = df[score].to_numpy(dtype=float)
    # held-out scores (``o2o score --split``) carry the I1 purchase outcome: it grades a purchase ranking only
    labelled = S.LABEL in df.columns and df[S.LABEL].notna().all() and score == DEFAULT_SCORE
    summary: dict[str, Any] = {
        "scores": str(scores),
        "score_column": score,
        "customers": n,
        "budget": budget,
        "targeted": top_n,
        "expected_conversions": float(p[:top_n].sum()),
        "expected_conversions_random": float(top_n * p.mean()),
        "labelled": bool(labelled),
    }
    notes = []
    if budget > n:
        notes.append(f"the budget ({budget}) exceeds the {n} customers scored: everyone is targeted")
    if S.LABEL in df.columns and score != DEFAULT_SCORE:
        notes.append(
            f"the held-out outcomes are purchases, which do not grade a ranking by {score!r}: the report plans "
            "from the probabilities only (the churn model's own test figures are in its run's metrics.json)"
        )
    if notes:
        summary["note"] = "; ".join(notes)
    if labelled:
        summary.update(_evaluation(df[S.LABEL].to_numpy(dtype=int), p, top_n))
    summary["breakdown"] = {
        col: _breakdown(df, col, score, top_n, labelled) for col, _ in BREAKDOWNS if col in df.columns
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    keep = [c for c in (S.CUSTOMER_ID, score, S.SEGMENT, S.CHANNEL_MIX) if c in df.columns]
    df.loc[: top_n - 1, keep].to_parquet(out_dir / TARGETS_FILE, index=False)
    _gain_chart(df, p, top_n, labelled, score, out_dir / GAIN_PNG)
    if labelled:
        _decile_chart(summary["deciles"], out_dir / DECILES_PNG)
    if summary["breakdown"]:
        _breakdown_chart(summary["breakdown"], labelled, out_dir / BREAKDOWN_PNG)
    (out_dir / CAMPAIGN_JSON).write_text(json.dumps(summary, indent=2))
    (out_dir / CAMPAIGN_MD).write_text(_markdown(summary))
    return CampaignReport(out_dir, summary)


def _evaluation(y: np.ndarray, p: np.ndarray, top_n: int) -> dict[str, Any]:
    """Figures that need outcomes; ``y``, ``p`` sorted by score, best first."""
    n, positives = len(y), int(y.sum())
    rate = positives / n
    top10 = max(1, round(0.1 * n))
    deciles = []
    for d, idx in enumerate(np.array_split(np.arange(n), 10)):
        if len(idx):
            deciles.append(
                {
                    "decile": d + 1,
                    "customers": len(idx),
                    "predicted_rate": float(p[idx].mean()),
                    "actual_rate": float(y[idx].mean()),
                    "lift": float(y[idx].mean() / rate) if rate else 0.0,
                }
            )
    return {
        "positives": positives,
        "positive_rate": rate,
        "actual_conversions": int(y[:top_n].sum()),
        "actual_conversions_random": top_n * rate,
        "lift_at_budget": float(y[:top_n].mean() / rate) if rate else 0.0,
        "captured_at_budget": float(y[:top_n].sum() / positives) if positives else 0.0,
        "lift@10%": float(y[:top10].mean() / rate) if rate else 0.0,
        "captured@10%": float(y[:top10].sum() / positives) if positives else 0.0,
        "deciles": deciles,
    }


def _breakdown(df: pd.DataFrame, col: str, score: str, top_n: int, labelled: bool) -> list[dict[str, Any]]:
    targeted = np.zeros(len(df), dtype=bool)
    targeted[:top_n] = True
    frame = df.assign(_targeted=targeted, _group=df[col].fillna("unknown").astype(str))
    rows = []
    for group, part in frame.groupby("_group", sort=False):
        row: dict[str, Any] = {
            "group": group,
            "customers": len(part),
            "targeted": int(part["_targeted"].sum()),
            "share_targeted": float(part["_targeted"].mean()),
            "mean_score": float(part[score].mean()),
            "expected_conversions_targeted": float(part.loc[part["_targeted"], score].sum()),
        }
        if labelled:
            row["actual_rate"] = float(part[S.LABEL].mean())
            row["actual_conversions_targeted"] = int(part.loc[part["_targeted"], S.LABEL].sum())
        rows.append(row)
    return sorted(rows, key=lambda r: -r["targeted"])


def _gain_chart(df: pd.DataFrame, p: np.ndarray, top_n: int, labelled: bool, score: str, path: Path) -> None:
    n = len(df)
    x = np.arange(1, n + 1)
    fig, axes = plt.subplots(1, 2 if labelled else 1, figsize=(11 if labelled else 5.5, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(x, np.cumsum(p), label="expected (Σ calibrated probability)", color="tab:green")
    ax.plot(x, x * p.mean(), "--", label="random targeting (expected)", color="gray")
    if labelled:
        ax.plot(x, np.cumsum(df[S.LABEL].to_numpy()), label="actual (held-out outcomes)", color="tab:blue")
    ax.axvline(top_n, ls=":", color="black", label=f"budget {top_n}")
    ax.set_xlabel("customers contacted (best first)")
    ax.set_ylabel("conversions")
    ax.set_title(f"conversions by budget ({score})")
    ax.legend(fontsize=7)
    if labelled:
        y = df[S.LABEL].to_numpy()
        share = x / n
        ax = axes[0][1]
        ax.plot(share, np.cumsum(y) / max(y.sum(), 1), label="model", color="tab:blue")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="random")
        perfect = np.minimum(x, y.sum()) / max(y.sum(), 1)
        ax.plot(share, perfect, ":", color="tab:green", label="perfect")
        ax.axvline(top_n / n, ls=":", color="black")
        ax.set_xlabel("share of customers contacted")
        ax.set_ylabel("share of buyers captured")
        ax.set_title("gain curve (held-out outcomes)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _decile_chart(deciles: list[dict[str, Any]], path: Path) -> None:
    d = [r["decile"] for r in deciles]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    bars = a1.bar(d, [r["lift"] for r in deciles], color="tab:blue")
    a1.bar_label(bars, fmt="%.2f", fontsize=7)
    a1.axhline(1.0, ls="--", color="gray")
    a1.set_xlabel("decile of score (1 = highest)")
    a1.set_ylabel("lift over the average")
    a1.set_title("lift by decile")
    w = 0.4
    a2.bar(
        np.array(d) - w / 2, [r["predicted_rate"] for r in deciles], w, label="predicted", color="tab:green"
    )
    a2.bar(np.array(d) + w / 2, [r["actual_rate"] for r in deciles], w, label="actual", color="tab:blue")
    a2.set_xlabel("decile of score (1 = highest)")
    a2.set_ylabel("conversion rate")
    a2.set_title("calibration: predicted vs actual")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _breakdown_chart(breakdown: dict[str, list[dict[str, Any]]], labelled: bool, path: Path) -> None:
    fig, axes = plt.subplots(1, len(breakdown), figsize=(6 * len(breakdown), 4), squeeze=False)
    for ax, (col, rows) in zip(axes[0], breakdown.items(), strict=True):
        groups = [r["group"] for r in rows]
        y = np.arange(len(groups))
        ax.barh(y, [r["customers"] for r in rows], color="lightgray", label="customers")
        ax.barh(y, [r["targeted"] for r in rows], color="tab:blue", label="targeted")
        ax.set_yticks(y, groups, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("customers")
        title = dict(BREAKDOWNS).get(col, col)
        if labelled:
            for i, r in enumerate(rows):
                ax.text(r["customers"], i, f" {r['actual_rate']:.0%} buy", va="center", fontsize=6)
        ax.set_title(f"by {title}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(s: dict[str, Any]) -> str:
    lines = [
        "# Campaign report",
        "",
        f"Scores `{s['scores']}`, ranked by `{s['score_column']}`: {s['customers']:,} customers with marketing "
        f"consent, budget {s['budget']:,} contacts ({s['targeted']:,} targeted).",
        "",
    ]
    if "note" in s:
        lines += [f"> {s['note']}", ""]
    lines += [
        "| figure | targeted by score | same budget at random |",
        "|---|---|---|",
        f"| expected conversions (Σ calibrated probability) | {s['expected_conversions']:.1f} | "
        f"{s['expected_conversions_random']:.1f} |",
    ]
    if s["labelled"]:
        lines += [
            f"| actual conversions (held-out outcomes) | {s['actual_conversions']} | "
            f"{s['actual_conversions_random']:.1f} |",
            f"| lift at the budget | {s['lift_at_budget']:.2f} | 1.00 |",
            f"| share of all buyers captured at the budget | {s['captured_at_budget']:.1%} | "
            f"{s['targeted'] / s['customers']:.1%} |",
            f"| share of all buyers captured in the top 10% (lift) | {s['captured@10%']:.1%} "
            f"({s['lift@10%']:.2f}) | 10.0% (1.00) |",
            "",
            f"Outcomes: {s['positives']:,} buyers among {s['customers']:,} customers (rate "
            f"{s['positive_rate']:.3f}). These are held-out outcomes after the scoring cutoff: the figures "
            "estimate what the campaign would have achieved, not what the model fit.",
        ]
    else:
        lines += [
            "",
            "These scores carry no outcomes (a live snapshot), so the report plans the campaign from the "
            "calibrated probabilities. To measure how well the ranking works, score a held-out cutoff: "
            "`o2o score --split test`, then run this report on its output.",
        ]
    lines += ["", f"![conversions by budget and gain curve]({GAIN_PNG})", ""]
    if s["labelled"]:
        lines += [
            "## By decile",
            "",
            "| decile | customers | predicted rate | actual rate | lift |",
            "|---|---|---|---|---|",
        ]
        for r in s["deciles"]:
            lines.append(
                f"| {r['decile']} | {r['customers']:,} | {r['predicted_rate']:.3f} | {r['actual_rate']:.3f} | "
                f"{r['lift']:.2f} |"
            )
        lines += ["", f"![lift by decile, predicted vs actual]({DECILES_PNG})", ""]
    for col, rows in s["breakdown"].items():
        lines += [f"## By {dict(BREAKDOWNS).get(col, col)}", ""]
        head = "| group | customers | targeted | share targeted | mean score | expected conversions |"
        sep = "|---|---|---|---|---|---|"
        if s["labelled"]:
            head += " actual rate | actual conversions |"
            sep += "---|---|"
        lines += [head, sep]
        for r in rows:
            line = (
                f"| {r['group']} | {r['customers']:,} | {r['targeted']:,} | {r['share_targeted']:.1%} | "
                f"{r['mean_score']:.3f} | {r['expected_conversions_targeted']:.1f} |"
            )
            if s["labelled"]:
                line += f" {r['actual_rate']:.3f} | {r['actual_conversions_targeted']} |"
            lines.append(line)
        lines.append("")
    if s["breakdown"]:
        lines += [f"![targeted customers by group]({BREAKDOWN_PNG})", ""]
    lines += [f"The targeted customers (pseudonymised ids) are in `{TARGETS_FILE}`.", ""]
    return "\n".join(lines)

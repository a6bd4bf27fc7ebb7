"""``data_report.md``: what one prep run did, in tables and PNG plots a data team can read.

Reads only the layer files a run wrote (through DuckDB), so it can be rebuilt for any prep output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from data_prep import schema as S

REPORT_FILE = "data_report.md"
PLOTS_DIR = "data_report_files"


def _query(sql: str) -> pd.DataFrame:
    return duckdb.sql(sql).df()


def plot_events_per_day(events: Path, path: Path) -> None:
    daily = _query(
        f"SELECT date_trunc('day', {S.TS}) AS day, {S.CHANNEL} AS channel, count(*) AS n "
        f"FROM read_parquet('{events}') GROUP BY 1, 2 ORDER BY 1"
    )
    wide = daily.pivot_table(index="day", columns="channel", values="n", fill_value=0)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    wide.plot(ax=ax, linewidth=1.2)
    ax.set_ylabel("events per day")
    ax.set_xlabel("")
    ax.set_title("Accepted events per day by channel")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ledger(ledger: dict[str, Any], path: Path) -> None:
    sources = list(ledger["sources"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    outcomes = ["n_accepted", "n_merged_duplicate", "n_rejected"]
    bottom = np.zeros(len(sources))
    for name, color in zip(outcomes, ["tab:green", "tab:orange", "tab:red"], strict=True):
        vals = np.array([ledger["sources"][s][name] for s in sources], dtype=float)
        axes[0].bar(sources, vals, bottom=bottom, color=color, label=name.removeprefix("n_"))
        bottom += vals
    axes[0].set_yscale("symlog")
    axes[0].set_title("Raw rows by outcome")
    axes[0].legend(fontsize=8)
    reasons: dict[str, int] = {}
    for s in sources:
        for r, n in ledger["sources"][s]["rejected_by_reason"].items():
            reasons[f"{s}: {r}"] = n
    if reasons:
        axes[1].barh(list(reasons), list(reasons.values()), color="tab:red")
    axes[1].set_title("Rejected rows by reason")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_identity(metrics: dict[str, Any], path: Path) -> None:
    steps = metrics["steps"]
    names = list(steps)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, (m, color) in enumerate([("pairwise_precision", "tab:blue"), ("pairwise_recall", "tab:orange")]):
        ax.bar(x + (i - 0.5) * 0.35, [steps[n][m] for n in names], 0.35, label=m, color=color)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Identity resolution against ground truth, by step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_match_weights(model: dict[str, Any], path: Path) -> None:
    """Left: the match weight (log2 m/u) of each comparison level; right: the weights of the best pair of
    each account, with the threshold."""
    levels = [r for r in model["levels"] if r["match_weight"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = [f"{r['comparison']}: {r['level']}" for r in levels]
    weights = [r["match_weight"] for r in levels]
    axes[0].barh(labels, weights, color=["tab:green" if w > 0 else "tab:red" for w in weights])
    axes[0].axvline(0, color="black", lw=0.8)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("match weight (bits of evidence)")
    axes[0].set_title("What each comparison level says")
    hist = model["weight_histogram"]
    edges = np.array(hist["edges"])
    axes[1].bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color="tab:blue")
    p = model["threshold"]
    if p < 1:
        threshold_weight = np.log2(p / (1 - p))  # a pair's weight includes the prior: p = 2^w / (1 + 2^w)
        axes[1].axvline(threshold_weight, color="tab:red", label=f"threshold (p = {p:.3f})")
        axes[1].legend(fontsize=8)
    axes[1].set_xlabel("match weight of each account's best member (one to one; pairs with p ≥ 0.01)")
    axes[1].set_title("Candidate pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _match_table(model: dict[str, Any]) -> str:
    rows = ["| comparison | level | m | u | match weight |", "|---|---|---|---|---|"]
    for r in model["levels"]:
        w = "—" if r["match_weight"] is None else f"{r['match_weight']:+.2f}"
        rows.append(
            f"| {r['comparison']} | {r['level']} | {r['m_probability']:.4f} | {r['u_probability']:.5f} | {w} |"
        )
    return "\n".join(rows)


def _match_section(model: dict[str, Any], plots: Path) -> list[str]:
    """The probabilistic step of identity resolution, explained (data_prep.matching)."""
    c = model["counts"]
    head = [
        "### Probabilistic matching of accounts and loyalty members",
        "",
        f"{c['candidate_accounts']:,} accounts without a card and {c['candidate_members']:,} members "
        "without an account were compared on name, birth date and postcode (keyed hashes). ",
    ]
    if "levels" not in model:
        return [*head, f"Nothing was linked: {model.get('skipped', 'no candidates')}.", ""]
    plot_match_weights(model, plots / "match_weights.png")
    expected = model["expected_precision"]
    return [
        *head,
        f"{c['links']:,} pairs were linked (match probability ≥ {model['threshold']:.3f}, chosen so that the "
        f"expected precision of the links is ≥ {model['target_precision']}; expected "
        f"{'—' if expected is None else f'{expected:.4f}'}). A match weight is log2(m / u): how much "
        "likelier the level is between one person's two records (m) than between two people's (u); a "
        "pair's weight is their sum plus the prior "
        f"(one random pair in {1 / model['probability_two_random_records_match']:,.0f} is a match).",
        "",
        _match_table(model),
        "",
        f"![match weights]({PLOTS_DIR}/match_weights.png)",
        "",
        *[f"- Splink while training: {w}" for w in model.get("training_warnings", [])],
        "",
    ]


def plot_segments(rfm: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rfm[S.SEGMENT].value_counts().sort_values().plot.barh(ax=axes[0], color="tab:purple")
    axes[0].set_title("Customers per RFM segment")
    grid = rfm.pivot_table(
        index=S.RFM_R, columns=S.RFM_F, values=S.CUSTOMER_ID, aggfunc="count", fill_value=0
    )
    grid = grid.reindex(index=range(5, 0, -1), columns=range(1, 6), fill_value=0)
    im = axes[1].imshow(grid.to_numpy(), cmap="Blues")
    axes[1].set_xticks(range(5), [str(c) for c in grid.columns])
    axes[1].set_yticks(range(5), [str(r) for r in grid.index])
    axes[1].set_xlabel("frequency score")
    axes[1].set_ylabel("recency score")
    axes[1].set_title("RFM grid (customers)")
    for (i, j), v in np.ndenumerate(grid.to_numpy()):
        axes[1].text(j, i, str(v), ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sequence_lengths(snapshot: Path, path: Path) -> None:
    lengths = _query(f"SELECT len({S.ITEMS}) AS n FROM read_parquet('{snapshot}')")["n"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    edges = np.unique(np.geomspace(1, max(2, lengths.max() + 1), 30).astype(int)).tolist()
    ax.hist(lengths, bins=edges, color="tab:cyan")
    ax.set_xscale("log")
    ax.set_xlabel("item events per customer (log scale)")
    ax.set_ylabel("customers")
    ax.set_title(f"Sequence length: median {int(lengths.median())}, {int((lengths == 0).sum())} with none")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ledger_table(ledger: dict[str, Any]) -> str:
    rows = [
        "| source | raw | accepted | duplicates | rejected | erased | balanced |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, e in ledger["sources"].items():
        rows.append(
            f"| {s} | {e['n_raw']:,} | {e['n_accepted']:,} | {e['n_merged_duplicate']:,} | "
            f"{e['n_rejected']:,} | {e.get('n_erased', 0):,} | {'yes' if e['balanced'] else '**NO**'} |"
        )
    return "\n".join(rows)


def _cleaning_table(metrics: dict[str, Any]) -> str:
    rows = [
        f"{metrics['share_as_intended']:.1%} of {metrics['n_faults_scored']:,} injected faults got the intended outcome.",
        "",
        "| fault | intended | injected | as intended | otherwise |",
        "|---|---|---|---|---|",
    ]
    for fault, r in metrics["by_fault"].items():
        other = ", ".join(f"{k}: {v}" for k, v in r["otherwise"].items()) or "—"
        rows.append(f"| {fault} | {r['intended']} | {r['n_injected']:,} | {r['n_as_intended']:,} | {other} |")
    return "\n".join(rows)


def _identity_table(metrics: dict[str, Any]) -> str:
    rows = ["| step | precision | recall | F1 | customers | true persons |", "|---|---|---|---|---|---|"]
    for name, m in metrics["steps"].items():
        rows.append(
            f"| {name} | {m['pairwise_precision']:.4f} | {m['pairwise_recall']:.4f} | {m['pairwise_f1']:.4f} | "
            f"{m['n_resolved_customers']:,} | {m['n_true_persons']:,} |"
        )
    return "\n".join(rows)


def data_warnings(out: Path) -> list[str]:
    """What about a prep output limits the models trained on it, one sentence each (the report's warnings,
    printed by ``o2o prep`` too)."""
    import pyarrow.parquet as pq

    warnings = []
    if pq.ParquetFile(out / S.FEATURES_DIR / S.ITEMS_FILE).metadata.num_rows == 0:
        warnings.append(
            "no item events before the validation cutoff (an export of order totals, say): every item "
            "sequence is empty, so the recommender cannot train and the intent model's sequence input "
            "contributes nothing (it learns from the aggregates alone)"
        )
    return warnings


def write_data_report(out: Path) -> Path:
    """Build ``out/data_report.md`` and its plots from the layers under ``out``; returns the report path."""
    plots = out / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    ledger = json.loads((out / S.EVENTS_DIR / S.LEDGER_FILE).read_text())
    features = out / S.FEATURES_DIR
    splits = json.loads((features / S.SPLITS_FILE).read_text())
    plot_events_per_day(out / S.CUSTOMERS_DIR / S.EVENTS_FILE, plots / "events_per_day.png")
    plot_ledger(ledger, plots / "ledger.png")
    plot_sequence_lengths(features / S.SNAPSHOT_FILE, plots / "sequence_lengths.png")
    rfm = pd.read_parquet(features / S.RFM_FILE)
    plot_segments(rfm, plots / "segments.png")
    sections = [
        "# Data report",
        "",
        f"Data from {splits['data_start'][:10]} to {splits['data_end'][:10]} (exclusive); cutoffs: "
        f"train {', '.join(c[:10] for c in splits['train_cutoffs'])}; validation {splits['val'][:10]}; "
        f"test {splits['test'][:10]}; label horizon {splits['horizon_days']} days.",
        "",
        *[f"**Warning:** {w}.\n" for w in data_warnings(out)],
        "## Events",
        "",
        f"![events per day]({PLOTS_DIR}/events_per_day.png)",
        "",
        "## Cleaning ledger",
        "",
        "Every raw row is accepted, merged as a duplicate, or rejected with a reason "
        f"(`{S.EVENTS_DIR}/{S.LEDGER_FILE}`, rejected rows in `{S.EVENTS_DIR}/{S.REJECTS_FILE}`).",
        "",
        _ledger_table(ledger),
        "",
        f"![ledger]({PLOTS_DIR}/ledger.png)",
        "",
    ]
    cleaning_path = out / S.EVENTS_DIR / S.CLEANING_METRICS_FILE
    if cleaning_path.exists():
        sections += [
            "### Injected faults (synthetic data)",
            "",
            _cleaning_table(json.loads(cleaning_path.read_text())),
            "",
        ]
    metrics_path = out / S.CUSTOMERS_DIR / S.IDENTITY_METRICS_FILE
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        plot_identity(metrics, plots / "identity.png")
        sections += [
            "## Identity resolution",
            "",
            "Pairwise metrics over identifiers, against `ground_truth/`.",
            "",
            _identity_table(metrics),
            "",
            f"![identity]({PLOTS_DIR}/identity.png)",
            "",
        ]
    model_path = out / S.CUSTOMERS_DIR / S.MATCH_MODEL_FILE
    if model_path.exists():
        sections += _match_section(json.loads(model_path.read_text()), plots)
    sections += [
        "## Customers: RFM segments",
        "",
        f"{len(rfm):,} customers with a purchase, scored as of the end of the data.",
        "",
        f"![segments]({PLOTS_DIR}/segments.png)",
        "",
        "## Sequences",
        "",
        f"![sequence lengths]({PLOTS_DIR}/sequence_lengths.png)",
        "",
    ]
    path = out / REPORT_FILE
    path.write_text("\n".join(sections))
    return path

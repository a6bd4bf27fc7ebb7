"""Probabilistic matching of profiles that no identifier links: an online account and a loyalty member.

Many account exports carry neither the phone the account was registered with nor the loyalty card bound
to it. A member who never gave the CRM an email then shares no identifier with their own account, and the
deterministic graph (:mod:`data_prep.identity`) keeps the two halves of one person apart. What the two
profiles still share are their attributes: name, birth date, postcode (keyed hashes only; prep never sees
them in clear after ingestion).

A Fellegi-Sunter model (Splink, on an in-process DuckDB) scores account/member pairs on those attributes:

- **candidates**: accounts whose resolved customer holds no card, against members whose customer holds no
  account (merge protection: a link never gives a customer two accounts or two cards);
- **comparisons**: name (whole name, with term-frequency adjustment so that a common name weighs less; else
  the family name alone), birth date (the date; else the year), postcode (equal or not); a missing value
  is neutral;
- **training**: u from random pairs, m by expectation maximisation on pairs that share the name and on
  pairs that share the birth date (each session trains the comparisons it does not block on), the prior
  from the pairs that share name and birth date; no labels needed, so it works on any retailer's data;
- **decision**: one account to at most one member (best first); a pair is linked when its match probability
  clears a threshold chosen for precision — the lowest at which the accepted pairs' expected precision
  (their mean match probability) is at least ``target_precision`` (default 0.98 of the links right), and
  never below ``min_probability``. On the synthetic retailers the posteriors are calibrated: at 0.98 the
  links were 98.8% right (docs/data.md).

An accepted link becomes an identifier pair (account, card) timed by the later of the two profiles, so the
point-in-time resolutions see it only once both existed. The model's weights per comparison level, the
threshold and the counts are written beside the identity layer (``match_model.json``) and explained in
the data report.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from data_prep import schema as S
from data_prep.engine import DEFAULT_DUCKDB_MEMORY, DUCKDB_MEMORY_ENV

NODE, LABEL = "node", "label"
ACCOUNTS, MEMBERS = "accounts", "crm"
COMPARED = (S.NAME_KEY, S.FAMILY_NAME_KEY, S.BIRTH_DATE_KEY, S.BIRTH_YEAR_KEY, S.POSTCODE_KEY)
MODEL_FILE = "match_model.json"


@dataclass(frozen=True)
class MatchSettings:
    """``target_precision``: expected precision of the accepted links; ``min_probability``: no link below
    it whatever the estimate; ``u_pairs``: random pairs that estimate u; ``em_pairs``: blocked pairs each
    EM session trains on at most (a deterministic sample); ``keep_probability``: scored pairs below it stay
    in the engine and never reach Python (at 75,000 candidates a side the blocking gives 11M pairs);
    ``seed``: of the u sampling; ``min_candidates``: accounts and members it needs on each side."""

    target_precision: float = 0.98
    min_probability: float = 0.5
    u_pairs: int = 3_000_000
    em_pairs: int = 2_000_000
    keep_probability: float = 0.01
    seed: int = 0
    min_candidates: int = 100  # on each side: fewer cannot estimate the model (nothing is linked)


@dataclass(frozen=True)
class MatchResult:
    """``links`` (src, dst, profile, ts, match_probability, match_weight): accepted account-card pairs,
    src < dst as in identifier pairs; ``model``: what the data report shows (JSON-ready)."""

    links: pd.DataFrame
    model: dict[str, Any] = field(default_factory=dict)


def candidates(profiles: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accounts, members): profile rows (node, ts, attribute keys) that a link may join — accounts whose
    customer in ``labels`` (node, label) holds no card, members whose customer holds no account — with at
    least one attribute."""
    label_of = labels.set_index(NODE)[LABEL]
    types = labels[NODE].str.split(":", n=1).str[0]
    has = {t: set(labels.loc[types == t, LABEL]) for t in (S.ID_ACCOUNT, S.ID_CARD)}
    out = []
    for source, id_type, other in ((ACCOUNTS, S.ID_ACCOUNT, S.ID_CARD), (MEMBERS, S.ID_CARD, S.ID_ACCOUNT)):
        p = profiles[profiles[S.SOURCE] == source]
        p = p[p[S.KEY_COLUMNS[id_type]].notna() & p[list(COMPARED)].notna().any(axis=1)]
        node = id_type + ":" + p[S.KEY_COLUMNS[id_type]]
        lab = node.map(label_of)
        keep = lab.notna() & ~lab.isin(has[other])
        t = pd.DataFrame({NODE: node[keep], S.TS: p.loc[keep, S.TS]})
        for c in COMPARED:
            t[c] = p.loc[keep, c]
        # sorted: the seeded sampling of the model sees the same rows in the same order whatever order the
        # engine (DuckDB, Spark) returned them in, so both get the same links
        out.append(t.drop_duplicates(NODE).sort_values(NODE, ignore_index=True))
    return out[0], out[1]


def _settings() -> Any:
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    def comparison(name: str, levels: list[tuple[str, str]], otherwise: str, tf: bool = False) -> Any:
        """Missing on the first column (neutral), then an exact level per (column, label) in order, then
        everything else; ``tf``: the first level counts a common value for less (term frequencies)."""
        exact = [cll.ExactMatchLevel(column).configure(label_for_charts=label) for column, label in levels]
        if tf:
            exact[0] = exact[0].configure(tf_adjustment_column=levels[0][0])
        null, other = cll.NullLevel(levels[0][0]), cll.ElseLevel().configure(label_for_charts=otherwise)
        return cl.CustomComparison(output_column_name=name, comparison_levels=[null, *exact, other])

    name = comparison(
        "name",
        [(S.NAME_KEY, "same name"), (S.FAMILY_NAME_KEY, "same family name only")],
        "different names",
        tf=True,
    )
    birth = comparison(
        "birth_date",
        [(S.BIRTH_DATE_KEY, "same birth date"), (S.BIRTH_YEAR_KEY, "same birth year only")],
        "different birth years",
    )
    postcode = comparison("postcode", [(S.POSTCODE_KEY, "same postcode")], "different postcodes")
    return SettingsCreator(
        link_type="link_only",
        unique_id_column_name=NODE,
        comparisons=[name, birth, postcode],
        blocking_rules_to_generate_predictions=[
            block_on(S.NAME_KEY),
            block_on(S.BIRTH_DATE_KEY),
            block_on(S.FAMILY_NAME_KEY, S.POSTCODE_KEY),
        ],
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )


def _parameters(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Per comparison level: its label, m, u and match weight log2(m / u) (the evidence it adds)."""
    rows = []
    for comparison in model["comparisons"]:
        for level in comparison["comparison_levels"]:
            if level.get("is_null_level"):
                continue
            m, u = level.get("m_probability"), level.get("u_probability")
            weight = None if not m or not u else float(np.log2(m / u))
            rows.append(
                {
                    "comparison": comparison["output_column_name"],
                    "level": level.get("label_for_charts", level["sql_condition"]),
                    "m_probability": m,
                    "u_probability": u,
                    "match_weight": weight,
                }
            )
    return rows


def choose_threshold(probability: np.ndarray, target_precision: float, min_probability: float) -> float:
    """The lowest probability threshold (at least ``min_probability``) at which the pairs kept have a mean
    match probability of at least ``target_precision``; 1.0 (nothing kept) when none does."""
    p = np.sort(probability[probability >= min_probability])[::-1]
    if not p.size:
        return 1.0
    # a threshold keeps every pair of its probability (pairs that agree alike tie): cut between values
    last_of_value = np.append(p[1:] < p[:-1], True)
    ok = np.flatnonzero((np.cumsum(p) / np.arange(1, p.size + 1) >= target_precision) & last_of_value)
    return float(p[ok[-1]]) if ok.size else 1.0


def one_to_one(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pairs (node_l, node_r, match_probability) kept best first, each node used at most once."""
    ordered = pairs.sort_values(
        ["match_probability", "node_l", "node_r"], ascending=[False, True, True], kind="stable"
    )
    used_l: set[str] = set()
    used_r: set[str] = set()
    keep = np.zeros(len(ordered), bool)
    for i, (a, b) in enumerate(zip(ordered["node_l"], ordered["node_r"], strict=True)):
        if a not in used_l and b not in used_r:
            keep[i] = True
            used_l.add(a)
            used_r.add(b)
    return ordered[keep]


def _empty_links() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "src": pd.Series(dtype="string"),
            "dst": pd.Series(dtype="string"),
            "profile": pd.Series(dtype="bool"),
            S.TS: pd.Series(dtype="datetime64[us, UTC]"),
            "match_probability": pd.Series(dtype="float64"),
            "match_weight": pd.Series(dtype="float64"),
        }
    )


def match_profiles(
    profiles: pd.DataFrame, labels: pd.DataFrame, settings: MatchSettings | None = None
) -> MatchResult:
    """Links between accounts and members that no identifier joins (see the module docstring).

    ``profiles``: rows of ``02_events/profiles.parquet`` (source, ts, account_key / card_key, attribute
    keys); ``labels``: the deterministic resolution (node, label)."""
    settings = settings or MatchSettings()
    accounts, members = candidates(profiles, labels)
    counts = {"candidate_accounts": len(accounts), "candidate_members": len(members)}
    if min(len(accounts), len(members)) < settings.min_candidates:  # or an export without attributes
        skipped = f"fewer than {settings.min_candidates} candidate accounts or members to learn from"
        return MatchResult(_empty_links(), {"counts": {**counts, "links": 0}, "skipped": skipped})
    from splink.internals.exceptions import EMTrainingException

    try:
        scored, model = _score(accounts, members, settings)
    except EMTrainingException:  # no two candidates share a name or a birth date: nothing to learn from
        skipped = "no candidate pairs share a name or a birth date to learn from"
        return MatchResult(_empty_links(), {"counts": {**counts, "links": 0}, "skipped": skipped})
    except ValueError as e:  # EM drove a level's m to 0: too few matches to estimate it (small exports)
        if "_probability" not in str(e):  # anything else is a fault, not a property of the data
            raise
        skipped = f"the model could not be estimated on these candidates ({' '.join(str(e).split())[:200]})"
        return MatchResult(_empty_links(), {"counts": {**counts, "links": 0}, "skipped": skipped})
    best = one_to_one(scored)
    threshold = choose_threshold(
        best["match_probability"].to_numpy(), settings.target_precision, settings.min_probability
    )
    kept = best[best["match_probability"] >= threshold]
    ts = pd.concat([accounts.set_index(NODE)[S.TS], members.set_index(NODE)[S.TS]])
    a, b = kept["node_l"].astype(str), kept["node_r"].astype(str)
    links = pd.DataFrame(
        {
            "src": np.minimum(a, b),
            "dst": np.maximum(a, b),
            "profile": True,
            S.TS: np.maximum(a.map(ts).to_numpy(), b.map(ts).to_numpy()),
            "match_probability": kept["match_probability"].to_numpy(),
            "match_weight": kept["match_weight"].to_numpy(),
        }
    ).sort_values(["src", "dst"], ignore_index=True)
    links[S.TS] = pd.to_datetime(links[S.TS], utc=True)
    report = {
        "method": "Fellegi-Sunter (Splink), accounts without a card against members without an account",
        "target_precision": settings.target_precision,
        "min_probability": settings.min_probability,
        "threshold": threshold,
        "expected_precision": float(kept["match_probability"].mean()) if len(kept) else None,
        "counts": {**counts, "pairs_kept": len(scored), "one_to_one": len(best), "links": len(links)},
        "keep_probability": settings.keep_probability,
        "probability_two_random_records_match": model["probability_two_random_records_match"],
        "levels": _parameters(model),
        "training_warnings": model["training_warnings"],
        "weight_histogram": _histogram(best["match_weight"].to_numpy()),
    }
    return MatchResult(links, report)


def _histogram(weights: np.ndarray) -> dict[str, list[float]]:
    counts, edges = np.histogram(weights, bins=np.arange(-10.0, 31.0, 2.0))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


class _Collect(logging.Handler):
    """Keeps the messages of a logger (Splink's training warnings) for the report."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


def _score(
    accounts: pd.DataFrame, members: pd.DataFrame, settings: MatchSettings
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every blocked account/member pair scored (node_l, node_r, match_probability, match_weight), and the
    trained model (Splink's JSON)."""
    from splink import DuckDBAPI, Linker, block_on

    splink_log, collected = logging.getLogger("splink"), _Collect()
    level, propagate = splink_log.level, splink_log.propagate
    splink_log.setLevel(logging.WARNING)
    splink_log.addHandler(collected)
    splink_log.propagate = False  # its warnings go to the model's report, not into prep's output
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("SET enable_progress_bar = false")  # prep shows its own progress
    con.execute(f"SET memory_limit = '{os.environ.get(DUCKDB_MEMORY_ENV, DEFAULT_DUCKDB_MEMORY)}'")  # as prep
    con.execute("SET preserve_insertion_order = false")
    try:
        db = DuckDBAPI(connection=con)
        cols = [NODE, *COMPARED]
        left = db.register(
            pa.Table.from_pandas(accounts[cols], preserve_index=False), dataset_display_name=ACCOUNTS
        )
        right = db.register(
            pa.Table.from_pandas(members[cols], preserve_index=False), dataset_display_name=MEMBERS
        )
        linker = Linker([left, right], _settings(), log_level=None)
        linker.training.estimate_u_using_random_sampling(max_pairs=settings.u_pairs, seed=settings.seed)
        linker.training.estimate_parameters_using_expectation_maximisation(
            block_on(S.BIRTH_DATE_KEY), max_pairs=settings.em_pairs
        )
        # the prior: the share of matches among pairs that share a name, scaled back to all pairs by the
        # name comparison's own m and u (Splink derives it from the trained session)
        linker.training.estimate_parameters_using_expectation_maximisation(
            block_on(S.NAME_KEY),
            populate_probability_two_random_records_match_from_trained_values=True,
            max_pairs=settings.em_pairs,
        )
        predicted = linker.inference.predict(threshold_match_probability=settings.keep_probability)
        scored = predicted.as_pandas_dataframe()
        model = linker.misc.save_model_to_json()
    finally:
        con.close()
        splink_log.removeHandler(collected)
        splink_log.setLevel(level)
        splink_log.propagate = propagate
    model["training_warnings"] = collected.messages
    flip = scored["source_dataset_l"] != ACCOUNTS  # the account on the left whichever way Splink ordered
    node_l = np.where(flip, scored[f"{NODE}_r"], scored[f"{NODE}_l"])
    node_r = np.where(flip, scored[f"{NODE}_l"], scored[f"{NODE}_r"])
    out = pd.DataFrame(
        {
            "node_l": node_l,
            "node_r": node_r,
            "match_probability": scored["match_probability"].astype("float64"),
            "match_weight": scored["match_weight"].astype("float64"),
        }
    )
    return out, model

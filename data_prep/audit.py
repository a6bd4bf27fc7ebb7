"""Score cleaning against injected faults (synthetic data): did every faulty row get the intended policy?

``ground_truth/faults.csv`` lists each injected fault with the row key it hit. This module maps those keys to
unified event ids and compares the outcome prep gave the row with the outcome the policy intends.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from data_prep import events as ev
from data_prep import schema as S

MERGED = "merged_duplicate"
ACCEPTED_RETURN = "accepted_return"
# fault name → intended outcome: a reject reason, MERGED, or ACCEPTED_RETURN
INTENDED = {
    S.FAULT_EXACT_DUPLICATE: MERGED,
    S.FAULT_RESENT: MERGED,
    S.FAULT_MALFORMED_TIMESTAMP: ev.R_BAD_TIMESTAMP,
    S.FAULT_MISSING_TIMESTAMP: ev.R_BAD_TIMESTAMP,
    S.FAULT_MISSING_ITEM: ev.R_MISSING_ITEM,
    S.FAULT_UNKNOWN_ITEM: ev.R_UNKNOWN_ITEM,
    S.FAULT_UNKNOWN_STORE: ev.R_UNKNOWN_STORE,
    S.FAULT_ZERO_PRICE: ev.R_BAD_PRICE,
    S.FAULT_INFLATED_PRICE: ev.R_BAD_PRICE,
    S.FAULT_NEGATIVE_QUANTITY: ev.R_UNMATCHED_RETURN,
    S.FAULT_RETURN: ACCEPTED_RETURN,
}


def fault_event_ids(faults: pd.DataFrame) -> pd.Series:
    """Unified event id of each fault's row. CRM row keys must already be the pseudonymised card keys
    (the raw card number is what ``faults.csv`` holds; see :func:`data_prep.pipeline.audit_cleaning`)."""
    prefix = faults[S.GT_FAULT_SOURCE].map({"online": "online:", "pos": "pos:", "crm": "crm:"})
    return (prefix + faults[S.GT_FAULT_ROW_KEY]).where(prefix.notna())


def outcomes_by_id(rows: pd.DataFrame) -> pd.Series:
    """Each event id's outcome from its rows (event_id, reason, is_duplicate, event_type): MERGED when copies
    were merged and at most one row is kept under the id, else its first reject reason, else
    ACCEPTED_RETURN for a return, else "accepted". One grouped pass, not a Python call per id."""
    dup = rows[ev.IS_DUPLICATE].astype(bool)
    flags = rows.assign(
        _kept=(~dup & rows[S.REJECT_REASON].isna()).astype("int64"),
        _dup=dup,
        _return=rows[S.EVENT_TYPE] == S.EV_RETURN,
    )
    g = flags.groupby(S.EVENT_ID, sort=False).agg(
        kept=("_kept", "sum"), dup=("_dup", "any"), reason=(S.REJECT_REASON, "first"), ret=("_return", "any")
    )
    merged = g.dup & (g.kept <= 1)
    out = pd.Series("accepted", index=g.index, dtype=object)
    out = out.where(~g.ret, ACCEPTED_RETURN)
    out = out.where(g.reason.isna(), g.reason)
    return out.where(~merged, MERGED)


def score_cleaning(faults: pd.DataFrame, outcomes: pd.DataFrame) -> dict[str, Any]:
    """Per fault kind: rows injected, rows handled as intended, and what the others became.

    ``outcomes`` has event_id, reason, is_duplicate, event_type for (at least) the faults' rows. A re-send is
    handled when exactly one of the pair (copy, original) is kept.
    """
    faults = faults.assign(event_id=fault_event_ids(faults)).dropna(subset=["event_id"])
    by_id = outcomes_by_id(outcomes)
    originals = ("online:" + faults[S.GT_FAULT_ORIGINAL_KEY].fillna("")).map(by_id)
    got = faults["event_id"].map(by_id).fillna("missing")
    resent = faults[S.GT_FAULT] == S.FAULT_RESENT
    one_of_pair = (got == MERGED) != (originals == MERGED)  # exactly one of copy and original kept
    got = got.where(
        ~resent, pd.Series(MERGED, index=got.index).where(one_of_pair, "both_kept_or_both_merged")
    )
    result: dict[str, Any] = {}
    for fault, g in got.groupby(faults[S.GT_FAULT]):
        intended = INTENDED.get(str(fault), "accepted")
        ok = int((g == intended).sum())
        result[str(fault)] = {
            "intended": intended,
            "n_injected": len(g),
            "n_as_intended": ok,
            "share_as_intended": round(ok / len(g), 4),
            "otherwise": {str(k): int(v) for k, v in g[g != intended].value_counts().items()},
        }
    n = sum(r["n_injected"] for r in result.values())
    ok = sum(r["n_as_intended"] for r in result.values())
    return {"n_faults_scored": n, "share_as_intended": round(ok / n, 4) if n else 1.0, "by_fault": result}

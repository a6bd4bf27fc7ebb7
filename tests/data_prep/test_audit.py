"""Cleaning audit: injected faults scored against the outcome each row got."""

from __future__ import annotations

import pandas as pd

from data_prep import audit
from data_prep import events as ev
from data_prep import schema as S


def outcome_rows(rows: list[tuple[str, str | None, bool, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[S.EVENT_ID, S.REJECT_REASON, ev.IS_DUPLICATE, S.EVENT_TYPE])


def test_each_fault_is_scored_against_its_intended_outcome() -> None:
    faults = pd.DataFrame(
        {
            S.GT_FAULT_SOURCE: ["online", "online", "online", "pos", "pos", "online"],
            S.GT_FAULT_ROW_KEY: ["a", "b2", "c", "T1:1", "T2:1", "d2"],
            S.GT_FAULT: [
                S.FAULT_EXACT_DUPLICATE,
                S.FAULT_RESENT,
                S.FAULT_MALFORMED_TIMESTAMP,
                S.FAULT_RETURN,
                S.FAULT_NEGATIVE_QUANTITY,
                S.FAULT_RESENT,
            ],
            S.GT_FAULT_ORIGINAL_KEY: [None, "b1", None, None, None, "d1"],
        }
    )
    outcomes = outcome_rows(
        [
            ("online:a", None, False, "view"),
            ("online:a", None, True, "view"),  # one copy merged: ok
            ("online:b1", None, True, "view"),
            ("online:b2", None, False, "view"),  # original merged: ok
            ("online:c", ev.R_BAD_TIMESTAMP, False, "view"),
            ("pos:T1:1", ev.R_UNMATCHED_RETURN, False, S.EV_RETURN),  # a genuine return missed
            ("pos:T2:1", None, False, S.EV_RETURN),  # a sign error taken for a return
            ("online:d1", None, False, "view"),
            ("online:d2", None, False, "view"),  # re-send not caught
        ]
    )
    m = audit.score_cleaning(faults, outcomes)
    by = m["by_fault"]
    assert by[S.FAULT_EXACT_DUPLICATE]["n_as_intended"] == 1
    assert by[S.FAULT_RESENT]["n_injected"] == 2 and by[S.FAULT_RESENT]["n_as_intended"] == 1
    assert by[S.FAULT_MALFORMED_TIMESTAMP]["n_as_intended"] == 1
    assert by[S.FAULT_RETURN]["otherwise"] == {ev.R_UNMATCHED_RETURN: 1}
    assert by[S.FAULT_NEGATIVE_QUANTITY]["otherwise"] == {audit.ACCEPTED_RETURN: 1}
    assert m["n_faults_scored"] == 6 and m["share_as_intended"] == round(3 / 6, 4)

"""Synthetic O2O retailer: the public entry point. The simulation lives in :mod:`data_prep.synthetic`.

``generate_retailer(out, RetailerSpec(...))`` writes ``out/01_raw`` (online events + accounts, POS lines,
CRM members, catalogue) and ``out/ground_truth`` (identifiers, persons, faults, each person's behaviour and
their expected purchases day by day). Same spec, same bytes.
"""

from __future__ import annotations

from data_prep import schema as S
from data_prep.synthetic.identities import render_identifier
from data_prep.synthetic.persons import KINDS
from data_prep.synthetic.retailer import generate_retailer
from data_prep.synthetic.spec import NO_FAULTS, FaultRates, GeneratedRetailer, RetailerSpec
from data_prep.synthetic.truth import (
    GT_ACTIVE_FROM,
    GT_BEHAVIOUR_COLUMNS,
    GT_BEHAVIOUR_FILE,
    GT_DATE,
    GT_INTENSITY,
    GT_INTENSITY_COLUMNS,
    GT_INTENSITY_FILE,
    GT_LAPSE_DATE,
    GT_PROMO_RESPONSE,
    GT_RECORDED_INTENSITY,
    GT_REPLENISH_DAYS,
    GT_REPLENISH_ITEM,
)

RAW_DIR = S.RAW_DIR
GT_IDENTIFIER = S.GT_IDENTIFIER
GT_IDENTIFIER_COLUMNS = S.GT_IDENTIFIER_COLUMNS
GT_PERSON_COLUMNS = S.GT_PERSON_COLUMNS
KIND_ONLINE_ONLY, KIND_OFFLINE_ONLY, KIND_OMNI = KINDS

__all__ = [
    "GT_ACTIVE_FROM",
    "GT_BEHAVIOUR_COLUMNS",
    "GT_BEHAVIOUR_FILE",
    "GT_DATE",
    "GT_IDENTIFIER",
    "GT_IDENTIFIER_COLUMNS",
    "GT_INTENSITY",
    "GT_INTENSITY_COLUMNS",
    "GT_INTENSITY_FILE",
    "GT_LAPSE_DATE",
    "GT_PERSON_COLUMNS",
    "GT_PROMO_RESPONSE",
    "GT_RECORDED_INTENSITY",
    "GT_REPLENISH_DAYS",
    "GT_REPLENISH_ITEM",
    "KINDS",
    "KIND_OFFLINE_ONLY",
    "KIND_OMNI",
    "KIND_ONLINE_ONLY",
    "NO_FAULTS",
    "RAW_DIR",
    "FaultRates",
    "GeneratedRetailer",
    "RetailerSpec",
    "generate_retailer",
    "render_identifier",
]

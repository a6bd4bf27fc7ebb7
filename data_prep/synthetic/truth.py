"""Ground truth of one chunk: who is behind every raw identifier value, who each person is, how they behave
and their expected purchases day by day.

Identifiers are built from the final (rendered, faulty) raw tables, so every value written anywhere is listed
exactly as written. A value names one person unless its ``sharing`` says otherwise (household phone, store
kiosk, recycled number with its validity dates).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data_prep import schema as S
from data_prep.synthetic import identities as I
from data_prep.synthetic import text as T
from data_prep.synthetic.behaviour import Behaviour
from data_prep.synthetic.crm import CONSENT_TEXT, latest_consent
from data_prep.synthetic.missions import PurchaseRates
from data_prep.synthetic.persons import KINDS, Persons
from data_prep.synthetic.spec import RetailerSpec
from data_prep.synthetic.stores import till_identified
from data_prep.synthetic.world import MS_PER_DAY, World

# ground_truth/purchase_intensity.parquet: one row per person and day with a purchase rate above zero
GT_INTENSITY_FILE = "purchase_intensity.parquet"
GT_DATE = "date"  # the UTC day [date, date + 1 day)
GT_INTENSITY = "intensity"  # expected purchases of the person that day, any channel (each a basket or order)
GT_RECORDED_INTENSITY = (
    "recorded_intensity"  # ... of them, those recorded with one of the person's identifiers
)
GT_INTENSITY_COLUMNS = (S.GT_PERSON_ID, GT_DATE, GT_INTENSITY, GT_RECORDED_INTENSITY)
INTENSITY_SCHEMA = pa.schema(
    [
        (S.GT_PERSON_ID, pa.string()),
        (GT_DATE, pa.date32()),
        (GT_INTENSITY, pa.float32()),
        (GT_RECORDED_INTENSITY, pa.float32()),
    ]
)
# ground_truth/behaviour.csv: each person's latent behaviour (data_prep/synthetic/behaviour.py)
GT_BEHAVIOUR_FILE = "behaviour.csv"
GT_ACTIVE_FROM = "active_from"  # ISO date the person can first shop (the export's first day: from before it)
GT_LAPSE_DATE = "lapse_date"  # ISO date the person stops for good; empty: shops to the end of the export
GT_REPLENISH_ITEM = "replenish_item"  # item re-bought on a cycle; empty: no cycle
GT_REPLENISH_DAYS = "replenish_days"  # that cycle's length in days
GT_PROMO_RESPONSE = "promo_response"  # deal-proneness (mean 1): the share of the promotion lift shown
GT_BEHAVIOUR_COLUMNS = (
    S.GT_PERSON_ID,
    GT_ACTIVE_FROM,
    GT_LAPSE_DATE,
    GT_REPLENISH_ITEM,
    GT_REPLENISH_DAYS,
    GT_PROMO_RESPONSE,
)

# (table, column, identifier type, sharing-tag column or None for personal values)
IDENTIFIER_SOURCES = (
    ("online", S.ON_DEVICE_ID, S.ID_DEVICE, "_tag_device"),
    ("online", S.ON_ACCOUNT_ID, S.ID_ACCOUNT, None),
    ("online", S.ON_EMAIL, S.ID_EMAIL, None),
    ("accounts", S.ACC_ACCOUNT_ID, S.ID_ACCOUNT, None),
    ("accounts", S.ACC_EMAIL, S.ID_EMAIL, None),
    ("accounts", S.ACC_PHONE, S.ID_PHONE, "_tag_phone"),
    ("accounts", S.ACC_LOYALTY_CARD, S.ID_CARD, None),
    ("pos", S.POS_LOYALTY_CARD, S.ID_CARD, None),
    ("pos", S.POS_PHONE, S.ID_PHONE, "_tag_phone"),
    ("crm", S.CRM_LOYALTY_CARD, S.ID_CARD, None),
    ("crm", S.CRM_PHONE, S.ID_PHONE, "_tag_phone"),
    ("crm", S.CRM_EMAIL, S.ID_EMAIL, None),
)


def person_ids(gid: np.ndarray) -> pa.Array:
    return T.join("P", T.padded(gid + 1, 6))


def identifier_truth(spec: RetailerSpec, persons: Persons, tables: dict[str, pa.Table]) -> pa.Table:
    """identifiers.csv rows (S.GT_IDENTIFIER_COLUMNS) of the chunk, one per (type, raw value, person),
    sorted by person, type and value. Fails when a personal value belongs to two persons (a generator
    bug: resolution would be ill-posed)."""
    parts = []
    for name, column, id_type, tag in IDENTIFIER_SOURCES:
        t = tables[name]
        tags = t[tag].to_numpy() if tag else np.zeros(t.num_rows, np.int8)
        values, person, tags = _distinct(t[column], t["_person"].to_numpy(), tags)
        columns = {
            "type": pa.array([id_type] * len(values), pa.string()),
            "value": values,
            "person": pa.array(person),
            "tag": pa.array(tags.astype(np.int8)),
        }
        parts.append(pa.table(columns))
    rows = pa.concat_tables(parts).group_by(["type", "value", "person", "tag"], use_threads=False)
    rows = rows.aggregate([])
    rows = rows.sort_by([("person", "ascending"), ("type", "ascending"), ("value", "ascending")])
    _check_personal(rows)
    person = rows["person"].to_numpy()
    tag = rows["tag"].to_numpy()
    valid = np.where((tag == I.TAG_RECYCLED)[:, None], persons.phone_valid[person], -1)
    return pa.table(
        {
            S.GT_IDENTIFIER_TYPE: rows["type"],
            S.GT_IDENTIFIER: rows["value"],
            S.GT_PERSON_ID: person_ids(persons.gid[person]),
            S.GT_VALID_FROM: _dates(spec, valid[:, 0]),
            S.GT_VALID_TO: _dates(spec, valid[:, 1]),
            S.GT_SHARING: T.vocabulary(S.SHARING_KINDS, tag.astype(np.int64)),
        }
    )


def _distinct(
    column: pa.ChunkedArray, person: np.ndarray, tag: np.ndarray
) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Non-null (value, person, tag) rows of a column; dictionary-encoded chunks are deduplicated by
    (index, person, tag) first, so their strings are never materialised per row."""
    values, persons, tags, start = [], [], [], 0
    for chunk in column.chunks:
        rows = slice(start, start + len(chunk))
        start += len(chunk)
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        p, g = person[rows][valid], tag[rows][valid]
        if pa.types.is_dictionary(chunk.type):
            index = chunk.indices.to_numpy(zero_copy_only=False)[valid].astype(np.int64)
            key = (index * (int(person.max(initial=0)) + 1) + p) * 4 + g
            _, first = np.unique(key, return_index=True)
            values.append(chunk.dictionary.take(pa.array(index[first])))
            p, g = p[first], g[first]
        else:
            values.append(chunk.filter(pa.array(valid)))
        persons.append(p)
        tags.append(g)
    if not values:
        return pa.array([], pa.string()), np.zeros(0, np.int64), np.zeros(0, np.int8)
    return pa.concat_arrays(values), np.concatenate(persons), np.concatenate(tags)


def _check_personal(rows: pa.Table) -> None:
    personal = rows.filter(pc.equal(rows["tag"], I.TAG_PERSONAL))
    owners = personal.group_by(["type", "value"], use_threads=False).aggregate([("person", "count_distinct")])
    if len(owners) and pc.max(owners["person_count_distinct"]).as_py() > 1:
        raise RuntimeError("a personal raw identifier value belongs to two persons")


def _dates(spec: RetailerSpec, day: np.ndarray) -> pa.Array:
    """ISO dates of day numbers; negative gives null."""
    return T.with_nulls(T.timestamps(np.maximum(day, 0) * MS_PER_DAY, spec.start, "date"), day >= 0)


def person_truth(spec: RetailerSpec, persons: Persons) -> pa.Table:
    """persons.csv rows (S.GT_PERSON_COLUMNS) of the chunk."""
    household = persons.household
    consent = latest_consent(persons)
    return pa.table(
        {
            S.GT_PERSON_ID: person_ids(persons.gid),
            S.GT_KIND: T.vocabulary(KINDS, persons.kind),
            S.GT_PROPENSITY: T.money(pa.array(persons.propensity), scale=4),
            S.GT_LATER_KIND: T.vocabulary(KINDS, persons.later_kind),
            S.GT_SHIFT_DATE: _dates(spec, persons.shift_day),
            S.GT_HOUSEHOLD_ID: T.with_nulls(
                T.join("H", T.padded(persons.gid[np.maximum(household, 0)] + 1, 6)), household >= 0
            ),
            S.GT_CONSENT_ANALYTICS: T.vocabulary(CONSENT_TEXT, consent[:, 0]),
            S.GT_CONSENT_MARKETING: T.vocabulary(CONSENT_TEXT, consent[:, 1]),
        }
    )


def purchase_intensity(persons: Persons, rates: PurchaseRates) -> tuple[np.ndarray, np.ndarray]:
    """(P, D) expected purchases each day, any channel, and those recorded with the person's identifiers.

    A purchase is counted on the day it lands: a store basket on its day, an online order on its day, a
    webrooming mission's basket on the next day. Online orders always carry the person's device; a store
    basket carries their card or till phone with :func:`stores.till_identified`."""
    online, webroom = rates.online * (1 - rates.webroom), rates.online * rates.webroom
    next_day = np.zeros_like(webroom)
    next_day[:, 1:] = webroom[:, :-1]  # a webroom on the last day falls after the export: never seen
    store = rates.store + next_day
    return online + store, online + store * till_identified(persons)[:, None]


def intensity_truth(spec: RetailerSpec, persons: Persons, rates: PurchaseRates) -> pa.Table:
    """purchase_intensity.parquet rows (:data:`INTENSITY_SCHEMA`) of the chunk: every (person, day) with an
    expected purchase above zero, by person and day."""
    purchases, recorded = purchase_intensity(persons, rates)
    person, day = np.nonzero(purchases > 0)
    epoch_day = (pd.Timestamp(spec.start) - pd.Timestamp("1970-01-01")).days
    names = person_ids(persons.gid)
    return pa.table(
        [
            names.take(pa.array(person)),
            pa.array((epoch_day + day).astype(np.int32), pa.date32()),
            pa.array(purchases[person, day].astype(np.float32)),
            pa.array(recorded[person, day].astype(np.float32)),
        ],
        schema=INTENSITY_SCHEMA,
    )


def behaviour_truth(spec: RetailerSpec, world: World, persons: Persons, behaviour: Behaviour) -> pa.Table:
    """behaviour.csv rows (:data:`GT_BEHAVIOUR_COLUMNS`) of the chunk."""
    lapses = persons.active_to < spec.n_days
    has_cycle = behaviour.cycle_item >= 0
    item = world.catalog.item_ids[np.maximum(behaviour.cycle_item, 0)]
    return pa.table(
        {
            S.GT_PERSON_ID: person_ids(persons.gid),
            GT_ACTIVE_FROM: _dates(spec, persons.active_from),
            GT_LAPSE_DATE: _dates(spec, np.where(lapses, persons.active_to, -1)),
            GT_REPLENISH_ITEM: T.with_nulls(pa.array(item.tolist(), pa.string()), has_cycle),
            GT_REPLENISH_DAYS: T.with_nulls(T.money(pa.array(behaviour.cycle), scale=2), has_cycle),
            GT_PROMO_RESPONSE: T.money(pa.array(behaviour.promo_response), scale=4),
        }
    )

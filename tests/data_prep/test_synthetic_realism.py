"""The synthetic retailer's realism: injected faults (listed exactly in faults.csv), identity fragmentation
(never-login devices, store kiosks, household phones, recycled numbers, formats, home networks) and consent."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from functools import cache
from pathlib import Path

import pandas as pd
import pytest

from data_prep import schema as S
from data_prep.generate import FaultRates, GeneratedRetailer, RetailerSpec, generate_retailer

SPEC = RetailerSpec(n_customers=2000, seed=11, n_days=60, n_items=200, n_categories=10, n_stores=6)
ONLINE_TS = "%Y-%m-%dT%H:%M:%S.%fZ"
SQL_TS = "%Y-%m-%d %H:%M:%S"


@cache
def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".jsonl":
        lines = path.read_text().splitlines()
        rows = pd.DataFrame([json.loads(line) for line in lines], columns=list(S.RAW_ONLINE_COLUMNS))
        return rows.astype(object).assign(_line=lines)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def read(r: GeneratedRetailer, name: str) -> pd.DataFrame:
    """A raw or ground-truth table by short name (every CSV field as text; online rows keep their line)."""
    raw, gt = r.raw_dir, r.ground_truth_dir
    paths = {
        "online": raw / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE,
        "accounts": raw / S.RAW_ONLINE_DIR / S.RAW_ACCOUNTS_FILE,
        "pos": raw / S.RAW_POS_DIR / S.RAW_POS_FILE,
        "crm": raw / S.RAW_CRM_DIR / S.RAW_CRM_FILE,
        "items": raw / S.RAW_CATALOG_DIR / S.RAW_ITEMS_FILE,
        "stores": raw / S.RAW_CATALOG_DIR / S.RAW_STORES_FILE,
        "identifiers": gt / S.GT_IDENTIFIERS_FILE,
        "persons": gt / S.GT_PERSONS_FILE,
        "faults": gt / S.GT_FAULTS_FILE,
    }
    return _read(paths[name]).copy()


def phone_digits(value: str) -> str:
    """The 11-digit mobile number behind any of the phone formats."""
    digits = re.sub(r"\D", "", value)
    return digits[4:] if digits.startswith("0086") else digits[2:] if len(digits) == 13 else digits


def parses(values: pd.Series, fmt: str) -> pd.Series:
    return pd.to_datetime(values, format=fmt, errors="coerce", utc=True).notna()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> GeneratedRetailer:
    return generate_retailer(tmp_path_factory.mktemp("big"), SPEC)


def _pos_key(lines: pd.DataFrame) -> pd.Series:
    return lines[S.POS_TRANSACTION_ID] + ":" + lines[S.POS_LINE_NO]


def _faults(r: GeneratedRetailer, source: str) -> pd.DataFrame:
    f = read(r, "faults")
    return f[f[S.GT_FAULT_SOURCE] == source]


def _keys(faults: pd.DataFrame, *names: str) -> set[str]:
    return set(faults.loc[faults[S.GT_FAULT].isin(names), S.GT_FAULT_ROW_KEY])


# ------------------------------------------------------------------------------------------------ faults
def test_every_online_fault_exists_with_its_fault(big: GeneratedRetailer) -> None:
    events = read(big, "online")
    price = read(big, "items").set_index(S.CAT_ITEM_ID)[S.CAT_PRICE].astype(float)
    faults = _faults(big, "online")
    assert set(faults[S.GT_FAULT]) == {
        S.FAULT_EXACT_DUPLICATE,
        S.FAULT_RESENT,
        S.FAULT_MISSING_TIMESTAMP,
        S.FAULT_MISSING_ITEM,
        S.FAULT_MALFORMED_TIMESTAMP,
        S.FAULT_ZERO_PRICE,
        S.FAULT_INFLATED_PRICE,
        S.FAULT_UNKNOWN_ITEM,
    }
    copies = events.groupby(S.ON_EVENT_ID)["_line"].agg(["size", "nunique"])
    last = events.drop_duplicates(S.ON_EVENT_ID, keep="last").set_index(S.ON_EVENT_ID)
    rows = faults.join(last, on=S.GT_FAULT_ROW_KEY).join(copies, on=S.GT_FAULT_ROW_KEY)
    assert rows["_line"].notna().all()  # every listed row exists

    def of(fault: str) -> pd.DataFrame:
        return rows[rows[S.GT_FAULT] == fault]

    dup = of(S.FAULT_EXACT_DUPLICATE)
    assert ((dup["size"] == 2) & (dup["nunique"] == 1)).all()
    resent = of(S.FAULT_RESENT)
    first = last.loc[resent[S.GT_FAULT_ORIGINAL_KEY], "_line"].to_numpy()
    same = [
        a.replace(o, k) == b
        for a, o, k, b in zip(
            first, resent[S.GT_FAULT_ORIGINAL_KEY], resent[S.GT_FAULT_ROW_KEY], resent["_line"], strict=True
        )
    ]
    assert all(same) and (resent["size"] == 1).all()
    assert of(S.FAULT_MISSING_TIMESTAMP)[S.ON_TS].isna().all()
    malformed = of(S.FAULT_MALFORMED_TIMESTAMP)[S.ON_TS]
    assert malformed.notna().all() and not parses(malformed, ONLINE_TS).any()
    assert malformed.str.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d").any()  # day-first, e.g. 05/01/2026 10:22
    missing = of(S.FAULT_MISSING_ITEM)
    assert missing[S.ON_ITEM_ID].isna().all() and (missing[S.ON_EVENT_TYPE] != S.EV_SEARCH).all()
    assert not of(S.FAULT_UNKNOWN_ITEM)[S.ON_ITEM_ID].isin(price.index).any()
    assert (of(S.FAULT_ZERO_PRICE)[S.ON_PRICE] == 0).all()
    inflated = of(S.FAULT_INFLATED_PRICE)
    assert (inflated[S.ON_PRICE] >= 500 * price.reindex(inflated[S.ON_ITEM_ID]).to_numpy()).all()


def test_every_pos_and_crm_fault_exists_with_its_fault(big: GeneratedRetailer) -> None:
    lines = read(big, "pos").assign(_key=lambda d: _pos_key(d))
    price = read(big, "items").set_index(S.CAT_ITEM_ID)[S.CAT_PRICE].astype(float)
    stores = set(read(big, "stores")[S.CAT_STORE_ID])
    faults = _faults(big, "pos")
    assert {S.FAULT_RETURN, S.FAULT_EXACT_DUPLICATE, S.FAULT_UNKNOWN_STORE} <= set(faults[S.GT_FAULT])
    last = lines.drop_duplicates("_key", keep="last").set_index("_key")
    rows = faults.join(last, on=S.GT_FAULT_ROW_KEY)
    assert rows[S.POS_TS].notna().all()  # every listed row exists

    def of(fault: str) -> pd.DataFrame:
        return rows[rows[S.GT_FAULT] == fault]

    dup = of(S.FAULT_EXACT_DUPLICATE)[S.GT_FAULT_ROW_KEY]
    assert (lines.groupby("_key").size().reindex(dup) == 2).all()  # the row and its copy...
    assert (lines.drop_duplicates().groupby("_key").size().reindex(dup) == 1).all()  # ...byte-identical
    returns = of(S.FAULT_RETURN)
    bought = last.loc[returns[S.GT_FAULT_ORIGINAL_KEY]]
    assert (
        returns[S.POS_QUANTITY].astype(int).to_numpy() == -bought[S.POS_QUANTITY].astype(int).to_numpy()
    ).all()
    for column in (S.POS_ITEM_ID, S.POS_STORE_ID, S.POS_UNIT_PRICE):
        assert (returns[column].to_numpy() == bought[column].to_numpy()).all(), column
    assert (returns[S.POS_TS].to_numpy() > bought[S.POS_TS].to_numpy()).all()
    assert (of(S.FAULT_NEGATIVE_QUANTITY)[S.POS_QUANTITY].astype(int) < 0).all()
    assert (of(S.FAULT_MISSING_TIMESTAMP)[S.POS_TS] == "").all()
    malformed = of(S.FAULT_MALFORMED_TIMESTAMP)[S.POS_TS]
    assert (malformed != "").all() and not parses(malformed, SQL_TS).any()
    assert (of(S.FAULT_MISSING_ITEM)[S.POS_ITEM_ID] == "").all()
    assert not of(S.FAULT_UNKNOWN_ITEM)[S.POS_ITEM_ID].isin(price.index).any()
    assert not of(S.FAULT_UNKNOWN_STORE)[S.POS_STORE_ID].isin(stores).any()
    assert (of(S.FAULT_ZERO_PRICE)[S.POS_UNIT_PRICE].astype(float) == 0).all()
    inflated = of(S.FAULT_INFLATED_PRICE)
    list_price = price.reindex(inflated[S.POS_ITEM_ID]).to_numpy()
    assert (inflated[S.POS_UNIT_PRICE].astype(float).to_numpy() >= 500 * list_price).all()
    members = read(big, "crm")
    crm = _faults(big, "crm")
    assert set(crm[S.GT_FAULT]) <= {
        S.FAULT_EXACT_DUPLICATE,
        S.FAULT_MISSING_TIMESTAMP,
        S.FAULT_MALFORMED_TIMESTAMP,
    }
    assert _keys(crm, S.FAULT_EXACT_DUPLICATE) == set(members.loc[members.duplicated(), S.CRM_LOYALTY_CARD])


def test_faults_csv_lists_every_faulty_row(big: GeneratedRetailer) -> None:
    """The other way round: each kind of damage found in the raw files is listed (so scoring is exact)."""
    events, lines, members = read(big, "online"), read(big, "pos"), read(big, "crm")
    catalogue = set(read(big, "items")[S.CAT_ITEM_ID])
    online, pos, crm = _faults(big, "online"), _faults(big, "pos"), _faults(big, "crm")
    bad_ts = events[S.ON_TS].isna() | ~parses(events[S.ON_TS], ONLINE_TS)
    assert set(events.loc[bad_ts, S.ON_EVENT_ID]) == _keys(
        online, S.FAULT_MISSING_TIMESTAMP, S.FAULT_MALFORMED_TIMESTAMP
    )
    content = [c for c in S.RAW_ONLINE_COLUMNS if c != S.ON_EVENT_ID]
    damaged = _keys(online, *(f for f in S.FAULTS if f not in (S.FAULT_EXACT_DUPLICATE, S.FAULT_RESENT)))
    intact = events[~events[S.ON_EVENT_ID].isin(damaged)]  # two damaged rows may look alike (both lost ts)
    copies = intact[intact.duplicated(content)]
    assert set(copies[S.ON_EVENT_ID]) == _keys(online, S.FAULT_EXACT_DUPLICATE, S.FAULT_RESENT)
    item = events[S.ON_ITEM_ID]
    assert set(events.loc[item.notna() & ~item.isin(catalogue), S.ON_EVENT_ID]) == _keys(
        online, S.FAULT_UNKNOWN_ITEM
    )
    key = _pos_key(lines)
    quantity = lines[S.POS_QUANTITY].astype(int)
    assert set(key[quantity < 0]) == _keys(pos, S.FAULT_NEGATIVE_QUANTITY, S.FAULT_RETURN)
    assert set(key[key.duplicated()]) == _keys(pos, S.FAULT_EXACT_DUPLICATE)
    bad_pos_ts = ~parses(lines[S.POS_TS], SQL_TS)
    assert set(key[bad_pos_ts]) == _keys(pos, S.FAULT_MISSING_TIMESTAMP, S.FAULT_MALFORMED_TIMESTAMP)
    stores = set(read(big, "stores")[S.CAT_STORE_ID])
    assert set(key[~lines[S.POS_STORE_ID].isin(stores)]) == _keys(pos, S.FAULT_UNKNOWN_STORE)
    bad_signup = ~parses(members[S.CRM_SIGNUP_TS], SQL_TS)
    assert set(members.loc[bad_signup, S.CRM_LOYALTY_CARD]) == _keys(
        crm, S.FAULT_MISSING_TIMESTAMP, S.FAULT_MALFORMED_TIMESTAMP
    )


def test_fault_rates_are_as_configured(big: GeneratedRetailer) -> None:
    events, lines = read(big, "online"), read(big, "pos")
    online, pos = _faults(big, "online"), _faults(big, "pos")
    rates = SPEC.faults
    n_online = len(events) - len(_keys(online, S.FAULT_EXACT_DUPLICATE, S.FAULT_RESENT))
    for fault, rate in ((S.FAULT_EXACT_DUPLICATE, rates.exact_duplicate), (S.FAULT_RESENT, rates.resent)):
        share = (online[S.GT_FAULT] == fault).sum() / n_online
        assert 0.8 * rate < share < 1.2 * rate, fault
    n_lines = len(lines)
    returns = (pos[S.GT_FAULT] == S.FAULT_RETURN).sum() / n_lines
    assert 0.6 * rates.returns < returns < 1.3 * rates.returns  # returns past the window's end are dropped
    duplicates = (pos[S.GT_FAULT] == S.FAULT_EXACT_DUPLICATE).sum() / n_lines
    assert 0.6 * rates.exact_duplicate < duplicates < 1.4 * rates.exact_duplicate


def test_fault_free_retailer_has_no_faults(tmp_path: Path) -> None:
    r = generate_retailer(tmp_path, replace(SPEC, n_customers=600, faults=FaultRates.none()))
    assert r.n_faults == 0 and len(read(r, "faults")) == 0
    events, lines, members = read(r, "online"), read(r, "pos"), read(r, "crm")
    assert parses(events[S.ON_TS], ONLINE_TS).all() and events[S.ON_EVENT_ID].is_unique
    assert not events.duplicated([c for c in S.RAW_ONLINE_COLUMNS if c != S.ON_EVENT_ID]).any()
    assert parses(lines[S.POS_TS], SQL_TS).all() and parses(members[S.CRM_SIGNUP_TS], SQL_TS).all()
    assert (lines[S.POS_QUANTITY].astype(int) > 0).all() and (lines[S.POS_UNIT_PRICE].astype(float) > 0).all()
    assert _pos_key(lines).is_unique and members[S.CRM_LOYALTY_CARD].is_unique
    assert lines[S.POS_ITEM_ID].isin(set(read(r, "items")[S.CAT_ITEM_ID])).all()
    assert lines[S.POS_STORE_ID].isin(set(read(r, "stores")[S.CAT_STORE_ID])).all()


# ------------------------------------------------------------------------------------------------ identities
def test_a_store_kiosk_is_one_device_used_by_many_persons(big: GeneratedRetailer) -> None:
    ids = read(big, "identifiers")
    kiosk = ids[ids[S.GT_SHARING] == S.SHARING_KIOSK]
    per_device = kiosk.groupby(S.GT_IDENTIFIER)[S.GT_PERSON_ID].nunique()
    assert 1 <= len(per_device) <= SPEC.n_kiosks and per_device.max() >= 20
    events = read(big, "online")
    on_kiosk = events[events[S.ON_DEVICE_ID].isin(per_device.index)]
    assert on_kiosk.groupby(S.ON_DEVICE_ID)[S.ON_ACCOUNT_ID].nunique().max() >= 15  # own accounts, one device
    assert (on_kiosk.groupby(S.ON_DEVICE_ID)[[S.ON_IP, S.ON_USER_AGENT]].nunique() == 1).all().all()
    personal_devices = ids[
        (ids[S.IDENTIFIER_TYPE] == S.ID_DEVICE) & (ids[S.GT_SHARING] == S.SHARING_PERSONAL)
    ]
    assert personal_devices[S.GT_IDENTIFIER].is_unique


def test_recycled_numbers_belong_to_two_persons_in_disjoint_periods(big: GeneratedRetailer) -> None:
    ids = read(big, "identifiers")
    recycled = ids[ids[S.GT_SHARING] == S.SHARING_RECYCLED].assign(
        number=lambda d: d[S.GT_IDENTIFIER].map(phone_digits)
    )
    assert recycled["number"].nunique() >= 5
    cards = ids[ids[S.IDENTIFIER_TYPE] == S.ID_CARD].groupby(S.GT_PERSON_ID)[S.GT_IDENTIFIER].agg(set)
    lines = read(big, "pos")
    for _, rows in recycled.groupby("number"):
        holders = rows.drop_duplicates(S.GT_PERSON_ID)
        assert len(holders) == 2
        before = holders[holders[S.GT_VALID_TO] != ""]
        after = holders[holders[S.GT_VALID_FROM] != ""]
        assert len(before) == len(after) == 1
        day = before[S.GT_VALID_TO].iloc[0]
        assert after[S.GT_VALID_FROM].iloc[0] == day and before[S.GT_VALID_FROM].iloc[0] == ""
        seen = {
            name: lines.loc[
                lines[S.POS_LOYALTY_CARD].isin(cards.get(h[S.GT_PERSON_ID].iloc[0], set())), S.POS_TS
            ]
            for name, h in (("before", before), ("after", after))
        }
        assert all(ts < day for ts in seen["before"] if ts[:4].isdigit())
        assert all(ts >= day for ts in seen["after"] if ts[:4].isdigit())


def test_household_phones_are_typed_by_several_members(big: GeneratedRetailer) -> None:
    ids = read(big, "identifiers")
    persons = read(big, "persons").set_index(S.GT_PERSON_ID)
    household = ids[ids[S.GT_SHARING] == S.SHARING_HOUSEHOLD].assign(
        number=lambda d: d[S.GT_IDENTIFIER].map(phone_digits)
    )
    users = household.groupby("number")[S.GT_PERSON_ID].agg(set)
    shared = users[users.map(len) >= 2]
    assert len(shared) >= 10
    for members in shared:
        assert len({persons.loc[p, S.GT_HOUSEHOLD_ID] for p in members}) == 1  # one household
    share = (persons[S.GT_HOUSEHOLD_ID] != "").mean()
    assert 0.5 * SPEC.household_share < share < 1.5 * SPEC.household_share


def test_phones_emails_and_cards_are_written_in_several_formats(big: GeneratedRetailer) -> None:
    ids = read(big, "identifiers")
    phones = ids.loc[ids[S.IDENTIFIER_TYPE] == S.ID_PHONE, S.GT_IDENTIFIER]
    patterns = [
        r"\+86 1\d\d-\d{4}-\d{4}",
        r"1\d{10}",
        r"\(\+86\) 1\d\d \d{4} \d{4}",
        r"0086 1\d{10}",
        r"\+861\d{10}",
    ]
    for pattern in patterns:
        assert phones.str.fullmatch(pattern).any(), pattern
    assert phones.map(phone_digits).str.fullmatch(r"1\d{10}").all()
    emails = ids.loc[ids[S.IDENTIFIER_TYPE] == S.ID_EMAIL, S.GT_IDENTIFIER]
    assert emails.str.fullmatch(r"[a-z0-9.@]+").mean() > 0.5
    assert emails.str.startswith(" ").any() and emails.str.isupper().any() and emails.str.endswith(" ").any()
    cards = ids.loc[ids[S.IDENTIFIER_TYPE] == S.ID_CARD, S.GT_IDENTIFIER]
    assert cards.str.startswith("lc").any() and cards.str.contains(" ").any()
    assert cards.str.replace(" ", "").str.upper().str.fullmatch(r"LC\d{10}").all()
    # variants of one value name the same person
    canonical = ids.assign(value=ids[S.GT_IDENTIFIER].str.strip().str.lower().str.replace(" ", ""))
    phone_rows = canonical[canonical[S.IDENTIFIER_TYPE] == S.ID_PHONE]
    canonical.loc[phone_rows.index, "value"] = phone_rows[S.GT_IDENTIFIER].map(phone_digits)
    personal = canonical[canonical[S.GT_SHARING] == S.SHARING_PERSONAL]
    assert (personal.groupby([S.IDENTIFIER_TYPE, "value"])[S.GT_PERSON_ID].nunique() == 1).all()
    assert personal.groupby([S.IDENTIFIER_TYPE, "value"])[S.GT_IDENTIFIER].nunique().max() > 1


def test_most_devices_log_in_and_the_never_login_share_is_a_knob(
    big: GeneratedRetailer, tmp_path: Path
) -> None:
    def never_share(r: GeneratedRetailer) -> float:
        events = read(r, "online")
        ids = read(r, "identifiers")
        kiosks = set(ids.loc[ids[S.GT_SHARING] == S.SHARING_KIOSK, S.GT_IDENTIFIER])
        logged = events.groupby(S.ON_DEVICE_ID)[S.ON_ACCOUNT_ID].agg(lambda a: a.notna().any())
        return float((~logged[~logged.index.isin(kiosks)]).mean())

    assert 0.02 < never_share(big) < 0.10
    spec = replace(SPEC, n_customers=400, never_login_device_share=0.5)
    assert never_share(generate_retailer(tmp_path, spec)) > 0.4


def test_devices_of_a_person_share_a_home_network(big: GeneratedRetailer) -> None:
    events = read(big, "online")
    ids = read(big, "identifiers")
    devices = ids[(ids[S.IDENTIFIER_TYPE] == S.ID_DEVICE) & (ids[S.GT_SHARING] == S.SHARING_PERSONAL)]
    owner = devices.set_index(S.GT_IDENTIFIER)[S.GT_PERSON_ID]
    home = events.assign(net=events[S.ON_IP].str.rsplit(".", n=1).str[0])
    home = home[home[S.ON_DEVICE_ID].isin(owner.index)]
    usual = home.groupby(S.ON_DEVICE_ID)["net"].agg(lambda n: n.value_counts().index[0])
    nets = usual.groupby(owner.reindex(usual.index).to_numpy()).agg(list)
    several = nets[nets.map(len) >= 2]
    assert len(several) >= 50
    assert several.map(lambda n: len(set(n)) == 1).mean() > 0.5
    assert usual.nunique() > 0.5 * len(nets)  # homes differ between persons


def test_accounts_export_covers_every_account_in_events(big: GeneratedRetailer) -> None:
    events, acc = read(big, "online"), read(big, "accounts")
    assert acc[S.ACC_ACCOUNT_ID].is_unique
    used = events.dropna(subset=[S.ON_ACCOUNT_ID])
    assert set(used[S.ON_ACCOUNT_ID]) <= set(acc[S.ACC_ACCOUNT_ID])
    first = used[parses(used[S.ON_TS], ONLINE_TS)].groupby(S.ON_ACCOUNT_ID)[S.ON_TS].min()
    created = acc.set_index(S.ACC_ACCOUNT_ID)[S.ACC_CREATED_TS].reindex(first.index)
    assert (pd.to_datetime(created, utc=True) < pd.to_datetime(first, utc=True)).all()
    assert (acc[S.ACC_EMAIL] != "").all()


def test_consent_columns_have_plausible_rates_and_a_latest_choice(big: GeneratedRetailer) -> None:
    members, acc, persons = read(big, "crm"), read(big, "accounts"), read(big, "persons")
    for table, columns in (
        (members, (S.CRM_CONSENT_ANALYTICS, S.CRM_CONSENT_MARKETING)),
        (acc, (S.ACC_CONSENT_ANALYTICS, S.ACC_CONSENT_MARKETING)),
    ):
        analytics, marketing = (table[c] for c in columns)
        assert set(analytics) | set(marketing) <= {S.CONSENT_YES, S.CONSENT_NO}
        assert 0.88 < (analytics == S.CONSENT_YES).mean() < 0.99
        assert 0.5 < (marketing == S.CONSENT_YES).mean() < 0.7
    asked = persons[S.GT_CONSENT_ANALYTICS] != ""
    assert set(persons[S.GT_CONSENT_MARKETING][asked]) == {S.CONSENT_YES, S.CONSENT_NO}
    assert (persons[S.GT_CONSENT_MARKETING][~asked] == "").all() and (~asked).any()
    # the latest record holds the person's choice
    ids = read(big, "identifiers")
    card_owner = ids[ids[S.IDENTIFIER_TYPE] == S.ID_CARD].set_index(S.GT_IDENTIFIER)[S.GT_PERSON_ID]
    account_owner = ids[ids[S.IDENTIFIER_TYPE] == S.ID_ACCOUNT].set_index(S.GT_IDENTIFIER)[S.GT_PERSON_ID]
    records = pd.concat(
        [
            pd.DataFrame(
                {
                    "person": members[S.CRM_LOYALTY_CARD].map(card_owner),
                    "ts": pd.to_datetime(members[S.CRM_SIGNUP_TS], format=SQL_TS, errors="coerce", utc=True),
                    "choice": members[S.CRM_CONSENT_MARKETING],
                }
            ),
            pd.DataFrame(
                {
                    "person": acc[S.ACC_ACCOUNT_ID].map(account_owner),
                    "ts": pd.to_datetime(acc[S.ACC_CREATED_TS], utc=True),
                    "choice": acc[S.ACC_CONSENT_MARKETING],
                }
            ),
        ]
    ).dropna(subset=["ts"])
    latest = records.sort_values("ts").groupby("person")["choice"].last()
    truth = persons.set_index(S.GT_PERSON_ID)[S.GT_CONSENT_MARKETING]
    assert (latest == truth.reindex(latest.index)).all()
    changed = records.groupby("person")["choice"].nunique() > 1
    assert changed.any()  # some persons changed their mind between records

"""Tests of the synthetic O2O retailer: file layout, determinism, ground truth and the simulated behaviour."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from data_prep import schema as S
from data_prep.generate import GeneratedRetailer, RetailerSpec, generate_retailer, render_identifier

SPEC = RetailerSpec(n_customers=200, seed=7, n_days=30, n_items=120, n_categories=8, n_stores=4)
START = pd.Timestamp(SPEC.start, tz="UTC")
END = START + pd.Timedelta(days=SPEC.n_days)

ONLINE_COLUMNS = list(S.RAW_ONLINE_COLUMNS)
POS_COLUMNS = list(S.RAW_POS_COLUMNS)
CRM_COLUMNS = list(S.RAW_CRM_COLUMNS)
GT_ID = "identifier"  # the raw value column of ground_truth/identifiers.csv
ONLINE_IDS = {S.ON_DEVICE_ID: S.ID_DEVICE, S.ON_ACCOUNT_ID: S.ID_ACCOUNT, S.ON_EMAIL: S.ID_EMAIL}
POS_IDS = {S.POS_LOYALTY_CARD: S.ID_CARD, S.POS_PHONE: S.ID_PHONE}
CRM_IDS = {S.CRM_LOYALTY_CARD: S.ID_CARD, S.CRM_PHONE: S.ID_PHONE, S.CRM_EMAIL: S.ID_EMAIL}
FORMATS = {
    S.ID_DEVICE: r"d-[0-9a-f]{12}",
    S.ID_ACCOUNT: r"acct-\d+",
    S.ID_EMAIL: r"[a-z]+\.[a-z]+\d+@[a-z0-9]+\.com",
    S.ID_PHONE: r"\+86 1\d\d-\d{4}-\d{4}",
    S.ID_CARD: r"LC\d{10}",
}


@pytest.fixture(scope="module")
def retailer(tmp_path_factory: pytest.TempPathFactory) -> GeneratedRetailer:
    return generate_retailer(tmp_path_factory.mktemp("retailer"), SPEC)


def _online(r: GeneratedRetailer) -> pd.DataFrame:
    lines = (r.raw_dir / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE).read_text().splitlines()
    return pd.DataFrame([json.loads(line) for line in lines], columns=ONLINE_COLUMNS).astype(object)


def _csv(path: Path) -> pd.DataFrame:
    """Every field as text; empty fields stay empty strings."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _pos(r: GeneratedRetailer) -> pd.DataFrame:
    return _csv(r.raw_dir / S.RAW_POS_DIR / S.RAW_POS_FILE)


def _crm(r: GeneratedRetailer) -> pd.DataFrame:
    return _csv(r.raw_dir / S.RAW_CRM_DIR / S.RAW_CRM_FILE)


def _raw_identifiers(r: GeneratedRetailer) -> pd.DataFrame:
    """(identifier_type, identifier, source) for every identifier value written in a raw file; source is
    "online", "pos" or "crm"."""
    parts = []
    for frame, columns, source in (
        (_online(r), ONLINE_IDS, "online"),
        (_pos(r), POS_IDS, "pos"),
        (_crm(r), CRM_IDS, "crm"),
    ):
        for column, id_type in columns.items():
            values = frame[column][frame[column].notna() & (frame[column] != "")]
            parts.append(pd.DataFrame({S.IDENTIFIER_TYPE: id_type, GT_ID: values, "source": source}))
    return pd.concat(parts, ignore_index=True).drop_duplicates()


def test_writes_every_file_with_exactly_the_schema_columns(retailer: GeneratedRetailer) -> None:
    raw, truth = retailer.raw_dir, retailer.ground_truth_dir
    assert raw == retailer.raw_dir.parent / "01_raw"
    expected = {
        raw / S.RAW_POS_DIR / S.RAW_POS_FILE: POS_COLUMNS,
        raw / S.RAW_CRM_DIR / S.RAW_CRM_FILE: CRM_COLUMNS,
        raw / S.RAW_CATALOG_DIR / S.RAW_ITEMS_FILE: [S.CAT_ITEM_ID, S.CAT_CATEGORY, S.CAT_PRICE],
        raw / S.RAW_CATALOG_DIR / S.RAW_STORES_FILE: [S.CAT_STORE_ID, S.CAT_CITY],
        truth / S.GT_IDENTIFIERS_FILE: [S.IDENTIFIER_TYPE, GT_ID, S.GT_PERSON_ID],
        truth / S.GT_PERSONS_FILE: [S.GT_PERSON_ID, S.GT_KIND, S.GT_PROPENSITY],
    }
    for path, columns in expected.items():
        assert list(_csv(path).columns) == columns, path
    lines = (raw / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE).read_text().splitlines()
    assert lines
    assert all(list(json.loads(line)) == ONLINE_COLUMNS for line in lines)


def test_counts_match_the_files(retailer: GeneratedRetailer) -> None:
    assert retailer.n_online_events == len(_online(retailer)) > 0
    assert retailer.n_pos_lines == len(_pos(retailer)) > 0
    assert retailer.n_members == len(_crm(retailer)) > 0
    assert retailer.n_persons == SPEC.n_customers == len(_csv(retailer.ground_truth_dir / S.GT_PERSONS_FILE))


def test_same_spec_gives_identical_bytes_and_another_seed_does_not(
    retailer: GeneratedRetailer, tmp_path: Path
) -> None:
    again = generate_retailer(tmp_path / "again", SPEC)
    other = generate_retailer(tmp_path / "other", replace(SPEC, seed=SPEC.seed + 1))
    files = sorted(
        p.relative_to(retailer.raw_dir.parent) for p in retailer.raw_dir.parent.rglob("*") if p.is_file()
    )
    assert len(files) == 7
    for rel in files:
        assert (retailer.raw_dir.parent / rel).read_bytes() == (again.raw_dir.parent / rel).read_bytes(), rel
    online = Path(S.RAW_ONLINE_DIR) / S.RAW_ONLINE_FILE
    assert (retailer.raw_dir / online).read_bytes() != (other.raw_dir / online).read_bytes()


def test_ground_truth_lists_exactly_the_raw_identifiers_each_with_one_person(
    retailer: GeneratedRetailer,
) -> None:
    truth = _csv(retailer.ground_truth_dir / S.GT_IDENTIFIERS_FILE)
    assert not truth.duplicated([S.IDENTIFIER_TYPE, GT_ID]).any()
    listed = set(zip(truth[S.IDENTIFIER_TYPE], truth[GT_ID], strict=True))
    raw = _raw_identifiers(retailer)
    assert set(zip(raw[S.IDENTIFIER_TYPE], raw[GT_ID], strict=True)) == listed
    assert set(truth[S.IDENTIFIER_TYPE]) == set(S.IDENTIFIER_TYPES)
    persons = set(_csv(retailer.ground_truth_dir / S.GT_PERSONS_FILE)[S.GT_PERSON_ID])
    assert set(truth[S.GT_PERSON_ID]) <= persons


def test_identifiers_have_their_canonical_format(retailer: GeneratedRetailer) -> None:
    raw = _raw_identifiers(retailer)
    for id_type, pattern in FORMATS.items():
        values = raw.loc[raw[S.IDENTIFIER_TYPE] == id_type, GT_ID]
        assert len(values) and values.str.fullmatch(pattern).all(), id_type
    assert render_identifier(S.ID_PHONE, "13800138000") == "+86 138-0013-8000"
    assert render_identifier(S.ID_EMAIL, "alice.wang42@mail.com") == "alice.wang42@mail.com"


def test_online_fields_follow_the_event_type(retailer: GeneratedRetailer) -> None:
    online = _online(retailer)
    etype = online[S.ON_EVENT_TYPE]
    assert set(etype) == set(S.ONLINE_EVENT_TYPES)
    assert set(online[S.ON_CHANNEL]) <= set(S.ONLINE_CHANNELS)
    assert online[S.ON_EVENT_ID].is_unique
    assert online[S.ON_DEVICE_ID].notna().all()
    search = etype == S.EV_SEARCH
    assert (online[S.ON_ITEM_ID].isna() == search).all()
    assert (online[S.ON_QUERY].notna() == search).all()
    priced = etype.isin([S.EV_ADD_TO_CART, S.EV_REMOVE_FROM_CART, S.EV_ORDER])
    assert (online[S.ON_QUANTITY].notna() == priced).all() and (online[S.ON_PRICE].notna() == priced).all()
    assert (online.loc[priced, S.ON_QUANTITY] >= 1).all() and (online.loc[priced, S.ON_PRICE] > 0).all()


def test_order_lines_carry_order_id_and_checkout_email(retailer: GeneratedRetailer) -> None:
    online = _online(retailer)
    is_order = online[S.ON_EVENT_TYPE] == S.EV_ORDER
    orders = online[is_order]
    assert len(orders) and orders[S.ON_ORDER_ID].notna().all() and orders[S.ON_EMAIL].notna().all()
    assert online.loc[~is_order, [S.ON_ORDER_ID, S.ON_EMAIL]].isna().all().all()
    per_order = orders.groupby(S.ON_ORDER_ID)[[S.ON_TS, S.ON_SESSION_ID, S.ON_EMAIL]].nunique()
    assert (per_order == 1).all().all()
    assert orders.groupby(S.ON_ORDER_ID).size().max() > 1  # some orders have several lines


def test_sessions_follow_the_funnel(retailer: GeneratedRetailer) -> None:
    """Carts, removals and orders only touch items viewed earlier in the session; a removal follows a cart."""
    online = _online(retailer)
    seen: dict[str, set[str]] = {}
    carted: dict[str, set[str]] = {}
    for session, etype, item in zip(
        online[S.ON_SESSION_ID], online[S.ON_EVENT_TYPE], online[S.ON_ITEM_ID], strict=True
    ):
        if etype == S.EV_VIEW:
            seen.setdefault(session, set()).add(item)
        elif etype in (S.EV_ADD_TO_CART, S.EV_ORDER):
            assert item in seen.get(session, set()), (session, etype, item)
            carted.setdefault(session, set()).add(item)
        elif etype == S.EV_REMOVE_FROM_CART:
            assert item in carted.get(session, set()), (session, item)
    assert len(carted) > len(set(online.loc[online[S.ON_EVENT_TYPE] == S.EV_ORDER, S.ON_SESSION_ID]))


def test_timestamps_parse_and_lie_in_the_window(retailer: GeneratedRetailer) -> None:
    online_ts = _online(retailer)[S.ON_TS]
    assert online_ts.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z").all()
    online = pd.to_datetime(online_ts, format="%Y-%m-%dT%H:%M:%S.%fZ", utc=True)
    pos = pd.to_datetime(_pos(retailer)[S.POS_TS], format="%Y-%m-%d %H:%M:%S", utc=True)
    for ts in (online, pos):
        assert ts.min() >= START and ts.max() < END
    assert online.is_monotonic_increasing
    signup = pd.to_datetime(_crm(retailer)[S.CRM_SIGNUP_TS], format="%Y-%m-%d %H:%M:%S", utc=True)
    assert signup.max() < END


def test_every_kind_appears(retailer: GeneratedRetailer) -> None:
    persons = _csv(retailer.ground_truth_dir / S.GT_PERSONS_FILE)
    assert set(persons[S.GT_KIND]) == {"online_only", "offline_only", "omni"}
    assert persons[S.GT_PERSON_ID].is_unique
    assert (persons[S.GT_PROPENSITY].astype(float) > 0).all()


def test_identifiers_appear_where_the_persons_kind_shops(retailer: GeneratedRetailer) -> None:
    truth = _csv(retailer.ground_truth_dir / S.GT_IDENTIFIERS_FILE)
    raw = _raw_identifiers(retailer).merge(truth, on=[S.IDENTIFIER_TYPE, GT_ID])
    sources = raw.groupby(S.GT_PERSON_ID)["source"].agg(set)
    kind = _csv(retailer.ground_truth_dir / S.GT_PERSONS_FILE).set_index(S.GT_PERSON_ID)[S.GT_KIND]
    seen_in = sources.reindex(kind.index).apply(lambda s: s if isinstance(s, set) else set())
    assert all(s == {"online"} for s in seen_in[kind == "online_only"])
    assert not any("online" in s for s in seen_in[kind == "offline_only"])
    omni = seen_in[kind == "omni"]
    assert sum({"online", "pos"} <= s for s in omni) >= 0.4 * len(omni)  # seen shopping in both
    assert sum({"online", "crm"} <= s for s in omni) >= 0.5 * len(omni)  # members: linkable offline


def test_omni_persons_link_through_email_and_phone(retailer: GeneratedRetailer) -> None:
    truth = _csv(retailer.ground_truth_dir / S.GT_IDENTIFIERS_FILE).set_index([S.IDENTIFIER_TYPE, GT_ID])
    online, pos, crm = _online(retailer), _pos(retailer), _crm(retailer)
    shared_emails = set(online[S.ON_EMAIL].dropna()) & set(crm[S.CRM_EMAIL])
    assert shared_emails
    phone_only = pos[(pos[S.POS_LOYALTY_CARD] == "") & (pos[S.POS_PHONE] != "")]
    assert len(phone_only) and set(phone_only[S.POS_PHONE]) & set(crm[S.CRM_PHONE])
    assert (crm[S.CRM_PHONE] != "").all()
    assert 0.4 < (crm[S.CRM_EMAIL] != "").mean() < 0.95
    for _, row in crm.iterrows():  # one member = one person across card, phone and email
        owners = {
            truth.loc[(S.ID_CARD, row[S.CRM_LOYALTY_CARD]), S.GT_PERSON_ID],
            truth.loc[(S.ID_PHONE, row[S.CRM_PHONE]), S.GT_PERSON_ID],
        }
        if row[S.CRM_EMAIL]:
            owners.add(truth.loc[(S.ID_EMAIL, row[S.CRM_EMAIL]), S.GT_PERSON_ID])
        assert len(owners) == 1


def test_stores_are_busier_at_weekends(retailer: GeneratedRetailer) -> None:
    pos = _pos(retailer).drop_duplicates(S.POS_TRANSACTION_ID)
    days = pd.to_datetime(pos[S.POS_TS]).dt.normalize()
    per_day = days.value_counts().reindex(pd.date_range(SPEC.start, periods=SPEC.n_days), fill_value=0)
    weekend = per_day.index.weekday >= 5
    assert per_day[weekend].mean() > 1.3 * per_day[~weekend].mean()


def test_single_kind_retailers_leave_the_other_channel_empty(tmp_path: Path) -> None:
    offline = generate_retailer(tmp_path / "off", RetailerSpec(n_customers=20, kind_shares=(0.0, 1.0, 0.0)))
    assert offline.n_online_events == 0 and offline.n_pos_lines > 0
    assert (offline.raw_dir / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE).read_bytes() == b""
    online = generate_retailer(tmp_path / "on", RetailerSpec(n_customers=20, kind_shares=(1.0, 0.0, 0.0)))
    assert online.n_pos_lines == 0 and online.n_members == 0 and online.n_online_events > 0
    assert list(_pos(online).columns) == POS_COLUMNS


def test_progress_reports_each_phase(tmp_path: Path) -> None:
    messages: list[str] = []
    generate_retailer(tmp_path, RetailerSpec(n_customers=10, n_days=7), progress=messages.append)
    assert len(messages) >= 5 and all(isinstance(m, str) and m for m in messages)


@pytest.mark.parametrize(
    "bad",
    [
        {"kind_shares": (0.5, 0.5, 0.5)},
        {"n_categories": 50, "n_items": 10},
        {"n_customers": 0},
        {"member_share": 1.5},
        {"follow_share": 0.9, "repeat_share": 0.2},
        {"start": "not a date"},
    ],
)
def test_spec_rejects_inconsistent_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetailerSpec(**bad)  # type: ignore[arg-type]

"""Tests of the synthetic O2O retailer: file layout, determinism and chunking, ground truth, and the simulated
behaviour (on a fault-free retailer). Identity fragmentation, consent and faults: test_synthetic_realism.py."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from data_prep.generate import (
    GT_BEHAVIOUR_COLUMNS,
    GT_BEHAVIOUR_FILE,
    GT_INTENSITY_COLUMNS,
    GT_INTENSITY_FILE,
    NO_FAULTS,
    FaultRates,
    GeneratedRetailer,
    RetailerSpec,
    generate_retailer,
    render_identifier,
)

SPEC = RetailerSpec(n_customers=200, seed=7, n_days=30, n_items=120, n_categories=8, n_stores=4)
CLEAN = replace(SPEC, n_customers=1500, n_days=60, faults=NO_FAULTS)
START = pd.Timestamp(SPEC.start, tz="UTC")

CANONICAL = {
    S.ID_DEVICE: r"d-[0-9a-f]{12}",
    S.ID_ACCOUNT: r"acct-\d+",
    S.ID_EMAIL: r"[a-z]+\.[a-z]+\d+@[a-z0-9]+\.com",
    S.ID_PHONE: r"\+86 1\d\d-\d{4}-\d{4}",
    S.ID_CARD: r"LC\d{10}",
}


def online(r: GeneratedRetailer) -> pd.DataFrame:
    return _online(r.raw_dir / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE).copy()


@cache
def _online(path: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return pd.DataFrame(rows, columns=list(S.RAW_ONLINE_COLUMNS)).astype(object)


def csv(path: Path) -> pd.DataFrame:
    """Every field as text; empty fields stay empty strings."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def pos(r: GeneratedRetailer) -> pd.DataFrame:
    return csv(r.raw_dir / S.RAW_POS_DIR / S.RAW_POS_FILE)


def crm(r: GeneratedRetailer) -> pd.DataFrame:
    return csv(r.raw_dir / S.RAW_CRM_DIR / S.RAW_CRM_FILE)


def accounts(r: GeneratedRetailer) -> pd.DataFrame:
    return csv(r.raw_dir / S.RAW_ONLINE_DIR / S.RAW_ACCOUNTS_FILE)


def truth(r: GeneratedRetailer, name: str = S.GT_IDENTIFIERS_FILE) -> pd.DataFrame:
    return csv(r.ground_truth_dir / name)


def raw_identifiers(r: GeneratedRetailer) -> pd.DataFrame:
    """(identifier_type, identifier, source) for every identifier value written in a raw file; source is
    "online" (events and accounts), "pos" or "crm"."""
    parts = []
    for frame, columns, source in (
        (online(r), S.RAW_IDENTIFIER_COLUMNS["online"], "online"),
        (accounts(r), S.RAW_IDENTIFIER_COLUMNS["accounts"], "online"),
        (pos(r), S.RAW_IDENTIFIER_COLUMNS["pos"], "pos"),
        (crm(r), S.RAW_IDENTIFIER_COLUMNS["crm"], "crm"),
    ):
        for column, id_type in columns.items():
            values = frame[column][frame[column].notna() & (frame[column] != "")]
            parts.append(
                pd.DataFrame({S.IDENTIFIER_TYPE: id_type, S.GT_IDENTIFIER: values, "source": source})
            )
    return pd.concat(parts, ignore_index=True).drop_duplicates()


@pytest.fixture(scope="module")
def retailer(tmp_path_factory: pytest.TempPathFactory) -> GeneratedRetailer:
    return generate_retailer(tmp_path_factory.mktemp("retailer"), SPEC)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> GeneratedRetailer:
    return generate_retailer(tmp_path_factory.mktemp("clean"), CLEAN)


def test_writes_every_file_with_exactly_the_schema_columns(retailer: GeneratedRetailer) -> None:
    raw, gt = retailer.raw_dir, retailer.ground_truth_dir
    assert raw == retailer.raw_dir.parent / "01_raw"
    expected = {
        raw / S.RAW_ONLINE_DIR / S.RAW_ACCOUNTS_FILE: S.RAW_ACCOUNT_COLUMNS,
        raw / S.RAW_POS_DIR / S.RAW_POS_FILE: S.RAW_POS_COLUMNS,
        raw / S.RAW_CRM_DIR / S.RAW_CRM_FILE: S.RAW_CRM_COLUMNS,
        raw / S.RAW_CATALOG_DIR / S.RAW_ITEMS_FILE: S.RAW_ITEM_COLUMNS,
        raw / S.RAW_CATALOG_DIR / S.RAW_STORES_FILE: S.RAW_STORE_COLUMNS,
        gt / S.GT_IDENTIFIERS_FILE: S.GT_IDENTIFIER_COLUMNS,
        gt / S.GT_PERSONS_FILE: S.GT_PERSON_COLUMNS,
        gt / S.GT_FAULTS_FILE: S.GT_FAULT_COLUMNS,
        gt / GT_BEHAVIOUR_FILE: GT_BEHAVIOUR_COLUMNS,
    }
    for path, columns in expected.items():
        assert tuple(csv(path).columns) == columns, path
    assert tuple(pq.read_schema(gt / GT_INTENSITY_FILE).names) == GT_INTENSITY_COLUMNS
    lines = (raw / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE).read_text().splitlines()
    assert lines
    assert all(tuple(json.loads(line)) == S.RAW_ONLINE_COLUMNS for line in lines)
    assert {S.ON_IP, S.ON_USER_AGENT} <= set(S.RAW_ONLINE_COLUMNS)
    assert {S.CRM_CONSENT_ANALYTICS, S.CRM_CONSENT_MARKETING} <= set(S.RAW_CRM_COLUMNS)


def test_counts_match_the_files(retailer: GeneratedRetailer) -> None:
    assert retailer.n_online_events == len(online(retailer)) > 0
    assert retailer.n_pos_lines == len(pos(retailer)) > 0
    assert retailer.n_members == len(crm(retailer)) > 0
    assert retailer.n_accounts == len(accounts(retailer)) > 0
    assert retailer.n_faults == len(truth(retailer, S.GT_FAULTS_FILE)) > 0
    assert retailer.n_persons == SPEC.n_customers == len(truth(retailer, S.GT_PERSONS_FILE))


def _files(r: GeneratedRetailer) -> dict[Path, bytes]:
    root = r.raw_dir.parent
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_spec_gives_identical_bytes_and_another_seed_does_not(
    retailer: GeneratedRetailer, tmp_path: Path
) -> None:
    first, again = _files(retailer), _files(generate_retailer(tmp_path / "again", SPEC))
    assert len(first) == 11 and first == again  # 6 raw files, 5 of ground truth
    other = _files(generate_retailer(tmp_path / "other", replace(SPEC, seed=SPEC.seed + 1)))
    online_file = Path(S.RAW_DIR) / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE
    assert first[online_file] != other[online_file]


def test_chunked_generation_is_deterministic_and_ids_stay_unique_across_chunks(tmp_path: Path) -> None:
    spec = replace(SPEC, n_customers=300, chunk_size=120, faults=NO_FAULTS)
    a = generate_retailer(tmp_path / "a", spec)
    assert _files(a) == _files(generate_retailer(tmp_path / "b", spec))
    persons = truth(a, S.GT_PERSONS_FILE)[S.GT_PERSON_ID]
    assert list(persons) == [f"P{i:06d}" for i in range(1, 301)]
    events = online(a)
    assert events[S.ON_EVENT_ID].is_unique and len(events) == a.n_online_events
    sessions = events.groupby(S.ON_SESSION_ID)[S.ON_DEVICE_ID].nunique()
    assert (sessions == 1).all()  # a session id never spans two chunks' sessions
    lines = pos(a)
    assert not lines.duplicated([S.POS_TRANSACTION_ID, S.POS_LINE_NO]).any()
    baskets = lines.groupby(S.POS_TRANSACTION_ID)[[S.POS_TS, S.POS_STORE_ID]].nunique()
    assert (baskets == 1).all().all()
    ids = truth(a)
    personal = ids[ids[S.GT_SHARING] == S.SHARING_PERSONAL]
    assert not personal.duplicated([S.IDENTIFIER_TYPE, S.GT_IDENTIFIER]).any()
    assert ids[S.GT_PERSON_ID].isin(set(persons)).all()
    kiosk_persons = ids[ids[S.GT_SHARING] == S.SHARING_KIOSK][S.GT_PERSON_ID]
    assert kiosk_persons.str[1:].astype(int).max() > 120  # kiosk users from more than the first chunk


def test_ground_truth_lists_exactly_the_raw_identifiers(retailer: GeneratedRetailer) -> None:
    ids = truth(retailer)
    assert not ids.duplicated([S.IDENTIFIER_TYPE, S.GT_IDENTIFIER, S.GT_PERSON_ID]).any()
    listed = set(zip(ids[S.IDENTIFIER_TYPE], ids[S.GT_IDENTIFIER], strict=True))
    raw = raw_identifiers(retailer)
    assert set(zip(raw[S.IDENTIFIER_TYPE], raw[S.GT_IDENTIFIER], strict=True)) == listed
    assert set(ids[S.IDENTIFIER_TYPE]) == set(S.IDENTIFIER_TYPES)
    assert set(ids[S.GT_SHARING]) <= set(S.SHARING_KINDS)
    owners = ids.groupby([S.IDENTIFIER_TYPE, S.GT_IDENTIFIER])[S.GT_PERSON_ID].nunique()
    shared = ids.groupby([S.IDENTIFIER_TYPE, S.GT_IDENTIFIER])[S.GT_SHARING].agg(set)
    assert all(shared[k] != {S.SHARING_PERSONAL} for k in owners[owners > 1].index)
    persons = set(truth(retailer, S.GT_PERSONS_FILE)[S.GT_PERSON_ID])
    assert set(ids[S.GT_PERSON_ID]) <= persons


def test_without_format_noise_identifiers_have_their_canonical_format(tmp_path: Path) -> None:
    r = generate_retailer(tmp_path, replace(SPEC, format_noise=0.0))
    raw = raw_identifiers(r)
    for id_type, pattern in CANONICAL.items():
        values = raw.loc[raw[S.IDENTIFIER_TYPE] == id_type, S.GT_IDENTIFIER]
        assert len(values) and values.str.fullmatch(pattern).all(), id_type


def test_render_identifier_writes_each_format() -> None:
    phones = [render_identifier(S.ID_PHONE, "13800138000", v) for v in range(6)]
    assert phones[:4] == ["+86 138-0013-8000", "13800138000", "(+86) 138 0013 8000", "0086 13800138000"]
    assert render_identifier(S.ID_PHONE, "13800138000") == "+86 138-0013-8000"
    emails = [render_identifier(S.ID_EMAIL, "alice.wang42@mail.com", v) for v in range(5)]
    assert emails[0] == "alice.wang42@mail.com" and " Alice.Wang42@Mail.com " in emails
    cards = [render_identifier(S.ID_CARD, "LC0123456789", v) for v in range(3)]
    assert cards == ["LC0123456789", "lc0123456789", "LC 0123 4567 89"]
    assert render_identifier(S.ID_DEVICE, "d-0123456789ab") == "d-0123456789ab"


def test_online_fields_follow_the_event_type(clean: GeneratedRetailer) -> None:
    events = online(clean)
    etype = events[S.ON_EVENT_TYPE]
    assert set(etype) == set(S.ONLINE_EVENT_TYPES)
    assert set(events[S.ON_CHANNEL]) <= set(S.ONLINE_CHANNELS)
    assert events[S.ON_EVENT_ID].is_unique
    assert events[S.ON_DEVICE_ID].notna().all()
    search = etype == S.EV_SEARCH
    assert (events[S.ON_ITEM_ID].isna() == search).all()
    assert (events[S.ON_QUERY].notna() == search).all()
    priced = etype.isin([S.EV_ADD_TO_CART, S.EV_REMOVE_FROM_CART, S.EV_ORDER])
    assert (events[S.ON_QUANTITY].notna() == priced).all() and (events[S.ON_PRICE].notna() == priced).all()
    assert (events.loc[priced, S.ON_QUANTITY] >= 1).all() and (events.loc[priced, S.ON_PRICE] > 0).all()
    assert events[S.ON_IP].str.fullmatch(r"\d{1,3}(\.\d{1,3}){3}").all()
    assert events[S.ON_USER_AGENT].str.len().between(10, 80).all()


def test_order_lines_carry_order_id_and_checkout_email(clean: GeneratedRetailer) -> None:
    events = online(clean)
    is_order = events[S.ON_EVENT_TYPE] == S.EV_ORDER
    orders = events[is_order]
    assert len(orders) and orders[S.ON_ORDER_ID].notna().all() and orders[S.ON_EMAIL].notna().all()
    assert events.loc[~is_order, [S.ON_ORDER_ID, S.ON_EMAIL]].isna().all().all()
    per_order = orders.groupby(S.ON_ORDER_ID)[[S.ON_TS, S.ON_SESSION_ID, S.ON_EMAIL]].nunique()
    assert (per_order == 1).all().all()
    assert orders.groupby(S.ON_ORDER_ID).size().max() > 1  # some orders have several lines


def test_sessions_follow_the_funnel(clean: GeneratedRetailer) -> None:
    """Carts, removals and orders only touch items viewed earlier in the session; a removal follows a cart."""
    events = online(clean)
    seen: dict[str, set[str]] = {}
    carted: dict[str, set[str]] = {}
    for session, etype, item in zip(
        events[S.ON_SESSION_ID], events[S.ON_EVENT_TYPE], events[S.ON_ITEM_ID], strict=True
    ):
        if etype == S.EV_VIEW:
            seen.setdefault(session, set()).add(item)
        elif etype in (S.EV_ADD_TO_CART, S.EV_ORDER):
            assert item in seen.get(session, set()), (session, etype, item)
            carted.setdefault(session, set()).add(item)
        elif etype == S.EV_REMOVE_FROM_CART:
            assert item in carted.get(session, set()), (session, item)
    assert len(carted) > len(set(events.loc[events[S.ON_EVENT_TYPE] == S.EV_ORDER, S.ON_SESSION_ID]))


def test_timestamps_parse_and_lie_in_the_window(clean: GeneratedRetailer) -> None:
    end = START + pd.Timedelta(days=CLEAN.n_days)
    online_ts = online(clean)[S.ON_TS]
    assert online_ts.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z").all()
    events = pd.to_datetime(online_ts, format="%Y-%m-%dT%H:%M:%S.%fZ", utc=True)
    lines = pd.to_datetime(pos(clean)[S.POS_TS], format="%Y-%m-%d %H:%M:%S", utc=True)
    for ts in (events, lines):
        assert ts.min() >= START and ts.max() < end
    assert events.is_monotonic_increasing  # one chunk: rows in time order
    signup = pd.to_datetime(crm(clean)[S.CRM_SIGNUP_TS], format="%Y-%m-%d %H:%M:%S", utc=True)
    created = pd.to_datetime(accounts(clean)[S.ACC_CREATED_TS], format="%Y-%m-%dT%H:%M:%SZ", utc=True)
    assert signup.max() < end and created.max() < end and created.is_monotonic_increasing


def test_every_kind_appears(retailer: GeneratedRetailer) -> None:
    persons = truth(retailer, S.GT_PERSONS_FILE)
    kinds = {"online_only", "offline_only", "omni"}
    assert set(persons[S.GT_KIND]) == kinds and set(persons[S.GT_LATER_KIND]) <= kinds
    assert persons[S.GT_PERSON_ID].is_unique
    assert (persons[S.GT_PROPENSITY].astype(float) > 0).all()


def test_identifiers_appear_where_the_persons_kind_shops(clean: GeneratedRetailer) -> None:
    ids = truth(clean)
    raw = raw_identifiers(clean).merge(ids, on=[S.IDENTIFIER_TYPE, S.GT_IDENTIFIER])
    sources = raw.groupby(S.GT_PERSON_ID)["source"].agg(set)
    persons = truth(clean, S.GT_PERSONS_FILE).set_index(S.GT_PERSON_ID)
    seen_in = sources.reindex(persons.index).apply(lambda s: s if isinstance(s, set) else set())
    steady = persons[S.GT_SHIFT_DATE] == ""
    kind = persons[S.GT_KIND]
    # household phones, recycled numbers and kiosk devices name several persons (an account holder may register
    # the number an offline-only household member types at the till): only own identifiers count here
    own = raw[raw[S.GT_SHARING] == S.SHARING_PERSONAL].groupby(S.GT_PERSON_ID)["source"].agg(set)
    own = own.reindex(persons.index).apply(lambda s: s if isinstance(s, set) else set())
    assert all(s <= {"online"} for s in own[steady & (kind == "online_only")])
    assert not any("online" in s for s in own[steady & (kind == "offline_only")])
    omni = seen_in[steady & (kind == "omni")]
    assert sum({"online", "pos"} <= s for s in omni) >= 0.4 * len(omni)  # seen shopping in both
    assert sum({"online", "crm"} <= s for s in omni) >= 0.5 * len(omni)  # members: linkable offline
    shifted = persons[~steady & (persons[S.GT_KIND] == "online_only") & (persons[S.GT_LATER_KIND] == "omni")]
    assert len(shifted) and sum("pos" in s or "crm" in s for s in seen_in[shifted.index]) >= 0.5 * len(
        shifted
    )


def test_stores_are_busier_at_weekends(clean: GeneratedRetailer) -> None:
    baskets = pos(clean).drop_duplicates(S.POS_TRANSACTION_ID)
    days = pd.to_datetime(baskets[S.POS_TS]).dt.normalize()
    per_day = days.value_counts().reindex(pd.date_range(CLEAN.start, periods=CLEAN.n_days), fill_value=0)
    weekend = per_day.index.weekday >= 5
    assert per_day[weekend].mean() > 1.3 * per_day[~weekend].mean()


def test_promotion_weeks_are_busier_and_cheaper(tmp_path: Path) -> None:
    spec = replace(CLEAN, n_customers=1000, promo_lift=2.0)
    events = online(generate_retailer(tmp_path, spec))
    items = csv(tmp_path / S.RAW_DIR / S.RAW_CATALOG_DIR / S.RAW_ITEMS_FILE).set_index(S.CAT_ITEM_ID)
    orders = events[events[S.ON_EVENT_TYPE] == S.EV_ORDER]
    list_price = items.loc[orders[S.ON_ITEM_ID], S.CAT_PRICE].astype(float).to_numpy()
    discounted = orders[S.ON_PRICE].astype(float).to_numpy() < list_price - 0.005
    day = pd.to_datetime(events[S.ON_TS]).dt.normalize()
    promo_days = set(pd.to_datetime(orders[S.ON_TS]).dt.normalize()[discounted])
    assert 7 <= len(promo_days) <= 14  # spec.n_days = 60, a week every 45 days: one or two weeks
    is_promo = day.isin(promo_days)
    per_day = day.value_counts()
    assert (
        per_day[per_day.index.isin(promo_days)].mean() > 1.4 * per_day[~per_day.index.isin(promo_days)].mean()
    )
    assert is_promo.any() and not discounted.all()


def test_single_kind_retailers_leave_the_other_channel_empty(tmp_path: Path) -> None:
    spec = RetailerSpec(n_customers=20, kind_shares=(0.0, 1.0, 0.0), channel_shift_share=0.0)
    offline = generate_retailer(tmp_path / "off", spec)
    assert offline.n_online_events == 0 and offline.n_pos_lines > 0 and offline.n_accounts == 0
    assert (offline.raw_dir / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE).read_bytes() == b""
    assert tuple(accounts(offline).columns) == S.RAW_ACCOUNT_COLUMNS
    only_online = generate_retailer(tmp_path / "on", replace(spec, kind_shares=(1.0, 0.0, 0.0)))
    assert only_online.n_pos_lines == 0 and only_online.n_members == 0 and only_online.n_online_events > 0
    assert tuple(pos(only_online).columns) == S.RAW_POS_COLUMNS


def test_progress_reports_the_world_and_each_chunk(tmp_path: Path) -> None:
    messages: list[str] = []
    spec = RetailerSpec(n_customers=25, n_days=7, chunk_size=10)
    generate_retailer(tmp_path, spec, progress=messages.append)
    assert len(messages) == 1 + spec.n_chunks == 4 and all(isinstance(m, str) and m for m in messages)


@pytest.mark.parametrize(
    "bad",
    [
        {"kind_shares": (0.5, 0.5, 0.5)},
        {"n_categories": 50, "n_items": 10},
        {"n_customers": 0},
        {"member_share": 1.5},
        {"follow_share": 0.9, "repeat_share": 0.2},
        {"start": "not a date"},
        {"chunk_size": 0},
        {"chunk_size": 1_000_000},
        {"n_customers": 10_000, "chunk_size": 5},
        {"n_kiosks": 13},
        {"household_share": 0.9, "recycled_phone_share": 0.1},
        {"promo_interval_days": 3},
        {"promo_lift": 0.5},
        {"format_noise": -0.1},
        {"faults": "none"},
    ],
)
def test_spec_rejects_inconsistent_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetailerSpec(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad", [{"exact_duplicate": 1.5}, {"resent": -0.1}, {"missing_field": 0.6, "unknown_item": 0.6}]
)
def test_fault_rates_reject_inconsistent_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FaultRates(**bad)
    assert not FaultRates.none().any and FaultRates().any

"""The synthetic retailer's behaviour over time (data_prep/synthetic/behaviour.py): each mechanism shows in the
generated files, and the ground-truth purchase intensity agrees with the purchases realised.

The world is fault-free, without household phones or recycled numbers, so every till phone, card and device
names one person and each recorded purchase can be tied to the person behind it from the files alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_prep import schema as S
from data_prep.generate import (
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
    NO_FAULTS,
    GeneratedRetailer,
    RetailerSpec,
    generate_retailer,
)
from data_prep.synthetic.behaviour import draw_behaviour
from data_prep.synthetic.missions import CART_RETURN, REPLENISH, draw_missions
from data_prep.synthetic.persons import draw_persons
from data_prep.synthetic.world import draw_world

SPEC = RetailerSpec(
    n_customers=2500,
    seed=5,
    n_days=150,
    n_items=200,
    n_categories=10,
    n_stores=6,
    faults=NO_FAULTS,
    household_share=0.0,
    recycled_phone_share=0.0,
)
START = pd.Timestamp(SPEC.start)


@dataclass(frozen=True)
class World:
    retailer: GeneratedRetailer
    events: pd.DataFrame  # online events with person (by device) and day
    lines: pd.DataFrame  # purchase lines tied to a person: person, day, item, key (order / transaction id)
    n_purchases: int  # every order and every basket, recorded with an identifier or not
    behaviour: pd.DataFrame  # behaviour.csv with day numbers: start, lapse (NaN: never)
    intensity: pd.DataFrame  # purchase_intensity.parquet

    @property
    def purchases(self) -> pd.DataFrame:
        """One row per recorded purchase (an order, a basket): person, day."""
        return self.lines.drop_duplicates("key")[["person", "day"]]


def _days(ts: pd.Series, fmt: str) -> pd.Series:
    return (pd.to_datetime(ts, format=fmt, utc=True).dt.tz_localize(None) - START).dt.days


def read_world(r: GeneratedRetailer) -> World:
    ids = pd.read_csv(r.ground_truth_dir / S.GT_IDENTIFIERS_FILE, dtype=str, keep_default_na=False)
    ids = ids[ids[S.GT_SHARING] == S.SHARING_PERSONAL]  # kiosks are shared (they never order)
    owner = {t: g.set_index(S.GT_IDENTIFIER)[S.GT_PERSON_ID] for t, g in ids.groupby(S.GT_IDENTIFIER_TYPE)}
    events = pd.read_json(r.raw_dir / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE, lines=True, dtype=False)
    events["person"] = events[S.ON_DEVICE_ID].map(owner[S.ID_DEVICE])
    events["day"] = _days(events[S.ON_TS], "%Y-%m-%dT%H:%M:%S.%fZ")
    orders = events[events[S.ON_EVENT_TYPE] == S.EV_ORDER]
    pos = pd.read_csv(r.raw_dir / S.RAW_POS_DIR / S.RAW_POS_FILE, dtype=str, keep_default_na=False)
    pos["person"] = (
        pos[S.POS_LOYALTY_CARD].map(owner[S.ID_CARD]).fillna(pos[S.POS_PHONE].map(owner[S.ID_PHONE]))
    )
    pos["day"] = _days(pos[S.POS_TS], "%Y-%m-%d %H:%M:%S")
    lines = pd.concat(
        [
            pd.DataFrame({"person": orders["person"], "day": orders["day"], "item": orders[S.ON_ITEM_ID],
                          "key": orders[S.ON_ORDER_ID]}),
            pd.DataFrame({"person": pos["person"], "day": pos["day"], "item": pos[S.POS_ITEM_ID],
                          "key": pos[S.POS_TRANSACTION_ID]}),
        ]
    )  # fmt: skip
    behaviour = pd.read_csv(r.ground_truth_dir / GT_BEHAVIOUR_FILE, dtype={GT_REPLENISH_ITEM: str})
    behaviour["start"] = _days(behaviour[GT_ACTIVE_FROM], "%Y-%m-%d")
    behaviour["lapse"] = _days(behaviour[GT_LAPSE_DATE], "%Y-%m-%d")
    return World(
        retailer=r,
        events=events,
        lines=lines.dropna(subset=["person"]),
        n_purchases=orders[S.ON_ORDER_ID].nunique() + pos[S.POS_TRANSACTION_ID].nunique(),
        behaviour=behaviour.set_index(S.GT_PERSON_ID),
        intensity=pd.read_parquet(r.ground_truth_dir / GT_INTENSITY_FILE),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return read_world(generate_retailer(tmp_path_factory.mktemp("behaviour"), SPEC))


def rate(w: World, offset: pd.Series, lo: int, hi: int) -> float:
    """Recorded purchases per person-day of the persons of ``offset`` (person → day) in days
    [offset + lo, offset + hi)."""
    b = w.purchases.merge(offset.rename("_o"), left_on="person", right_index=True)
    since = b["day"] - b["_o"]
    return float(((since >= lo) & (since < hi)).sum() / (len(offset) * (hi - lo)))


# ------------------------------------------------------------------------------------------------ the truth
def test_intensity_file_has_a_row_per_person_and_day_with_expected_purchases(world: World) -> None:
    t = world.intensity
    assert tuple(t.columns) == GT_INTENSITY_COLUMNS and len(t) > 100_000
    assert (
        tuple(pd.read_csv(world.retailer.ground_truth_dir / GT_BEHAVIOUR_FILE).columns)
        == GT_BEHAVIOUR_COLUMNS
    )
    assert not t.duplicated([S.GT_PERSON_ID, GT_DATE]).any()
    assert (t[GT_INTENSITY] > 0).all() and (t[GT_RECORDED_INTENSITY] >= 0).all()
    assert (t[GT_RECORDED_INTENSITY] <= t[GT_INTENSITY] * (1 + 1e-6)).all()
    days = (pd.to_datetime(t[GT_DATE]) - START).dt.days
    assert days.min() >= 0 and days.max() < SPEC.n_days
    assert set(t[S.GT_PERSON_ID]) <= set(world.behaviour.index)
    lapsed = world.behaviour["lapse"].dropna()
    after = t[S.GT_PERSON_ID].map(lapsed)
    assert not (days > after).any()  # nothing after a lapse (on its day: baskets of the eve's web research)


def test_realised_purchases_agree_with_the_intensity(world: World) -> None:
    """Purchases are Poisson given the rates: the count realised is the summed intensity within a few standard
    errors, overall, for persons of every level of intensity, and early and late in the window."""
    total = float(world.intensity[GT_INTENSITY].sum())
    assert abs(world.n_purchases - total) < 4 * np.sqrt(total)
    expected = world.intensity.groupby(S.GT_PERSON_ID)[GT_RECORDED_INTENSITY].sum()
    realised = world.purchases.groupby("person").size().reindex(expected.index, fill_value=0)
    level = pd.qcut(expected, 5, labels=False)
    for k in range(5):
        lam = float(expected[level == k].sum())
        assert abs(realised[level == k].sum() - lam) < 4 * np.sqrt(lam), k
    day = (pd.to_datetime(world.intensity[GT_DATE]) - START).dt.days
    early = world.purchases["day"] < SPEC.n_days // 2
    for in_half, n in ((day < SPEC.n_days // 2, early.sum()), (day >= SPEC.n_days // 2, (~early).sum())):
        lam = float(world.intensity.loc[in_half, GT_RECORDED_INTENSITY].sum())
        assert abs(n - lam) < 4 * np.sqrt(lam)


# ------------------------------------------------------------------------------------------------ mechanisms
def test_purchases_fall_in_the_weeks_before_a_lapse(world: World) -> None:
    b = world.behaviour
    lapse = b.loc[(b["start"] == 0) & (b["lapse"] >= 90), "lapse"]
    assert len(lapse) >= 100
    last_weeks, habit = rate(world, lapse, -14, 0), rate(world, lapse, -84, -56)
    assert last_weeks < 0.5 * habit
    assert rate(world, lapse, 1, SPEC.n_days) == 0.0


def test_late_joiners_start_with_a_first_visit_then_climb(world: World) -> None:
    b = world.behaviour
    settled = b["lapse"].isna() | (b["lapse"] - b["start"] >= 70)
    start = b.loc[(b["start"] > 0) & (b["start"] <= SPEC.n_days - 70) & settled, "start"]
    assert len(start) >= 100
    assert rate(world, start, 0, 1) > 0.5  # the first visit
    assert rate(world, start, 1, 15) < 0.8 * rate(world, start, 42, 70)
    assert rate(world, start, -30, 0) == 0.0


def test_a_replenished_item_is_bought_again_about_every_cycle(world: World) -> None:
    """Gaps between the days a person buys their replenished item cluster around their cycle c_p (gaps of
    independent purchases would be most common below it)."""
    cycle = world.behaviour.dropna(subset=[GT_REPLENISH_ITEM])[[GT_REPLENISH_ITEM, GT_REPLENISH_DAYS]]
    assert 0.5 * SPEC.replenish_share < len(cycle) / len(world.behaviour) < 1.5 * SPEC.replenish_share
    bought = world.lines.merge(cycle, left_on="person", right_index=True)
    bought = bought[bought["item"] == bought[GT_REPLENISH_ITEM]].drop_duplicates(["person", "day"])
    bought = bought.sort_values(["person", "day"])
    ratio = (bought.groupby("person")["day"].diff() / bought[GT_REPLENISH_DAYS]).dropna()
    assert len(ratio) > 1000

    def share(lo: float) -> float:
        return float(((ratio >= lo) & (ratio < lo + 0.6)).mean())

    assert share(0.7) > 1.5 * share(0.1) and share(0.7) > 3 * share(1.3)


def test_deal_prone_persons_buy_more_in_promotion_weeks(world: World) -> None:
    calendar = draw_world(SPEC).calendar
    promo, normal = np.flatnonzero(calendar.promo), np.flatnonzero(~calendar.promo & ~calendar.post_promo)
    assert len(promo) >= 14
    b = world.behaviour[(world.behaviour["start"] == 0) & world.behaviour["lapse"].isna()]
    low, high = b[GT_PROMO_RESPONSE].quantile([0.25, 0.75])

    def lift(persons: pd.Index) -> float:
        days = world.purchases.loc[world.purchases["person"].isin(persons), "day"]
        return float(days.isin(promo).sum() / len(promo) / (days.isin(normal).sum() / len(normal)))

    assert lift(b.index[b[GT_PROMO_RESPONSE] >= high]) > lift(b.index[b[GT_PROMO_RESPONSE] <= low]) + 0.3


def _carts_left(w: World) -> pd.DataFrame:
    """(session, item, person, day) of items added to a cart and neither removed nor ordered, in sessions
    without an order."""
    e = w.events[w.events[S.ON_EVENT_TYPE].isin([S.EV_ADD_TO_CART, S.EV_REMOVE_FROM_CART, S.EV_ORDER])]
    kinds = e.groupby([S.ON_SESSION_ID, S.ON_ITEM_ID])[S.ON_EVENT_TYPE].agg(frozenset).reset_index()
    ordering = set(e.loc[e[S.ON_EVENT_TYPE] == S.EV_ORDER, S.ON_SESSION_ID])
    left = kinds[
        (kinds[S.ON_EVENT_TYPE] == frozenset({S.EV_ADD_TO_CART})) & ~kinds[S.ON_SESSION_ID].isin(ordering)
    ]
    where = w.events.groupby(S.ON_SESSION_ID)[["person", "day"]].max()
    return left.join(where, on=S.ON_SESSION_ID)


def _bought_back(w: World, days: int = 7) -> float:
    """Share of carts left whose item the person buys within ``days`` days after."""
    left = _carts_left(w)
    j = left.merge(
        w.lines, left_on=["person", S.ON_ITEM_ID], right_on=["person", "item"], suffixes=("", "_b")
    )
    back = j[(j["day_b"] > j["day"]) & (j["day_b"] <= j["day"] + days)]
    return len(back.drop_duplicates([S.ON_SESSION_ID, S.ON_ITEM_ID])) / len(left)


def test_abandoned_carts_bring_the_shopper_back_for_the_item(world: World, tmp_path: Path) -> None:
    """The same retailer without return visits (cart_return_rate 0) is the baseline: carts left there are
    bought later only when the browsing before an order left them (about 20%)."""
    left = _carts_left(world)
    assert len(left) > 3000
    purchases = world.purchases.merge(left[["person", "day"]].reset_index(drop=True), on="person")
    soon = (purchases["day_x"] > purchases["day_y"]) & (purchases["day_x"] <= purchases["day_y"] + 3)
    overall = len(world.purchases) / (world.behaviour.shape[0] * SPEC.n_days)
    assert soon.sum() / (3 * len(left)) > 2 * overall
    without = read_world(generate_retailer(tmp_path, replace(SPEC, cart_return_rate=0.0)))
    assert _bought_back(world) > _bought_back(without) + 0.02


def test_cart_returns_and_replenishments_are_about_their_item() -> None:
    """In the simulation itself: every cart return follows a cart the person abandoned on one of the 14 days
    before and is about the item they left last; every replenishment is about the replenished item."""
    spec = replace(SPEC, n_customers=600)
    world = draw_world(spec)
    rng = np.random.default_rng(1)
    persons = draw_persons(spec, world, 0, spec.n_customers, rng)
    behaviour = draw_behaviour(spec, world.catalog, persons, rng)
    m, _ = draw_missions(spec, world, persons, behaviour, rng)
    returns = np.flatnonzero(m.kind == CART_RETURN)
    assert returns.size > 100 and not m.abandon[returns].any()
    day = np.floor(m.time)
    for i in returns:
        before = np.flatnonzero((m.person == m.person[i]) & m.abandon & (m.time < m.time[i]))
        assert before.size and m.target[before[-1]] == m.target[i]  # the item left last
        assert ((day[i] - day[before] >= 1) & (day[i] - day[before] <= 14)).any()  # a cart that brought it
    again = m.kind == REPLENISH
    assert (
        again.any()
        and (m.target[again] == behaviour.cycle_item[m.person[again]]).all()
        and m.buys[again].all()
    )


def test_chunks_each_write_their_persons_intensity(tmp_path: Path) -> None:
    spec = replace(SPEC, n_customers=300, n_days=60, chunk_size=120)
    r = generate_retailer(tmp_path, spec)
    f = pq.ParquetFile(r.ground_truth_dir / GT_INTENSITY_FILE)
    assert f.num_row_groups == spec.n_chunks == 3
    first = [f.read_row_group(g).column(S.GT_PERSON_ID).to_pylist() for g in range(3)]
    number = [sorted({int(p[1:]) for p in persons}) for persons in first]
    assert number[0][-1] <= 120 < number[1][0] and number[1][-1] <= 240 < number[2][0]
    w = read_world(r)
    total = float(w.intensity[GT_INTENSITY].sum())
    assert abs(w.n_purchases - total) < 4 * np.sqrt(total)

"""Shopping missions of one chunk of persons: when, in which channel, about which item; and the expected
purchases behind them, day by day (the ground truth of purchase intensity).

Missions of a person are Poisson in each day, at rates :mod:`behaviour` makes move with time and the
person's own past:

- *regular* missions, online and in store, at the person's settled rate (propensity; omni persons split it)
  times season, weekday, their promotion response and their lifecycle (onboarding, habit, decline);
- a *first visit*: a channel window that opens inside the export (a late joiner, a channel shifter's new
  channel) opens with one mission on its first day, the trial that starts the relationship;
- *cart returns*: online missions in the days after an abandoned cart, about the abandoned item;
- *replenishment*: a mission about the person's replenished item around each of its due dates, in store or
  online (half each when both channels are open), on the channel's weekdays; it always buys.

An online mission buys with chance propensity / (propensity + buy_half_propensity) (a cart return: with
``cart_return_buy``); one that does not buy leaves its target in the cart with chance ``cart_abandon_share``.
Each mission is about a *target* item that follows the previous mission's target (complement or repeat):
the sequential signal a next-item model can learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.synthetic.behaviour import (
    Behaviour,
    cart_return_rate,
    lifecycle,
    promotion_factor,
    replenishment_rate,
    weekday_profile,
)
from data_prep.synthetic.persons import Persons
from data_prep.synthetic.spec import RetailerSpec
from data_prep.synthetic.world import ONLINE, STORE, Catalog, World, draw_categories

REGULAR, CART_RETURN, REPLENISH = range(3)  # mission kinds
# Relative volume by weekday (Mon..Sun) and by hour of day, per channel: stores peak at weekends and
# in the afternoon (open 10-22h), online peaks in the evening.
_WEEKDAY = np.array(
    [[1.0, 0.95, 0.95, 1.0, 0.9, 1.1, 1.2], [0.8, 0.8, 0.85, 0.9, 1.15, 1.9, 1.7]]  # online, store
)
# fmt: off
_ONLINE_HOURS = np.array([1.0, 0.5, 0.3, 0.2, 0.2, 0.3, 0.8, 1.5, 2.0, 2.2, 2.3, 2.5,
                          3.0, 2.6, 2.4, 2.4, 2.6, 3.0, 3.6, 4.5, 5.2, 5.5, 4.5, 2.5])
# fmt: on
_STORE_HOURS = np.array([0.0] * 10 + [1.5, 2.0, 2.5, 2.5, 2.4, 2.6, 3.0, 3.4, 3.6, 3.2, 2.5, 1.5] + [0.0] * 2)
_HOME_STORE_SHARE = 0.85  # store visits at the person's home store


@dataclass(frozen=True)
class Missions:
    person: np.ndarray  # (M,) local person index; rows sorted by (person, time)
    time: np.ndarray  # (M,) days since start: store visit / last session of an online mission
    is_store: np.ndarray  # (M,) bool: one store basket rather than online sessions
    buys: np.ndarray  # (M,) bool
    webroom: np.ndarray  # (M,) bool: online research, bought in store the next day
    store: np.ndarray  # (M,) store of the visit (store and webrooming missions)
    target: np.ndarray  # (M,) item index the mission is about
    abandon: np.ndarray  # (M,) bool: a non-buying online mission that leaves its target in the cart
    kind: np.ndarray  # (M,) REGULAR, CART_RETURN or REPLENISH


@dataclass(frozen=True)
class PurchaseRates:
    """Expected purchasing missions of each person on each day (P, D), as the simulator drew them."""

    online: np.ndarray  # buying online missions (their order is on the day, unless they webroom)
    store: np.ndarray  # store missions (each is a basket on the day)
    webroom: np.ndarray  # chance a buying online mission of the day buys in store the next day instead


@dataclass(frozen=True)
class _Rates:
    online: np.ndarray  # (P, D) regular online missions a day
    store: np.ndarray  # (P, D) regular store missions a day
    replenish_online: np.ndarray  # (P, D)
    replenish_store: np.ndarray  # (P, D)
    first_online: np.ndarray  # (P, D) int: 1 on the first day of a channel window that opens in the export
    first_store: np.ndarray  # (P, D) int
    online_open: np.ndarray  # (P, D) bool: inside the person's online window
    store_open: np.ndarray  # (P, D) bool


def draw_missions(
    spec: RetailerSpec, world: World, persons: Persons, behaviour: Behaviour, rng: np.random.Generator
) -> tuple[Missions, PurchaseRates]:
    """Every mission of the chunk and the expected purchases behind them (see the module docstring)."""
    rates = _mission_rates(spec, world, persons, behaviour)
    p_buy = (persons.propensity / (persons.propensity + spec.buy_half_propensity))[:, None]
    n_online = rng.poisson(rates.online) + rates.first_online
    n_buy = rng.binomial(n_online, p_buy)
    n_abandon = rng.binomial(n_online - n_buy, spec.cart_abandon_share)
    returns = cart_return_rate(spec, n_abandon) * rates.online_open
    n_return = rng.poisson(returns)
    n_store = rng.poisson(rates.store) + rates.first_store
    rows = [
        _expand(n_online, n_buy, n_abandon, False, REGULAR),
        _expand(n_return, rng.binomial(n_return, spec.cart_return_buy), None, False, CART_RETURN),
        _expand(n_store, None, None, True, REGULAR),
        _expand(rng.poisson(rates.replenish_store), None, None, True, REPLENISH),
        _expand(rng.poisson(rates.replenish_online), None, None, False, REPLENISH),
    ]
    person, day, buys, abandon, is_store, kind = (np.concatenate(c) for c in zip(*rows, strict=True))
    time = day + draw_hours(is_store, rng) / 24.0
    in_store_window = rates.store_open[person, day]
    webroom = ~is_store & buys & in_store_window & (rng.random(person.size) < spec.webrooming_share)
    store = np.where(
        rng.random(person.size) < _HOME_STORE_SHARE,
        persons.home_store[person],
        rng.integers(0, spec.n_stores, person.size),
    )
    order = np.lexsort((time, person))
    person, kind, abandon = person[order], kind[order], abandon[order]
    missions = Missions(
        person=person,
        time=time[order],
        is_store=is_store[order],
        buys=buys[order],
        webroom=webroom[order],
        store=store[order],
        target=_chain_targets(spec, world.catalog, person, kind, abandon, persons, behaviour, rng),
        abandon=abandon,
        kind=kind,
    )
    online_buy = (rates.online + rates.first_online) * p_buy + returns * spec.cart_return_buy
    store_buy = rates.store + rates.first_store + rates.replenish_store
    webroom_share = spec.webrooming_share * rates.store_open
    return missions, PurchaseRates(online_buy + rates.replenish_online, store_buy, webroom_share)


def _mission_rates(spec: RetailerSpec, world: World, persons: Persons, behaviour: Behaviour) -> _Rates:
    """Rates of regular and replenishment missions, by channel, and the first visits (see the module
    docstring and :mod:`behaviour`)."""
    calendar, n_days = world.calendar, spec.n_days
    life = lifecycle(spec, persons)
    online_open = _open(persons.online_window, n_days)
    store_open = _open(persons.store_window, n_days)
    online_days = weekday_profile(calendar, _WEEKDAY[ONLINE])
    store_days = weekday_profile(calendar, _WEEKDAY[STORE])
    settled = (persons.propensity * persons.rate_factor)[:, None] * calendar.season[None, :] * life
    online = spec.online_missions_per_day * settled * online_days
    online *= promotion_factor(spec, calendar, behaviour, store=False) * online_open
    store = spec.store_missions_per_day * settled * store_days
    store *= promotion_factor(spec, calendar, behaviour, store=True) * store_open
    replenish = replenishment_rate(spec, behaviour) * life * (online_open | store_open)
    to_store = np.where(online_open & store_open, 0.5, store_open.astype(np.float64))
    return _Rates(
        online=online,
        store=store,
        replenish_online=replenish * (1 - to_store) * online_days,
        replenish_store=replenish * to_store * store_days,
        first_online=_first_day(persons.online_window, n_days),
        first_store=_first_day(persons.store_window, n_days),
        online_open=online_open,
        store_open=store_open,
    )


def _open(window: np.ndarray, n_days: int) -> np.ndarray:
    """(P, D) bool: day d lies in the person's window [lo, hi)."""
    days = np.arange(n_days)[None, :]
    return (days >= window[:, :1]) & (days < window[:, 1:])


def _first_day(window: np.ndarray, n_days: int) -> np.ndarray:
    """(P, D) int: 1 on the first day of a window that opens inside the export (lo > 0), else 0."""
    days = np.arange(n_days)[None, :]
    lo, hi = window[:, :1], window[:, 1:]
    return ((days == lo) & (lo > 0) & (hi > lo)).astype(np.int64)


def _expand(
    counts: np.ndarray, n_buy: np.ndarray | None, n_abandon: np.ndarray | None, is_store: bool, kind: int
) -> tuple[np.ndarray, ...]:
    """(person, day, buys, abandon, is_store, kind) of ``counts`` (P, D) missions: in each cell the first
    ``n_buy`` buy (all when None), the next ``n_abandon`` abandon their cart (none when None)."""
    n_days = counts.shape[1]
    flat = counts.ravel()
    cell = np.repeat(np.arange(flat.size), flat)
    within = np.arange(cell.size) - np.repeat(np.cumsum(flat) - flat, flat)
    buy = flat if n_buy is None else n_buy.ravel()
    buys = within < buy[cell]
    abandon = (
        np.zeros(cell.size, bool) if n_abandon is None else ~buys & (within < (buy + n_abandon.ravel())[cell])
    )
    flags = np.full(cell.size, is_store), np.full(cell.size, kind, dtype=np.int8)
    return cell // n_days, cell % n_days, buys, abandon, *flags


def draw_hours(is_store: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fractional hour of day from the channel's hour profile."""
    u = rng.random(is_store.size)
    online = np.searchsorted(np.cumsum(_ONLINE_HOURS) / _ONLINE_HOURS.sum(), u, side="right")
    store = np.searchsorted(np.cumsum(_STORE_HOURS) / _STORE_HOURS.sum(), u, side="right")
    return np.minimum(np.where(is_store, store, online), 23) + rng.random(is_store.size)


def _chain_targets(
    spec: RetailerSpec,
    catalog: Catalog,
    person: np.ndarray,
    kind: np.ndarray,
    abandon: np.ndarray,
    persons: Persons,
    behaviour: Behaviour,
    rng: np.random.Generator,
) -> np.ndarray:
    """Target item of each mission (rows sorted by person, time): a complement of the previous mission's
    target, that target again, or a fresh popular item of a preferred category; a cart return is about the
    person's last abandoned item, a replenishment about their replenished item. Loops over the mission
    rank, vectorised over persons."""
    n = person.size
    fresh = catalog.sample(draw_categories(persons.pref_cum[person], rng), rng)
    u = rng.random(n)
    slot = rng.integers(0, spec.n_complements, n)
    rank = np.arange(n) - np.searchsorted(person, person, side="left")
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max(initial=-1)) + 2))
    target = fresh.copy()
    left = np.full(persons.gid.size, -1, dtype=np.int64)  # each person's last abandoned item so far
    for r in range(bounds.size - 1):
        idx = by_rank[bounds[r] : bounds[r + 1]]
        if r:
            prev = target[idx - 1]
            follow = catalog.complements[prev, slot[idx]]
            target[idx] = np.where(
                u[idx] < spec.follow_share,
                follow,
                np.where(u[idx] < spec.follow_share + spec.repeat_share, prev, fresh[idx]),
            )
        p = person[idx]
        back = (kind[idx] == CART_RETURN) & (left[p] >= 0)
        target[idx[back]] = left[p[back]]
        again = kind[idx] == REPLENISH
        target[idx[again]] = behaviour.cycle_item[p[again]]
        left[p[abandon[idx]]] = target[idx[abandon[idx]]]
    return target

"""Shopping missions of one chunk of persons: when, in which channel, and about which item.

Each mission is about a *target* item that follows the previous mission's target (complement or repeat):
the sequential signal a next-item model can learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.synthetic.persons import Persons
from data_prep.synthetic.spec import RetailerSpec
from data_prep.synthetic.world import ONLINE, STORE, Calendar, Catalog, World, draw_categories

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


def draw_missions(spec: RetailerSpec, world: World, persons: Persons, rng: np.random.Generator) -> Missions:
    """Poisson missions per person and channel inside the person's channel windows, at the calendar's
    weighted rate; at least one in every channel window, so every person appears in the data. An online
    mission buys with chance propensity / (propensity + buy_half_propensity)."""
    everyone = np.arange(persons.gid.size)
    counts = []
    for channel, rate in ((ONLINE, spec.online_missions_per_day), (STORE, spec.store_missions_per_day)):
        lo, hi = persons.window(channel == STORE).T
        scale = persons.propensity * persons.rate_factor * world.calendar.expected_days(channel, lo, hi)
        counts.append(np.where(hi > lo, np.maximum(rng.poisson(rate * scale), 1), 0))
    person = np.concatenate([np.repeat(everyone, counts[0]), np.repeat(everyone, counts[1])])
    is_store = np.repeat([False, True], [counts[0].sum(), counts[1].sum()])
    lo = np.where(is_store, persons.store_window[person, 0], persons.online_window[person, 0])
    hi = np.where(is_store, persons.store_window[person, 1], persons.online_window[person, 1])
    time = draw_times(world.calendar, lo, hi, is_store, rng)
    propensity = persons.propensity[person]
    buys = is_store | (rng.random(person.size) < propensity / (propensity + spec.buy_half_propensity))
    store_lo, store_hi = persons.store_window[person].T
    in_store_window = (store_lo <= time) & (time < store_hi)
    webroom = ~is_store & buys & in_store_window & (rng.random(person.size) < spec.webrooming_share)
    store = np.where(
        rng.random(person.size) < _HOME_STORE_SHARE,
        persons.home_store[person],
        rng.integers(0, spec.n_stores, person.size),
    )
    order = np.lexsort((time, person))
    person = person[order]
    return Missions(
        person=person,
        time=time[order],
        is_store=is_store[order],
        buys=buys[order],
        webroom=webroom[order],
        store=store[order],
        target=_chain_targets(spec, world.catalog, person, persons, rng),
    )


def draw_times(
    calendar: Calendar, lo: np.ndarray, hi: np.ndarray, is_store: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Days since start: a day in [lo, hi) weighted by weekday, season and promotions (rejection
    sampling), plus a time of day from the channel's hour profile."""
    channel = is_store.astype(np.int64)
    n_days = calendar.promo.size
    weekday = _WEEKDAY[:, (calendar.weekday0 + np.arange(n_days)) % 7]
    accept = weekday * calendar.weight
    accept = accept / accept.max(axis=1, keepdims=True)
    day = np.zeros(lo.size, dtype=np.int64)
    todo = np.arange(lo.size)
    while todo.size:
        d = np.floor(lo[todo] + rng.random(todo.size) * (hi[todo] - lo[todo])).astype(np.int64)
        ok = rng.random(todo.size) < accept[channel[todo], d]
        day[todo[ok]] = d[ok]
        todo = todo[~ok]
    return day + draw_hours(is_store, rng) / 24.0


def draw_hours(is_store: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fractional hour of day from the channel's hour profile."""
    u = rng.random(is_store.size)
    online = np.searchsorted(np.cumsum(_ONLINE_HOURS) / _ONLINE_HOURS.sum(), u, side="right")
    store = np.searchsorted(np.cumsum(_STORE_HOURS) / _STORE_HOURS.sum(), u, side="right")
    return np.minimum(np.where(is_store, store, online), 23) + rng.random(is_store.size)


def _chain_targets(
    spec: RetailerSpec, catalog: Catalog, person: np.ndarray, persons: Persons, rng: np.random.Generator
) -> np.ndarray:
    """Target item of each mission (rows sorted by person, time): a complement of the previous mission's
    target, that target again, or a fresh popular item of a preferred category. Loops over the mission
    rank, vectorised over persons."""
    n = person.size
    fresh = catalog.sample(draw_categories(persons.pref_cum[person], rng), rng)
    u = rng.random(n)
    slot = rng.integers(0, spec.n_complements, n)
    rank = np.arange(n) - np.searchsorted(person, person, side="left")
    target = fresh.copy()
    for r in range(1, int(rank.max(initial=0)) + 1):
        idx = np.flatnonzero(rank == r)
        prev = target[idx - 1]
        follow = catalog.complements[prev, slot[idx]]
        target[idx] = np.where(
            u[idx] < spec.follow_share,
            follow,
            np.where(u[idx] < spec.follow_share + spec.repeat_share, prev, fresh[idx]),
        )
    return target

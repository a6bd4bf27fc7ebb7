"""What every chunk of persons shares: catalogue, stores and kiosks, the calendar, and the id keys.

Drawn once per spec from its own stream (``SeedSequence(seed, spawn_key=(0,))``), so it does not depend on
how persons are chunked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_prep.synthetic import identities as I
from data_prep.synthetic.spec import RetailerSpec

MS_PER_DAY = 86_400_000
ONLINE, STORE = 0, 1  # channel rows of the calendar
PROMO_DAYS = 7
_PEAK_DAY_OF_YEAR = 349  # mid-December: the seasonal peak
# fmt: off
CATEGORY_WORDS = ("coffee", "tea", "snacks", "skincare", "haircare", "makeup", "fragrance", "shoes", "bags",
                  "jackets", "tshirts", "jeans", "dresses", "socks", "kitchen", "bedding", "lighting",
                  "storage", "toys", "books", "stationery", "sports", "outdoor", "headphones", "phone cases",
                  "pet food", "baby care", "wine", "cleaning", "vitamins")
CITIES = ("Shanghai", "Beijing", "Hangzhou", "Shenzhen", "Guangzhou", "Chengdu", "Nanjing", "Wuhan")
# fmt: on
ID_KINDS = ("device", "account", "email", "phone", "card", "event", "session", "order")


@dataclass(frozen=True)
class Catalog:
    item_ids: np.ndarray  # (I,) str; item indices are grouped by category
    category: np.ndarray  # (I,) int category index, non-decreasing
    price: np.ndarray  # (I,) float unit price
    cum: np.ndarray  # (I,) category + cumulative popularity within it; last item of category c is c + 1
    complements: np.ndarray  # (I, n_complements) item index
    category_names: np.ndarray  # (C,) str

    def sample(self, categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One popularity-weighted item index per entry of ``categories``."""
        u = np.minimum(rng.random(categories.size), 1 - 1e-9)  # keep c + u < c + 1 after rounding
        return np.searchsorted(self.cum, categories + u, side="right")


@dataclass(frozen=True)
class Stores:
    ids: np.ndarray  # (S,) str "ST001"
    cities: np.ndarray  # (S,) str
    ip: np.ndarray  # (S,) int64 public IPv4 address of the store network (kiosks browse from it)
    kiosk_device: np.ndarray  # (S,) int64 global device index of the store's kiosk, -1 without one


@dataclass(frozen=True)
class Calendar:
    season: np.ndarray  # (n_days,) relative daily volume of the season (mean about 1)
    promo: np.ndarray  # (n_days,) bool: a promotion day
    post_promo: np.ndarray  # (n_days,) bool: one of the PROMO_DAYS days after a promotion week
    weekday0: int  # weekday of day 0 (Monday = 0)


@dataclass(frozen=True)
class World:
    catalog: Catalog
    stores: Stores
    calendar: Calendar
    keys: dict[str, int]  # per id kind: the key of its bijection


def draw_world(spec: RetailerSpec) -> World:
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(0,)))
    catalog = _build_catalog(spec, rng)
    keys = {kind: int(k) for kind, k in zip(ID_KINDS, rng.integers(0, 2**62, len(ID_KINDS)), strict=True)}
    kiosk_stores = rng.choice(spec.n_stores, spec.n_kiosks, replace=False)
    kiosk_device = np.full(spec.n_stores, -1, dtype=np.int64)
    kiosk_device[kiosk_stores] = 2 * spec.n_customers + np.arange(spec.n_kiosks)  # after persons' devices
    stores = Stores(
        ids=np.array([f"ST{s + 1:03d}" for s in range(spec.n_stores)]),
        cities=rng.choice(np.array(CITIES), spec.n_stores),
        ip=(202 << 24) + rng.integers(96 << 16, 112 << 16, spec.n_stores),  # 202.96-111.x.y
        kiosk_device=np.where(
            kiosk_device >= 0, I.permute(np.maximum(kiosk_device, 0), 16**12, keys["device"]), -1
        ),
    )
    return World(catalog, stores, _build_calendar(spec, rng), keys)


def _build_calendar(spec: RetailerSpec, rng: np.random.Generator) -> Calendar:
    """Season: a cosine over the year (peak mid-December). Promotions: a week every promo_interval_days,
    the first at a random offset (how each person responds: :mod:`behaviour`)."""
    dates = pd.date_range(spec.start, periods=spec.n_days, freq="D")
    season = 1 + spec.seasonal_amplitude * np.cos(2 * np.pi * (dates.dayofyear - _PEAK_DAY_OF_YEAR) / 365.25)
    promo = np.zeros(spec.n_days, dtype=bool)
    after = np.zeros(spec.n_days, dtype=bool)
    if spec.promo_interval_days:
        first = int(rng.integers(0, spec.promo_interval_days))
        for s in range(first, spec.n_days, spec.promo_interval_days):
            promo[s : s + PROMO_DAYS] = True
            after[s + PROMO_DAYS : s + 2 * PROMO_DAYS] = True
    return Calendar(
        season=season.to_numpy(), promo=promo, post_promo=after & ~promo, weekday0=int(dates[0].weekday())
    )


def _build_catalog(spec: RetailerSpec, rng: np.random.Generator) -> Catalog:
    """Items (prices end in .90, log-normal around a per-category level) and their complements."""
    n, n_cat = spec.n_items, spec.n_categories
    # every category holds at least one item
    category = np.sort(np.concatenate([np.arange(n_cat), rng.integers(0, n_cat, n - n_cat)]))
    log_price = rng.normal(np.log(35.0), 0.8, n_cat)[category] + rng.normal(0.0, 0.35, n)
    price = np.floor(np.exp(log_price)) + 0.9
    rank = pd.Series(rng.random(n)).groupby(category).rank(method="first").to_numpy()
    weight = pd.Series(rank**-1.1)  # Zipf popularity within the category, in random item order
    within = (weight.groupby(category).cumsum() / weight.groupby(category).transform("sum")).to_numpy()
    last_of_category = np.r_[category[1:] != category[:-1], True]
    names = [
        CATEGORY_WORDS[c % len(CATEGORY_WORDS)]
        + (f" {c // len(CATEGORY_WORDS)}" if c >= len(CATEGORY_WORDS) else "")
        for c in range(n_cat)
    ]
    return Catalog(
        item_ids=np.array([f"SKU{v:05d}" for v in rng.permutation(n) + 1]),
        category=category,
        price=price,
        cum=category + np.where(last_of_category, 1.0, within),
        complements=_draw_complements(category, n_cat, spec.n_complements, rng),
        category_names=np.array(names),
    )


def _draw_complements(category: np.ndarray, n_cat: int, n_slots: int, rng: np.random.Generator) -> np.ndarray:
    """(I, n_slots) complement items: same category (30%) or one of two related categories, uniform within
    the category (so complements are often long-tail items that popularity alone does not predict)."""
    n = category.size
    counts = np.bincount(category, minlength=n_cat)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    related = (np.arange(n_cat)[:, None] + rng.integers(1, max(n_cat, 2), (n_cat, 2))) % n_cat
    pick = rng.choice(3, size=(n, n_slots), p=[0.3, 0.4, 0.3])
    cat = np.where(pick == 0, category[:, None], related[category[:, None], np.maximum(pick - 1, 0)])
    comp = starts[cat] + (rng.random(cat.shape) * counts[cat]).astype(np.int64)
    own = comp == np.arange(n)[:, None]
    return np.where(own, starts[cat] + (comp - starts[cat] + 1) % counts[cat], comp)


def draw_categories(pref_cum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One category per row of a (n, C) cumulative preference matrix."""
    u = rng.random((pref_cum.shape[0], 1))
    return np.minimum((u >= pref_cum).sum(axis=1), pref_cum.shape[1] - 1)


def group_starts(groups: np.ndarray) -> np.ndarray:
    """True at the first row of each run of equal values (works on empty arrays)."""
    return np.diff(groups, prepend=groups[:1] - 1) != 0

"""Synthetic O2O retailer: writes the raw source files (``01_raw``) and the truth behind them (``ground_truth``).

The world. Items have a category, a log-normal price and Zipf popularity within their category, and a few
*complement* items (often in a related category). Persons are online-only, offline-only or omni, with a latent
propensity (mean 1), 1-3 preferred categories, an active window (late joiners, lapsers) and identifiers.
Persons shop in *missions*. A store mission is one basket. An online mission is 1..n sessions over the days
before its decision time: each session is a walk over items (complement / same category / preferred
category), with searches, add-to-carts and removals; only the last session of a buying mission orders, so
browsing and abandoned carts precede purchases. Omni persons sometimes research online and buy in store the
next day. Each mission is about a *target* item that follows the previous mission's target (complement or
repeat), which is the sequential signal a next-item model can learn.

Raw files record only what the source systems would see; the person behind every raw identifier value is in
``ground_truth/identifiers.csv``. All randomness comes from one ``numpy.random.default_rng(spec.seed)`` drawn
in a fixed order, so a spec always gives byte-identical files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep import schema as S

RAW_DIR = S.RAW_DIR
GT_IDENTIFIER = S.GT_IDENTIFIER
KIND_ONLINE_ONLY, KIND_OFFLINE_ONLY, KIND_OMNI = "online_only", "offline_only", "omni"
KINDS = (KIND_ONLINE_ONLY, KIND_OFFLINE_ONLY, KIND_OMNI)

GT_IDENTIFIER_COLUMNS = (S.IDENTIFIER_TYPE, GT_IDENTIFIER, S.GT_PERSON_ID)
GT_PERSON_COLUMNS = (S.GT_PERSON_ID, S.GT_KIND, S.GT_PROPENSITY)

_ONLINE, _OFFLINE, _OMNI = 0, 1, 2  # kind codes (index into KINDS)
_MS_PER_DAY = 86_400_000
# Working columns of in-memory tables; never written (writers select the schema columns).
_PERSON, _SESSION, _STEP, _KEY, _TYPE = "_person", "_session", "_step", "_key", "_type"
_ITEM, _QTY, _MS, _JUMPED = "_item", "_qty", "_ms", "_jumped"
_REMOVE_KEY, _ORDER_KEY = 10_000, 20_000  # in-session sort keys: removals, then order lines, after all views
_MAX_VIEWS = 40

# fmt: off
_CATEGORY_WORDS = ("coffee", "tea", "snacks", "skincare", "haircare", "makeup", "fragrance", "shoes", "bags",
                   "jackets", "tshirts", "jeans", "dresses", "socks", "kitchen", "bedding", "lighting",
                   "storage", "toys", "books", "stationery", "sports", "outdoor", "headphones", "phone cases",
                   "pet food", "baby care", "wine", "cleaning", "vitamins")
_QUERY_MODIFIERS = ("", "", "", "", "sale", "new", "cheap", "best", "gift")
_CITIES = ("Shanghai", "Beijing", "Hangzhou", "Shenzhen", "Guangzhou", "Chengdu", "Nanjing", "Wuhan")
_FIRST_NAMES = ("alice", "bob", "chloe", "david", "emma", "frank", "grace", "henry", "iris", "jack", "kevin",
                "lily", "mia", "nina", "oscar", "peter", "queenie", "rose", "sam", "tina", "vivian", "wei",
                "xin", "yan", "zoe", "jun", "ming", "hui", "lei", "fang")
_LAST_NAMES = ("wang", "li", "zhang", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou", "xu", "sun", "ma",
               "zhu", "hu", "guo", "he", "lin", "luo", "gao")
_EMAIL_DOMAINS = ("mail.com", "qq.com", "163.com", "gmail.com", "outlook.com")
_PHONE_PREFIXES = ("130", "131", "132", "135", "136", "137", "138", "139", "150", "151", "158", "186", "188")
# Relative volume by weekday (Mon..Sun) and by hour of day, per channel: stores peak at weekends and
# in the afternoon (open 10-22h), online peaks in the evening.
_ONLINE_WEEKDAY = np.array([1.0, 0.95, 0.95, 1.0, 0.9, 1.1, 1.2])
_STORE_WEEKDAY = np.array([0.8, 0.8, 0.85, 0.9, 1.15, 1.9, 1.7])
_ONLINE_HOURS = np.array([1.0, 0.5, 0.3, 0.2, 0.2, 0.3, 0.8, 1.5, 2.0, 2.2, 2.3, 2.5,
                          3.0, 2.6, 2.4, 2.4, 2.6, 3.0, 3.6, 4.5, 5.2, 5.5, 4.5, 2.5])
# fmt: on
_STORE_HOURS = np.array([0.0] * 10 + [1.5, 2.0, 2.5, 2.5, 2.4, 2.6, 3.0, 3.4, 3.6, 3.2, 2.5, 1.5] + [0.0] * 2)
# Mean seconds since the previous event of the session, by event type.
_GAP_SECONDS = {
    S.EV_SEARCH: 12.0,
    S.EV_VIEW: 35.0,
    S.EV_ADD_TO_CART: 10.0,
    S.EV_REMOVE_FROM_CART: 30.0,
    S.EV_ORDER: 80.0,
}


@dataclass(frozen=True)
class RetailerSpec:
    """Knobs of the synthetic retailer. Defaults: 5k persons over 120 days, ~0.38M online events, ~44k POS
    lines, ~2.3k loyalty members (seed 0)."""

    n_customers: int = 5000  # persons simulated (all kinds)
    seed: int = 0  # seed of the single random generator; same spec -> byte-identical files
    start: str = "2026-01-05"  # first day of the export window, UTC
    n_days: int = 120  # length of the export window in days
    n_items: int = 600  # catalogue size
    n_categories: int = 24  # item categories (named after retail words)
    n_stores: int = 12  # physical stores
    kind_shares: tuple[float, float, float] = (0.35, 0.30, 0.35)  # online_only, offline_only, omni
    online_missions_per_day: float = 0.09  # online missions a day at propensity 1 (omni: times omni_rate)
    store_missions_per_day: float = 0.06  # store visits a day at propensity 1 (omni: times omni_rate)
    omni_rate: float = 0.7  # omni persons split their shopping over both channels
    buy_half_propensity: float = 1.5  # propensity at which an online mission ends in a purchase half the time
    late_join_share: float = 0.2  # persons whose activity starts inside the window
    lapse_share: float = 0.25  # persons who stop shopping for good partway through the window
    webrooming_share: float = 0.3  # buying online missions of omni persons that end in a store the next day
    follow_share: float = 0.45  # missions whose target is a complement of the previous mission's target
    repeat_share: float = 0.15  # missions whose target is the previous mission's target again
    complement_step: float = 0.35  # chance the next viewed item is a complement of the current one
    same_category_step: float = 0.45  # chance it is another item of the current category (else: a jump)
    n_complements: int = 3  # complement items per item
    member_share: float = 0.7  # offline/omni persons holding a loyalty card
    crm_email_share: float = 0.7  # members who gave the CRM their email
    account_share: float = 0.75  # online/omni persons with an online account

    def __post_init__(self) -> None:
        if min(self.n_customers, self.n_days, self.n_stores, self.n_complements) < 1:
            raise ValueError("n_customers, n_days, n_stores and n_complements must be >= 1")
        if not 1 <= self.n_categories <= self.n_items:
            raise ValueError("need 1 <= n_categories <= n_items")
        if len(self.kind_shares) != 3 or min(self.kind_shares) < 0 or abs(sum(self.kind_shares) - 1) > 1e-9:
            raise ValueError("kind_shares must be three non-negative shares summing to 1")
        shares = (
            self.omni_rate,
            self.late_join_share,
            self.lapse_share,
            self.webrooming_share,
            self.member_share,
            self.crm_email_share,
            self.account_share,
        )
        if not all(0.0 <= x <= 1.0 for x in shares):
            raise ValueError("shares and rates must lie in [0, 1]")
        if self.follow_share + self.repeat_share > 1 or self.complement_step + self.same_category_step > 1:
            raise ValueError("follow+repeat and complement_step+same_category_step must be <= 1")
        rates = (
            self.online_missions_per_day,
            self.store_missions_per_day,
            self.follow_share,
            self.repeat_share,
            self.complement_step,
            self.same_category_step,
        )
        if min(rates) < 0 or self.buy_half_propensity <= 0:
            raise ValueError("rates and probabilities must be >= 0, buy_half_propensity > 0")
        pd.Timestamp(self.start)  # raises on a malformed date


@dataclass(frozen=True)
class GeneratedRetailer:
    """Where the files went and how much was written."""

    raw_dir: Path
    ground_truth_dir: Path
    n_persons: int
    n_online_events: int
    n_pos_lines: int
    n_members: int


@dataclass(frozen=True)
class _Catalog:
    item_ids: np.ndarray  # (I,) str; item indices are grouped by category
    category: np.ndarray  # (I,) int category index, non-decreasing
    price: np.ndarray  # (I,) float unit price
    cum: np.ndarray  # (I,) category + cumulative popularity within it; last item of category c is c + 1
    complements: np.ndarray  # (I, n_complements) item index
    category_names: np.ndarray  # (C,) str
    store_ids: np.ndarray  # (n_stores,) str
    store_cities: np.ndarray  # (n_stores,) str

    def sample(self, categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One popularity-weighted item index per entry of ``categories``."""
        u = np.minimum(rng.random(categories.size), 1 - 1e-9)  # keep c + u < c + 1 after rounding
        return np.searchsorted(self.cum, categories + u, side="right")


@dataclass(frozen=True)
class _Persons:
    kind: np.ndarray  # (P,) kind code
    propensity: np.ndarray  # (P,) mean 1; scales the mission rate and the chance a mission buys
    pref_cum: np.ndarray  # (P, C) cumulative category preference
    active_from: np.ndarray  # (P,) first day the person can shop
    active_to: np.ndarray  # (P,) day the person lapses (n_days when never)
    home_store: np.ndarray  # (P,) store index
    staples: np.ndarray  # (P, 3) items bought again and again in store
    devices: np.ndarray  # (P, 2) canonical device ids; the second is used only when n_devices == 2
    n_devices: np.ndarray  # (P,) 1 or 2
    device_channel: np.ndarray  # (P, 2) index into ONLINE_CHANNELS
    account: np.ndarray  # (P,) object: canonical account id, None without an account
    login_prob: np.ndarray  # (P,) chance a web / mini-program session is logged in
    email: np.ndarray  # (P,) canonical email, typed at checkout
    phone: np.ndarray  # (P,) canonical phone: 11 digits
    card: np.ndarray  # (P,) object: loyalty card, None for non-members
    crm_email: np.ndarray  # (P,) bool: the member gave the CRM the email


@dataclass(frozen=True)
class _Missions:
    person: np.ndarray  # (M,) rows sorted by (person, time)
    time: np.ndarray  # (M,) days since start: store visit / last session of an online mission
    is_store: np.ndarray  # (M,) bool: one store basket rather than online sessions
    buys: np.ndarray  # (M,) bool
    webroom: np.ndarray  # (M,) bool: online research, bought in store the next day
    target: np.ndarray  # (M,) item index the mission is about


@dataclass(frozen=True)
class _Sessions:
    person: np.ndarray  # (N,)
    start_ms: np.ndarray  # (N,) ms since start (may be outside the window: such events are dropped)
    device: np.ndarray  # (N,) canonical device id
    channel: np.ndarray  # (N,) index into ONLINE_CHANNELS
    account: np.ndarray  # (N,) object: account id when logged in, else None
    ordering: np.ndarray  # (N,) bool: the session ends in an order
    target: np.ndarray  # (N,) mission target item
    target_pos: np.ndarray  # (N,) view step where the target is shown, -1 when not shown
    n_views: np.ndarray  # (N,)


def generate_retailer(
    out: Path, spec: RetailerSpec, progress: Callable[[str], None] | None = None
) -> GeneratedRetailer:
    """Simulate the retailer of ``spec``; write ``out/01_raw`` and ``out/ground_truth`` (overwriting).

    Raw timestamps lie in [start, start + n_days) UTC: activity falling outside the window (early sessions
    of a mission, visits after the last day) is cut, as an export would. ``progress`` gets one line a phase.
    """
    say = progress or (lambda _msg: None)
    rng = np.random.default_rng(spec.seed)
    say("catalogue")
    catalog = _build_catalog(spec, rng)
    say("persons")
    persons = _draw_persons(spec, catalog, rng)
    say("missions")
    missions = _draw_missions(spec, persons, catalog, rng)
    say("online sessions")
    sessions = _draw_sessions(spec, missions, persons, catalog, rng)
    online = _build_online_events(spec, sessions, persons, catalog, rng)
    say(f"online events: {len(online):,}")
    pos = _build_pos_lines(spec, missions, persons, catalog, rng)
    say(f"pos lines: {len(pos):,}")
    members = _build_members(spec, persons, pos, catalog, rng)
    say(f"crm members: {len(members):,}")
    online = _render_identifiers(
        online, {S.ON_DEVICE_ID: S.ID_DEVICE, S.ON_ACCOUNT_ID: S.ID_ACCOUNT, S.ON_EMAIL: S.ID_EMAIL}
    )
    pos = _render_identifiers(pos, {S.POS_LOYALTY_CARD: S.ID_CARD, S.POS_PHONE: S.ID_PHONE})
    members = _render_identifiers(
        members, {S.CRM_LOYALTY_CARD: S.ID_CARD, S.CRM_PHONE: S.ID_PHONE, S.CRM_EMAIL: S.ID_EMAIL}
    )
    say("writing files")
    raw, truth = out / RAW_DIR, out / S.GROUND_TRUTH_DIR
    _write_raw(raw, online, pos, members, catalog)
    _write_csv(_identifier_truth(online, pos, members), truth / S.GT_IDENTIFIERS_FILE, GT_IDENTIFIER_COLUMNS)
    _write_csv(_person_truth(persons), truth / S.GT_PERSONS_FILE, GT_PERSON_COLUMNS, "%.4f")
    return GeneratedRetailer(
        raw_dir=raw,
        ground_truth_dir=truth,
        n_persons=spec.n_customers,
        n_online_events=len(online),
        n_pos_lines=len(pos),
        n_members=len(members),
    )


def render_identifier(id_type: str, canonical: str) -> str:
    """The text a source system writes for one identifier (one of S.IDENTIFIER_TYPES).

    Today every value has one canonical format; format noise (spaces, case, other phone layouts) belongs here,
    and ground truth is built from the rendered files, so it follows automatically.
    """
    if id_type == S.ID_PHONE:
        return f"+86 {canonical[:3]}-{canonical[3:7]}-{canonical[7:]}"
    return canonical


def _render_identifiers(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Replace canonical identifier values in ``columns`` (column -> identifier type) by rendered text."""
    frame = frame.copy()
    for column, id_type in columns.items():
        values = frame[column]
        rendered = {v: render_identifier(id_type, v) for v in values.dropna().unique()}
        frame[column] = values.map(rendered).astype(object).where(values.notna(), None)
    return frame


# ----------------------------------------------------------------------------------------- catalogue
def _build_catalog(spec: RetailerSpec, rng: np.random.Generator) -> _Catalog:
    """Items (prices end in .90, log-normal around a per-category level), complements and stores."""
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
        _CATEGORY_WORDS[c % len(_CATEGORY_WORDS)]
        + (f" {c // len(_CATEGORY_WORDS)}" if c >= len(_CATEGORY_WORDS) else "")
        for c in range(n_cat)
    ]
    return _Catalog(
        item_ids=np.array([f"SKU{v:05d}" for v in rng.permutation(n) + 1]),
        category=category,
        price=price,
        cum=category + np.where(last_of_category, 1.0, within),
        complements=_draw_complements(category, n_cat, spec.n_complements, rng),
        category_names=np.array(names),
        store_ids=np.array([f"ST{s + 1:03d}" for s in range(spec.n_stores)]),
        store_cities=rng.choice(np.array(_CITIES), spec.n_stores),
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


def _draw_categories(pref_cum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One category per row of a (n, C) cumulative preference matrix."""
    u = rng.random((pref_cum.shape[0], 1))
    return np.minimum((u >= pref_cum).sum(axis=1), pref_cum.shape[1] - 1)


def _group_starts(groups: np.ndarray) -> np.ndarray:
    """True at the first row of each run of equal values (works on empty arrays)."""
    return np.diff(groups, prepend=groups[:1] - 1) != 0


def _masked(keep: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Object array: ``values`` where ``keep``, None (a null / empty raw field) elsewhere."""
    out = np.full(values.shape, None, dtype=object)
    out[keep] = values[keep]
    return out


# ----------------------------------------------------------------------------------------- persons
def _draw_persons(spec: RetailerSpec, catalog: _Catalog, rng: np.random.Generator) -> _Persons:
    """Kinds, Gamma(1.3) propensity (mean 1), preferences and identifiers. Late joiners start on a day in the
    first 75% of the window; lapsers stop after 15-90% of what is left of it."""
    n = spec.n_customers
    kind = rng.choice(3, size=n, p=list(spec.kind_shares))
    late = rng.random(n) < spec.late_join_share
    active_from = np.where(late, np.floor(rng.random(n) * 0.75 * spec.n_days), 0.0)
    lapse = rng.random(n) < spec.lapse_share
    lapse_day = active_from + np.ceil((spec.n_days - active_from) * rng.uniform(0.15, 0.9, n))
    pref_cum = _draw_preferences(n, catalog.category_names.size, rng)
    staples = catalog.sample(_draw_categories(np.repeat(pref_cum, 3, axis=0), rng), rng).reshape(n, 3)
    return _Persons(
        kind=kind,
        propensity=rng.gamma(1.3, 1 / 1.3, n),
        pref_cum=pref_cum,
        active_from=active_from,
        active_to=np.where(lapse, np.minimum(lapse_day, spec.n_days), float(spec.n_days)),
        home_store=rng.integers(0, spec.n_stores, n),
        staples=staples,
        **_draw_identities(spec, kind, rng),
    )


def _draw_preferences(n: int, n_cat: int, rng: np.random.Generator) -> np.ndarray:
    """(n, C) cumulative category preference: 1-3 favourite categories (drawn by a Zipf category
    popularity) share 90% by Dirichlet weights; 10% is spread over all categories."""
    k = min(3, n_cat)
    popularity = np.log(rng.permutation(n_cat) + 1.0) * -0.7
    top = np.argsort(-(popularity + rng.gumbel(size=(n, n_cat))), axis=1, kind="stable")[:, :k]
    n_top = np.minimum(rng.choice([1, 2, 3], size=n, p=[0.4, 0.4, 0.2]), k)
    weight = rng.dirichlet(np.ones(k), n) * (np.arange(k) < n_top[:, None])
    pref = np.full((n, n_cat), 0.1 / n_cat)
    pref[np.arange(n)[:, None], top] += 0.9 * weight / weight.sum(axis=1, keepdims=True)
    cum = np.cumsum(pref, axis=1)
    return cum / cum[:, -1:]


def _draw_identities(spec: RetailerSpec, kind: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Canonical identifiers of every person (whether a source ever records them depends on behaviour)."""
    n = kind.size
    devices = np.array([f"d-{v:012x}" for v in _draw_unique_ints(rng, 2 * n, 0, 16**12)]).reshape(n, 2)
    main_channel = rng.choice(3, size=n, p=[0.35, 0.45, 0.2])
    has_account = (kind != _OFFLINE) & (rng.random(n) < spec.account_share)
    accounts = np.array([f"acct-{v}" for v in _draw_unique_ints(rng, n, 10**6, max(10**7, 20 * n))], object)
    first = rng.choice(np.array(_FIRST_NAMES), n)
    last = rng.choice(np.array(_LAST_NAMES), n)
    domain = rng.choice(np.array(_EMAIL_DOMAINS), n)
    number = _draw_unique_ints(rng, n, 1, max(1000, 20 * n))  # makes every email unique
    prefix = rng.choice(np.array(_PHONE_PREFIXES), n)
    member = (kind != _ONLINE) & (rng.random(n) < spec.member_share)
    cards = np.array([f"LC{v}" for v in _draw_unique_ints(rng, n, 10**9, 10**10)], object)
    return {
        "devices": devices,
        "n_devices": 1 + (rng.random(n) < 0.4),
        "device_channel": np.stack([main_channel, rng.integers(0, 3, n)], axis=1),
        "account": _masked(has_account, accounts),
        "login_prob": rng.beta(3.0, 2.0, n),
        "email": np.array(
            [f"{a}.{b}{k}@{d}" for a, b, k, d in zip(first, last, number, domain, strict=True)]
        ),
        "phone": np.array(
            [f"{p}{v:08d}" for p, v in zip(prefix, _draw_unique_ints(rng, n, 0, 10**8), strict=True)]
        ),
        "card": _masked(member, cards),
        "crm_email": member & (rng.random(n) < spec.crm_email_share),
    }


def _draw_unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """``n`` distinct integers in [low, high) (collisions are redrawn; needs high - low >> n)."""
    values = rng.integers(low, high, n)
    while True:
        _, first = np.unique(values, return_index=True)
        clash = np.ones(n, dtype=bool)
        clash[first] = False
        if not clash.any():
            return values
        values[clash] = rng.integers(low, high, int(clash.sum()))


# ----------------------------------------------------------------------------------------- missions
def _draw_missions(
    spec: RetailerSpec, persons: _Persons, catalog: _Catalog, rng: np.random.Generator
) -> _Missions:
    """Poisson missions per person and channel inside the active window; at least one per channel the
    person's kind uses, so every person appears in the data. An online mission buys with chance
    propensity / (propensity + buy_half_propensity)."""
    kind = persons.kind
    scale = persons.propensity * (persons.active_to - persons.active_from)
    scale = scale * np.where(kind == _OMNI, spec.omni_rate, 1.0)
    n_online = np.where(kind != _OFFLINE, np.maximum(rng.poisson(spec.online_missions_per_day * scale), 1), 0)
    n_store = np.where(kind != _ONLINE, np.maximum(rng.poisson(spec.store_missions_per_day * scale), 1), 0)
    everyone = np.arange(kind.size)
    person = np.concatenate([np.repeat(everyone, n_online), np.repeat(everyone, n_store)])
    is_store = np.repeat([False, True], [n_online.sum(), n_store.sum()])
    time = _draw_times(spec, persons.active_from[person], persons.active_to[person], is_store, rng)
    propensity = persons.propensity[person]
    buys = is_store | (rng.random(person.size) < propensity / (propensity + spec.buy_half_propensity))
    webroom = ~is_store & buys & (kind[person] == _OMNI) & (rng.random(person.size) < spec.webrooming_share)
    order = np.lexsort((time, person))
    person = person[order]
    return _Missions(
        person=person,
        time=time[order],
        is_store=is_store[order],
        buys=buys[order],
        webroom=webroom[order],
        target=_chain_targets(spec, person, persons, catalog, rng),
    )


def _draw_times(
    spec: RetailerSpec, lo: np.ndarray, hi: np.ndarray, is_store: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Days since start: a day in [lo, hi) weighted by weekday (rejection sampling) plus a time of day."""
    weekday0 = pd.Timestamp(spec.start).weekday()
    accept = np.stack([_ONLINE_WEEKDAY / _ONLINE_WEEKDAY.max(), _STORE_WEEKDAY / _STORE_WEEKDAY.max()])
    day = np.zeros(lo.size, dtype=np.int64)
    todo = np.arange(lo.size)
    while todo.size:
        d = np.floor(lo[todo] + rng.random(todo.size) * (hi[todo] - lo[todo])).astype(np.int64)
        ok = rng.random(todo.size) < accept[is_store[todo].astype(int), (weekday0 + d) % 7]
        day[todo[ok]] = d[ok]
        todo = todo[~ok]
    return day + _draw_hours(is_store, rng) / 24.0


def _draw_hours(is_store: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fractional hour of day from the channel's hour profile."""
    u = rng.random(is_store.size)
    online = np.searchsorted(np.cumsum(_ONLINE_HOURS) / _ONLINE_HOURS.sum(), u, side="right")
    store = np.searchsorted(np.cumsum(_STORE_HOURS) / _STORE_HOURS.sum(), u, side="right")
    return np.minimum(np.where(is_store, store, online), 23) + rng.random(is_store.size)


def _chain_targets(
    spec: RetailerSpec, person: np.ndarray, persons: _Persons, catalog: _Catalog, rng: np.random.Generator
) -> np.ndarray:
    """Target item of each mission (rows sorted by person, time): a complement of the previous mission's
    target, that target again, or a fresh popular item of a preferred category. Loops over the mission
    rank, vectorised over persons."""
    n = person.size
    fresh = catalog.sample(_draw_categories(persons.pref_cum[person], rng), rng)
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


# ----------------------------------------------------------------------------------------- online
def _draw_sessions(
    spec: RetailerSpec, missions: _Missions, persons: _Persons, catalog: _Catalog, rng: np.random.Generator
) -> _Sessions:
    """Sessions of the online missions. The last one sits at the mission time; earlier ones follow
    exponential gaps (mean 1.3 days) backwards. Only the last session of a buying, non-webrooming mission
    orders. Sessions are logged in with the person's login chance (app: 0.9; ordering: at least 0.7)."""
    m = np.flatnonzero(~missions.is_store)
    n_sessions = 1 + rng.poisson(np.where(missions.buys[m], 1.2, 0.5))
    mission = np.repeat(m, n_sessions)
    from_last = np.arange(mission.size) - np.searchsorted(mission, mission, side="right") + 1  # 0, -1, ..
    gap = np.where(from_last == 0, 0.0, rng.exponential(1.3, mission.size))
    back = pd.Series(gap[::-1]).groupby(mission[::-1]).cumsum().to_numpy()[::-1]  # summed gaps to the end
    time = missions.time[mission] - back
    other_day = np.floor(time) < np.floor(missions.time[mission])
    time = np.where(other_day, np.floor(time) + _draw_hours(np.zeros(time.size, bool), rng) / 24.0, time)
    person = missions.person[mission]
    slot = np.where(persons.n_devices[person] == 2, (rng.random(person.size) < 0.3).astype(int), 0)
    channel = persons.device_channel[person, slot]
    ordering = (from_last == 0) & missions.buys[mission] & ~missions.webroom[mission]
    p_login = np.where(channel == S.ONLINE_CHANNELS.index(S.CHANNEL_APP), 0.9, persons.login_prob[person])
    logged_in = rng.random(person.size) < np.where(ordering, np.maximum(p_login, 0.7), p_login)
    n_views = np.minimum(1 + rng.poisson(np.where(ordering, 6.0, 4.5)), _MAX_VIEWS)
    shown = ordering | (rng.random(person.size) < 0.8)
    return _Sessions(
        person=person,
        start_ms=np.round(time * _MS_PER_DAY).astype(np.int64),
        device=persons.devices[person, slot],
        channel=channel,
        account=_masked(logged_in, persons.account[person]),
        ordering=ordering,
        target=missions.target[mission],
        target_pos=np.where(shown, rng.integers(0, n_views), -1),
        n_views=n_views,
    )


def _walk_views(
    spec: RetailerSpec, sessions: _Sessions, persons: _Persons, catalog: _Catalog, rng: np.random.Generator
) -> pd.DataFrame:
    """Viewed items of every session (_SESSION, _STEP, _ITEM, _JUMPED), stepped by position and vectorised
    across sessions. Each step moves to a complement, another item of the category, or jumps to a preferred
    category; the mission target is put at ``target_pos``. The walk starts in the target's category."""
    n, n_steps = sessions.person.size, int(sessions.n_views.max(initial=1))
    items = np.zeros((n, n_steps), dtype=np.int64)
    jumped = np.zeros((n, n_steps), dtype=bool)
    cur = catalog.sample(catalog.category[sessions.target], rng)
    pref_cum = persons.pref_cum[sessions.person]
    p_comp, p_same = spec.complement_step, spec.complement_step + spec.same_category_step
    for t in range(n_steps):
        if t:
            u = rng.random(n)
            comp = catalog.complements[cur, rng.integers(0, spec.n_complements, n)]
            same = catalog.sample(catalog.category[cur], rng)
            jump = catalog.sample(_draw_categories(pref_cum, rng), rng)
            cur = np.where(u < p_comp, comp, np.where(u < p_same, same, jump))
            jumped[:, t] = u >= p_same
        cur = np.where(sessions.target_pos == t, sessions.target, cur)
        items[:, t] = cur
    alive = np.arange(n_steps) < sessions.n_views[:, None]
    session, step = np.nonzero(alive)
    return pd.DataFrame({_SESSION: session, _STEP: step, _ITEM: items[alive], _JUMPED: jumped[alive]})


def _funnel_events(sessions: _Sessions, views: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Views plus the searches, add-to-carts, removals and order lines around them, in session order
    (_SESSION, _KEY). The target is carted for sure in an ordering session and with 35% (an abandoned cart)
    otherwise; other first views are carted with 10% / 5%. An order holds what is still in the cart."""
    s, step, item = (views[c].to_numpy() for c in (_SESSION, _STEP, _ITEM))
    ordering, is_target = sessions.ordering[s], item == sessions.target[s]
    first = ~views.duplicated([_SESSION, _ITEM]).to_numpy()
    cart = first & (
        rng.random(s.size) < np.where(is_target, np.where(ordering, 1.0, 0.35), np.where(ordering, 0.1, 0.05))
    )
    remove = cart & (rng.random(s.size) < np.where(is_target, np.where(ordering, 0.0, 0.25), 0.3))
    search = rng.random(s.size) < np.where(step == 0, 0.3, np.where(views[_JUMPED].to_numpy(), 0.6, 0.0))
    quantity = 1 + (rng.random(s.size) < 0.15) * rng.integers(1, 3, s.size)
    parts = (
        (search, 4 * step, S.EV_SEARCH),
        (np.ones(s.size, bool), 4 * step + 1, S.EV_VIEW),
        (cart, 4 * step + 2, S.EV_ADD_TO_CART),
        (remove, _REMOVE_KEY + step, S.EV_REMOVE_FROM_CART),
        (cart & ~remove & ordering, _ORDER_KEY + step, S.EV_ORDER),
    )
    frames = [
        pd.DataFrame({_SESSION: s[m], _KEY: key[m], _TYPE: etype, _ITEM: item[m], _QTY: quantity[m]})
        for m, key, etype in parts
    ]
    return pd.concat(frames, ignore_index=True).sort_values(
        [_SESSION, _KEY], kind="stable", ignore_index=True
    )


def _time_events(sessions: _Sessions, events: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """ms since start of every event: session start plus exponential gaps by event type; the lines of one
    order share a timestamp."""
    s, etype = events[_SESSION].to_numpy(), events[_TYPE].to_numpy()
    mean_ms = np.zeros(s.size)
    for name, seconds in _GAP_SECONDS.items():
        mean_ms[etype == name] = seconds * 1000
    gap = np.round(rng.exponential(1.0, s.size) * mean_ms).astype(np.int64)
    is_order = etype == S.EV_ORDER
    gap[_group_starts(s)] = 0
    gap[1:][is_order[1:] & is_order[:-1]] = 0
    return sessions.start_ms[s] + pd.Series(gap).groupby(s).cumsum().to_numpy()


def _build_online_events(
    spec: RetailerSpec, sessions: _Sessions, persons: _Persons, catalog: _Catalog, rng: np.random.Generator
) -> pd.DataFrame:
    """The rows of events.jsonl (canonical identifiers, plus _PERSON), sorted by time."""
    events = _funnel_events(sessions, _walk_views(spec, sessions, persons, catalog, rng), rng)
    ms = _time_events(sessions, events, rng)
    keep = (ms >= 0) & (ms < spec.n_days * _MS_PER_DAY)
    events, ms = events[keep], ms[keep]
    order = np.lexsort((events[_KEY].to_numpy(), events[_SESSION].to_numpy(), ms))
    events, ms = events.iloc[order], ms[order]
    s, etype, item = (events[c].to_numpy() for c in (_SESSION, _TYPE, _ITEM))
    is_search, is_order = etype == S.EV_SEARCH, etype == S.EV_ORDER
    priced = np.isin(etype, (S.EV_ADD_TO_CART, S.EV_REMOVE_FROM_CART, S.EV_ORDER))
    order_ids = np.array([f"o-{v:010d}" for v in _draw_unique_ints(rng, sessions.person.size, 0, 10**10)])
    query = np.full(s.size, None, dtype=object)
    words = catalog.category_names[catalog.category[item[is_search]]]  # the category viewed next
    modifier = rng.choice(np.array(_QUERY_MODIFIERS), words.size)
    query[is_search] = [f"{w} {m}".strip() for w, m in zip(words, modifier, strict=True)]
    person = sessions.person[s]
    return pd.DataFrame(
        {
            S.ON_EVENT_ID: [f"ev-{v:014x}" for v in _draw_unique_ints(rng, s.size, 0, 16**14)],
            S.ON_TS: _format_ts(spec, ms, iso=True),
            S.ON_CHANNEL: np.array(S.ONLINE_CHANNELS)[sessions.channel[s]],
            S.ON_DEVICE_ID: sessions.device[s],
            S.ON_ACCOUNT_ID: sessions.account[s],
            S.ON_SESSION_ID: np.array(
                [f"s-{v:012x}" for v in _draw_unique_ints(rng, sessions.person.size, 0, 16**12)]
            )[s],
            S.ON_EVENT_TYPE: etype,
            S.ON_ITEM_ID: _masked(~is_search, catalog.item_ids[item]),
            S.ON_QUERY: query,
            S.ON_QUANTITY: pd.arrays.IntegerArray(events[_QTY].to_numpy().astype(np.int64), mask=~priced),
            S.ON_PRICE: np.where(priced, catalog.price[item], np.nan),
            S.ON_ORDER_ID: _masked(is_order, order_ids[s]),
            S.ON_EMAIL: _masked(is_order, persons.email[person]),
            _PERSON: person,
        }
    )


def _format_ts(spec: RetailerSpec, ms: np.ndarray, iso: bool) -> np.ndarray:
    """ms since start -> "2026-01-05T10:22:33.120Z" (iso) or "2026-01-05 10:22:33" (whole seconds)."""
    stamps = np.datetime64(spec.start, "ms") + ms.astype("timedelta64[ms]")
    if iso:
        return np.datetime_as_string(stamps, unit="ms", timezone="UTC")
    text = np.datetime_as_string(stamps, unit="s")
    return np.char.replace(text, "T", " ") if text.size else text


# ----------------------------------------------------------------------------------------- stores
def _build_pos_lines(
    spec: RetailerSpec, missions: _Missions, persons: _Persons, catalog: _Catalog, rng: np.random.Generator
) -> pd.DataFrame:
    """The rows of pos_lines.csv (canonical identifiers, plus _PERSON and _MS), sorted by time. One basket per
    store mission and per webrooming mission (the day after). Members show the card 78% of the time, else
    type the phone 12%; non-members type a phone 6% of the time (e-receipt); the rest is anonymous."""
    visit = np.flatnonzero(missions.is_store | missions.webroom)
    next_day = np.floor(missions.time[visit]) + 1 + _draw_hours(np.ones(visit.size, bool), rng) / 24
    sec = np.floor(np.where(missions.is_store[visit], missions.time[visit], next_day) * 86_400).astype(
        np.int64
    )
    visit, sec = visit[sec < spec.n_days * 86_400], sec[sec < spec.n_days * 86_400]
    person = missions.person[visit]
    store = np.where(
        rng.random(visit.size) < 0.85, persons.home_store[person], rng.integers(0, spec.n_stores, visit.size)
    )
    u = rng.random(visit.size)
    member = pd.notna(persons.card[person])
    card = _masked(member & (u < 0.78), persons.card[person])
    phone = _masked(np.where(member, (u >= 0.78) & (u < 0.9), u < 0.06), persons.phone[person])
    basket, item = _basket_items(spec, missions.target[visit], person, persons, catalog, rng)
    lines = pd.DataFrame(
        {
            S.POS_TRANSACTION_ID: _transaction_ids(spec, catalog, sec, store)[basket],
            S.POS_LINE_NO: pd.Series(basket).groupby(basket).cumcount().to_numpy() + 1,
            S.POS_TS: _format_ts(spec, sec[basket] * 1000, iso=False),
            S.POS_STORE_ID: catalog.store_ids[store[basket]],
            S.POS_LOYALTY_CARD: card[basket],
            S.POS_PHONE: phone[basket],
            S.POS_ITEM_ID: catalog.item_ids[item],
            S.POS_QUANTITY: 1 + (rng.random(item.size) < 0.25) * rng.integers(1, 3, item.size),
            S.POS_UNIT_PRICE: catalog.price[item],
            _PERSON: person[basket],
            _MS: sec[basket] * 1000,
        }
    )
    return lines.sort_values([_MS, S.POS_TRANSACTION_ID, S.POS_LINE_NO], kind="stable", ignore_index=True)


def _transaction_ids(spec: RetailerSpec, catalog: _Catalog, sec: np.ndarray, store: np.ndarray) -> np.ndarray:
    """Ids like "ST003-20260105-0007": store, date and the basket's sequence number in that store that day."""
    day = sec // 86_400
    order = np.lexsort((sec, day, store))
    seq = np.empty(sec.size, dtype=np.int64)
    seq[order] = pd.Series(np.zeros(sec.size)).groupby([store[order], day[order]]).cumcount().to_numpy() + 1
    dates = np.datetime_as_string(np.datetime64(spec.start, "D") + day.astype("timedelta64[D]"))
    return np.array(
        [
            f"{catalog.store_ids[s]}-{d.replace('-', '')}-{q:04d}"
            for s, d, q in zip(store, dates, seq, strict=True)
        ]
    )


def _basket_items(
    spec: RetailerSpec,
    target: np.ndarray,
    person: np.ndarray,
    persons: _Persons,
    catalog: _Catalog,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(basket index, item) per line: the target plus Poisson(1.6) extras, each a complement of the target
    (35%), a staple (35%) or a popular item of a preferred category; duplicates dropped, lines shuffled."""
    basket = np.repeat(np.arange(target.size), 1 + np.minimum(rng.poisson(1.6, target.size), 8))
    first = _group_starts(basket)
    owner = person[basket]
    u = rng.random(basket.size)
    comp = catalog.complements[target[basket], rng.integers(0, spec.n_complements, basket.size)]
    staple = persons.staples[owner, rng.integers(0, 3, basket.size)]
    other = catalog.sample(_draw_categories(persons.pref_cum[owner], rng), rng)
    item = np.where(first, target[basket], np.where(u < 0.35, comp, np.where(u < 0.7, staple, other)))
    lines = pd.DataFrame({_SESSION: basket, _ITEM: item, _KEY: rng.random(basket.size)})
    lines = lines[~lines.duplicated([_SESSION, _ITEM])].sort_values([_SESSION, _KEY], kind="stable")
    return lines[_SESSION].to_numpy(), lines[_ITEM].to_numpy()


def _build_members(
    spec: RetailerSpec, persons: _Persons, pos: pd.DataFrame, catalog: _Catalog, rng: np.random.Generator
) -> pd.DataFrame:
    """The rows of members.csv (canonical identifiers, plus _PERSON), by signup time. Persons active from
    day 0 signed up at their home store in the three years before the window; late joiners sign up at the
    till minutes before their first basket (or at 09:00 on their first active day if they bought nothing)."""
    member = np.flatnonzero(pd.notna(persons.card))
    first = pos.drop_duplicates(_PERSON).set_index(_PERSON).reindex(member)  # pos is sorted by time
    at_till = (persons.active_from[member] > 0) & first[_MS].notna().to_numpy()
    days_before = np.floor(rng.uniform(1, 3 * 365, member.size)) - rng.uniform(10, 21, member.size) / 24
    signup_ms = np.where(
        persons.active_from[member] > 0,
        (persons.active_from[member] * 24 + 9) * 3_600_000,
        -days_before * _MS_PER_DAY,
    ).astype(np.int64)
    till_ms = first[_MS].fillna(0).to_numpy().astype(np.int64) - rng.integers(60, 600, member.size) * 1000
    signup_ms = np.where(at_till, till_ms, signup_ms) // 1000 * 1000
    store = np.where(
        at_till,
        first[S.POS_STORE_ID].to_numpy(dtype=object),
        catalog.store_ids[persons.home_store[member]].astype(object),
    )
    members = pd.DataFrame(
        {
            S.CRM_LOYALTY_CARD: persons.card[member],
            S.CRM_PHONE: persons.phone[member],
            S.CRM_EMAIL: _masked(persons.crm_email[member], persons.email[member]),
            S.CRM_SIGNUP_TS: _format_ts(spec, signup_ms, iso=False),
            S.CRM_SIGNUP_STORE_ID: store,
            _PERSON: member,
            _MS: signup_ms,
        }
    )
    return members.sort_values([_MS, S.CRM_LOYALTY_CARD], kind="stable", ignore_index=True)


# ----------------------------------------------------------------------------------------- ground truth + I/O
def _identifier_truth(online: pd.DataFrame, pos: pd.DataFrame, members: pd.DataFrame) -> pd.DataFrame:
    """Every (type, raw value) found in the rendered raw tables with its true person; fails if one raw
    value belonged to two persons (a generator bug: resolution would be ill-posed)."""
    sources = (
        (online, S.ON_DEVICE_ID, S.ID_DEVICE),
        (online, S.ON_ACCOUNT_ID, S.ID_ACCOUNT),
        (online, S.ON_EMAIL, S.ID_EMAIL),
        (pos, S.POS_LOYALTY_CARD, S.ID_CARD),
        (pos, S.POS_PHONE, S.ID_PHONE),
        (members, S.CRM_LOYALTY_CARD, S.ID_CARD),
        (members, S.CRM_PHONE, S.ID_PHONE),
        (members, S.CRM_EMAIL, S.ID_EMAIL),
    )
    truth = pd.concat(
        [
            pd.DataFrame(
                {S.IDENTIFIER_TYPE: id_type, GT_IDENTIFIER: frame[column], _PERSON: frame[_PERSON]}
            ).dropna()
            for frame, column, id_type in sources
        ]
    )
    truth = truth.drop_duplicates().sort_values([S.IDENTIFIER_TYPE, GT_IDENTIFIER], ignore_index=True)
    if truth.duplicated([S.IDENTIFIER_TYPE, GT_IDENTIFIER]).any():
        raise RuntimeError("a raw identifier value belongs to two persons")
    truth[S.GT_PERSON_ID] = _person_ids(truth[_PERSON].to_numpy())
    return truth


def _person_truth(persons: _Persons) -> pd.DataFrame:
    return pd.DataFrame(
        {
            S.GT_PERSON_ID: _person_ids(np.arange(persons.kind.size)),
            S.GT_KIND: np.array(KINDS)[persons.kind],
            S.GT_PROPENSITY: persons.propensity,
        }
    )


def _person_ids(index: np.ndarray) -> np.ndarray:
    return np.array([f"P{i + 1:06d}" for i in index], dtype=object)


def _write_raw(
    raw: Path, online: pd.DataFrame, pos: pd.DataFrame, members: pd.DataFrame, catalog: _Catalog
) -> None:
    _write_jsonl(online, raw / S.RAW_ONLINE_DIR / S.RAW_ONLINE_FILE, S.RAW_ONLINE_COLUMNS)
    _write_csv(pos, raw / S.RAW_POS_DIR / S.RAW_POS_FILE, S.RAW_POS_COLUMNS, "%.2f")
    _write_csv(members, raw / S.RAW_CRM_DIR / S.RAW_CRM_FILE, S.RAW_CRM_COLUMNS)
    items = pd.DataFrame(
        {
            S.CAT_ITEM_ID: catalog.item_ids,
            S.CAT_CATEGORY: catalog.category_names[catalog.category],
            S.CAT_PRICE: catalog.price,
        }
    ).sort_values(S.CAT_ITEM_ID)
    _write_csv(items, raw / S.RAW_CATALOG_DIR / S.RAW_ITEMS_FILE, S.RAW_ITEM_COLUMNS, "%.2f")
    stores = pd.DataFrame({S.CAT_STORE_ID: catalog.store_ids, S.CAT_CITY: catalog.store_cities})
    _write_csv(stores, raw / S.RAW_CATALOG_DIR / S.RAW_STORES_FILE, S.RAW_STORE_COLUMNS)


def _write_jsonl(frame: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    """One JSON object per row with exactly ``columns`` as keys, in order; missing values as null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = frame.loc[:, list(columns)].to_json(orient="records", lines=True, double_precision=10)
    path.write_text(text if len(frame) else "", encoding="utf-8", newline="")


def _write_csv(
    frame: pd.DataFrame, path: Path, columns: tuple[str, ...], float_format: str | None = None
) -> None:
    """Exactly ``columns``, in that order; missing values as empty fields."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.loc[:, list(columns)].to_csv(path, index=False, lineterminator="\n", float_format=float_format)

"""Persons of one chunk: kind, activity and channel windows, preferences, households and identifiers.

Identifier values are integers here (rendered as text only when a record is written); each person also
knows which phone number they type at the till and which they gave the CRM, with its sharing tag.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.synthetic import identities as I
from data_prep.synthetic.spec import RetailerSpec
from data_prep.synthetic.world import World, draw_categories

ONLINE_ONLY, OFFLINE_ONLY, OMNI = 0, 1, 2  # kind codes (index into KINDS)
KINDS = ("online_only", "offline_only", "omni")
_LATER_KIND = np.array([OMNI, OMNI, ONLINE_ONLY])  # after a shift: + stores, + online, stores dropped
_HOUSEHOLD_CRM_SHARE = 0.3  # non-owner household members who give the CRM the household phone


@dataclass(frozen=True)
class Persons:
    gid: np.ndarray  # (P,) global person index; person_id is "P%06d" % (gid + 1)
    kind: np.ndarray  # (P,) kind code at the start of the window
    later_kind: np.ndarray  # (P,) kind code from shift_day on (== kind without a shift)
    shift_day: np.ndarray  # (P,) day the channel mix changes, -1 never
    propensity: np.ndarray  # (P,) mean 1; scales the mission rate and the chance a mission buys
    pref_cum: np.ndarray  # (P, C) cumulative category preference
    active_from: np.ndarray  # (P,) int first day the person can shop
    active_to: np.ndarray  # (P,) int day the person lapses (n_days when never)
    online_window: np.ndarray  # (P, 2) int days [lo, hi) the person shops online (lo == hi: never)
    store_window: np.ndarray  # (P, 2) int days [lo, hi) the person shops in store
    rate_factor: np.ndarray  # (P,) omni_rate for persons who are omni at some point, else 1
    home_store: np.ndarray  # (P,) store index
    staples: np.ndarray  # (P, 3) items bought again and again in store
    n_devices: np.ndarray  # (P,) 1 or 2
    device: np.ndarray  # (P, 2) int64 device number (id "d-%012x"); the second used when n_devices == 2
    device_channel: np.ndarray  # (P, 2) index into ONLINE_CHANNELS
    device_ua: np.ndarray  # (P, 2) index into identities.USER_AGENTS
    never_login: np.ndarray  # (P, 2) bool: every session on the device is anonymous
    account: np.ndarray  # (P,) int64 account number (id "acct-%d"), -1 without an account
    login_prob: np.ndarray  # (P,) chance a web / mini-program session is logged in
    email_parts: np.ndarray  # (P, 4) first name, last name, number, domain (vocabulary indices)
    till_phone: np.ndarray  # (P,) int64 number typed at the till
    till_tag: np.ndarray  # (P,) its sharing tag
    crm_phone: np.ndarray  # (P,) int64 number given to the CRM (members)
    crm_tag: np.ndarray  # (P,) its sharing tag
    account_phone: np.ndarray  # (P,) int64 number verified at account registration (the person's own)
    account_tag: np.ndarray  # (P,) its sharing tag
    phone_valid: np.ndarray  # (P, 2) int days [from, to) a recycled number is the person's, -1 open
    card: np.ndarray  # (P,) int64 loyalty card number, -1 for non-members
    crm_email: np.ndarray  # (P,) bool: the member gave the CRM the email
    household: np.ndarray  # (P,) local index of the household's owner (owner too), -1 outside one
    home_ip: np.ndarray  # (P,) int64 IPv4 address of the home network
    consent: np.ndarray  # (P, 2) bool latest choice: analytics, marketing

    def window(self, store: bool) -> np.ndarray:
        return self.store_window if store else self.online_window


def draw_persons(spec: RetailerSpec, world: World, gid0: int, n: int, rng: np.random.Generator) -> Persons:
    """Persons ``gid0 .. gid0 + n - 1``. Late joiners start on a day in the first 75% of the window;
    lapsers stop after 15-90% of what is left of it; channel shifters change their mix on a day inside
    their activity (online-only start visiting stores, offline-only start shopping online, omni drop stores)."""
    gid = gid0 + np.arange(n)
    kind = rng.choice(3, size=n, p=list(spec.kind_shares))
    late = rng.random(n) < spec.late_join_share
    active_from = np.where(late, np.floor(rng.random(n) * 0.75 * spec.n_days), 0).astype(np.int64)
    lapse = rng.random(n) < spec.lapse_share
    lapse_day = active_from + np.ceil((spec.n_days - active_from) * rng.uniform(0.15, 0.9, n))
    active_to = np.where(lapse, np.minimum(lapse_day, spec.n_days), spec.n_days).astype(np.int64)
    shifter = (rng.random(n) < spec.channel_shift_share) & (active_to - active_from >= 2)
    shift_u = rng.random(n)
    later_kind = np.where(shifter, _LATER_KIND[kind], kind)
    in_store = (kind != ONLINE_ONLY) | (later_kind != ONLINE_ONLY)
    online_ever = (kind != OFFLINE_ONLY) | (later_kind != OFFLINE_ONLY)
    member = in_store & (rng.random(n) < spec.member_share)
    pairs = _recycled_pairs(spec, member & ~shifter, rng)
    _apply_recycling(spec, pairs, active_from, active_to, rng)
    shift_day = np.where(shifter, active_from + 1 + np.floor(shift_u * (active_to - active_from - 1)), -1)
    change = np.where(shifter, shift_day, active_to).astype(np.int64)
    pref_cum = _draw_preferences(n, world.catalog.category_names.size, rng)
    staples = world.catalog.sample(draw_categories(np.repeat(pref_cum, 3, axis=0), rng), rng).reshape(n, 3)
    home_store = rng.integers(0, spec.n_stores, n)
    household = _draw_households(spec, n, np.setdiff1d(np.arange(n), pairs[:, :2].ravel()), rng)
    in_household = household >= 0
    home_store[in_household] = home_store[household[in_household]]  # local index of the owner here
    return Persons(
        gid=gid,
        kind=kind,
        later_kind=later_kind,
        shift_day=shift_day.astype(np.int64),
        propensity=rng.gamma(1.3, 1 / 1.3, n),
        pref_cum=pref_cum,
        active_from=active_from,
        active_to=active_to,
        online_window=_window(
            kind != OFFLINE_ONLY, later_kind != OFFLINE_ONLY, active_from, active_to, change
        ),
        store_window=_window(kind != ONLINE_ONLY, later_kind != ONLINE_ONLY, active_from, active_to, change),
        rate_factor=np.where((kind == OMNI) | (later_kind == OMNI), spec.omni_rate, 1.0),
        home_store=home_store,
        staples=staples,
        **_draw_identifiers(spec, world, gid, online_ever, member, pairs, household, rng),
    )


def _window(
    at_start: np.ndarray, later: np.ndarray, lo: np.ndarray, hi: np.ndarray, change: np.ndarray
) -> np.ndarray:
    """(P, 2) days [lo, hi) a channel is used: from the start and/or after the change day."""
    return np.stack([np.where(at_start, lo, change), np.where(later, hi, change)], axis=1)


def _recycled_pairs(spec: RetailerSpec, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(k, 3) rows (A, B, day): B gets A's phone number on ``day``. A and B are members (the CRM records
    the number for both) and are not shifting channels."""
    pool = np.flatnonzero(candidates)
    k = min(int(rng.binomial(candidates.size, spec.recycled_phone_share)), pool.size // 2)
    chosen = rng.permutation(pool)[: 2 * k]
    low, high = max(1, int(0.2 * spec.n_days)), max(1, int(0.8 * spec.n_days))
    day = rng.integers(low, max(high, low) + 1, k).clip(max=max(spec.n_days - 1, 1))
    return np.stack([chosen[:k], chosen[k:], day], axis=1).astype(np.int64)


def _apply_recycling(
    spec: RetailerSpec,
    pairs: np.ndarray,
    active_from: np.ndarray,
    active_to: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """A stops shopping by the day the number moves (a lapsed customer whose SIM lapsed too); B starts on
    or after it (a new customer with a recycled SIM)."""
    a, b, day = pairs.T
    active_to[a] = np.minimum(active_to[a], day)
    active_from[a] = np.minimum(active_from[a], day - 1)
    active_from[b] = np.maximum(active_from[b], day)
    active_to[b] = np.maximum(
        active_to[b], np.minimum(day + 1 + rng.integers(0, spec.n_days, b.size), spec.n_days)
    )


def _draw_households(
    spec: RetailerSpec, n: int, candidates: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(n,) local index of each person's household owner (the owner included), -1 outside households:
    about household_share of the persons, in households of 2 (60%) or 3."""
    out = np.full(n, -1, dtype=np.int64)
    want = min(int(rng.binomial(n, spec.household_share)), candidates.size)
    members = rng.permutation(candidates)[:want]
    sizes = rng.choice([2, 3], size=want // 2 + 1, p=[0.6, 0.4])
    ends = np.cumsum(sizes)
    sizes, ends = sizes[ends <= want], ends[ends <= want]
    owner_pos = np.repeat(ends - sizes, sizes)
    out[members[: owner_pos.size]] = members[owner_pos]
    return out


def _draw_identifiers(
    spec: RetailerSpec,
    world: World,
    gid: np.ndarray,
    online_ever: np.ndarray,
    member: np.ndarray,
    pairs: np.ndarray,
    household: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Identifiers of every person (whether a source ever records them depends on behaviour)."""
    n, keys = gid.size, world.keys
    has_account = online_ever & (rng.random(n) < spec.account_share)
    channel = np.stack([rng.choice(3, size=n, p=[0.35, 0.45, 0.2]), rng.integers(0, 3, n)], axis=1)
    ua = I.UA_START[channel] + (rng.random((n, 2)) * I.UA_COUNT[channel]).astype(np.int64)
    device = I.permute((2 * gid[:, None] + np.arange(2)).ravel(), 16**12, keys["device"]).reshape(n, 2)
    account_space = max(9 * 10**6, 20 * spec.n_customers)
    email_parts = np.stack(
        [
            rng.integers(0, len(I.FIRST_NAMES), n),
            rng.integers(0, len(I.LAST_NAMES), n),
            1 + I.permute(gid, max(1000, 20 * spec.n_customers), keys["email"]),  # makes every email unique
            rng.integers(0, len(I.EMAIL_DOMAINS), n),
        ],
        axis=1,
    )
    octet = I.HOME_OCTETS[rng.integers(0, I.HOME_OCTETS.size, n)].astype(np.int64)
    home_ip = (octet << 24) + (rng.integers(0, 1 << 16, n) << 8) + rng.integers(1, 255, n)
    in_household = household >= 0
    home_ip[in_household] = home_ip[household[in_household]]
    return {
        "n_devices": 1 + (rng.random(n) < 0.4),
        "device": device,
        "device_channel": channel,
        "device_ua": ua,
        "never_login": (rng.random((n, 2)) < spec.never_login_device_share) | ~has_account[:, None],
        "account": np.where(has_account, 10**6 + I.permute(gid, account_space, keys["account"]), -1),
        "login_prob": rng.beta(3.0, 2.0, n),
        "email_parts": email_parts,
        **_draw_phones(world, gid, pairs, household, rng),
        "card": np.where(member, 10**9 + I.permute(gid, 9 * 10**9, keys["card"]), -1),
        "crm_email": member & (rng.random(n) < spec.crm_email_share),
        "household": household,
        "home_ip": home_ip,
        "consent": rng.random((n, 2)) < np.array([spec.consent_analytics_rate, spec.consent_marketing_rate]),
    }


def _draw_phones(
    world: World, gid: np.ndarray, pairs: np.ndarray, household: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Till and CRM numbers. Recycled: B holds A's number from the pair's day. Households type the owner's
    number at the till; the owner gives it to the CRM, other members sometimes do too. Accounts are
    registered with the number the person holds (a household member's own, B's recycled one)."""
    n = gid.size
    own = I.phone_number(gid, world.keys["phone"])
    till, crm, account = own.copy(), own.copy(), own.copy()
    till_tag, crm_tag, account_tag = np.zeros(n, np.int8), np.zeros(n, np.int8), np.zeros(n, np.int8)
    valid = np.full((n, 2), -1, dtype=np.int64)
    a, b, day = pairs.T
    till[b] = crm[b] = account[b] = own[a]
    for tag in (till_tag, crm_tag, account_tag):
        tag[a] = tag[b] = I.TAG_RECYCLED
    valid[a, 1], valid[b, 0] = day, day
    in_household = household >= 0
    owner = household[in_household]
    till[in_household], till_tag[in_household] = own[owner], I.TAG_HOUSEHOLD
    is_owner = household == np.arange(n)
    gives = in_household & ~is_owner & (rng.random(n) < _HOUSEHOLD_CRM_SHARE)
    crm[gives] = own[household[gives]]
    crm_tag[gives | is_owner] = I.TAG_HOUSEHOLD
    account_tag[is_owner] = I.TAG_HOUSEHOLD  # the owner's own number is the household's till number
    return {
        "till_phone": till,
        "till_tag": till_tag,
        "crm_phone": crm,
        "crm_tag": crm_tag,
        "account_phone": account,
        "account_tag": account_tag,
        "phone_valid": valid,
    }


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

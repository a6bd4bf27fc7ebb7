"""Online behaviour of one chunk: sessions (on own devices and on store kiosks), the walk over items, the
funnel around it, and the rows of ``events.jsonl``.

An online mission is 1..n sessions over the days before its decision time: each session is a walk over
items (complement / same category / preferred category), with searches, add-to-carts and removals; only the
last session of a buying mission orders, so browsing precedes purchases. The last session of an abandoning
mission leaves its target in the cart (the cart that brings the person back, :mod:`behaviour`); a non-buying
mission's other carts of its target are removed again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from data_prep import schema as S
from data_prep.synthetic import identities as I
from data_prep.synthetic import text as T
from data_prep.synthetic.missions import Missions, draw_hours
from data_prep.synthetic.persons import Persons
from data_prep.synthetic.spec import RetailerSpec
from data_prep.synthetic.world import MS_PER_DAY, World, draw_categories, group_starts

SEARCH, VIEW, CART, REMOVE, ORDER = range(5)  # event type codes
EVENT_TYPES = (S.EV_SEARCH, S.EV_VIEW, S.EV_ADD_TO_CART, S.EV_REMOVE_FROM_CART, S.EV_ORDER)
_GAP_SECONDS = np.array([12.0, 35.0, 10.0, 30.0, 80.0])  # mean gap before an event, by type code
_REMOVE_KEY, _ORDER_KEY = 10_000, 20_000  # in-session sort keys: removals, then order lines, after all views
_MAX_VIEWS = 40
_QUERY_MODIFIERS = ("", "", "", "", "sale", "new", "cheap", "best", "gift")
_HOME_SHARE = np.array([0.85, 0.55, 0.6])  # sessions on the home network, by channel (else mobile NAT)
_HOME_OCTET_KEPT = 0.8  # home sessions keeping the usual address (else the ISP reassigned it)
_KIOSK_LOGIN = 0.8  # kiosk sessions logged in (else anonymous browsing)
APP = S.ONLINE_CHANNELS.index(S.CHANNEL_APP)
WEB = S.ONLINE_CHANNELS.index(S.CHANNEL_WEB)


@dataclass(frozen=True)
class Sessions:
    person: np.ndarray  # (N,) local person index
    start_ms: np.ndarray  # (N,) ms since start (may be outside the window: such events are dropped)
    device: np.ndarray  # (N,) device number (own device or a store kiosk)
    kiosk: np.ndarray  # (N,) bool: on a store kiosk
    channel: np.ndarray  # (N,) index into ONLINE_CHANNELS
    ua: np.ndarray  # (N,) index into identities.USER_AGENTS
    ip: np.ndarray  # (N,) int64 IPv4 address
    logged_in: np.ndarray  # (N,) bool
    ordering: np.ndarray  # (N,) bool: the session ends in an order
    abandon: np.ndarray  # (N,) bool: the session leaves the mission's target in the cart
    browse: np.ndarray  # (N,) bool: a session of a mission that buys nothing
    target: np.ndarray  # (N,) mission target item
    target_pos: np.ndarray  # (N,) view step where the target is shown, -1 when not shown
    n_views: np.ndarray  # (N,)


@dataclass(frozen=True)
class OnlineEvents:
    """Rows of events.jsonl before rendering, sorted by time."""

    ms: np.ndarray  # (E,) ms since start, inside the window
    session: np.ndarray  # (E,) index into Sessions
    etype: np.ndarray  # (E,) event type code
    item: np.ndarray  # (E,) item index, -1 for searches
    quantity: np.ndarray  # (E,)
    query: np.ndarray  # (E,) index into the query vocabulary, -1 when not a search


def draw_sessions(
    spec: RetailerSpec, world: World, missions: Missions, persons: Persons, rng: np.random.Generator
) -> Sessions:
    """Sessions of the online missions, then kiosk sessions of store visits. The last session of a mission
    sits at the mission time; earlier ones follow exponential gaps (mean 1.3 days) backwards. Only the last
    session of a buying, non-webrooming mission orders; the last of an abandoning mission leaves its target in
    the cart. Sessions are logged in with the person's login chance (app: 0.9; ordering: at least 0.7), never
    on a never-login device; every other device of an account holder is logged in on its last session at
    least."""
    m = np.flatnonzero(~missions.is_store)
    n_sessions = 1 + rng.poisson(np.where(missions.buys[m], 1.2, 0.5))
    mission = np.repeat(m, n_sessions)
    from_last = np.arange(mission.size) - np.searchsorted(mission, mission, side="right") + 1  # 0, -1, ..
    gap = np.where(from_last == 0, 0.0, rng.exponential(1.3, mission.size))
    back = pd.Series(gap[::-1]).groupby(mission[::-1]).cumsum().to_numpy()[::-1]  # summed gaps to the end
    time = missions.time[mission] - back
    other_day = np.floor(time) < np.floor(missions.time[mission])
    time = np.where(other_day, np.floor(time) + draw_hours(np.zeros(time.size, bool), rng) / 24.0, time)
    person = missions.person[mission]
    slot = np.where(persons.n_devices[person] == 2, (rng.random(person.size) < 0.3).astype(int), 0)
    channel = persons.device_channel[person, slot]
    ordering = (from_last == 0) & missions.buys[mission] & ~missions.webroom[mission]
    abandon = (from_last == 0) & missions.abandon[mission]
    start_ms = np.round(time * MS_PER_DAY).astype(np.int64)
    logged_in = _draw_logins(persons, person, slot, channel, ordering, start_ms, rng)
    n_views = np.minimum(1 + rng.poisson(np.where(ordering, 6.0, 4.5)), _MAX_VIEWS)
    shown = ordering | abandon | (rng.random(person.size) < 0.8)
    own = Sessions(
        person=person,
        start_ms=start_ms,
        device=persons.device[person, slot],
        kiosk=np.zeros(person.size, bool),
        channel=channel,
        ua=persons.device_ua[person, slot],
        ip=_draw_ips(persons.home_ip[person], channel, rng),
        logged_in=logged_in,
        ordering=ordering,
        abandon=abandon,
        browse=~missions.buys[mission],
        target=missions.target[mission],
        target_pos=np.where(shown, rng.integers(0, n_views), -1),
        n_views=n_views,
    )
    return _concat(own, _kiosk_sessions(spec, world, missions, persons, rng))


def _draw_logins(
    persons: Persons,
    person: np.ndarray,
    slot: np.ndarray,
    channel: np.ndarray,
    ordering: np.ndarray,
    start_ms: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    p_login = np.where(channel == APP, 0.9, persons.login_prob[person])
    can = ~persons.never_login[person, slot]
    logged_in = can & (rng.random(person.size) < np.where(ordering, np.maximum(p_login, 0.7), p_login))
    device = person * 2 + slot
    order = np.lexsort((start_ms, device))
    last = order[np.r_[device[order][1:] != device[order][:-1], True]] if order.size else order
    any_login = np.bincount(device, weights=logged_in, minlength=2 * persons.gid.size) > 0
    logged_in[last[can[last] & ~any_login[device[last]]]] = True
    return logged_in


def _draw_ips(home_ip: np.ndarray, channel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Home network (the usual address, or another in the same /24) or the mobile carrier's NAT pool."""
    n = home_ip.size
    home = rng.random(n) < _HOME_SHARE[channel]
    moved = rng.random(n) >= _HOME_OCTET_KEPT
    home_ip = np.where(moved, (home_ip >> 8 << 8) + rng.integers(1, 255, n), home_ip)
    return np.where(home, home_ip, I.MOBILE_POOL + rng.integers(0, 1 << 16, n))


def _kiosk_sessions(
    spec: RetailerSpec, world: World, missions: Missions, persons: Persons, rng: np.random.Generator
) -> Sessions:
    """Short sessions on the kiosk of the visited store, minutes before the basket: account holders look
    up the mission's target, mostly logged in to their own account."""
    visit = np.flatnonzero(missions.is_store)
    person = missions.person[visit]
    kiosk = world.stores.kiosk_device[missions.store[visit]]
    use = (kiosk >= 0) & (persons.account[person] >= 0) & (rng.random(visit.size) < spec.kiosk_use)
    visit, person, kiosk = visit[use], person[use], kiosk[use]
    n = visit.size
    basket_ms = np.floor(missions.time[visit] * 86_400).astype(np.int64) * 1000
    n_views = np.minimum(1 + rng.poisson(1.5, n), _MAX_VIEWS)
    return Sessions(
        person=person,
        start_ms=basket_ms - rng.integers(3 * 60_000, 20 * 60_000, n),
        device=kiosk,
        kiosk=np.ones(n, bool),
        channel=np.full(n, WEB),
        ua=np.full(n, I.KIOSK_UA),
        ip=world.stores.ip[missions.store[visit]],
        logged_in=rng.random(n) < _KIOSK_LOGIN,
        ordering=np.zeros(n, bool),
        abandon=np.zeros(n, bool),
        browse=np.zeros(n, bool),
        target=missions.target[visit],
        target_pos=rng.integers(0, n_views),
        n_views=n_views,
    )


def _concat(a: Sessions, b: Sessions) -> Sessions:
    return Sessions(**{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in a.__dataclass_fields__})


def build_online_events(
    spec: RetailerSpec, world: World, sessions: Sessions, persons: Persons, rng: np.random.Generator
) -> OnlineEvents:
    """Every session's events, timed, cut to the window and sorted by (time, session, in-session order)."""
    funnel = _funnel_events(sessions, _walk_views(spec, world, sessions, persons, rng), rng)
    session, key, etype, item, quantity = funnel
    ms = _time_events(sessions, session, etype, rng)
    keep = (ms >= 0) & (ms < spec.n_days * MS_PER_DAY)
    order = np.flatnonzero(keep)[np.lexsort((key[keep], session[keep], ms[keep]))]
    session, etype, item = session[order], etype[order], item[order]
    is_search = etype == SEARCH
    category = world.catalog.category[item]  # a search is about the category viewed next
    modifier = rng.integers(0, len(_QUERY_MODIFIERS), order.size)
    return OnlineEvents(
        ms=ms[order],
        session=session,
        etype=etype,
        item=np.where(is_search, -1, item),
        quantity=quantity[order],
        query=np.where(is_search, category * len(_QUERY_MODIFIERS) + modifier, -1),
    )


def query_vocabulary(world: World) -> list[str]:
    return [f"{w} {m}".strip() for w in world.catalog.category_names for m in _QUERY_MODIFIERS]


def _walk_views(
    spec: RetailerSpec, world: World, sessions: Sessions, persons: Persons, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(session, step, item, jumped) of every view, stepped by position and vectorised across the sessions
    still running. Each step moves to a complement, another item of the category, or jumps to a preferred
    category; the mission target is put at ``target_pos``. The walk starts in the target's category."""
    catalog = world.catalog
    n, n_steps = sessions.person.size, int(sessions.n_views.max(initial=1))
    items = np.zeros((n, n_steps), dtype=np.int64)
    jumped = np.zeros((n, n_steps), dtype=bool)
    cur = catalog.sample(catalog.category[sessions.target], rng)
    p_comp, p_same = spec.complement_step, spec.complement_step + spec.same_category_step
    live = np.arange(n)
    for t in range(n_steps):
        live = live[sessions.n_views[live] > t]
        if t:
            u = rng.random(live.size)
            comp, jump = u < p_comp, u >= p_same
            same = ~comp & ~jump
            step = cur[live]
            step[comp] = catalog.complements[step[comp], rng.integers(0, spec.n_complements, int(comp.sum()))]
            step[same] = catalog.sample(catalog.category[step[same]], rng)
            pref_cum = persons.pref_cum[sessions.person[live[jump]]]
            step[jump] = catalog.sample(draw_categories(pref_cum, rng), rng)
            cur[live] = step
            jumped[live, t] = jump
        shown = live[sessions.target_pos[live] == t]
        cur[shown] = sessions.target[shown]
        items[live, t] = cur[live]
    alive = np.arange(n_steps) < sessions.n_views[:, None]
    session, step_no = np.nonzero(alive)
    return session, step_no, items[alive], jumped[alive]


def _funnel_events(
    sessions: Sessions, views: tuple[np.ndarray, ...], rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """(session, key, etype, item, quantity): views plus the searches, add-to-carts, removals and order
    lines around them, sorted by (session, key). The target is carted for sure, and kept, in an ordering
    or abandoning session; otherwise with 35%, removed again in a mission that buys nothing (else with 25%).
    Other first views are carted with 10% (ordering) / 5%, 30% of them removed. An order holds what is
    still in the cart."""
    s, step, item, jumped = views
    ordering, is_target = sessions.ordering[s], item == sessions.target[s]
    kept = ordering | sessions.abandon[s]
    first = ~pd.DataFrame({"s": s, "i": item}).duplicated().to_numpy()
    cart = first & (
        rng.random(s.size) < np.where(is_target, np.where(kept, 1.0, 0.35), np.where(ordering, 0.1, 0.05))
    )
    p_remove = np.where(kept, 0.0, np.where(sessions.browse[s], 1.0, 0.25))
    remove = cart & (rng.random(s.size) < np.where(is_target, p_remove, 0.3))
    search = rng.random(s.size) < np.where(step == 0, 0.3, np.where(jumped, 0.6, 0.0))
    quantity = 1 + (rng.random(s.size) < 0.15) * rng.integers(1, 3, s.size)
    parts = (
        (search, 4 * step, SEARCH),
        (np.ones(s.size, bool), 4 * step + 1, VIEW),
        (cart, 4 * step + 2, CART),
        (remove, _REMOVE_KEY + step, REMOVE),
        (cart & ~remove & ordering, _ORDER_KEY + step, ORDER),
    )
    session = np.concatenate([s[m] for m, _, _ in parts])
    key = np.concatenate([k[m] for m, k, _ in parts])
    etype = np.concatenate([np.full(int(m.sum()), code, dtype=np.int8) for m, _, code in parts])
    order = np.lexsort((key, session))
    items = np.concatenate([item[m] for m, _, _ in parts])
    qty = np.concatenate([quantity[m] for m, _, _ in parts])
    return session[order], key[order], etype[order], items[order], qty[order]


def _time_events(
    sessions: Sessions, session: np.ndarray, etype: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """ms since start of every event (rows sorted by session): session start plus exponential gaps by
    event type; the lines of one order share a timestamp."""
    gap = np.round(rng.exponential(1.0, session.size) * _GAP_SECONDS[etype] * 1000).astype(np.int64)
    is_order = etype == ORDER
    gap[group_starts(session)] = 0
    gap[1:][is_order[1:] & is_order[:-1]] = 0
    cum = np.cumsum(gap)
    starts = np.flatnonzero(group_starts(session))
    base = np.repeat(cum[starts] - gap[starts], np.diff(np.r_[starts, session.size]))
    return sessions.start_ms[session] + cum - base


def render_online(
    spec: RetailerSpec,
    world: World,
    chunk: int,
    sessions: Sessions,
    persons: Persons,
    events: OnlineEvents,
    rng: np.random.Generator,
) -> pa.Table:
    """events.jsonl rows of the chunk (S.RAW_ONLINE_COLUMNS) plus hidden columns for ground truth:
    ``_person`` (local index) and ``_tag_device`` (kiosk or personal). Text columns are dictionary-encoded
    (session-level fields are rendered once per session); the checkout email has one format per order."""
    s, n = events.session, events.ms.size
    per_session = _render_sessions(spec, world, chunk, sessions, persons, rng)
    priced = np.isin(events.etype, (CART, REMOVE, ORDER))
    is_order = events.etype == ORDER
    promo = world.calendar.promo[events.ms // MS_PER_DAY]
    discount = np.where(promo, 1 - spec.promo_discount, 1)
    price = np.round(world.catalog.price[np.maximum(events.item, 0)] * discount, 2)
    event_no = I.permute((chunk << 40) + np.arange(n), 16**14, world.keys["event"])
    by_session = {c: T.categorical(per_session[c], s) for c in per_session.column_names}
    return pa.table(
        {
            S.ON_EVENT_ID: T.strings(T.literal("ev-", n), T.hexadecimal(event_no, 14)),
            S.ON_TS: T.timestamps(events.ms, spec.start, "iso_ms"),
            S.ON_CHANNEL: by_session[S.ON_CHANNEL],
            S.ON_DEVICE_ID: by_session[S.ON_DEVICE_ID],
            S.ON_ACCOUNT_ID: by_session[S.ON_ACCOUNT_ID],
            S.ON_SESSION_ID: by_session[S.ON_SESSION_ID],
            S.ON_EVENT_TYPE: T.categorical(EVENT_TYPES, events.etype),
            S.ON_ITEM_ID: T.categorical(world.catalog.item_ids, events.item),
            S.ON_QUERY: T.categorical(query_vocabulary(world), events.query),
            S.ON_QUANTITY: pa.array(events.quantity.astype(np.int64), mask=~priced),
            S.ON_PRICE: pa.array(price, mask=~priced),
            S.ON_ORDER_ID: T.categorical(per_session[S.ON_ORDER_ID], np.where(is_order, s, -1)),
            S.ON_EMAIL: T.categorical(per_session[S.ON_EMAIL], np.where(is_order, s, -1)),
            S.ON_IP: by_session[S.ON_IP],
            S.ON_USER_AGENT: by_session[S.ON_USER_AGENT],
            "_person": pa.array(sessions.person[s].astype(np.int64)),
            "_tag_device": pa.array(np.where(sessions.kiosk[s], I.TAG_KIOSK, I.TAG_PERSONAL).astype(np.int8)),
        }
    )


def _render_sessions(
    spec: RetailerSpec,
    world: World,
    chunk: int,
    sessions: Sessions,
    persons: Persons,
    rng: np.random.Generator,
) -> pa.Table:
    """Fields shared by every event of a session, one row per session (order id and email for all)."""
    n, p = sessions.person.size, sessions.person
    session_no = I.permute((chunk << 32) + np.arange(n), 16**12, world.keys["session"])
    order_no = I.permute(chunk * 10**7 + np.arange(n), 10**10, world.keys["order"])
    account = np.where(sessions.logged_in, persons.account[p], -1)
    variant = I.draw_variants(n, spec.format_noise, len(I.EMAIL_FORMATS), rng)
    return pa.table(
        {
            S.ON_CHANNEL: T.vocabulary(S.ONLINE_CHANNELS, sessions.channel),
            S.ON_DEVICE_ID: T.strings(T.literal("d-", n), T.hexadecimal(sessions.device, 12)),
            S.ON_ACCOUNT_ID: T.with_nulls(T.join("acct-", T.integers(account)), account >= 0),
            S.ON_SESSION_ID: T.strings(T.literal("s-", n), T.hexadecimal(session_no, 12)),
            S.ON_ORDER_ID: T.strings(T.literal("o-", n), T.decimal(order_no, 10)),
            S.ON_EMAIL: I.emails(persons.email_parts[p], variant),
            S.ON_IP: I.ipv4(sessions.ip),
            S.ON_USER_AGENT: T.vocabulary(I.USER_AGENTS, sessions.ua),
        }
    )


def first_login_ms(persons: Persons, sessions: Sessions, events: OnlineEvents) -> np.ndarray:
    """(P,) ms of each person's first logged-in event in the window, -1 when none."""
    logged = sessions.logged_in[events.session]
    person = sessions.person[events.session][logged]
    first = np.full(persons.gid.size, np.iinfo(np.int64).max)
    np.minimum.at(first, person, events.ms[logged])
    return np.where(first == np.iinfo(np.int64).max, -1, first)

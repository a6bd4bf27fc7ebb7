"""Store baskets of one chunk: the rows of ``pos_lines.csv``, returns included.

One basket per store mission and per webrooming mission (the day after). Members show the card 78% of the
time, else type their till phone 12%; non-members type a phone 6% of the time (e-receipt); the rest is
anonymous. Transaction ids number the baskets of a store day across chunks (``counters``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep import schema as S
from data_prep.synthetic import identities as I
from data_prep.synthetic import text as T
from data_prep.synthetic.missions import Missions, draw_hours
from data_prep.synthetic.persons import Persons
from data_prep.synthetic.spec import RetailerSpec
from data_prep.synthetic.world import MS_PER_DAY, World, draw_categories, group_starts

_SEC_PER_DAY = 86_400
_MAX_RETURN_DAYS = 14
TILL_CARD = 0.78  # a member's baskets where the card is scanned
TILL_MEMBER_PHONE = 0.12  # ... where, no card shown, the till phone is typed instead
TILL_GUEST_PHONE = 0.06  # a non-member's baskets with a phone typed (e-receipt)


@dataclass(frozen=True)
class Visits:
    sec: np.ndarray  # (V,) seconds since start
    person: np.ndarray  # (V,) local person index
    store: np.ndarray  # (V,)
    card: np.ndarray  # (V,) bool: the card was scanned
    phone: np.ndarray  # (V,) bool: the till phone was typed
    is_return: np.ndarray  # (V,) bool
    refund_of: np.ndarray  # (V,) visit whose receipt a return shows (the till records it), -1 otherwise


@dataclass(frozen=True)
class Lines:
    basket: np.ndarray  # (L,) index into Visits
    line_no: np.ndarray  # (L,) 1-based within the basket
    item: np.ndarray  # (L,)
    quantity: np.ndarray  # (L,) negative on return lines
    price: np.ndarray  # (L,) unit price paid


@dataclass(frozen=True)
class Pos:
    table: pa.Table  # pos_lines.csv rows (text) + hidden _person, _tag_phone, _locked; in time order
    returns: pa.Table  # faults.csv rows of the return lines
    visits: Visits
    first_visit: np.ndarray  # (P,) index into visits of each person's first basket (not a return), -1 none


def build_pos(
    spec: RetailerSpec,
    world: World,
    missions: Missions,
    persons: Persons,
    counters: np.ndarray,
    rng: np.random.Generator,
) -> Pos:
    """POS lines of the chunk; ``counters`` (n_stores, n_days) holds how many baskets each store day has
    numbered so far and is advanced in place."""
    visits, target = _draw_visits(spec, missions, persons, rng)
    basket, item = _basket_items(spec, world, target, visits.person, persons, rng)
    quantity = 1 + (rng.random(item.size) < 0.25) * rng.integers(1, 3, item.size)
    promo = world.calendar.promo[visits.sec[basket] // _SEC_PER_DAY]
    price = np.round(world.catalog.price[item] * np.where(promo, 1 - spec.promo_discount, 1), 2)
    sold = Lines(basket, _line_numbers(basket), item, quantity, price)
    returned, visits, lines = _draw_returns(spec, visits, sold, rng)
    txn, seq = _transaction_ids(spec, world, visits, counters)
    locked = np.zeros(lines.basket.size, bool)  # return lines and the lines they return: no other fault
    locked[returned] = True
    locked[sold.basket.size :] = True
    table = _render_lines(spec, world, persons, visits, lines, txn, locked, rng)
    key = T.join(table[S.POS_TRANSACTION_ID], ":", table[S.POS_LINE_NO])
    returns = pa.table(
        {
            S.GT_FAULT_SOURCE: pa.array(["pos"] * returned.size, pa.string()),
            S.GT_FAULT_ROW_KEY: key.slice(sold.basket.size),
            S.GT_FAULT: pa.array([S.FAULT_RETURN] * returned.size, pa.string()),
            S.GT_FAULT_ORIGINAL_KEY: key.take(pa.array(returned, pa.int64())),
        }
    )
    b = lines.basket
    order = np.lexsort((lines.line_no, seq[b], visits.store[b], visits.sec[b]))
    return Pos(table.take(pa.array(order)), returns, visits, _first_visits(persons, visits))


def till_identified(persons: Persons) -> np.ndarray:
    """(P,) chance that a basket of the person carries one of their identifiers (card or till phone)."""
    return np.where(persons.card >= 0, TILL_CARD + TILL_MEMBER_PHONE, TILL_GUEST_PHONE)


def _draw_visits(
    spec: RetailerSpec, missions: Missions, persons: Persons, rng: np.random.Generator
) -> tuple[Visits, np.ndarray]:
    """Store visits and the target item of each; webrooming missions visit the next day."""
    visit = np.flatnonzero(missions.is_store | missions.webroom)
    next_day = np.floor(missions.time[visit]) + 1 + draw_hours(np.ones(visit.size, bool), rng) / 24
    days = np.where(missions.is_store[visit], missions.time[visit], next_day)
    sec = np.floor(days * _SEC_PER_DAY).astype(np.int64)
    inside = sec < spec.n_days * _SEC_PER_DAY
    visit, sec = visit[inside], sec[inside]
    person = missions.person[visit]
    u = rng.random(visit.size)
    member = persons.card[person] >= 0
    visits = Visits(
        sec=sec,
        person=person,
        store=missions.store[visit],
        card=member & (u < TILL_CARD),
        phone=np.where(member, (u >= TILL_CARD) & (u < TILL_CARD + TILL_MEMBER_PHONE), u < TILL_GUEST_PHONE),
        is_return=np.zeros(visit.size, bool),
        refund_of=np.full(visit.size, -1, np.int64),
    )
    return visits, missions.target[visit]


def _basket_items(
    spec: RetailerSpec,
    world: World,
    target: np.ndarray,
    person: np.ndarray,
    persons: Persons,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(basket index, item) per line: the target plus Poisson(1.6) extras, each a complement of the target
    (35%), a staple (35%) or a popular item of a preferred category; duplicates dropped, lines shuffled."""
    catalog = world.catalog
    basket = np.repeat(np.arange(target.size), 1 + np.minimum(rng.poisson(1.6, target.size), 8))
    first = group_starts(basket)
    owner = person[basket]
    u = rng.random(basket.size)
    comp = catalog.complements[target[basket], rng.integers(0, spec.n_complements, basket.size)]
    staple = persons.staples[owner, rng.integers(0, 3, basket.size)]
    other = catalog.sample(draw_categories(persons.pref_cum[owner], rng), rng)
    item = np.where(first, target[basket], np.where(u < 0.35, comp, np.where(u < 0.7, staple, other)))
    shuffle = rng.random(basket.size)
    order = np.lexsort((shuffle, item, basket))
    unique = order[group_starts(basket[order] * (catalog.price.size + 1) + item[order])]  # drop repeats
    unique = unique[np.lexsort((shuffle[unique], basket[unique]))]
    return basket[unique], item[unique]


def _line_numbers(basket: np.ndarray) -> np.ndarray:
    """1-based position of each line in its basket (rows grouped by basket)."""
    starts = np.flatnonzero(group_starts(basket))
    return np.arange(basket.size) - np.repeat(starts, np.diff(np.r_[starts, basket.size])) + 1


def _draw_returns(
    spec: RetailerSpec, visits: Visits, sold: Lines, rng: np.random.Generator
) -> tuple[np.ndarray, Visits, Lines]:
    """Lines returned 1-14 days later at the same store, with the same card / phone shown and, with chance
    ``return_receipt_share``, the receipt (the till records the original transaction): a visit of one line
    each (quantity negated), dropped when it would fall after the window. Returns the indices of the
    returned lines, every visit and every line (sold lines first)."""
    returned = np.flatnonzero(rng.random(sold.basket.size) < spec.faults.returns)
    original = sold.basket[returned]
    day = visits.sec[original] // _SEC_PER_DAY + rng.integers(1, _MAX_RETURN_DAYS + 1, returned.size)
    hour = draw_hours(np.ones(returned.size, bool), rng)
    sec = day * _SEC_PER_DAY + np.floor(hour * 3600).astype(np.int64)
    inside = sec < spec.n_days * _SEC_PER_DAY
    returned, original, sec = returned[inside], original[inside], sec[inside]
    k = returned.size
    receipt = rng.random(k) < spec.return_receipt_share
    all_visits = Visits(
        sec=np.concatenate([visits.sec, sec]),
        person=np.concatenate([visits.person, visits.person[original]]),
        store=np.concatenate([visits.store, visits.store[original]]),
        card=np.concatenate([visits.card, visits.card[original]]),
        phone=np.concatenate([visits.phone, visits.phone[original]]),
        is_return=np.concatenate([visits.is_return, np.ones(k, bool)]),
        refund_of=np.concatenate([visits.refund_of, np.where(receipt, original, -1)]),
    )
    lines = Lines(
        basket=np.concatenate([sold.basket, visits.sec.size + np.arange(k)]),
        line_no=np.concatenate([sold.line_no, np.ones(k, np.int64)]),
        item=np.concatenate([sold.item, sold.item[returned]]),
        quantity=np.concatenate([sold.quantity, -sold.quantity[returned]]),
        price=np.concatenate([sold.price, sold.price[returned]]),
    )
    return returned, all_visits, lines


def _transaction_ids(
    spec: RetailerSpec, world: World, visits: Visits, counters: np.ndarray
) -> tuple[pa.Array, np.ndarray]:
    """Ids like "ST003-20260105-0007" (store, date, the basket's number in that store that day, in time
    order within the chunk) and that number."""
    day = visits.sec // _SEC_PER_DAY
    order = np.lexsort((visits.sec, day, visits.store))
    cell = visits.store[order] * spec.n_days + day[order]
    starts = np.flatnonzero(group_starts(cell))
    within = np.arange(cell.size) - np.repeat(starts, np.diff(np.r_[starts, cell.size]))
    flat = counters.reshape(-1)  # a view: updated in place
    seq = np.empty(cell.size, dtype=np.int64)
    seq[order] = flat[cell] + within + 1
    flat += np.bincount(cell, minlength=flat.size)
    date = pc.replace_substring(T.timestamps(day * MS_PER_DAY, spec.start, "date"), "-", "")
    return T.join(T.vocabulary(world.stores.ids, visits.store), "-", date, "-", T.padded(seq, 4)), seq


def _render_lines(
    spec: RetailerSpec,
    world: World,
    persons: Persons,
    visits: Visits,
    lines: Lines,
    txn: pa.Array,
    locked: np.ndarray,
    rng: np.random.Generator,
) -> pa.Table:
    """Every line as text (one card / phone format per basket) plus hidden columns for ground truth."""
    v = visits.person.size
    card = I.cards(
        np.where(visits.card, persons.card[visits.person], -1), I.card_variants(v, spec.format_noise, rng)
    )
    phone_variant = I.draw_variants(v, spec.format_noise, len(I.PHONE_FORMATS), rng)
    phone = I.phones(np.where(visits.phone, persons.till_phone[visits.person], -1), phone_variant)
    b = pa.array(lines.basket)
    person = visits.person[lines.basket]
    refund_of = visits.refund_of[lines.basket]
    return pa.table(
        {
            S.POS_TRANSACTION_ID: txn.take(b),
            S.POS_LINE_NO: T.integers(lines.line_no),
            S.POS_TS: T.timestamps(visits.sec[lines.basket] * 1000, spec.start, "sql"),
            S.POS_STORE_ID: T.vocabulary(world.stores.ids, visits.store[lines.basket]),
            S.POS_LOYALTY_CARD: card.take(b),
            S.POS_PHONE: phone.take(b),
            S.POS_ITEM_ID: T.vocabulary(world.catalog.item_ids, lines.item),
            S.POS_QUANTITY: T.integers(lines.quantity),
            S.POS_UNIT_PRICE: T.money(pa.array(lines.price)),
            S.POS_ORIGINAL_TRANSACTION_ID: T.with_nulls(
                txn.take(pa.array(np.maximum(refund_of, 0))), refund_of >= 0
            ),
            "_person": pa.array(person.astype(np.int64)),
            "_tag_phone": pa.array(persons.till_tag[person]),
            "_locked": pa.array(locked),
        }
    )


def _first_visits(persons: Persons, visits: Visits) -> np.ndarray:
    bought = np.flatnonzero(~visits.is_return)
    order = bought[np.lexsort((visits.sec[bought], visits.person[bought]))]
    first = order[group_starts(visits.person[order])]
    out = np.full(persons.gid.size, -1, dtype=np.int64)
    out[visits.person[first]] = first
    return out

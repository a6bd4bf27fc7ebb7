"""Customer records of one chunk: loyalty members (``members.csv``) and online accounts (``accounts.csv``),
each with the consent choices recorded when it was created.

A person's consent is one latest choice (ground truth); when the person has both records, the earlier one
holds the other choice with chance ``consent_change_share`` (they changed their mind since).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from data_prep import schema as S
from data_prep.synthetic import attributes as A
from data_prep.synthetic import identities as I
from data_prep.synthetic import text as T
from data_prep.synthetic.persons import Persons
from data_prep.synthetic.spec import RetailerSpec
from data_prep.synthetic.stores import Pos
from data_prep.synthetic.world import MS_PER_DAY, World

_MS_PER_HOUR = 3_600_000
CONSENT_TEXT = (S.CONSENT_NO, S.CONSENT_YES)  # indexed by the bool choice
_YN = CONSENT_TEXT


@dataclass(frozen=True)
class Records:
    members: pa.Table  # members.csv rows (text) + hidden _person, _tag_phone; by sign-up time
    accounts: pa.Table  # accounts.csv rows (text) + hidden _person, _tag_phone; by creation time


def build_records(
    spec: RetailerSpec,
    world: World,
    persons: Persons,
    pos: Pos,
    first_login: np.ndarray,
    rng: np.random.Generator,
    attribute_rng: np.random.Generator,
) -> Records:
    """Members and accounts of the chunk. ``first_login`` (P,): ms of each person's first logged-in online
    event, -1 when none (an account is created minutes before it when the person joins in the window).
    The profile attributes (name, birth date, postcode) come from ``attribute_rng`` alone."""
    member = np.flatnonzero(persons.card >= 0)
    holder = np.flatnonzero(persons.account >= 0)
    signup_ms, signup_store = _signup(spec, world, persons, pos, member, rng)
    created_ms = _account_creation(persons, holder, first_login, rng)
    member_consent, holder_consent = _recorded_consent(
        spec, persons, member, signup_ms, holder, created_ms, rng
    )
    members = _render_members(spec, world, persons, member, signup_ms, signup_store, member_consent, rng)
    accounts = _render_accounts(spec, persons, holder, created_ms, holder_consent, rng)
    attributes = A.draw_attributes(persons, spec.start, attribute_rng)
    members = _with_columns(
        members, A.render(attributes, member, A.CRM_STYLE, spec.format_noise, attribute_rng)
    )
    accounts = _with_columns(
        accounts, A.render(attributes, holder, A.ACCOUNT_STYLE, spec.format_noise, attribute_rng)
    )
    return Records(
        members=members.take(pa.array(np.lexsort((persons.card[member], signup_ms)))),
        accounts=accounts.take(pa.array(np.lexsort((persons.account[holder], created_ms)))),
    )


def _with_columns(t: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    for name, values in columns.items():
        t = t.append_column(name, values)
    return t


def _signup(
    spec: RetailerSpec, world: World, persons: Persons, pos: Pos, member: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(ms, store) of each member's sign-up. Persons shopping in store from day 0 signed up at their home
    store in the three years before the window; the others sign up at the till minutes before their first
    basket (or at 09:00 on their first store day if they bought nothing)."""
    first = pos.first_visit[member]
    store_lo = persons.store_window[member, 0]
    at_till = (store_lo > 0) & (first >= 0)
    days_before = np.floor(rng.uniform(1, 3 * 365, member.size)) - rng.uniform(10, 21, member.size) / 24
    signup = np.where(store_lo > 0, (store_lo * 24 + 9) * _MS_PER_HOUR, -days_before * MS_PER_DAY)
    visit = np.maximum(first, 0) if pos.visits.sec.size else None  # a chunk may hold no basket at all
    till_sec = np.zeros(member.size, np.int64) if visit is None else pos.visits.sec[visit]
    till = till_sec * 1000 - rng.integers(60, 600, member.size) * 1000
    signup = np.where(at_till, till, signup).astype(np.int64) // 1000 * 1000
    till_store = persons.home_store[member] if visit is None else pos.visits.store[visit]
    store = np.where(at_till, till_store, persons.home_store[member])
    return signup, store


def _account_creation(
    persons: Persons, holder: np.ndarray, first_login: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """ms of each account's creation: before the window for persons online from day 0, else minutes before
    the first logged-in event (or 09:00 on the first online day without one)."""
    online_lo = persons.online_window[holder, 0]
    login = first_login[holder]
    days_before = np.floor(rng.uniform(1, 3 * 365, holder.size)) - rng.uniform(8, 23, holder.size) / 24
    first_day = (online_lo * 24 + 9) * _MS_PER_HOUR
    joined = np.where(login >= 0, login - rng.integers(60, 600, holder.size) * 1000, first_day)
    created = np.where(online_lo > 0, joined, -days_before * MS_PER_DAY)
    return created.astype(np.int64) // 1000 * 1000


def _recorded_consent(
    spec: RetailerSpec,
    persons: Persons,
    member: np.ndarray,
    signup_ms: np.ndarray,
    holder: np.ndarray,
    created_ms: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(members, 2) and (holders, 2) bool consent as recorded on each record."""
    n = persons.gid.size
    signup, created = np.full(n, np.iinfo(np.int64).max), np.full(n, np.iinfo(np.int64).max)
    signup[member], created[holder] = signup_ms, created_ms
    both = (persons.card >= 0) & (persons.account >= 0)
    changed = both[:, None] & (rng.random((n, 2)) < spec.consent_change_share)
    crm_earlier = (signup < created)[:, None]
    crm = persons.consent ^ (changed & crm_earlier)
    account = persons.consent ^ (changed & ~crm_earlier)
    return crm[member], account[holder]


def _render_members(
    spec: RetailerSpec,
    world: World,
    persons: Persons,
    member: np.ndarray,
    signup_ms: np.ndarray,
    store: np.ndarray,
    consent: np.ndarray,
    rng: np.random.Generator,
) -> pa.Table:
    n = member.size
    email_parts = np.where(persons.crm_email[member][:, None], persons.email_parts[member], -1)
    return pa.table(
        {
            S.CRM_LOYALTY_CARD: I.cards(persons.card[member], I.card_variants(n, spec.format_noise, rng)),
            S.CRM_PHONE: I.phones(
                persons.crm_phone[member], I.draw_variants(n, spec.format_noise, len(I.PHONE_FORMATS), rng)
            ),
            S.CRM_EMAIL: I.emails(
                email_parts, I.draw_variants(n, spec.format_noise, len(I.EMAIL_FORMATS), rng)
            ),
            S.CRM_SIGNUP_TS: T.timestamps(signup_ms, spec.start, "sql"),
            S.CRM_SIGNUP_STORE_ID: T.vocabulary(world.stores.ids, store),
            S.CRM_CONSENT_ANALYTICS: T.vocabulary(_YN, consent[:, 0].astype(np.int64)),
            S.CRM_CONSENT_MARKETING: T.vocabulary(_YN, consent[:, 1].astype(np.int64)),
            "_person": pa.array(member.astype(np.int64)),
            "_tag_phone": pa.array(persons.crm_tag[member]),
        }
    )


def _render_accounts(
    spec: RetailerSpec,
    persons: Persons,
    holder: np.ndarray,
    created_ms: np.ndarray,
    consent: np.ndarray,
    rng: np.random.Generator,
) -> pa.Table:
    n = holder.size
    phone = np.where(rng.random(n) < spec.account_phone_share, persons.account_phone[holder], -1)
    card = np.where(rng.random(n) < spec.account_card_share, persons.card[holder], -1)  # -1: not a member
    return pa.table(
        {
            S.ACC_ACCOUNT_ID: T.join("acct-", T.integers(persons.account[holder])),
            S.ACC_EMAIL: I.emails(
                persons.email_parts[holder],
                I.draw_variants(n, spec.format_noise, len(I.EMAIL_FORMATS), rng),
            ),
            S.ACC_PHONE: I.phones(phone, I.draw_variants(n, spec.format_noise, len(I.PHONE_FORMATS), rng)),
            S.ACC_LOYALTY_CARD: I.cards(card, I.card_variants(n, spec.format_noise, rng)),
            S.ACC_CREATED_TS: T.timestamps(created_ms, spec.start, "iso_s"),
            S.ACC_CONSENT_ANALYTICS: T.vocabulary(_YN, consent[:, 0].astype(np.int64)),
            S.ACC_CONSENT_MARKETING: T.vocabulary(_YN, consent[:, 1].astype(np.int64)),
            "_person": pa.array(holder.astype(np.int64)),
            "_tag_phone": pa.array(persons.account_tag[holder]),
        }
    )


def latest_consent(persons: Persons) -> np.ndarray:
    """(P, 2) text index into _YN of each person's latest choice, -1 for persons with no record."""
    asked = (persons.card >= 0) | (persons.account >= 0)
    return np.where(asked[:, None], persons.consent.astype(np.int64), -1)

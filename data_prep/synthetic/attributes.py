"""Profile attributes of persons — name, birth date, postcode — and how account and CRM exports write them.

They are what a retailer's account system and loyalty CRM hold beside the identifiers, and what links an
account to a loyalty member when no identifier does (a thin account export without the registration phone
or the bound card). Each person has one true value of each; an export leaves a field empty at a rate of its
own, writes the name in one of several cases and spacings, mistypes a letter now and then, and keeps an old
postcode for people who moved. Household members share the family name and the postcode, never the given
name or the birth date. Drawn from a random stream of their own, so switching them on changed no other
draw of the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from data_prep import schema as S
from data_prep.synthetic import identities as I
from data_prep.synthetic.persons import Persons

POSTCODES_PER_STORE = 6  # postcodes around a store that its regular customers live in
_POSTCODE_BASE = 100_000  # 6-digit codes: 1SSKK0 (store SS, neighbourhood K)
_AGE_YEARS = (18, 80)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class ExportStyle:
    """How one export writes the attributes: share of records that fill each field, share of names with
    one mistyped letter, share of birth dates off by a slip (another day of the same month, or day and
    month swapped), share of postcodes that are out of date (the person moved)."""

    name: float
    birth_date: float
    postcode: float
    name_typo: float = 0.03
    birth_slip: float = 0.02
    moved: float = 0.05


# accounts: the delivery address's name and postcode for most buyers, the birthday when the app asked
ACCOUNT_STYLE = ExportStyle(name=0.95, birth_date=0.6, postcode=0.85)
# members: name at the till, the birthday for the birthday coupon, an address less often
CRM_STYLE = ExportStyle(name=0.98, birth_date=0.9, postcode=0.6)


@dataclass(frozen=True)
class Attributes:
    given: np.ndarray  # (P,) index into identities.FIRST_NAMES
    family: np.ndarray  # (P,) index into identities.LAST_NAMES (the household owner's in a household)
    birth: np.ndarray  # (P,) datetime64[D]
    postcode: np.ndarray  # (P,) int, 6 digits (the owner's in a household)


def draw_attributes(persons: Persons, start: str, rng: np.random.Generator) -> Attributes:
    """True attributes of every person of the chunk: the given and family name of their email, an age of
    18-80 at the start of the window, a postcode near their home store."""
    n = persons.gid.size
    family = persons.email_parts[:, 1].copy()
    postcode = _POSTCODE_BASE + persons.home_store * 100 + rng.integers(0, POSTCODES_PER_STORE, n) * 10
    owner = persons.household
    inside = owner >= 0
    family[inside] = family[owner[inside]]
    postcode[inside] = postcode[owner[inside]]
    age_days = rng.integers(_AGE_YEARS[0] * 365, _AGE_YEARS[1] * 365, n)
    birth = np.datetime64(start, "D") - age_days.astype("timedelta64[D]")
    return Attributes(persons.email_parts[:, 0].copy(), family, birth, postcode)


def render(
    attributes: Attributes, person: np.ndarray, style: ExportStyle, noise: float, rng: np.random.Generator
) -> dict[str, pa.Array]:
    """The name, birth_date and postcode columns of the records of ``person`` (local indices)."""
    n = person.size
    if not n:
        return {c: pa.array([], pa.string()) for c in S.PROFILE_ATTRIBUTE_COLUMNS}
    return {
        S.PROFILE_NAME: _names(attributes, person, style, noise, rng),
        S.PROFILE_BIRTH_DATE: _birth_dates(attributes.birth[person], style, noise, rng),
        S.PROFILE_POSTCODE: _postcodes(attributes.postcode[person], style, rng),
    }


def _names(
    attributes: Attributes, person: np.ndarray, style: ExportStyle, noise: float, rng: np.random.Generator
) -> pa.Array:
    n = person.size
    filled = rng.random(n) < style.name
    typo = rng.random(n) < style.name_typo
    variant = I.draw_variants(n, noise, 4, rng)  # Title, lower, UPPER, padded Title
    where, letter = rng.random(n), rng.integers(0, len(_LETTERS), n)
    out: list[str | None] = []
    for i in range(n):
        if not filled[i]:
            out.append(None)
            continue
        given = I.FIRST_NAMES[attributes.given[person[i]]]
        if typo[i]:
            k = int(where[i] * len(given))
            given = given[:k] + _LETTERS[letter[i]] + given[k + 1 :]
        full = f"{given} {I.LAST_NAMES[attributes.family[person[i]]]}"
        out.append((full.title(), full, full.upper(), f" {full.title().replace(' ', '  ')} ")[variant[i]])
    return pa.array(out, pa.string())


def _birth_dates(birth: np.ndarray, style: ExportStyle, noise: float, rng: np.random.Generator) -> pa.Array:
    n = birth.size
    filled = rng.random(n) < style.birth_date
    slip = rng.random(n) < style.birth_slip
    slash = rng.random(n) < noise / 3
    other_day = rng.integers(1, 28, n)
    out: list[str | None] = []
    for i in range(n):
        if not filled[i]:
            out.append(None)
            continue
        y, m, d = (int(x) for x in str(birth[i]).split("-"))
        if slip[i] and d <= 12 and d != m:  # day and month swapped
            m, d = d, m
        elif slip[i]:  # another day of the month
            d = int(other_day[i]) if other_day[i] != d else d % 27 + 1
        out.append(f"{y:04d}{'/' if slash[i] else '-'}{m:02d}{'/' if slash[i] else '-'}{d:02d}")
    return pa.array(out, pa.string())


def _postcodes(postcode: np.ndarray, style: ExportStyle, rng: np.random.Generator) -> pa.Array:
    n = postcode.size
    filled = rng.random(n) < style.postcode
    moved = rng.random(n) < style.moved
    elsewhere = _POSTCODE_BASE + rng.integers(0, 100, n) * 100 + rng.integers(0, POSTCODES_PER_STORE, n) * 10
    code = np.where(moved, elsewhere, postcode)
    return pa.array([f"{c:06d}" if f else None for c, f in zip(code, filled, strict=True)], pa.string())

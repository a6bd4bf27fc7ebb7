"""Pseudonymisation of personal identifiers: normalise, then keyed-hash (HMAC-SHA256).

The key comes from the environment (``O2O_PII_KEY``). When it is unset, a random key is generated once into
a local key file (``$O2O_HOME/pii.key``, default ``~/.o2o/pii.key``) and a notice is printed. Every prep run
over the same customers must use the same key, or their identifiers (and so customer ids) will not match.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import unicodedata
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path

import phonenumbers

from data_prep import schema as S

log = logging.getLogger(__name__)

KEY_ENV = "O2O_PII_KEY"
HOME_ENV = "O2O_HOME"
REGION_ENV = "O2O_PHONE_REGION"
DEFAULT_PHONE_REGION = "CN"
KEY_HEX_CHARS = 32  # 128 bits of the HMAC digest: collisions are negligible below ~10^15 identifiers


def o2o_home() -> Path:
    """Directory for local state that is not data (key file, erasure records)."""
    return Path(os.environ.get(HOME_ENV, Path.home() / ".o2o"))


def existing_key() -> bytes | None:
    """The pseudonymisation key if one exists: ``$O2O_PII_KEY``, else the local key file; None when neither
    does (a service must not make up a key: its hashes would match nothing prep wrote)."""
    env = os.environ.get(KEY_ENV)
    if env:
        return env.encode()
    path = o2o_home() / "pii.key"
    return path.read_text().strip().encode() if path.is_file() else None


def load_key() -> bytes:
    """The pseudonymisation key: ``$O2O_PII_KEY``, else the local key file (created on first use)."""
    found = existing_key()
    if found is not None:
        return found
    path = o2o_home() / "pii.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private from the first byte
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        log.warning("%s is unset: generated a local pseudonymisation key at %s", KEY_ENV, path)
    return path.read_text().strip().encode()


def phone_region() -> str:
    """Region assumed for phone numbers written without a country code (``$O2O_PHONE_REGION``, default CN)."""
    return os.environ.get(REGION_ENV, DEFAULT_PHONE_REGION).upper()


def normalise_phone(value: str, region: str) -> str | None:
    """E.164 (``+8613800138000``) for any common way of typing a number; None when it cannot be a phone."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalise_identifier(identifier_type: str, value: str | None, region: str | None = None) -> str | None:
    """Canonical text of an identifier, or None when nothing usable remains.

    Emails are trimmed and lower-cased; phones become E.164 (numbers without a country code are read in
    ``region``, default :func:`phone_region`); cards are trimmed, upper-cased and lose inner spaces;
    other identifiers are trimmed.
    """
    if value is None:
        return None
    v = value.strip()
    if identifier_type == S.ID_EMAIL:
        v = v.lower()
        return v if "@" in v else None
    if identifier_type == S.ID_PHONE:
        return normalise_phone(v, region or phone_region()) if v else None
    if identifier_type == S.ID_CARD:
        v = "".join(v.split()).upper()
    return v or None


def pseudonymise(
    identifier_type: str, value: str | None, key: bytes, region: str | None = None
) -> str | None:
    """HMAC-SHA256 of ``"<type>:<normalised value>"``, hex, truncated to 32 characters."""
    norm = normalise_identifier(identifier_type, value, region)
    if norm is None:
        return None
    digest = hmac.new(key, f"{identifier_type}:{norm}".encode(), hashlib.sha256).hexdigest()
    return digest[:KEY_HEX_CHARS]


def pseudonymise_many(identifier_type: str, values: Iterable[str | None], key: bytes) -> list[str | None]:
    """Vector form of :func:`pseudonymise` (one HMAC per value; the phone region is read once)."""
    region = phone_region()
    return [pseudonymise(identifier_type, v, key, region) for v in values]


_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y%m%d", "%Y.%m.%d")
_EARLIEST_BIRTH_YEAR = 1900


def _hmac(kind: str, text: str, key: bytes) -> str:
    return hmac.new(key, f"{kind}:{text}".encode(), hashlib.sha256).hexdigest()[:KEY_HEX_CHARS]


def normalise_name(value: str) -> list[str]:
    """The name's words: Unicode-normalised (NFKC), case-folded, punctuation dropped (``"O'Brien-Li"`` →
    ``obrien``, ``li``)."""
    text = unicodedata.normalize("NFKC", value).casefold().replace("-", " ")
    return "".join(c for c in text if c.isalnum() or c.isspace()).split()


def normalise_birth_date(value: str, today: date | None = None) -> date | None:
    """The date of ``YYYY-MM-DD`` (or ``/``, ``.``, no separator); None when it is no plausible birth date
    (unparseable, before 1900 or in the future)."""
    text = value.strip()
    for fmt in _DATE_FORMATS:
        try:
            d = datetime.strptime(text, fmt).date()
        except ValueError:
            continue
        return d if d.year >= _EARLIEST_BIRTH_YEAR and d <= (today or date.today()) else None
    return None


def attribute_keys(column: str, value: str | None, key: bytes) -> tuple[str | None, ...]:
    """Keyed hashes of one profile attribute (``S.ATTRIBUTE_KEY_COLUMNS[column]``, in that order), None
    where the value gives nothing usable: name → whole name, family name (its last word); birth date →
    date, year; postcode → the postcode without spaces or dashes, upper-cased."""
    if column not in S.ATTRIBUTE_KEY_COLUMNS:
        raise ValueError(
            f"not a profile attribute: {column!r}; expected one of {list(S.ATTRIBUTE_KEY_COLUMNS)}"
        )
    none: tuple[str | None, ...] = (None,) * len(S.ATTRIBUTE_KEY_COLUMNS[column])
    if value is None or not value.strip():
        return none
    if column == S.PROFILE_NAME:
        words = normalise_name(value)
        return (_hmac("name", " ".join(words), key), _hmac("family_name", words[-1], key)) if words else none
    if column == S.PROFILE_BIRTH_DATE:
        d = normalise_birth_date(value)
        if d is None:
            return none
        return _hmac("birth_date", d.isoformat(), key), _hmac("birth_year", str(d.year), key)
    code = "".join(c for c in value.upper() if not c.isspace() and c != "-")
    return (_hmac("postcode", code, key),) if code else none

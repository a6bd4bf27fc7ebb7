"""Identifier text: globally unique ids without a registry, and the formats people and systems write.

Ids are keyed bijections of a global index (person, device, event, ...), so chunks never collide and need no
shared state. Phones, emails and cards are written in one of several formats per record (``variant``); the
canonical format is variant 0, the others are what tills, forms and typists produce.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep import schema as S
from data_prep.synthetic import text as T

PHONE_PREFIXES = (130, 131, 132, 135, 136, 137, 138, 139, 150, 151, 158, 186, 188)  # China mobile
PHONE_SPACE = len(PHONE_PREFIXES) * 10**8
# (format, share among non-canonical records); {n} is the 11-digit number, {a} {b} {c} its 3-4-4 groups.
PHONE_FORMATS = (
    "+86 {a}-{b}-{c}",  # canonical
    "{n}",
    "(+86) {a} {b} {c}",
    "0086 {n}",
    "+86{n}",
    "{a} {b} {c}",
)
EMAIL_FORMATS = ("lower", "padded_title", "upper", "trailing_space", "title")  # " Alice.Wang42@Mail.com "
CARD_FORMATS = ("upper", "lower", "spaced")
_CARD_NOISE = 1 / 3  # cards are mostly scanned: a third of format_noise
# fmt: off
FIRST_NAMES = ("alice", "bob", "chloe", "david", "emma", "frank", "grace", "henry", "iris", "jack", "kevin",
               "lily", "mia", "nina", "oscar", "peter", "queenie", "rose", "sam", "tina", "vivian", "wei",
               "xin", "yan", "zoe", "jun", "ming", "hui", "lei", "fang")
LAST_NAMES = ("wang", "li", "zhang", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou", "xu", "sun", "ma",
              "zhu", "hu", "guo", "he", "lin", "luo", "gao")
EMAIL_DOMAINS = ("mail.com", "qq.com", "163.com", "gmail.com", "outlook.com")
# First octets of home broadband ranges; mobile traffic leaves through a carrier NAT pool.
HOME_OCTETS = np.array([58, 59, 60, 61, 101, 106, 112, 113, 114, 115, 116, 117, 119, 120, 121, 122, 123,
                        124, 125, 180, 182, 183, 218, 219, 220, 221, 222], dtype=np.uint32)
MOBILE_POOL = (223 << 24) | (104 << 16)  # 223.104.0.0/16, shared by every mobile visitor
# fmt: on
USER_AGENTS_BY_CHANNEL = {
    S.CHANNEL_WEB: tuple(
        f"Mozilla/5.0 ({os}) {browser}"
        for os in ("Windows NT 10.0", "Macintosh; Mac OS X 14_5", "iPhone; iOS 18_1", "Linux; Android 14")
        for browser in ("Chrome/126", "Safari/605", "Edg/126")
    ),
    S.CHANNEL_APP: tuple(
        f"O2OApp/{version} ({os})"
        for version in ("5.1.0", "5.2.1", "5.3.0")
        for os in ("iOS 17.5", "iOS 18.1", "Android 13", "Android 14")
    ),
    S.CHANNEL_MINIPROGRAM: tuple(
        f"WeChat/8.0.{v} MiniProgram ({os})" for v in (47, 49, 50) for os in ("iOS 18.1", "Android 14")
    ),
}
KIOSK_USER_AGENT = "Mozilla/5.0 (Linux; Android 11; StoreKiosk) Chrome/110"
USER_AGENTS = (*[ua for c in S.ONLINE_CHANNELS for ua in USER_AGENTS_BY_CHANNEL[c]], KIOSK_USER_AGENT)
UA_START = np.cumsum([0, *[len(USER_AGENTS_BY_CHANNEL[c]) for c in S.ONLINE_CHANNELS]])[:-1]
UA_COUNT = np.array([len(USER_AGENTS_BY_CHANNEL[c]) for c in S.ONLINE_CHANNELS])
KIOSK_UA = len(USER_AGENTS) - 1

# Tags of identifier values in raw records (index into SHARING_KINDS).
TAG_PERSONAL, TAG_HOUSEHOLD, TAG_KIOSK, TAG_RECYCLED = range(4)
SHARING = np.array(S.SHARING_KINDS)


def permute(index: np.ndarray, size: int, key: int) -> np.ndarray:
    """A keyed bijection of [0, size): a multiply-xorshift mix on the next power of two, cycle-walked
    until the value falls back inside the range (at most a few rounds)."""
    bits = max(int(size - 1).bit_length(), 2)
    mask, shift = np.uint64((1 << bits) - 1), np.uint64(max(bits // 2, 1))
    k = np.random.default_rng(key).integers(1, 1 << min(bits, 62), (4, 2), dtype=np.uint64)
    out = index.astype(np.uint64)
    todo = np.arange(out.size)
    while todo.size:
        x = out[todo]
        for add, mul in k:  # four rounds: add, multiply by an odd number, fold the high half down
            x = (((x + add) & mask) * (mul | np.uint64(1))) & mask
            x ^= x >> shift
        out[todo] = x
        todo = todo[x >= np.uint64(size)]
    return out.astype(np.int64)


def phone_number(index: np.ndarray, key: int) -> np.ndarray:
    """11-digit China mobile numbers (int64), distinct for distinct indices."""
    v = permute(index, PHONE_SPACE, key)
    return np.array(PHONE_PREFIXES, dtype=np.int64)[v // 10**8] * 10**8 + v % 10**8


def draw_variants(n: int, noise: float, n_formats: int, rng: np.random.Generator) -> np.ndarray:
    """Format variant per record: 0 (canonical) with chance 1 - noise, else uniform over the others."""
    other = rng.integers(1, n_formats, n) if n_formats > 1 else np.zeros(n, np.int64)
    return np.where(rng.random(n) < noise, other, 0)


def phones(number: np.ndarray, variant: np.ndarray) -> pa.Array:
    """Phone text per record; ``number`` < 0 gives null."""
    valid = number >= 0
    digits = T.decimal(np.where(valid, number, 0), 11)
    n = number.size
    a, b, c = digits[:, :3], digits[:, 3:7], digits[:, 7:]
    sp, dash = T.literal(" ", n), T.literal("-", n)
    texts = [
        T.strings(T.literal("+86 ", n), a, dash, b, dash, c),
        T.strings(digits),
        T.strings(T.literal("(+86) ", n), a, sp, b, sp, c),
        T.strings(T.literal("0086 ", n), digits),
        T.strings(T.literal("+86", n), digits),
        T.strings(a, sp, b, sp, c),
    ]
    return T.with_nulls(pc.choose(pa.array(variant.astype(np.int8)), *texts), valid)


def emails(parts: np.ndarray, variant: np.ndarray) -> pa.Array:
    """Email text per record from (n, 4) parts: first name, last name (vocabulary indices), number and
    domain (vocabulary index); a row whose first name is < 0 gives null."""
    first, last, number, domain = parts.T
    valid = first >= 0
    local = T.join(
        T.vocabulary(FIRST_NAMES, np.where(valid, first, 0)),
        ".",
        T.vocabulary(LAST_NAMES, last),
        T.integers(number),
    )
    host = T.vocabulary(EMAIL_DOMAINS, domain)
    lower = T.join(local, "@", host)
    texts = [
        lower,
        T.join(" ", pc.utf8_title(local), "@", pc.utf8_capitalize(host), " "),
        pc.utf8_upper(lower),
        T.join(lower, " "),
        T.join(pc.utf8_title(local), "@", host),
    ]
    return T.with_nulls(pc.choose(pa.array(variant.astype(np.int8)), *texts), valid)


def cards(number: np.ndarray, variant: np.ndarray) -> pa.Array:
    """Loyalty card text per record ("LC" + 10 digits); ``number`` < 0 gives null."""
    valid = number >= 0
    digits = T.decimal(np.where(valid, number, 0), 10)
    n = number.size
    sp = T.literal(" ", n)
    texts = [
        T.strings(T.literal("LC", n), digits),
        T.strings(T.literal("lc", n), digits),
        T.strings(T.literal("LC ", n), digits[:, :4], sp, digits[:, 4:8], sp, digits[:, 8:]),
    ]
    return T.with_nulls(pc.choose(pa.array(variant.astype(np.int8)), *texts), valid)


def card_variants(n: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    return draw_variants(n, noise * _CARD_NOISE, len(CARD_FORMATS), rng)


def ipv4(address: np.ndarray) -> pa.Array:
    """Dotted-quad text of 32-bit addresses."""
    a = address.astype(np.int64)
    octets = [T.integers(a >> shift & 255) for shift in (24, 16, 8, 0)]
    return T.join(octets[0], ".", octets[1], ".", octets[2], ".", octets[3])


def render_identifier(id_type: str, canonical: str, variant: int = 0) -> str:
    """The text a source writes for one identifier value (one of S.IDENTIFIER_TYPES).

    ``canonical``: phones as 11 digits, emails lower-case, cards "LC" + 10 digits, accounts and devices as
    written. ``variant`` picks a format (0 = canonical): phones ``PHONE_FORMATS``, emails
    ``EMAIL_FORMATS``, cards ``CARD_FORMATS``.
    """
    if id_type == S.ID_PHONE:
        n = canonical
        return PHONE_FORMATS[variant].format(n=n, a=n[:3], b=n[3:7], c=n[7:])
    if id_type == S.ID_EMAIL:
        local, host = canonical.split("@")
        return (
            canonical,
            f" {local.title()}@{host.capitalize()} ",
            canonical.upper(),
            f"{canonical} ",
            f"{local.title()}@{host}",
        )[variant]
    if id_type == S.ID_CARD:
        digits = canonical[2:]
        return (canonical, canonical.lower(), f"LC {digits[:4]} {digits[4:8]} {digits[8:]}")[variant]
    return canonical

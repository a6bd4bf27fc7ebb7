"""Unify raw online events and POS lines into one typed event table, with a reason for every reject.

Every function here is a pure Ibis table → table step (no file I/O): it runs on whichever backend holds
the input tables. Raw tables arrive with every column as a string, so that a malformed value becomes a
reject reason instead of a read error; identifiers arrive already pseudonymised (``*_key`` columns).

Every raw row ends in exactly one of three states: accepted, merged as a duplicate of an accepted row,
or rejected with the first reason in :data:`REJECT_REASONS` that applies.
"""

from __future__ import annotations

import ibis
import ibis.expr.types as ir

from data_prep import schema as S

UTC_TS = ibis.dtype("timestamp('UTC')")

# Reject reasons, in the order they are tested (the first that applies is recorded).
R_MISSING_ID = "missing_id"
R_BAD_TIMESTAMP = "bad_timestamp"
R_UNKNOWN_EVENT_TYPE = "unknown_event_type"
R_UNKNOWN_CHANNEL = "unknown_channel"
R_MISSING_IDENTIFIER = "missing_identifier"
R_MISSING_ITEM = "missing_item"
R_UNKNOWN_ITEM = "unknown_item"
R_UNKNOWN_STORE = "unknown_store"
R_BAD_QUANTITY = "bad_quantity"
R_BAD_PRICE = "bad_price"
REJECT_REASONS = (
    R_MISSING_ID,
    R_BAD_TIMESTAMP,
    R_UNKNOWN_EVENT_TYPE,
    R_UNKNOWN_CHANNEL,
    R_MISSING_IDENTIFIER,
    R_MISSING_ITEM,
    R_UNKNOWN_ITEM,
    R_UNKNOWN_STORE,
    R_BAD_QUANTITY,
    R_BAD_PRICE,
)
R_ERASED = "erased"  # not a reject: the person was erased; counted in the ledger, stored nowhere
IS_DUPLICATE = "is_duplicate"

EVENT_COLUMNS = (
    S.EVENT_ID,
    S.SOURCE,
    S.TS,
    S.CHANNEL,
    S.EVENT_TYPE,
    S.ITEM_ID,
    S.STORE_ID,
    S.QUANTITY,
    S.PRICE,
    S.AMOUNT,
    S.ORDER_ID,
    S.SESSION_ID,
    *S.IDENTIFIER_KEY_COLUMNS.values(),
)


def _first_reason(checks: list[tuple[ir.BooleanValue, str]]) -> ir.StringValue:
    """The reason of the first failing check (nulls in a check count as 'not failing')."""
    return ibis.cases(
        *[(cond.fill_null(False), reason) for cond, reason in checks], else_=ibis.null("string")
    )


def trim(v: ir.StringValue) -> ir.StringValue:
    """Without leading and trailing whitespace. A regex on purpose: Ibis compiles ``strip()`` for Spark to
    ``trim(x, ' \\t\\n\\r\\v\\f')``, which Spark reads as literal characters (``view`` became ``iew``)."""
    return v.re_replace(r"^\s+|\s+$", "")


def epoch_seconds(ts: ir.TimestampValue) -> ir.FloatingValue:
    """Whole seconds since 1970 (floored: engines disagree on fractional seconds), as float64."""
    return ts.epoch_seconds().floor().cast("float64")


def _empty_to_null(v: ir.StringValue) -> ir.StringValue:
    return trim(v).nullif("")


def unify_online_events(raw: ir.Table, catalog_items: ir.Table) -> ir.Table:
    """Online events (web/app/mini-program) → unified columns + ``reason`` (null when valid).

    ``raw`` has the columns of ``01_raw/online/events.jsonl`` as strings, with ``device_id``/``account_id``/
    ``email`` replaced by ``device_key``/``account_key``/``email_key``.
    """
    ts = raw[S.ON_TS].try_cast(UTC_TS)
    qty = raw[S.ON_QUANTITY].try_cast("int64")
    price = raw[S.ON_PRICE].try_cast("float64")
    etype = _empty_to_null(raw[S.ON_EVENT_TYPE]).lower()
    item = _empty_to_null(raw[S.ON_ITEM_ID])
    has_item = etype.isin(S.ITEM_EVENT_TYPES)
    with_qty = etype.isin((S.EV_ADD_TO_CART, S.EV_REMOVE_FROM_CART, S.EV_ORDER))
    reason = _first_reason(
        [
            (_empty_to_null(raw[S.ON_EVENT_ID]).isnull(), R_MISSING_ID),
            (ts.isnull(), R_BAD_TIMESTAMP),
            (etype.isnull() | ~etype.isin(S.ONLINE_EVENT_TYPES), R_UNKNOWN_EVENT_TYPE),
            (~raw[S.ON_CHANNEL].lower().isin(S.ONLINE_CHANNELS).fill_null(False), R_UNKNOWN_CHANNEL),
            (raw[S.DEVICE_KEY].isnull(), R_MISSING_IDENTIFIER),
            (has_item & item.isnull(), R_MISSING_ITEM),
            (has_item & ~item.isin(catalog_items[S.CAT_ITEM_ID]), R_UNKNOWN_ITEM),
            (with_qty & (qty.isnull() | (qty <= 0)), R_BAD_QUANTITY),
            ((etype == S.EV_ORDER) & (price.isnull() | (price <= 0)), R_BAD_PRICE),
        ]
    )
    is_order = etype == S.EV_ORDER
    return raw.select(
        **{
            S.EVENT_ID: ibis.literal("online:") + trim(raw[S.ON_EVENT_ID]),
            S.SOURCE: ibis.literal("online"),
            S.TS: ts,
            S.CHANNEL: raw[S.ON_CHANNEL].lower(),
            S.EVENT_TYPE: etype,
            S.ITEM_ID: item,
            S.STORE_ID: ibis.null("string"),
            S.QUANTITY: qty,
            S.PRICE: price,
            S.AMOUNT: ibis.ifelse(is_order, qty.cast("float64") * price, ibis.null("float64")),
            S.ORDER_ID: _empty_to_null(raw[S.ON_ORDER_ID]),
            S.SESSION_ID: _empty_to_null(raw[S.ON_SESSION_ID]),
            S.DEVICE_KEY: raw[S.DEVICE_KEY],
            S.ACCOUNT_KEY: raw[S.ACCOUNT_KEY],
            S.EMAIL_KEY: raw[S.EMAIL_KEY],
            S.PHONE_KEY: ibis.null("string"),
            S.CARD_KEY: ibis.null("string"),
            S.REJECT_REASON: reason,
        }
    )


def unify_pos_lines(raw: ir.Table, catalog_items: ir.Table, stores: ir.Table) -> ir.Table:
    """POS lines → unified ``purchase`` events + ``reason``. Anonymous baskets (no card, no phone) are valid.

    ``raw`` has the columns of ``01_raw/pos/pos_lines.csv`` as strings, with ``loyalty_card``/``phone``
    replaced by ``card_key``/``phone_key``.
    """
    ts = raw[S.POS_TS].try_cast(UTC_TS)
    qty = raw[S.POS_QUANTITY].try_cast("int64")
    price = raw[S.POS_UNIT_PRICE].try_cast("float64")
    txn = _empty_to_null(raw[S.POS_TRANSACTION_ID])
    line = _empty_to_null(raw[S.POS_LINE_NO])
    item = _empty_to_null(raw[S.POS_ITEM_ID])
    store = _empty_to_null(raw[S.POS_STORE_ID])
    reason = _first_reason(
        [
            (txn.isnull() | line.isnull(), R_MISSING_ID),
            (ts.isnull(), R_BAD_TIMESTAMP),
            (item.isnull(), R_MISSING_ITEM),
            (~item.isin(catalog_items[S.CAT_ITEM_ID]), R_UNKNOWN_ITEM),
            (store.isnull() | ~store.isin(stores[S.CAT_STORE_ID]), R_UNKNOWN_STORE),
            (qty.isnull() | (qty <= 0), R_BAD_QUANTITY),
            (price.isnull() | (price <= 0), R_BAD_PRICE),
        ]
    )
    return raw.select(
        **{
            S.EVENT_ID: ibis.literal("pos:") + txn + ibis.literal(":") + line,
            S.SOURCE: ibis.literal("pos"),
            S.TS: ts,
            S.CHANNEL: ibis.literal(S.CHANNEL_STORE),
            S.EVENT_TYPE: ibis.literal(S.EV_PURCHASE),
            S.ITEM_ID: item,
            S.STORE_ID: store,
            S.QUANTITY: qty,
            S.PRICE: price,
            S.AMOUNT: qty.cast("float64") * price,
            S.ORDER_ID: txn,
            S.SESSION_ID: ibis.null("string"),
            S.DEVICE_KEY: ibis.null("string"),
            S.ACCOUNT_KEY: ibis.null("string"),
            S.EMAIL_KEY: ibis.null("string"),
            S.PHONE_KEY: raw[S.PHONE_KEY],
            S.CARD_KEY: raw[S.CARD_KEY],
            S.REJECT_REASON: reason,
        }
    )


def mark_duplicates(events: ir.Table) -> ir.Table:
    """Flag every valid row whose ``event_id`` repeats an earlier valid row (``is_duplicate``).

    Works on any table with ``event_id``, ``ts`` and ``reason``. Rejected rows are never duplicates (they
    keep their reject reason). Among copies, the one with the earliest timestamp (then the smallest value
    of every other column) is kept, so the choice is deterministic whatever the row order of the source.
    """
    valid = events[S.REJECT_REASON].isnull()
    rest = [events[c] for c in events.columns if c not in (S.EVENT_ID, S.TS, S.REJECT_REASON)]
    order = [events[S.TS], *rest]
    rank = ibis.row_number().over(group_by=[events[S.EVENT_ID], valid], order_by=order)
    return events.mutate(**{IS_DUPLICATE: valid & (rank > 0)})


def accepted_events(marked: ir.Table) -> ir.Table:
    """Valid, non-duplicate rows with the unified event columns, ordered by time."""
    keep = marked.filter(marked[S.REJECT_REASON].isnull() & ~marked[IS_DUPLICATE])
    return keep.select(*EVENT_COLUMNS).order_by([S.TS, S.EVENT_ID])


def rejected_rows(marked: ir.Table) -> ir.Table:
    """Rejected rows with their reason (identifiers already pseudonymised); erased rows are not kept."""
    reason = marked[S.REJECT_REASON]
    return marked.filter(reason.notnull() & (reason != R_ERASED)).drop(IS_DUPLICATE)


def mark_erased(t: ir.Table, erased: ir.Table) -> ir.Table:
    """Set ``reason`` to ``erased`` on rows carrying an identifier key of an erased person.

    ``erased`` has (identifier_type, identifier_key); it takes precedence over every other reason.
    """
    hits = [
        t[col].isin(erased.filter(erased[S.IDENTIFIER_TYPE] == id_type)[S.IDENTIFIER_KEY]).fill_null(False)
        for id_type, col in S.IDENTIFIER_KEY_COLUMNS.items()
        if col in t.columns
    ]
    if not hits:
        return t
    is_erased = hits[0]
    for h in hits[1:]:
        is_erased = is_erased | h
    return t.mutate(**{S.REJECT_REASON: ibis.ifelse(is_erased, R_ERASED, t[S.REJECT_REASON])})


def count_outcomes(marked: ir.Table) -> ir.Table:
    """Row counts per (source, outcome, reason) — the body of the ledger."""
    outcome = ibis.cases(
        (marked[S.REJECT_REASON] == R_ERASED, "erased"),
        (marked[S.REJECT_REASON].notnull(), "rejected"),
        (marked[IS_DUPLICATE], "merged_duplicate"),
        else_="accepted",
    )
    return (
        marked.mutate(outcome=outcome)
        .group_by([S.SOURCE, "outcome", S.REJECT_REASON])
        .aggregate(n=ibis._.count())
    )


def _consent(v: ir.StringValue) -> ir.BooleanValue:
    """y/yes/true/1 → True, n/no/false/0 → False, anything else → null (no recorded choice)."""
    v = trim(v).lower()
    return ibis.cases(
        (v.isin(("y", "yes", "true", "1")), True),
        (v.isin(("n", "no", "false", "0")), False),
        else_=ibis.null("boolean"),
    )


PROFILE_COLUMNS = (
    S.EVENT_ID,
    S.SOURCE,
    S.TS,
    S.STORE_ID,
    *S.IDENTIFIER_KEY_COLUMNS.values(),
    S.CONSENT_ANALYTICS,
    S.CONSENT_MARKETING,
    S.REJECT_REASON,
)


def _profile(
    raw: ir.Table, source: str, anchor_key: str, ts: ir.TimestampValue, **values: ir.Value
) -> ir.Table:
    reason = _first_reason([(raw[anchor_key].isnull(), R_MISSING_ID), (ts.isnull(), R_BAD_TIMESTAMP)])
    keys = {
        col: raw[col] if col in raw.columns else ibis.null("string")
        for col in S.IDENTIFIER_KEY_COLUMNS.values()
    }
    row = {
        S.EVENT_ID: ibis.literal(f"{source}:") + raw[anchor_key].fill_null(""),
        S.SOURCE: ibis.literal(source),
        S.TS: ts,
        S.STORE_ID: ibis.null("string"),
        **keys,
        **values,
        S.REJECT_REASON: reason,
    }
    return raw.select(**row).select(*PROFILE_COLUMNS)


def clean_members(raw: ir.Table) -> ir.Table:
    """CRM members → profile rows (card, phone, email keys; ts = sign-up; consent). No card → ``missing_id``."""
    return _profile(
        raw,
        "crm",
        S.CARD_KEY,
        raw[S.CRM_SIGNUP_TS].try_cast(UTC_TS),
        **{
            S.STORE_ID: _empty_to_null(raw[S.CRM_SIGNUP_STORE_ID]),
            S.CONSENT_ANALYTICS: _consent(raw[S.CRM_CONSENT_ANALYTICS]),
            S.CONSENT_MARKETING: _consent(raw[S.CRM_CONSENT_MARKETING]),
        },
    )


def clean_accounts(raw: ir.Table) -> ir.Table:
    """Online accounts → profile rows (account and registration email keys; ts = creation; consent)."""
    return _profile(
        raw,
        "accounts",
        S.ACCOUNT_KEY,
        raw[S.ACC_CREATED_TS].try_cast(UTC_TS),
        **{
            S.CONSENT_ANALYTICS: _consent(raw[S.ACC_CONSENT_ANALYTICS]),
            S.CONSENT_MARKETING: _consent(raw[S.ACC_CONSENT_MARKETING]),
        },
    )

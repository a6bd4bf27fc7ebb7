"""Unify raw online events and POS lines into one typed event table, with a reason for every reject.

Every function here is a pure Ibis table → table step (no file I/O): it runs on whichever backend holds
the input tables. Raw tables arrive with every column as a string, so that a malformed value becomes a
reject reason instead of a read error; identifiers arrive already pseudonymised (``*_key`` columns).

Every raw row ends in exactly one of three states: accepted, merged as a duplicate of an accepted row,
or rejected with the first reason that applies, in the order each ``unify_*`` function tests them.
"""

from __future__ import annotations

import sys

import ibis
import ibis.expr.types as ir

from data_prep import schema as S

UTC_TS = ibis.dtype("timestamp('UTC')")

# Reject reasons (docs/data.md lists, per source, the order in which they are tested).
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
R_UNMATCHED_RETURN = (
    "unmatched_return"  # negative quantity with no earlier purchase of the item by that customer
)
MAX_PRICE_RATIO = 10.0  # a unit price above this multiple of the catalogue price is a keying error
MAX_FINITE = sys.float_info.max  # the largest finite double: beyond it (either sign) lie only infinities
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
    S.REFUND_OF,
    *S.IDENTIFIER_KEY_COLUMNS.values(),
    S.IP_KEY,
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


def _identifier_keys(raw: ir.Table) -> dict[str, ir.StringValue]:
    """Every pseudonymised identifier column: the raw table's own, null where the source has none."""
    return {
        col: raw[col] if col in raw.columns else ibis.null("string")
        for col in S.IDENTIFIER_KEY_COLUMNS.values()
    }


def _empty_to_null(v: ir.StringValue) -> ir.StringValue:
    return trim(v).nullif("")


def _with_catalogue_price(raw: ir.Table, item_col: str, catalog_items: ir.Table) -> ir.Table:
    """``raw`` plus ``_cat_price`` (float, null for unknown items), joined on the trimmed item id."""
    cat = catalog_items.select(
        _cat_item=trim(catalog_items[S.CAT_ITEM_ID]),
        _cat_price=catalog_items[S.CAT_PRICE].try_cast("float64"),
    )
    cat = cat.group_by("_cat_item").aggregate(_cat_price=cat._cat_price.max())
    j = raw.left_join(cat, _empty_to_null(raw[item_col]) == cat._cat_item)
    return j.drop("_cat_item")


def not_finite(x: ir.FloatingValue) -> ir.BooleanValue:
    """NaN or ±infinity (null for null). Both engines parse 'nan', 'inf', 'Infinity', '1e999'… into these.

    Written to mean the same on DuckDB and Spark: Ibis compiles ``isinf`` for Spark to a literal false,
    ``x != x`` is false for NaN on both (each treats NaN as equal to itself and larger than any number), and
    for Spark Ibis compiles ``isnull``/``notnull`` to count NaN as null (DuckDB does not), so a check guarded
    by ``notnull()`` would let NaN through on one engine only."""
    return x.isnan() | (x.abs() > MAX_FINITE)


def _absurd(price: ir.FloatingValue, cat_price: ir.FloatingValue) -> ir.BooleanValue:
    """Not finite, zero, negative, or more than MAX_PRICE_RATIO times the catalogue price."""
    return not_finite(price) | (price <= 0) | (cat_price.notnull() & (price > cat_price * MAX_PRICE_RATIO))


def unify_online_events(raw: ir.Table, catalog_items: ir.Table) -> ir.Table:
    """Online events (web/app/mini-program) → unified columns + ``reason`` (null when valid).

    ``raw`` has the columns of ``01_raw/online/events.jsonl`` as strings, with ``device_id``/``account_id``/
    ``email`` replaced by ``device_key``/``account_key``/``email_key``. Cart and order prices that are not
    finite (NaN, infinite), zero or above ``MAX_PRICE_RATIO`` × the catalogue price are rejected
    (``bad_price``).
    """
    raw = _with_catalogue_price(raw, S.ON_ITEM_ID, catalog_items)
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
            ((etype == S.EV_ORDER) & price.isnull(), R_BAD_PRICE),
            (with_qty & _absurd(price, raw._cat_price), R_BAD_PRICE),  # null: no price given
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
            S.REFUND_OF: ibis.null("string"),
            S.DEVICE_KEY: raw[S.DEVICE_KEY],
            S.ACCOUNT_KEY: raw[S.ACCOUNT_KEY],
            S.EMAIL_KEY: raw[S.EMAIL_KEY],
            S.PHONE_KEY: ibis.null("string"),
            S.CARD_KEY: ibis.null("string"),
            S.IP_KEY: raw[S.IP_KEY] if S.IP_KEY in raw.columns else ibis.null("string"),
            S.REJECT_REASON: reason,
        }
    )


def unify_pos_lines(raw: ir.Table, catalog_items: ir.Table, stores: ir.Table) -> ir.Table:
    """POS lines → unified ``purchase`` (or ``return``) events + ``reason``. Anonymous baskets are valid.

    ``raw`` has the columns of ``01_raw/pos/pos_lines.csv`` as strings, with ``loyalty_card``/``phone``
    replaced by ``card_key``/``phone_key``. A negative quantity is a ``return`` (checked against earlier
    purchases by :func:`verify_returns`); a zero quantity is rejected; so is a unit price that is not finite
    (NaN, infinite), zero or above ``MAX_PRICE_RATIO`` × the catalogue price.
    """
    raw = _with_catalogue_price(raw, S.POS_ITEM_ID, catalog_items)
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
            (qty.isnull() | (qty == 0), R_BAD_QUANTITY),
            (price.isnull() | _absurd(price, raw._cat_price), R_BAD_PRICE),
        ]
    )
    etype = ibis.ifelse(qty < 0, ibis.literal(S.EV_RETURN), ibis.literal(S.EV_PURCHASE))
    return raw.select(
        **{
            S.EVENT_ID: ibis.literal("pos:") + txn + ibis.literal(":") + line,
            S.SOURCE: ibis.literal("pos"),
            S.TS: ts,
            S.CHANNEL: ibis.literal(S.CHANNEL_STORE),
            S.EVENT_TYPE: etype.fill_null(S.EV_PURCHASE),
            S.ITEM_ID: item,
            S.STORE_ID: store,
            S.QUANTITY: qty,
            S.PRICE: price,
            S.AMOUNT: qty.cast("float64") * price,
            S.ORDER_ID: txn,
            S.SESSION_ID: ibis.null("string"),
            S.REFUND_OF: _empty_to_null(raw[S.POS_ORIGINAL_TRANSACTION_ID])
            if S.POS_ORIGINAL_TRANSACTION_ID in raw.columns
            else ibis.null("string"),
            S.DEVICE_KEY: ibis.null("string"),
            S.ACCOUNT_KEY: ibis.null("string"),
            S.EMAIL_KEY: ibis.null("string"),
            S.PHONE_KEY: raw[S.PHONE_KEY],
            S.CARD_KEY: raw[S.CARD_KEY],
            S.IP_KEY: ibis.null("string"),
            S.REJECT_REASON: reason,
        }
    )


def unify_orders(raw: ir.Table, stores: ir.Table) -> ir.Table:
    """Order-level records (a total, no item lines) → unified ``order`` (online) or ``purchase`` (store)
    events with no item + ``reason``.

    ``raw`` has the columns of ``01_raw/orders/orders.csv`` as strings, identifiers replaced by their keys.
    Rejected: no order id (``missing_id``), bad time, a channel other than web / app / miniprogram / store,
    a store order naming no known store, a total that is missing, not a number, not finite ('nan', 'inf',
    '1e999') or not positive (``bad_price``; refunds of order-level sources are not matched to purchases).
    A total of exactly 0 is kept, as an order with spend 0, on rows whose ``zero_total`` column (the import
    writes it from the source's mapping option) reads ``keep``; a negative total is rejected either way.
    """
    ts = raw[S.ORD_TS].try_cast(UTC_TS)
    order = _empty_to_null(raw[S.ORD_ORDER_ID])
    channel = _empty_to_null(raw[S.ORD_CHANNEL]).lower()
    store = _empty_to_null(raw[S.ORD_STORE_ID])
    total = raw[S.ORD_TOTAL].try_cast("float64")
    in_store = channel == S.CHANNEL_STORE
    keep_zero = (
        (_empty_to_null(raw[S.ORD_ZERO_TOTAL]).lower() == S.ZERO_TOTAL_KEEP).fill_null(False)
        if S.ORD_ZERO_TOTAL in raw.columns
        else ibis.literal(False)
    )
    reason = _first_reason(
        [
            (order.isnull(), R_MISSING_ID),
            (ts.isnull(), R_BAD_TIMESTAMP),
            (channel.isnull() | ~channel.isin(S.CHANNELS), R_UNKNOWN_CHANNEL),
            (in_store & (store.isnull() | ~store.isin(stores[S.CAT_STORE_ID])), R_UNKNOWN_STORE),
            (
                total.isnull() | not_finite(total) | (total < 0) | ((total == 0) & ~keep_zero),
                R_BAD_PRICE,
            ),
        ]
    )
    return raw.select(
        **{
            S.EVENT_ID: ibis.literal("orders:") + order.fill_null(""),
            S.SOURCE: ibis.literal("orders"),
            S.TS: ts,
            S.CHANNEL: channel,
            S.EVENT_TYPE: ibis.ifelse(in_store, ibis.literal(S.EV_PURCHASE), ibis.literal(S.EV_ORDER)),
            S.ITEM_ID: ibis.null("string"),
            S.STORE_ID: ibis.ifelse(in_store, store, ibis.null("string")),
            S.QUANTITY: ibis.null("int64"),
            S.PRICE: ibis.null("float64"),
            S.AMOUNT: total,
            S.ORDER_ID: order,
            S.SESSION_ID: ibis.null("string"),
            S.REFUND_OF: ibis.null("string"),
            **_identifier_keys(raw),
            S.IP_KEY: ibis.null("string"),
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
    rest = [c for c in events.columns if c not in (S.EVENT_ID, S.TS, S.REJECT_REASON)]
    order = [events[S.TS], *(events[c] for c in rest)]
    ranked = events.mutate(
        _id_rank=ibis.row_number().over(group_by=[events[S.EVENT_ID], valid], order_by=order)
    )
    is_dup = valid & (ranked._id_rank > 0)
    if S.SESSION_ID not in events.columns:
        return ranked.mutate(**{IS_DUPLICATE: is_dup}).drop("_id_rank")
    # Re-sent online events: a new event_id, everything else identical. Ranked only among rows that survived
    # the id step, so an exact copy and its original never both count. (Not for POS: two identical lines
    # in one basket can be real.)
    ok = ranked[S.REJECT_REASON].isnull()
    first = ok & (ranked._id_rank == 0) & (ranked[S.SOURCE] == "online")
    content = [first, ranked[S.TS], *(ranked[c] for c in rest)]
    resent = ibis.row_number().over(group_by=content, order_by=ranked[S.EVENT_ID])
    ranked = ranked.mutate(_resent=first & (resent > 0))
    return ranked.mutate(**{IS_DUPLICATE: (valid & (ranked._id_rank > 0)) | ranked._resent}).drop(
        "_id_rank", "_resent"
    )


# (column of the return, column of the purchase) that must agree for a return to match a purchase
RETURN_EVIDENCE = ((S.REFUND_OF, S.ORDER_ID), (S.CARD_KEY, S.CARD_KEY), (S.PHONE_KEY, S.PHONE_KEY))


def verify_returns(events: ir.Table) -> ir.Table:
    """Reject returns that match no earlier purchase of the same item: neither the receipt they show
    (``refund_of`` = the purchase's transaction) nor the same card or phone.

    A genuine return follows a purchase; a negative quantity without one is a keying error (``unmatched_return``).
    An anonymous return (no card, no phone) without a receipt cannot be matched and is rejected too.
    """
    purchases = events.filter(events[S.REJECT_REASON].isnull() & (events[S.EVENT_TYPE] == S.EV_PURCHASE))
    j, firsts = events, list[str]()
    for i, (return_col, purchase_col) in enumerate(RETURN_EVIDENCE):
        p = purchases.filter(purchases[purchase_col].notnull())
        first = p.group_by([S.ITEM_ID, purchase_col]).aggregate(_first=p[S.TS].min())
        first = first.select(
            **{f"_i{i}": first[S.ITEM_ID], f"_k{i}": first[purchase_col], f"_f{i}": first._first}
        )
        j = j.left_join(first, [j[S.ITEM_ID] == first[f"_i{i}"], j[return_col] == first[f"_k{i}"]])
        j = j.select(*events.columns, *firsts, f"_f{i}")
        firsts.append(f"_f{i}")
    matched = ibis.or_(*[(j[f] < j[S.TS]).fill_null(False) for f in firsts])
    is_return = j[S.REJECT_REASON].isnull() & (j[S.EVENT_TYPE] == S.EV_RETURN)
    reason = ibis.ifelse(is_return & ~matched, ibis.literal(R_UNMATCHED_RETURN), j[S.REJECT_REASON])
    return j.mutate(**{S.REJECT_REASON: reason}).select(*events.columns)


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


ATTRIBUTE_KEYS = tuple(c for cols in S.ATTRIBUTE_KEY_COLUMNS.values() for c in cols)
PROFILE_COLUMNS = (
    S.EVENT_ID,
    S.SOURCE,
    S.TS,
    S.STORE_ID,
    *S.IDENTIFIER_KEY_COLUMNS.values(),
    S.CONSENT_ANALYTICS,
    S.CONSENT_MARKETING,
    *ATTRIBUTE_KEYS,
    S.REJECT_REASON,
)


def _profile(
    raw: ir.Table, source: str, anchor_key: str, ts: ir.TimestampValue, **values: ir.Value
) -> ir.Table:
    reason = _first_reason([(raw[anchor_key].isnull(), R_MISSING_ID), (ts.isnull(), R_BAD_TIMESTAMP)])
    row = {
        S.EVENT_ID: ibis.literal(f"{source}:") + raw[anchor_key].fill_null(""),
        S.SOURCE: ibis.literal(source),
        S.TS: ts,
        S.STORE_ID: ibis.null("string"),
        **_identifier_keys(raw),
        **{c: raw[c] if c in raw.columns else ibis.null("string") for c in ATTRIBUTE_KEYS},
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
    """Online accounts → profile rows (account, registration email and phone, bound card; ts = creation; consent)."""
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

"""Column names, enumerations and file layout shared by every stage (and by the tests).

Raw layouts (``01_raw``) mirror what the source systems export; every later layer uses the
unified names below. Change a name here, never as a string literal elsewhere.
"""

from __future__ import annotations

# 1.1: purchase-timing aggregates; 1.2: the weekly activity calendar (ACTIVITY_FEATURES)
SCHEMA_VERSION = "1.2"

RAW_DIR = "01_raw"  # layer folder of the raw files; the source folders below live inside it

# ---------------------------------------------------------------- raw: online (JSONL)
# 01_raw/online/events.jsonl — one JSON object per line, one line per web/app/mini-program event.
RAW_ONLINE_DIR = "online"
RAW_ONLINE_FILE = "events.jsonl"
ON_EVENT_ID = "event_id"  # str, unique per emitted event
ON_TS = "ts"  # str, ISO-8601 with zone, e.g. "2026-01-05T10:22:33.120Z"
ON_CHANNEL = "channel"  # "web" | "app" | "miniprogram"
ON_DEVICE_ID = "device_id"  # str, anonymous device / cookie id (always present)
ON_ACCOUNT_ID = "account_id"  # str | null, set when the visitor is logged in
ON_SESSION_ID = "session_id"  # str
ON_EVENT_TYPE = "event_type"  # one of ONLINE_EVENT_TYPES
ON_ITEM_ID = "item_id"  # str | null (null for search)
ON_QUERY = "query"  # str | null (search only)
ON_QUANTITY = "quantity"  # int | null (cart and order events)
ON_PRICE = "price"  # float | null, unit price in the shop currency
ON_ORDER_ID = "order_id"  # str | null (order events: one event per order line)
ON_EMAIL = "email"  # str | null, the contact email typed at checkout (order events)
ON_IP = "ip"  # str | null, client IPv4 address (personal data: prep hashes it)
ON_USER_AGENT = "user_agent"  # str | null, short client description, e.g. "O2OApp/5.2.1 (iOS 18.1)"

# 01_raw/online/accounts.csv — one row per online account (export of the account system; covers every
# account_id that appears in events.jsonl).
RAW_ACCOUNTS_FILE = "accounts.csv"
ACC_ACCOUNT_ID = "account_id"
ACC_EMAIL = "email"  # email given at registration (format as typed)
ACC_PHONE = "phone"  # str | empty, mobile number verified at registration (format as typed)
ACC_LOYALTY_CARD = "loyalty_card"  # str | empty, the loyalty card bound to the account in the app
ACC_CREATED_TS = "created_ts"  # "YYYY-MM-DDTHH:MM:SSZ" (generator) or "YYYY-MM-DD HH:MM:SS" (import), UTC
ACC_CONSENT_ANALYTICS = "consent_analytics"  # CONSENT_YES | CONSENT_NO, as recorded at creation
ACC_CONSENT_MARKETING = "consent_marketing"  # CONSENT_YES | CONSENT_NO
CONSENT_YES = "y"
CONSENT_NO = "n"
# Profile attributes of accounts and CRM members (optional; personal data: prep keeps only keyed hashes of
# their normalised forms, and uses them only to match profiles that no identifier links; data_prep.matching)
PROFILE_NAME = "name"  # str | empty, the registered name, given name(s) first and family name last
PROFILE_BIRTH_DATE = "birth_date"  # str | empty, "YYYY-MM-DD" (also "YYYY/MM/DD", "YYYYMMDD")
PROFILE_POSTCODE = "postcode"  # str | empty, postcode of the registered (delivery) address
PROFILE_ATTRIBUTE_COLUMNS = (PROFILE_NAME, PROFILE_BIRTH_DATE, PROFILE_POSTCODE)

# ---------------------------------------------------------------- raw: POS (CSV)
# 01_raw/pos/pos_lines.csv — one row per till line.
RAW_POS_DIR = "pos"
RAW_POS_FILE = "pos_lines.csv"
POS_TRANSACTION_ID = "transaction_id"
POS_LINE_NO = "line_no"
POS_TS = "ts"  # "YYYY-MM-DD HH:MM:SS", store-local time == UTC in the synthetic retailer
POS_STORE_ID = "store_id"
POS_LOYALTY_CARD = "loyalty_card"  # str | empty when the card was not scanned
POS_PHONE = "phone"  # str | empty, phone typed at the till (e-receipt / points lookup)
POS_ITEM_ID = "item_id"
POS_QUANTITY = "quantity"
POS_UNIT_PRICE = "unit_price"
POS_ORIGINAL_TRANSACTION_ID = "original_transaction_id"  # str | empty: the receipt a return line refunds

# ---------------------------------------------------------------- raw: CRM (CSV)
# 01_raw/crm/members.csv — one row per loyalty member.
RAW_CRM_DIR = "crm"
RAW_CRM_FILE = "members.csv"
CRM_LOYALTY_CARD = "loyalty_card"
CRM_PHONE = "phone"
CRM_EMAIL = "email"  # may be empty
CRM_SIGNUP_TS = "signup_ts"  # "YYYY-MM-DD HH:MM:SS"
CRM_SIGNUP_STORE_ID = "signup_store_id"
CRM_CONSENT_ANALYTICS = "consent_analytics"  # CONSENT_YES | CONSENT_NO, as recorded at sign-up
CRM_CONSENT_MARKETING = "consent_marketing"  # CONSENT_YES | CONSENT_NO

# order-level exports (optional): one row per order with its total and no item lines, e.g. a franchise
# till or a marketplace that reports receipts only. They feed intent, RFM and churn, never the recommender.
RAW_ORDERS_DIR = "orders"
RAW_ORDERS_FILE = "orders.csv"
ORD_ORDER_ID = "order_id"
ORD_TS = "ts"  # "YYYY-MM-DD HH:MM:SS", UTC
ORD_CHANNEL = "channel"  # web | app | miniprogram | store
ORD_STORE_ID = "store_id"  # store orders: the store; empty online
ORD_ACCOUNT_ID = "account_id"
ORD_EMAIL = "email"
ORD_LOYALTY_CARD = "loyalty_card"
ORD_PHONE = "phone"
ORD_TOTAL = "total"  # order total in the shop currency, > 0 (= 0 too where zero_total is "keep")
# written by the import from the source option ``zero_total`` (one value per row, as several sources feed
# one file): "keep" makes a total of exactly 0 a purchase with spend 0; empty or "reject": it is bad_price
ORD_ZERO_TOTAL = "zero_total"
ZERO_TOTAL_KEEP = "keep"
ZERO_TOTAL_REJECT = "reject"

# ---------------------------------------------------------------- raw: catalogue (CSV)
RAW_CATALOG_DIR = "catalog"
RAW_ITEMS_FILE = "items.csv"  # item_id, category, price
RAW_STORES_FILE = "stores.csv"  # store_id, city
CAT_ITEM_ID = "item_id"
CAT_CATEGORY = "category"
CAT_PRICE = "price"
CAT_STORE_ID = "store_id"
CAT_CITY = "city"

# Column order of each raw export (what the generator writes and what prep requires).
RAW_ONLINE_COLUMNS = (
    ON_EVENT_ID,
    ON_TS,
    ON_CHANNEL,
    ON_DEVICE_ID,
    ON_ACCOUNT_ID,
    ON_SESSION_ID,
    ON_EVENT_TYPE,
    ON_ITEM_ID,
    ON_QUERY,
    ON_QUANTITY,
    ON_PRICE,
    ON_ORDER_ID,
    ON_EMAIL,
    ON_IP,
    ON_USER_AGENT,
)
RAW_POS_COLUMNS = (
    POS_TRANSACTION_ID,
    POS_LINE_NO,
    POS_TS,
    POS_STORE_ID,
    POS_LOYALTY_CARD,
    POS_PHONE,
    POS_ITEM_ID,
    POS_QUANTITY,
    POS_UNIT_PRICE,
    POS_ORIGINAL_TRANSACTION_ID,
)
POS_OPTIONAL_COLUMNS = (POS_ORIGINAL_TRANSACTION_ID,)  # absent from older raw layouts: read as null
RAW_CRM_COLUMNS = (
    CRM_LOYALTY_CARD,
    CRM_PHONE,
    CRM_EMAIL,
    CRM_SIGNUP_TS,
    CRM_SIGNUP_STORE_ID,
    CRM_CONSENT_ANALYTICS,
    CRM_CONSENT_MARKETING,
    *PROFILE_ATTRIBUTE_COLUMNS,
)
CRM_OPTIONAL_COLUMNS = PROFILE_ATTRIBUTE_COLUMNS  # absent from older raw layouts: read as null
RAW_ACCOUNT_COLUMNS = (
    ACC_ACCOUNT_ID,
    ACC_EMAIL,
    ACC_PHONE,
    ACC_LOYALTY_CARD,
    ACC_CREATED_TS,
    ACC_CONSENT_ANALYTICS,
    ACC_CONSENT_MARKETING,
    *PROFILE_ATTRIBUTE_COLUMNS,
)
RAW_ORDER_COLUMNS = (
    ORD_ORDER_ID,
    ORD_TS,
    ORD_CHANNEL,
    ORD_STORE_ID,
    ORD_ACCOUNT_ID,
    ORD_EMAIL,
    ORD_LOYALTY_CARD,
    ORD_PHONE,
    ORD_TOTAL,
    ORD_ZERO_TOTAL,
)
ORDER_OPTIONAL_COLUMNS = (ORD_ZERO_TOTAL,)  # absent from older raw layouts: read as null (reject)
# absent from older raw layouts: read as null
ACCOUNT_OPTIONAL_COLUMNS = (ACC_PHONE, ACC_LOYALTY_CARD, *PROFILE_ATTRIBUTE_COLUMNS)
RAW_ITEM_COLUMNS = (CAT_ITEM_ID, CAT_CATEGORY, CAT_PRICE)
RAW_STORE_COLUMNS = (CAT_STORE_ID, CAT_CITY)

# ---------------------------------------------------------------- ground truth (never read by prep)
GROUND_TRUTH_DIR = "ground_truth"
GT_IDENTIFIERS_FILE = "identifiers.csv"  # GT_IDENTIFIER_COLUMNS: one row per (raw value, person using it)
GT_PERSONS_FILE = "persons.csv"  # GT_PERSON_COLUMNS
GT_IDENTIFIER = "identifier"  # raw value exactly as written in the raw files
GT_PERSON_ID = "person_id"
GT_KIND = "kind"  # "online_only" | "offline_only" | "omni"
GT_PROPENSITY = "propensity"
# identifiers.csv: a raw value names one person unless ``sharing`` says otherwise.
GT_VALID_FROM = "valid_from"  # ISO date from which the value is this person's (inclusive); empty = open
GT_VALID_TO = "valid_to"  # ISO date until which it is (exclusive); empty = open; set for recycled numbers
GT_SHARING = "sharing"  # one of SHARING_KINDS
SHARING_PERSONAL = "personal"  # one person's own identifier
SHARING_HOUSEHOLD = "household"  # a phone a household types at the till: listed once per member using it
SHARING_KIOSK = "kiosk"  # an in-store device used by many persons: listed once per person using it
SHARING_RECYCLED = "recycled"  # a phone number reassigned from one person to another on a date
SHARING_KINDS = (SHARING_PERSONAL, SHARING_HOUSEHOLD, SHARING_KIOSK, SHARING_RECYCLED)
GT_IDENTIFIER_TYPE = "identifier_type"  # one of IDENTIFIER_TYPES (same name as IDENTIFIER_TYPE below)
GT_IDENTIFIER_COLUMNS = (
    GT_IDENTIFIER_TYPE,
    GT_IDENTIFIER,
    GT_PERSON_ID,
    GT_VALID_FROM,
    GT_VALID_TO,
    GT_SHARING,
)
# persons.csv: the person's kind, any change of channel mix, household and latest consent choice.
GT_LATER_KIND = "later_kind"  # kind from shift_date on (== kind when the mix never changes)
GT_SHIFT_DATE = "shift_date"  # ISO date the channel mix changed; empty = never
GT_HOUSEHOLD_ID = "household_id"  # "H000123" for members of a household sharing a phone; empty = none
GT_CONSENT_ANALYTICS = "consent_analytics"  # latest choice over CRM + account records; empty = never asked
GT_CONSENT_MARKETING = "consent_marketing"
GT_PERSON_COLUMNS = (
    GT_PERSON_ID,
    GT_KIND,
    GT_PROPENSITY,
    GT_LATER_KIND,
    GT_SHIFT_DATE,
    GT_HOUSEHOLD_ID,
    GT_CONSENT_ANALYTICS,
    GT_CONSENT_MARKETING,
)
# faults.csv: one row per data-quality fault injected into the raw files (prep may read it only to score
# its cleaning).
GT_FAULTS_FILE = "faults.csv"
GT_FAULT_SOURCE = "source"  # "online" | "pos" | "crm"
GT_FAULT_ROW_KEY = "row_key"  # online: event_id; pos: "<transaction_id>:<line_no>"; crm: loyalty_card
GT_FAULT = "fault"  # one of FAULTS
GT_FAULT_ORIGINAL_KEY = "original_key"  # resent: the original event_id; return: the purchase line returned
GT_FAULT_COLUMNS = (GT_FAULT_SOURCE, GT_FAULT_ROW_KEY, GT_FAULT, GT_FAULT_ORIGINAL_KEY)
FAULT_EXACT_DUPLICATE = "exact_duplicate"  # a byte-identical second copy of a row (row_key repeats)
FAULT_RESENT = "resent"  # an online event sent again: new event_id, every other field identical
FAULT_MISSING_TIMESTAMP = "missing_timestamp"  # ts (signup_ts) null / empty
FAULT_MISSING_ITEM = "missing_item_id"  # item_id null / empty on an item event or POS line
FAULT_MALFORMED_TIMESTAMP = "malformed_timestamp"  # garbage or another format, e.g. "05/01/2026 10:22"
FAULT_NEGATIVE_QUANTITY = "negative_quantity"  # POS quantity sign flipped on a purchase line
FAULT_RETURN = "return"  # a POS return: later line, same item and identifiers, quantity < 0
FAULT_ZERO_PRICE = "zero_price"  # price / unit_price 0
FAULT_INFLATED_PRICE = "inflated_price"  # price / unit_price 1000x the true one
FAULT_UNKNOWN_ITEM = "unknown_item"  # item_id not in items.csv
FAULT_UNKNOWN_STORE = "unknown_store"  # store_id not in stores.csv (every line of the transaction)
FAULTS = (
    FAULT_EXACT_DUPLICATE,
    FAULT_RESENT,
    FAULT_MISSING_TIMESTAMP,
    FAULT_MISSING_ITEM,
    FAULT_MALFORMED_TIMESTAMP,
    FAULT_NEGATIVE_QUANTITY,
    FAULT_RETURN,
    FAULT_ZERO_PRICE,
    FAULT_INFLATED_PRICE,
    FAULT_UNKNOWN_ITEM,
    FAULT_UNKNOWN_STORE,
)

# ---------------------------------------------------------------- identifier types
ID_DEVICE = "device"
ID_ACCOUNT = "account"
ID_EMAIL = "email"
ID_PHONE = "phone"
ID_CARD = "card"
IDENTIFIER_TYPES = (ID_DEVICE, ID_ACCOUNT, ID_EMAIL, ID_PHONE, ID_CARD)
# Weak evidence, never an identifier of its own: the client address of online events (home networks).
ID_IP = "ip"
PII_IDENTIFIER_TYPES = (ID_EMAIL, ID_PHONE, ID_CARD, ID_ACCOUNT)

# ---------------------------------------------------------------- enumerations
CHANNEL_WEB = "web"
CHANNEL_APP = "app"
CHANNEL_MINIPROGRAM = "miniprogram"
CHANNEL_STORE = "store"
ONLINE_CHANNELS = (CHANNEL_WEB, CHANNEL_APP, CHANNEL_MINIPROGRAM)
CHANNELS = (*ONLINE_CHANNELS, CHANNEL_STORE)

EV_VIEW = "view"
EV_SEARCH = "search"
EV_ADD_TO_CART = "add_to_cart"
EV_REMOVE_FROM_CART = "remove_from_cart"
EV_ORDER = "order"  # online order line
EV_PURCHASE = "purchase"  # store (POS) line
EV_RETURN = "return"  # store (POS) line with a negative quantity that matches an earlier purchase
ONLINE_EVENT_TYPES = (EV_VIEW, EV_SEARCH, EV_ADD_TO_CART, EV_REMOVE_FROM_CART, EV_ORDER)
EVENT_TYPES = (*ONLINE_EVENT_TYPES, EV_PURCHASE, EV_RETURN)
PURCHASE_EVENT_TYPES = (EV_ORDER, EV_PURCHASE)
SPEND_EVENT_TYPES = (EV_ORDER, EV_PURCHASE, EV_RETURN)  # net spend: returns carry negative amounts
# Kinds of event whose item is a next-item target under protocol R2.
TARGET_EVENT_TYPES = (EV_ADD_TO_CART, EV_ORDER, EV_PURCHASE)
# Event types carried in item sequences (search has no item).
ITEM_EVENT_TYPES = (EV_VIEW, EV_ADD_TO_CART, EV_REMOVE_FROM_CART, EV_ORDER, EV_PURCHASE)

# ---------------------------------------------------------------- unified events (02_events)
EVENTS_DIR = "02_events"
EVENTS_FILE = "events.parquet"
REJECTS_FILE = "rejects.parquet"
LEDGER_FILE = "ledger.json"
CLEANING_METRICS_FILE = "cleaning_metrics.json"  # synthetic data only: injected faults vs outcomes
EVENT_ID = "event_id"  # str, "<source>:<source row key>"
SOURCE = "source"  # "online" | "pos"
TS = "ts"  # timestamp[us, UTC]
CHANNEL = "channel"
EVENT_TYPE = "event_type"
ITEM_ID = "item_id"
STORE_ID = "store_id"
QUANTITY = "quantity"
PRICE = "price"  # unit price
AMOUNT = "amount"  # quantity * price for purchase lines, else null
ORDER_ID = "order_id"  # online order id or POS transaction id
SESSION_ID = "session_id"
# pseudonymised identifiers carried by an event (null when absent)
DEVICE_KEY = "device_key"
ACCOUNT_KEY = "account_key"
EMAIL_KEY = "email_key"
PHONE_KEY = "phone_key"
CARD_KEY = "card_key"
IDENTIFIER_KEY_COLUMNS = {
    ID_DEVICE: DEVICE_KEY,
    ID_ACCOUNT: ACCOUNT_KEY,
    ID_EMAIL: EMAIL_KEY,
    ID_PHONE: PHONE_KEY,
    ID_CARD: CARD_KEY,
}
REFUND_OF = "refund_of"  # returns: the transaction (order_id) of the receipt shown, when recorded
IP_KEY = "ip_key"  # HMAC of the client IPv4 address (online events); used only to match anonymous devices
KEY_COLUMNS = {**IDENTIFIER_KEY_COLUMNS, ID_IP: IP_KEY}  # every pseudonymised identifier column, by type
# keyed hashes of the profile attributes (profiles only; null where the export has none): the whole name,
# its family name, the birth date, its year and the postcode (data_prep.pii.attribute_keys)
NAME_KEY = "name_key"
FAMILY_NAME_KEY = "family_name_key"
BIRTH_DATE_KEY = "birth_date_key"
BIRTH_YEAR_KEY = "birth_year_key"
POSTCODE_KEY = "postcode_key"
ATTRIBUTE_KEY_COLUMNS = {
    PROFILE_NAME: (NAME_KEY, FAMILY_NAME_KEY),
    PROFILE_BIRTH_DATE: (BIRTH_DATE_KEY, BIRTH_YEAR_KEY),
    PROFILE_POSTCODE: (POSTCODE_KEY,),
}
REJECT_REASON = "reason"
# rejects.parquet only: the raw file (relative to the data folder) and, for rows that could not be parsed
# (bad_encoding, malformed_row, malformed_json), the 1-based line of that file
RAW_FILE = "raw_file"
RAW_LINE = "raw_line"
# raw column → identifier type, per raw source (prep pseudonymises these, and the online client address as
# ID_IP; erasure scrubs them)
RAW_IDENTIFIER_COLUMNS = {
    "online": {ON_DEVICE_ID: ID_DEVICE, ON_ACCOUNT_ID: ID_ACCOUNT, ON_EMAIL: ID_EMAIL},
    "accounts": {
        ACC_ACCOUNT_ID: ID_ACCOUNT,
        ACC_EMAIL: ID_EMAIL,
        ACC_PHONE: ID_PHONE,
        ACC_LOYALTY_CARD: ID_CARD,
    },
    "pos": {POS_LOYALTY_CARD: ID_CARD, POS_PHONE: ID_PHONE},
    "crm": {CRM_LOYALTY_CARD: ID_CARD, CRM_PHONE: ID_PHONE, CRM_EMAIL: ID_EMAIL},
    "orders": {
        ORD_ACCOUNT_ID: ID_ACCOUNT,
        ORD_EMAIL: ID_EMAIL,
        ORD_LOYALTY_CARD: ID_CARD,
        ORD_PHONE: ID_PHONE,
    },
}

# ---------------------------------------------------------------- customers (03_customers)
CUSTOMERS_DIR = "03_customers"
IDENTITY_MAP_FILE = "identity_map.parquet"  # identifier_type, identifier_key, customer_id
SHARED_IDENTIFIERS_FILE = "shared_identifiers.parquet"  # node, anchor_type, n_anchors: left out of linking
NODES_FILE = "identifier_nodes.parquet"  # node ("<type>:<key>"), ts: when each identifier first appeared
PAIRS_FILE = "identifier_pairs.parquet"  # src, dst, profile, ts: identifiers first seen on one record
NETWORKS_FILE = "device_networks.parquet"  # node, ip_key, day, ts: devices' client addresses per day
# src, dst, profile, ts, match_probability, match_weight: account-card links of the probabilistic step
# (data_prep.matching), evidence like PAIRS_FILE's; its model, threshold and counts in MATCH_MODEL_FILE
MATCHED_PAIRS_FILE = "matched_pairs.parquet"
MATCH_MODEL_FILE = "match_model.json"
CATALOG_FILE = "catalog.parquet"  # 02_events: item_id, category, price (typed copy of the raw catalogue)
PREP_STEPS_FILE = "prep_steps.json"  # beside the layers: wall seconds of each step of the last prep run
PROFILES_FILE = "profiles.parquet"  # 02_events: accepted CRM members and online accounts (pseudonymised)
CONSENT_ANALYTICS = "consent_analytics"  # bool | null: may the customer's data train models
CONSENT_MARKETING = "consent_marketing"  # bool | null: may the customer be targeted by campaigns
CUSTOMERS_FILE = "customers.parquet"
IDENTITY_METRICS_FILE = "identity_metrics.json"
IDENTIFIER_TYPE = "identifier_type"
IDENTIFIER_KEY = "identifier_key"
CUSTOMER_ID = "customer_id"  # str, stable pseudonymous id of a resolved customer
N_IDENTIFIERS = "n_identifiers"
FIRST_SEEN = "first_seen"
LAST_SEEN = "last_seen"

# ---------------------------------------------------------------- id registry (kept from run to run)
REGISTRY_DIR = "registry"  # beside the layers: prep reads it before resolving and rewrites it after
REGISTRY_IDS_FILE = "customer_ids.parquet"  # identifier_type, identifier_key, customer_id of the last run
REGISTRY_LOG_FILE = "identity_log.parquet"  # logged_at, change, customer_id, previous_customer_id, node
ONLINE_LINKS_FILE = "online_links.parquet"  # event_id, ts, *_key: identifiers the service saw together
PREVIOUS_CUSTOMER_ID = "previous_customer_id"  # the id an identifier had before a merge or split
LOGGED_AT = "logged_at"

# ---------------------------------------------------------------- features (04_features)
FEATURES_DIR = "04_features"
ITEMS_FILE = "items.parquet"  # vocabulary fit on the training window
SPLITS_FILE = "splits.json"
SNAPSHOT_FILE = "snapshot.parquet"  # every customer as of the end of the data: scoring input
ITEM_IDX = "item_idx"  # int, 1-based; 0 is padding
CATEGORY = "category"
POPULARITY = "popularity"
ASSORTMENT_FILE = "assortment.parquet"  # store_id, item_id, n_sold, last_sold: what each store sells
SEGMENT_POPULARITY_FILE = "segment_popularity.parquet"  # segment, item_id, popularity (cold-start fallback)
N_SOLD = "n_sold"
LAST_SOLD = "last_sold"
SEQUENCES_FILE = "sequences.parquet"  # every consented customer's full item history (protocol R1 input)
ITEMS = "items"  # list<str> of item ids, oldest first
EVENT_TYPES_COL = "event_types"  # list<str>, aligned with ITEMS
CHANNELS_COL = "channels"  # list<str>, aligned with ITEMS (sequences.parquet only)
TIMESTAMPS_COL = "timestamps"  # list<int64> epoch seconds, aligned with ITEMS (sequences.parquet only)
TARGET_ITEM = "target_item"
CUTOFF = "cutoff"
LABEL = "label"

# Point-in-time aggregates (intent features), all computed from events strictly before the cutoff.
F_RECENCY_DAYS = "recency_days"
F_TENURE_DAYS = "tenure_days"
F_N_EVENTS_7D = "n_events_7d"
F_N_EVENTS_30D = "n_events_30d"
F_N_VIEWS_7D = "n_views_7d"
F_N_CARTS_7D = "n_carts_7d"
F_N_PURCHASES_30D = "n_purchases_30d"
F_N_PURCHASES_ALL = "n_purchases_all"
F_MONETARY_ALL = "monetary_all"
F_N_ONLINE_ALL = "n_online_all"
F_N_STORE_ALL = "n_store_all"
F_DAYS_SINCE_PURCHASE = "days_since_purchase"
# purchase timing (orders = distinct order ids of order/purchase events; order-level rows included)
F_DAYS_SINCE_FIRST_PURCHASE = "days_since_first_purchase"
F_DAYS_SINCE_ONLINE_PURCHASE = "days_since_online_purchase"
F_DAYS_SINCE_STORE_PURCHASE = "days_since_store_purchase"
F_PURCHASE_GAP_MEAN = "purchase_gap_mean_days"  # mean days between consecutive orders
F_PURCHASE_GAP_STD = "purchase_gap_std_days"  # their spread (0 with fewer than three orders)
F_N_PURCHASES_90D = "n_purchases_90d"
F_MONETARY_90D = "monetary_90d"
F_ACTIVE_DAYS_30D = "active_days_30d"  # days (24-h spans back from the cutoff) with any event
F_ACTIVE_DAYS_90D = "active_days_90d"
AGGREGATE_FEATURES = (  # the point-in-time aggregates (clusters and reports use these alone)
    F_RECENCY_DAYS,
    F_TENURE_DAYS,
    F_N_EVENTS_7D,
    F_N_EVENTS_30D,
    F_N_VIEWS_7D,
    F_N_CARTS_7D,
    F_N_PURCHASES_30D,
    F_N_PURCHASES_ALL,
    F_MONETARY_ALL,
    F_N_ONLINE_ALL,
    F_N_STORE_ALL,
    F_DAYS_SINCE_PURCHASE,
    F_DAYS_SINCE_FIRST_PURCHASE,
    F_DAYS_SINCE_ONLINE_PURCHASE,
    F_DAYS_SINCE_STORE_PURCHASE,
    F_PURCHASE_GAP_MEAN,
    F_PURCHASE_GAP_STD,
    F_N_PURCHASES_90D,
    F_MONETARY_90D,
    F_ACTIVE_DAYS_30D,
    F_ACTIVE_DAYS_90D,
)
# The weekly activity calendar: for each of the ACTIVITY_WEEKS 7-day spans back from the cutoff (week 0 the
# newest), each measure of ACTIVITY_MEASURES; orders are distinct order ids (order-level rows included), by
# channel; spend is net and floored at 0; active days are days with any event; carts are add-to-cart events.
ACTIVITY_WEEKS = 26
ACTIVITY_MEASURES = ("online_orders", "store_orders", "spend", "active_days", "carts")
ACTIVITY_FEATURES = tuple(f"wk{w:02d}_{m}" for w in range(ACTIVITY_WEEKS) for m in ACTIVITY_MEASURES)
# the intent models' inputs: the aggregates, then the calendar week-major (wk00_online_orders, wk00_store_...)
INTENT_FEATURES = AGGREGATE_FEATURES + ACTIVITY_FEATURES

# RFM and segments (04_features/rfm.parquet, as of the end of the data), churn, behavioural clusters.
RFM_FILE = "rfm.parquet"
# weekly I1 (purchase intent) training cutoffs before validation (`o2o prep --train-cutoffs`)
N_TRAIN_CUTOFFS = 4
CHURN_HORIZON_DAYS = 60  # churn = no purchase in this many days after the cutoff
CHURN_PREFIX = "churn"  # churn_{train,val,test}.parquet: snapshot + label (1 = no purchase in 60 days)
CHURN_FILE = "churn.parquet"  # churn labels at the latest cutoff whose 60-day window fits in the data
CLUSTERS_FILE = "clusters.parquet"
CLUSTER_PROFILES_FILE = "cluster_profiles.json"
RFM_RECENCY = "rfm_recency_days"  # days since the last purchase
RFM_FREQUENCY = "rfm_frequency"  # distinct orders / baskets
RFM_MONETARY = "rfm_monetary"  # net spend
RFM_R = "r_score"  # 1..5, 5 = most recent fifth
RFM_F = "f_score"
RFM_M = "m_score"
RFM_CODE = "rfm_score"  # "545"
SEGMENT = "segment"  # named RFM segment
NO_PURCHASE_SEGMENT = "no purchase yet"  # segment of customers with no purchase before the cutoff
CHANNEL_MIX = "channel_mix"  # online only / store only / omnichannel (scores, campaign breakdowns)
CHURN = "churn"  # 1 = no purchase in the churn horizon after the cutoff
CLUSTER = "cluster"  # behavioural cluster id (KMeans on the intent aggregates)

# Session intent (I2) inputs at the session's first add-to-cart: the session's own events up to it, and the
# customer's history before it (any channel; an unresolved session's history is the session itself).
SI_N_EVENTS = "session_n_events"
SI_N_VIEWS = "session_n_views"
SI_N_ITEMS = "session_n_items"
SI_SECONDS = "session_seconds"  # from the session's first event to the add-to-cart
SI_CART_PRICE = "cart_price"  # unit price of the item added to the cart
SI_EVENTS_28D = "customer_events_28d"  # the customer's item events outside this session, last 28 days
SI_SESSIONS_7D = "customer_sessions_7d"  # the customer's other online sessions in the last 7 days
SI_PURCHASES = "customer_purchases"  # distinct orders / baskets before the add-to-cart, any channel
SI_DAYS_SINCE_PURCHASE = "customer_days_since_purchase"  # 365 when none
SESSION_FEATURES = (
    SI_N_EVENTS,
    SI_N_VIEWS,
    SI_N_ITEMS,
    SI_SECONDS,
    SI_CART_PRICE,
    SI_EVENTS_28D,
    SI_SESSIONS_7D,
    SI_PURCHASES,
    SI_DAYS_SINCE_PURCHASE,
)
SESSION_HISTORY_DAYS = 28  # the I2 input sequence: the customer's item events in the days before the cart

# Split names; files are "<task>_<split>.parquet" (e.g. rec_train.parquet, intent_test.parquet).
SPLIT_TRAIN = "train"
SPLIT_VAL = "val"
SPLIT_TEST = "test"
SPLITS = (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST)


def split_file(task: str, split: str) -> str:
    """File name of one task's split table inside ``04_features``."""
    return f"{task}_{split}.parquet"


MANIFEST_FILE = "manifest.json"

# ---------------------------------------------------------------- model bundles (artifacts/o2o/<version>/)
BUNDLE_FILE = "bundle.json"  # version, models, source runs, data manifest
CHECKSUMS_FILE = "checksums.json"  # SHA-256 of every other file of the bundle
MODEL_CARD_FILE = "model_card.md"
ONNX_FILE = "model.onnx"  # in each model's folder (recommender/, intent/)
ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"  # recommender/: float32 (n_items + 1, d_model), row = index
MODEL_CONFIG_FILE = "config.json"  # in each model's folder: how to encode inputs and read outputs
MAX_K = 100  # top-k computed inside the recommender graph; requests ask for k ≤ min(MAX_K, n_items)
RETRAIN_MARKER = (
    "RETRAIN_REQUIRED.json"  # in a run or bundle built from data that has since had people erased
)

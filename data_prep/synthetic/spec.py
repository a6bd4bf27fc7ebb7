"""Knobs of the synthetic retailer (:class:`RetailerSpec`, :class:`FaultRates`) and what a run reports.

Defaults are the realistic retailer every command uses; each knob says what it controls in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import pandas as pd

MAX_CHUNK_SIZE = 200_000  # ids of online orders leave room for 10^7 per chunk
MAX_CHUNKS = 1000  # ... and for 1000 chunks


@dataclass(frozen=True)
class FaultRates:
    """Data-quality faults injected into the raw files, each a chance per *eligible* raw row (a price fault
    only hits priced rows, ...). A row gets at most one fault; every fault is listed in
    ``ground_truth/faults.csv``. :meth:`none` (all zero) gives a fault-free retailer."""

    exact_duplicate: float = 0.01  # online, POS and CRM rows written twice, byte-identical
    resent: float = 0.005  # online events sent again: a new event_id, every other field identical
    missing_field: float = 0.003  # online / POS / CRM rows missing the timestamp, or (half) the item id
    malformed_timestamp: float = 0.002  # online / POS / CRM timestamps that are garbage or in another format
    negative_quantity: float = 0.001  # POS purchase lines whose quantity sign is flipped
    returns: float = 0.02  # POS lines returned later: a new line, same item, store and card, quantity < 0
    absurd_price: float = 0.001  # priced online events / POS lines at price 0 (half) or 1000x (half)
    unknown_item: float = 0.002  # online item events / POS lines naming an item missing from items.csv
    unknown_store: float = 0.002  # POS transactions naming a store missing from stores.csv

    def __post_init__(self) -> None:
        rates = [getattr(self, f.name) for f in fields(self)]
        if not all(0.0 <= r <= 1.0 for r in rates):
            raise ValueError("fault rates must lie in [0, 1]")
        if sum(rates) - self.unknown_store - self.returns > 1.0:
            raise ValueError("row fault rates (all but returns and unknown_store) must sum to <= 1")

    @classmethod
    def none(cls) -> FaultRates:
        """Every rate zero: the raw files hold no injected fault."""
        return cls(**{f.name: 0.0 for f in fields(cls)})

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in fields(self))


NO_FAULTS = FaultRates.none()


@dataclass(frozen=True)
class RetailerSpec:
    """Knobs of the synthetic retailer. Defaults: 5k persons over 240 days, ~0.79M online events, ~85k POS
    lines, ~2.4k loyalty members, ~3.6k online accounts, ~20k injected faults (seed 0; ~7 s on a busy
    core). 240 days leave room for churn's three 60-day label windows (prep needs ≥ 208).
    The same spec always gives byte-identical files; chunk_size is part of the spec. How rates move with
    time and each person's past: :mod:`data_prep.synthetic.behaviour` and docs/data.md."""

    n_customers: int = 5000  # persons simulated (all kinds)
    seed: int = 0  # seed of the world and of every chunk's generator
    start: str = "2026-01-05"  # first day of the export window, UTC
    n_days: int = 240  # length of the export window in days (≥ 208 for churn: three 60-day label windows)
    n_items: int = 600  # catalogue size
    n_categories: int = 24  # item categories (named after retail words)
    n_stores: int = 12  # physical stores
    kind_shares: tuple[float, float, float] = (0.35, 0.30, 0.35)  # online_only, offline_only, omni
    online_missions_per_day: float = (
        0.061  # regular online missions a day at propensity 1 (omni: x omni_rate)
    )
    store_missions_per_day: float = 0.043  # regular store visits a day at propensity 1 (omni: x omni_rate)
    omni_rate: float = 0.7  # omni persons split their shopping over both channels
    buy_half_propensity: float = 1.5  # propensity at which an online mission ends in a purchase half the time
    late_join_share: float = 0.2  # persons whose activity starts inside the window
    lapse_share: float = 0.25  # persons who stop shopping for good partway through the window
    webrooming_share: float = 0.3  # buying online missions of omni persons that end in a store the next day
    follow_share: float = 0.45  # missions whose target is a complement of the previous mission's target
    repeat_share: float = 0.15  # missions whose target is the previous mission's target again
    complement_step: float = 0.35  # chance the next viewed item is a complement of the current one
    same_category_step: float = 0.45  # chance it is another item of the current category (else: a jump)
    n_complements: int = 3  # complement items per item
    # rhythms (the weekly and daily rhythm of each channel is fixed)
    seasonal_amplitude: float = 0.15  # yearly swing of daily volume (+-share), peaking in mid-December
    promo_interval_days: int = 45  # a promotion week every this many days (0: no promotions)
    promo_lift: float = 1.5  # online mission rate multiplier in promotion weeks (stores: half the lift)
    promo_discount: float = 0.15  # price cut on every item during promotion weeks
    channel_shift_share: float = 0.1  # persons whose channel mix changes on a day inside the window
    # behaviour over time (data_prep/synthetic/behaviour.py; docs/data.md, "The synthetic retailer")
    onboarding_start: float = 0.35  # a late joiner's mission rate on day one, as a share of the settled rate
    onboarding_days: float = (
        21.0  # time constant (days) of the climb from onboarding_start to the settled rate
    )
    decline_days: int = 42  # lapsers' rate falls over this many days before the lapse ...
    decline_floor: float = 0.15  # ... to this share of the settled rate on the last day
    replenish_share: float = 0.6  # persons who re-buy one consumable item on a cycle of their own
    replenish_days: tuple[float, float] = (14.0, 49.0)  # range of those cycles c_p in days (uniform)
    replenish_jitter: float = 0.1  # standard deviation of each cycle's length, as a share of c_p
    replenish_spread: float = 0.06  # standard deviation of the timing around each due date, share of c_p
    replenish_mass: float = 1.0  # expected replenishment missions per cycle
    promo_response_shape: float = 1.0  # gamma shape of per-person deal-proneness (mean 1; small: unequal)
    promo_dip: float = 0.3  # the week after a promotion: rate divided by 1 + promo_dip * (own lift - 1)
    cart_abandon_share: float = 0.3  # non-buying online missions that leave the target in the cart
    cart_return_rate: float = 0.6  # expected return missions after an abandoned cart (online)
    cart_return_days: float = 2.0  # time constant (days) of those returns
    cart_return_buy: float = 0.55  # chance a return mission buys
    # identities
    member_share: float = 0.7  # persons who ever shop in store holding a loyalty card
    crm_email_share: float = 0.7  # members who gave the CRM their email
    account_share: float = 0.98  # persons who ever shop online with an account (the rest check out as guests)
    account_phone_share: float = 0.9  # accounts registered with a mobile number (SMS-verified sign-up)
    account_card_share: float = 0.5  # members with an account who bind their loyalty card in the app
    never_login_device_share: float = 0.03  # account holders' devices on which they never log in
    n_kiosks: int = 2  # in-store tablets (one device_id each, in distinct stores), shared by every visitor
    kiosk_use: float = 0.15  # account holders' visits to a kiosk store that include a kiosk session
    household_share: float = 0.08  # persons in 2-3 person households typing one phone number at the till
    recycled_phone_share: float = 0.01  # persons holding a number that belonged to another person before
    format_noise: float = 0.3  # records writing a phone or email in a non-canonical format (cards: a third)
    # consent
    consent_analytics_rate: float = 0.95  # persons who accept analytics
    consent_marketing_rate: float = 0.6  # persons who accept marketing
    consent_change_share: float = 0.1  # with two records (CRM + account): the earlier holds the other choice
    # data quality
    return_receipt_share: float = 0.85  # store returns showing the receipt (the till records the original)
    faults: FaultRates = field(default_factory=FaultRates)  # injected faults (FaultRates.none(): clean)
    # scale
    chunk_size: int = 20_000  # persons simulated and written at a time (bounds memory; part of the draw)

    def __post_init__(self) -> None:
        self._check_sizes()
        self._check_shares()
        pd.Timestamp(self.start)  # raises on a malformed date
        if not isinstance(self.faults, FaultRates):
            raise ValueError("faults must be a FaultRates")

    def _check_sizes(self) -> None:
        if min(self.n_customers, self.n_days, self.n_stores, self.n_complements, self.chunk_size) < 1:
            raise ValueError("n_customers, n_days, n_stores, n_complements and chunk_size must be >= 1")
        if not 1 <= self.n_categories <= self.n_items:
            raise ValueError("need 1 <= n_categories <= n_items")
        if not 0 <= self.n_kiosks <= self.n_stores:
            raise ValueError("need 0 <= n_kiosks <= n_stores")
        if self.chunk_size > MAX_CHUNK_SIZE or self.n_chunks > MAX_CHUNKS:
            raise ValueError(f"need chunk_size <= {MAX_CHUNK_SIZE} and at most {MAX_CHUNKS} chunks")
        if self.promo_interval_days < 0 or 0 < self.promo_interval_days < 7:
            raise ValueError("promo_interval_days must be 0 (none) or >= 7")
        lo, hi = self.replenish_days
        if not 1.0 <= lo <= hi:
            raise ValueError("replenish_days must be (lo, hi) with 1 <= lo <= hi")
        positive = (self.onboarding_days, self.decline_days, self.promo_response_shape, self.cart_return_days)
        if min(positive) <= 0:
            raise ValueError(
                "onboarding_days, decline_days, promo_response_shape, cart_return_days must be > 0"
            )
        if min(self.replenish_jitter, self.replenish_spread, self.replenish_mass, self.promo_dip) < 0:
            raise ValueError("replenish_jitter, replenish_spread, replenish_mass and promo_dip must be >= 0")
        if self.cart_return_rate < 0:
            raise ValueError("cart_return_rate must be >= 0")

    def _check_shares(self) -> None:
        if len(self.kind_shares) != 3 or min(self.kind_shares) < 0 or abs(sum(self.kind_shares) - 1) > 1e-9:
            raise ValueError("kind_shares must be three non-negative shares summing to 1")
        shares = (
            self.omni_rate,
            self.late_join_share,
            self.lapse_share,
            self.webrooming_share,
            self.member_share,
            self.crm_email_share,
            self.account_share,
            self.account_phone_share,
            self.account_card_share,
            self.seasonal_amplitude,
            self.promo_discount,
            self.channel_shift_share,
            self.never_login_device_share,
            self.kiosk_use,
            self.household_share,
            self.recycled_phone_share,
            self.format_noise,
            self.consent_analytics_rate,
            self.consent_marketing_rate,
            self.consent_change_share,
            self.return_receipt_share,
            self.onboarding_start,
            self.decline_floor,
            self.replenish_share,
            self.cart_abandon_share,
            self.cart_return_buy,
        )
        if not all(0.0 <= x <= 1.0 for x in shares):
            raise ValueError("shares and rates must lie in [0, 1]")
        if self.household_share + 2 * self.recycled_phone_share > 1:
            raise ValueError("household_share + 2 * recycled_phone_share must be <= 1")
        if self.follow_share + self.repeat_share > 1 or self.complement_step + self.same_category_step > 1:
            raise ValueError("follow+repeat and complement_step+same_category_step must be <= 1")
        rates = (
            self.online_missions_per_day,
            self.store_missions_per_day,
            self.follow_share,
            self.repeat_share,
            self.complement_step,
            self.same_category_step,
        )
        if min(rates) < 0 or self.buy_half_propensity <= 0 or self.promo_lift < 1:
            raise ValueError("rates must be >= 0, buy_half_propensity > 0 and promo_lift >= 1")

    def thin(self) -> RetailerSpec:
        """The same retailer with a thin account export: no registration phone, no bound card."""
        return replace(self, account_phone_share=0.0, account_card_share=0.0)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_customers // self.chunk_size)


@dataclass(frozen=True)
class GeneratedRetailer:
    """Where the files went and how many rows each got (faulty rows and copies included)."""

    raw_dir: Path
    ground_truth_dir: Path
    n_persons: int
    n_online_events: int
    n_pos_lines: int
    n_members: int
    n_accounts: int = 0
    n_faults: int = 0

"""How each person's rate of shopping missions moves over time and with their own past.

A person's missions of one kind form a Poisson process whose daily rate is a product of factors (the settled
rate, season, weekday, and the factors below); the one exception to "a function of time" is the return
visit after an abandoned cart, a function of the person's own past carts. No factor depends on whether a
purchase happened, so the rate of every day is the same on every path of purchases: the purchase rate the
simulator writes to ``ground_truth/purchase_intensity.parquet`` gives the exact chance of a purchase in a
window, ``1 - exp(-sum of the rate)``, given the latent state (see :mod:`missions` and docs/data.md).

Each mechanism is a function here, with the retail-practice source it follows. All rates are per day,
arrays shaped (P, D): persons of the chunk by days of the export window; day d stands for [d, d + 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.synthetic.persons import Persons
from data_prep.synthetic.spec import RetailerSpec
from data_prep.synthetic.world import Calendar, Catalog

# Categories (by name word) bought up and re-bought as they run out: the ones a replenishment cycle is about.
CONSUMABLES = ("coffee", "tea", "snacks", "skincare", "haircare", "pet food", "baby care", "wine", "cleaning",
               "vitamins")  # fmt: skip
_CART_KERNEL_DAYS = 14  # return visits after an abandoned cart are cut off after two weeks


@dataclass(frozen=True)
class Behaviour:
    cycle: np.ndarray  # (P,) replenishment cycle c_p in days, 0 for persons without one
    cycle_item: np.ndarray  # (P,) item index re-bought on the cycle, -1 without one
    due: np.ndarray  # (P, K) days the replenished item runs out (inf: none), increasing along K
    promo_response: (
        np.ndarray
    )  # (P,) deal-proneness: the share of the promotion lift the person shows, mean 1


def draw_behaviour(
    spec: RetailerSpec, catalog: Catalog, persons: Persons, rng: np.random.Generator
) -> Behaviour:
    """Each person's replenishment cycle (a share of them: cycle length, item, due dates) and promotion
    response. The replenished item is a popular item of a consumable category, drawn by the person's category
    preference (which spreads a tenth of its weight over every category, so it always reaches one)."""
    n, lo, hi = persons.gid.size, *spec.replenish_days
    has = rng.random(n) < spec.replenish_share
    cycle = np.where(has, rng.uniform(lo, hi, n), 0.0)
    names = catalog.category_names
    consumable = np.array([any(str(c).startswith(w) for w in CONSUMABLES) for c in names])
    consumable |= ~consumable.any()  # a catalogue without consumables: every category
    pref = np.diff(persons.pref_cum, axis=1, prepend=0.0) * consumable
    pref_cum = np.cumsum(pref, axis=1) / pref.sum(axis=1, keepdims=True)
    category = np.minimum((rng.random((n, 1)) >= pref_cum).sum(axis=1), names.size - 1)
    item = np.where(has, catalog.sample(category, rng), -1)
    n_due = int(np.ceil(spec.n_days / lo)) + 2
    length = np.clip(1 + rng.normal(0.0, spec.replenish_jitter, (n, n_due)), 0.5, 1.5) * cycle[:, None]
    # on day 0 a person shopping before the window is part-way into a cycle; a late joiner bought at the
    # first visit, so the first due date is one cycle after it
    first = np.where(persons.active_from > 0, persons.active_from + length[:, 0], rng.random(n) * cycle)
    due = first[:, None] + np.concatenate([np.zeros((n, 1)), np.cumsum(length[:, 1:], axis=1)], axis=1)
    return Behaviour(
        cycle=cycle,
        cycle_item=item.astype(np.int64),
        due=np.where(has[:, None], due[:, : n_due - 1], np.inf),
        promo_response=rng.gamma(spec.promo_response_shape, 1 / spec.promo_response_shape, n),
    )


def lifecycle(spec: RetailerSpec, persons: Persons) -> np.ndarray:
    """(P, D) share of the settled rate: the onboarding climb, the habit phase (1), the decline before lapse.

    *Onboarding and habit.* A person who joins inside the window (``active_from > 0``) starts at
    ``onboarding_start`` of their settled rate and climbs towards it along ``1 - (1 - s) exp(-t / tau)``
    (``tau = onboarding_days``): habits form along an asymptotic curve (Lally, van Jaarsveld, Potts and
    Wardle 2010, "How are habits formed", European Journal of Social Psychology; for shopping, Wood and Neal
    2009, "The habitual consumer", Journal of Consumer Psychology). Settled, a person buys at a steady rate
    with gamma-distributed rates across persons, the NBD of repeat buying (Ehrenberg 1959, "The pattern of
    consumer purchases", Applied Statistics; Goodhardt, Ehrenberg and Chatfield 1984, the Dirichlet model).

    *Decline before lapse.* Buy-till-you-die models let a customer drop out at a random moment and stop for
    good (Schmittlein, Morrison and Colombo 1987, Pareto/NBD, Management Science; Fader, Hardie and Lee 2005,
    BG/NBD, Marketing Science): here the lapse day is ``active_to``. Before it, loyal grocery customers are
    seen to defect partially first, buying less often (Buckinx and Van den Poel 2005, "Customer base analysis:
    partial defection of behaviourally loyal clients in a non-contractual FMCG retail setting", European
    Journal of Operational Research): the rate falls linearly over the last ``decline_days`` days to
    ``decline_floor`` on the last day."""
    t = np.arange(spec.n_days)[None, :] + 0.5
    start, end = persons.active_from[:, None], persons.active_to[:, None]
    ramp = 1 - (1 - spec.onboarding_start) * np.exp(-np.maximum(t - start, 0) / spec.onboarding_days)
    onboard = np.where(start > 0, ramp, 1.0)
    left = np.clip((end - t) / spec.decline_days, 0.0, 1.0)
    decline = np.where(end < spec.n_days, spec.decline_floor + (1 - spec.decline_floor) * left, 1.0)
    return onboard * decline


def replenishment_rate(spec: RetailerSpec, behaviour: Behaviour) -> np.ndarray:
    """(P, D) replenishment missions a day: ``replenish_mass`` missions expected around each due date,
    spread normally with standard deviation ``replenish_spread * c_p`` (at least a day).

    Consumable goods are re-bought as the household runs out, so inter-purchase times of one product are
    more regular than a Poisson process (Chatfield and Goodhardt 1973, "A consumer purchasing model with
    Erlang inter-purchase times", JASA) and the chance of buying rises with the time since the last purchase
    (Jain and Vilcassim 1991, "Investigating household purchase timing decisions: a conditional hazard
    function approach", Marketing Science); item-level repeat cycles drive "buy it again" recommendations
    (Bhagat et al. 2018, KDD). A person with a cycle ``c_p`` runs out of their item on due dates one cycle
    apart, each cycle's length jittered by ``replenish_jitter * c_p``. The due dates follow consumption, not
    purchases, so the rate never depends on whether the person bought: the ground-truth rate stays exact."""
    t = np.arange(spec.n_days)[None, :] + 0.5
    sd = np.maximum(spec.replenish_spread * behaviour.cycle, 1.0)[:, None]
    rate = np.zeros((behaviour.cycle.size, spec.n_days))
    for k in range(behaviour.due.shape[1]):
        z = (t - behaviour.due[:, k : k + 1]) / sd
        rate += np.exp(-0.5 * np.minimum(z * z, 100.0))
    return rate * spec.replenish_mass / (sd * np.sqrt(2 * np.pi))


def promotion_factor(spec: RetailerSpec, calendar: Calendar, behaviour: Behaviour, store: bool) -> np.ndarray:
    """(P, D) rate multiplier of promotion weeks and of the week after them.

    Promotions lift sales for their duration, much of it by bringing purchases forward, and sales dip after
    them while stocked-up buyers consume (Blattberg, Briesch and Fox 1995, "How promotions work", Marketing
    Science; Neslin, Henderson and Quelch 1985, "Consumer promotions and the acceleration of product
    purchases", Marketing Science; van Heerde, Leeflang and Wittink 2000, "The estimation of pre- and
    postpromotion dips with store-level scanner data", Journal of Marketing Research). Deal-proneness differs
    between persons (Bawa and Shoemaker 1987, "The coupon-prone consumer", Journal of Marketing): person p's
    lift is ``1 + (promo_lift - 1) r_p`` online with ``r_p`` gamma-distributed (mean 1, shape
    ``promo_response_shape``), half that lift in store; in the ``PROMO_DAYS`` days after a promotion week
    their rate is divided by ``1 + promo_dip (lift_p - 1)``."""
    share = 0.5 if store else 1.0
    extra = (spec.promo_lift - 1) * share * behaviour.promo_response[:, None]  # (P, 1)
    promo, after = calendar.promo[None, :], calendar.post_promo[None, :]
    return np.where(promo, 1 + extra, np.where(after, 1 / (1 + spec.promo_dip * extra), 1.0))


def cart_return_rate(spec: RetailerSpec, abandoned: np.ndarray) -> np.ndarray:
    """(P, D) return missions a day caused by the abandoned carts ``abandoned`` (P, D) of earlier days.

    Most online carts are left without an order (about 70% across the studies Baymard Institute collects),
    and many shoppers use the cart as a holding area and come back to buy (Close and Kukar-Kinney 2010,
    "Beyond buying: motivations behind consumers' online shopping cart use", Journal of Business Research;
    Kukar-Kinney and Close 2010, "The determinants of consumers' online shopping cart abandonment", Journal
    of the Academy of Marketing Science): that is why retailers send cart reminders within hours to days.
    Each cart left on day s brings ``cart_return_rate`` return missions expected over days s+1, s+2, ...,
    weighted ``exp(-(d - 1) / cart_return_days)`` (cut after two weeks); a return mission is about the
    abandoned item and buys with chance ``cart_return_buy``. Only this rate depends on the person's past."""
    d = np.arange(1, _CART_KERNEL_DAYS + 1)
    kernel = np.exp(-(d - 1) / spec.cart_return_days)
    kernel *= spec.cart_return_rate / kernel.sum()
    rate = np.zeros(abandoned.shape)
    for lag, weight in zip(d, kernel, strict=True):
        if lag < abandoned.shape[1]:
            rate[:, lag:] += weight * abandoned[:, :-lag]
    return rate


def weekday_profile(calendar: Calendar, profile: np.ndarray) -> np.ndarray:
    """(D,) a channel's weekday weights (Mon..Sun) laid over the window, scaled to mean 1 over a week."""
    n_days = calendar.season.size
    return (profile / profile.mean())[(calendar.weekday0 + np.arange(n_days)) % 7]

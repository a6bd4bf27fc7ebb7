"""Identity resolution: cross-channel merges through shared identifiers, and the pairwise metrics."""

from __future__ import annotations

import ibis
import pandas as pd
import pytest

from data_prep import identity as idn
from data_prep import schema as S


def records(rows: list[dict]) -> ibis.Table:
    cols = [S.EVENT_ID, *S.IDENTIFIER_KEY_COLUMNS.values()]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows]).astype("string")
    df[S.TS] = pd.Timestamp("2026-01-05", tz="UTC")
    return ibis.memtable(df)


def resolve(rows: list[dict], max_anchors: int | None = idn.DEFAULT_MAX_ANCHORS) -> dict[str, str]:
    links = idn.collect_evidence([records(rows)])
    m = idn.identity_map(idn.resolve_identities(links, max_anchors=max_anchors)[0]).to_pandas()
    return {
        f"{t}:{k}": c
        for t, k, c in zip(m[S.IDENTIFIER_TYPE], m[S.IDENTIFIER_KEY], m[S.CUSTOMER_ID], strict=True)
    }


def test_online_and_store_identities_merge_through_a_chain() -> None:
    # device d1 logs into account a1; a1 orders with email e1; CRM member card c1 has phone p1 and email e1;
    # a store basket with only phone p1. Device d2 never logs in: a separate (anonymous) customer.
    rows = [
        {S.EVENT_ID: "1", S.DEVICE_KEY: "d1", S.ACCOUNT_KEY: "a1"},
        {S.EVENT_ID: "2", S.ACCOUNT_KEY: "a1", S.EMAIL_KEY: "e1", S.DEVICE_KEY: "d1"},
        {S.EVENT_ID: "3", S.CARD_KEY: "c1", S.PHONE_KEY: "p1", S.EMAIL_KEY: "e1"},
        {S.EVENT_ID: "4", S.PHONE_KEY: "p1"},
        {S.EVENT_ID: "5", S.DEVICE_KEY: "d2"},
    ]
    m = resolve(rows)
    person = {m["device:d1"], m["account:a1"], m["email:e1"], m["card:c1"], m["phone:p1"]}
    assert len(person) == 1
    assert m["device:d2"] not in person
    assert all(c.startswith("c") and len(c) == 17 for c in m.values())


def test_customer_ids_are_stable_across_runs_and_row_order() -> None:
    rows = [{S.EVENT_ID: "1", S.DEVICE_KEY: "d1", S.ACCOUNT_KEY: "a1"}, {S.EVENT_ID: "2", S.DEVICE_KEY: "d9"}]
    assert resolve(rows) == resolve(rows[::-1])


def test_long_chain_converges() -> None:
    rows = [{S.EVENT_ID: str(i), S.DEVICE_KEY: f"d{i}", S.ACCOUNT_KEY: f"a{i + 1}"} for i in range(12)]
    rows += [{S.EVENT_ID: f"x{i}", S.DEVICE_KEY: f"d{i}", S.ACCOUNT_KEY: f"a{i}"} for i in range(12)]
    assert len(set(resolve(rows, max_anchors=None).values())) == 1  # propagation alone, no merge protection


def test_pairwise_metrics_exact() -> None:
    key = [S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY]
    ids = pd.DataFrame({S.IDENTIFIER_TYPE: ["d"] * 4, S.IDENTIFIER_KEY: ["1", "2", "3", "4"]})
    resolved = ids.assign(**{S.CUSTOMER_ID: ["A", "A", "A", "B"]})
    truth = ids.assign(**{S.GT_PERSON_ID: ["p", "p", "q", "q"]})
    m = idn.pairwise_metrics(resolved[[*key, S.CUSTOMER_ID]], truth[[*key, S.GT_PERSON_ID]])
    # predicted pairs: (1,2),(1,3),(2,3) = 3; true pairs: (1,2),(3,4) = 2; both: (1,2) = 1
    assert m["pairwise_precision"] == pytest.approx(1 / 3)
    assert m["pairwise_recall"] == pytest.approx(1 / 2)
    assert (m["n_true_persons"], m["n_resolved_customers"]) == (2, 2)


def test_resolution_as_of_a_cutoff_ignores_later_links() -> None:
    """A link that appears after the cutoff (an order's email) must not merge histories before it."""
    from datetime import UTC, datetime

    cutoff = datetime(2026, 3, 1, tzinfo=UTC)
    before, after = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 5, tzinfo=UTC)
    rows = [
        {S.EVENT_ID: "1", S.TS: before, S.DEVICE_KEY: "d1", S.ACCOUNT_KEY: "a1"},  # online history
        {S.EVENT_ID: "2", S.TS: before, S.CARD_KEY: "c1", S.EMAIL_KEY: "e1"},  # store history
        {S.EVENT_ID: "3", S.TS: after, S.ACCOUNT_KEY: "a1", S.EMAIL_KEY: "e1"},  # links them, later
        {S.EVENT_ID: "4", S.TS: after, S.DEVICE_KEY: "d9"},  # a device first seen after the cutoff
    ]
    cols = [S.EVENT_ID, S.TS, *S.IDENTIFIER_KEY_COLUMNS.values()]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows])
    schema = {c: "string" for c in cols} | {S.TS: "timestamp('UTC')"}
    events = ibis.memtable(df, schema=schema)
    links = idn.collect_evidence([events])
    as_of = idn.attach_customers(events, idn.identity_map(idn.resolve_identities(links, cutoff)[0]))
    full = idn.attach_customers(events, idn.identity_map(idn.resolve_identities(links)[0]))
    at_cutoff = as_of.to_pandas().set_index(S.EVENT_ID)[S.CUSTOMER_ID]
    assert at_cutoff["1"] != at_cutoff["2"]  # still two customers at the cutoff
    assert at_cutoff["3"] in {at_cutoff["1"], at_cutoff["2"]}  # the later order goes to a known customer
    assert pd.isna(at_cutoff["4"])  # unknown at the cutoff: anonymous for that cutoff
    everything = full.to_pandas().set_index(S.EVENT_ID)[S.CUSTOMER_ID]
    assert everything["1"] == everything["2"] == everything["3"] != everything["4"]


def test_merge_protection_keeps_people_apart_but_merges_one_omni_person() -> None:
    rows = [
        # a store kiosk device on which three people log into their own accounts
        {S.EVENT_ID: "k1", S.DEVICE_KEY: "kiosk", S.ACCOUNT_KEY: "a1"},
        {S.EVENT_ID: "k2", S.DEVICE_KEY: "kiosk", S.ACCOUNT_KEY: "a2"},
        {S.EVENT_ID: "k3", S.DEVICE_KEY: "kiosk", S.ACCOUNT_KEY: "a3"},
        {S.EVENT_ID: "k4", S.DEVICE_KEY: "kiosk"},  # anonymous browsing on the kiosk
        # a family phone registered with two loyalty cards (or a recycled number)
        {S.EVENT_ID: "f1", S.CARD_KEY: "c1", S.PHONE_KEY: "family"},
        {S.EVENT_ID: "f2", S.CARD_KEY: "c2", S.PHONE_KEY: "family"},
        # one omni person: device + account online, the same email at checkout and in the CRM with a card
        {S.EVENT_ID: "o1", S.DEVICE_KEY: "d9", S.ACCOUNT_KEY: "a9"},
        {S.EVENT_ID: "o2", S.ACCOUNT_KEY: "a9", S.EMAIL_KEY: "e9"},
        {S.EVENT_ID: "o3", S.CARD_KEY: "c9", S.EMAIL_KEY: "e9", S.PHONE_KEY: "p9"},
    ]
    links = idn.collect_evidence([records(rows)])
    labels, shared = idn.resolve_identities(links)
    m = idn.identity_map(labels).to_pandas()
    cust = {
        f"{t}:{k}": c
        for t, k, c in zip(m[S.IDENTIFIER_TYPE], m[S.IDENTIFIER_KEY], m[S.CUSTOMER_ID], strict=True)
    }
    assert len({cust["account:a1"], cust["account:a2"], cust["account:a3"]}) == 3
    assert cust["card:c1"] != cust["card:c2"]
    assert len({cust[n] for n in ("device:d9", "account:a9", "email:e9", "card:c9", "phone:p9")}) == 1
    assert set(shared.to_pandas()[idn.NODE]) == {"device:kiosk", "phone:family"}
    assert "device:kiosk" not in cust  # shared identifiers name no customer
    unprotected, _ = idn.resolve_identities(links, max_anchors=None)
    merged = idn.identity_map(unprotected).to_pandas()
    assert merged[S.CUSTOMER_ID].nunique() < m[S.CUSTOMER_ID].nunique()  # without protection people merge


def test_pairwise_metrics_sets_ambiguous_identifiers_apart() -> None:
    key = [S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY]
    resolved = pd.DataFrame(
        {
            S.IDENTIFIER_TYPE: ["p", "c", "c"],
            S.IDENTIFIER_KEY: ["x", "1", "2"],
            S.CUSTOMER_ID: ["A", "A", "B"],
        }
    )
    truth = pd.DataFrame(
        {
            S.IDENTIFIER_TYPE: ["p", "p", "c", "c"],
            S.IDENTIFIER_KEY: ["x", "x", "1", "2"],
            S.GT_PERSON_ID: ["u", "v", "u", "v"],
        }
    )  # phone x is used by two people
    m = idn.pairwise_metrics(resolved[[*key, S.CUSTOMER_ID]], truth)
    assert m["n_identifiers_ambiguous"] == 1 and m["n_identifiers_scored"] == 2
    assert m["pairwise_precision"] == 1.0 and m["pairwise_recall"] == 1.0


def network_events(rows: list[tuple[str, str | None, str, str]]) -> ibis.Table:
    """Online events (device, account or None, ip, date) for home-network matching."""
    df = pd.DataFrame(
        {
            S.EVENT_ID: [f"e{i}" for i in range(len(rows))],
            S.DEVICE_KEY: [r[0] for r in rows],
            S.ACCOUNT_KEY: [r[1] for r in rows],
            S.IP_KEY: [r[2] for r in rows],
            S.TS: pd.to_datetime([r[3] for r in rows], utc=True),
        }
    )
    for c in (S.EMAIL_KEY, S.PHONE_KEY, S.CARD_KEY):
        df[c] = None
    return ibis.memtable(df.astype({c: "string" for c in df.columns if c != S.TS}))


def resolve_with_networks(rows: list[tuple[str, str | None, str, str]], cutoff: str | None = None) -> dict:
    events = network_events(rows)
    evidence = idn.collect_evidence([events], online=events)
    when = None if cutoff is None else pd.Timestamp(cutoff, tz="UTC").to_pydatetime()
    labels, _ = idn.resolve_identities(evidence, when)
    m = idn.identity_map(labels).to_pandas()
    return dict(zip(m[S.IDENTIFIER_TYPE] + ":" + m[S.IDENTIFIER_KEY], m[S.CUSTOMER_ID], strict=True))


HOME = [  # d1 logs into a1 at home (ip h1); d2 never logs in but browses from h1 on two days
    ("d1", "a1", "h1", "2026-01-05 10:00"),
    ("d2", None, "h1", "2026-01-06 20:00"),
    ("d2", None, "h1", "2026-01-09 20:00"),
]


def test_anonymous_device_joins_the_one_customer_of_its_home_network() -> None:
    m = resolve_with_networks(HOME)
    assert m["device:d2"] == m["account:a1"]


def test_home_network_evidence_is_point_in_time_and_needs_two_days() -> None:
    before_second_day = resolve_with_networks(HOME, cutoff="2026-01-08")
    assert before_second_day["device:d2"] != before_second_day["account:a1"]
    one_day = resolve_with_networks(HOME[:2])
    assert one_day["device:d2"] != one_day["account:a1"]


def test_network_shared_by_two_customers_links_nobody() -> None:
    # a household router (h1) used by two account holders; a carrier NAT address (m1) by both too
    rows = [*HOME, ("d3", "a3", "h1", "2026-01-07 09:00"), ("d3", "a3", "m1", "2026-01-08 09:00")]
    rows += [("d2", None, "m1", "2026-01-10 09:00")]
    m = resolve_with_networks(rows)
    assert m["device:d2"] not in (m["account:a1"], m["account:a3"])


def test_device_on_networks_of_two_customers_is_not_matched() -> None:
    # d2 uses a1's home network and a3's (another exclusive address): conflicting evidence
    rows = [*HOME, ("d3", "a3", "h3", "2026-01-07 09:00")]
    rows += [("d2", None, "h3", "2026-01-11 09:00"), ("d2", None, "h3", "2026-01-12 09:00")]
    m = resolve_with_networks(rows)
    assert m["device:d2"] not in (m["account:a1"], m["account:a3"])


def test_household_phone_between_registrations_with_different_emails_links_nobody() -> None:
    # the owner registers account a1 with the household phone; a family member gives the CRM the same phone
    # with card c2 and their own email: the phone would merge two people. The same phone with one person's
    # account and card, registered with one email, still merges them.
    rows = [
        {S.EVENT_ID: "accounts:a1", S.ACCOUNT_KEY: "a1", S.EMAIL_KEY: "e1", S.PHONE_KEY: "home"},
        {S.EVENT_ID: "crm:c2", S.CARD_KEY: "c2", S.EMAIL_KEY: "e2", S.PHONE_KEY: "home"},
        {S.EVENT_ID: "accounts:a3", S.ACCOUNT_KEY: "a3", S.EMAIL_KEY: "e3", S.PHONE_KEY: "p3"},
        {S.EVENT_ID: "crm:c3", S.CARD_KEY: "c3", S.EMAIL_KEY: "e3", S.PHONE_KEY: "p3"},
        {S.EVENT_ID: "pos:1", S.CARD_KEY: "c3", S.PHONE_KEY: "p3"},
    ]
    links = idn.collect_evidence([records(rows)])
    labels, shared = idn.resolve_identities(links)
    m = idn.identity_map(labels).to_pandas()
    cust = dict(zip(m[S.IDENTIFIER_TYPE] + ":" + m[S.IDENTIFIER_KEY], m[S.CUSTOMER_ID], strict=True))
    assert cust["account:a1"] != cust["card:c2"]
    assert cust["account:a3"] == cust["card:c3"] == cust["phone:p3"]
    reasons = shared.to_pandas().set_index(idn.NODE)["reason"].to_dict()
    assert reasons == {"phone:home": idn.REASON_REGISTRATIONS}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_memory_components_equal_label_propagation(seed: int) -> None:
    """The DuckDB pipeline's union-find gives exactly the labels of the engine-neutral propagation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_records, n_nodes = 300, 200
    rows = [
        {
            S.EVENT_ID: f"r{r}",
            S.DEVICE_KEY: f"d{rng.integers(n_nodes)}",
            S.ACCOUNT_KEY: f"a{rng.integers(n_nodes)}",
        }
        for r in range(n_records)
    ]
    rows += [{S.EVENT_ID: f"s{i}", S.DEVICE_KEY: f"lonely{i}"} for i in range(5)]  # singletons
    evidence = idn.collect_evidence([records(rows)])
    nodes, pairs = evidence.nodes.select(idn.NODE), evidence.pairs.select(idn.SRC, idn.DST)
    expected = idn.propagate_labels(nodes, idn.undirected(pairs)).to_pandas()
    edges = pairs.to_pyarrow()
    got = idn.label_components(
        nodes.to_pyarrow().column(idn.NODE), edges.column(idn.SRC), edges.column(idn.DST)
    ).to_pandas()
    key = idn.NODE
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True), expected.sort_values(key).reset_index(drop=True)
    )
    assert got[idn.LABEL].nunique() > 5  # several components, not one

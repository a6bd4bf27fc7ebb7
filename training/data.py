"""DataModules: ``04_features`` Parquet → tensors, through the shared numpy encoder.

The item vocabulary is the one prep fit on the training window (``items.parquet``); it travels with the
run and the exported artifact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, TensorDataset

from data_prep import schema as S
from models.encoding import N_CONTEXT, ItemVocabulary, encode_sequences, flatten_sequences
from training.distributed import train_sampler
from training.protocols import R2, NextItemTables, item_counts, load_tables, through_validation

TYPE_NAMES = S.ITEM_EVENT_TYPES
CHANNEL_NAMES = S.CHANNELS


def load_vocabulary(features_dir: Path) -> ItemVocabulary:
    items = pq.read_table(features_dir / S.ITEMS_FILE, columns=[S.ITEM_ID, S.ITEM_IDX]).sort_by(S.ITEM_IDX)
    return ItemVocabulary().fit(items.column(S.ITEM_ID).to_pylist())


def _encode(path: Path, vocab: ItemVocabulary, max_len: int) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    table = pq.read_table(path)
    return (*_encode_table(table, vocab, max_len), table)


def _side_columns(table: pa.Table) -> dict[str, Any]:
    """Event types, channels and timestamps of a sequence table, for the encoder (absent lists: None)."""
    names = table.column_names
    return {
        "event_types": table.column(S.EVENT_TYPES_COL),
        "type_names": TYPE_NAMES,
        "channels": table.column(S.CHANNELS_COL) if S.CHANNELS_COL in names else None,
        "channel_names": CHANNEL_NAMES,
        "timestamps": table.column(S.TIMESTAMPS_COL) if S.TIMESTAMPS_COL in names else None,
    }


def _encode_table(table: pa.Table, vocab: ItemVocabulary, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    return encode_sequences(table.column(S.ITEMS), vocab, max_len, **_side_columns(table))


def _loader(
    tensors: list[torch.Tensor],
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int,
    trainer: L.Trainer | None = None,
) -> DataLoader:
    """Training (``shuffle``): under data-parallel training each process gets its shard
    (:func:`training.distributed.train_sampler`); evaluation always reads every example."""
    dataset = TensorDataset(*tensors)
    sampler = train_sampler(dataset, trainer, seed) if shuffle else None
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        generator=g,
        persistent_workers=workers > 0,
    )


@dataclass
class NextItemSplit:
    """Encoded next-item examples: input (N, T) item/type indices and target item index (N,), 0 if unknown.

    ``older_idx`` (N, S) holds the distinct known items of each history *older* than the newest ``max_len``
    events (0 = padding; S ≥ 1): the model never sees them, but the seen filter removes them too, so that
    the whole history counts as seen (shared/PROTOCOLS.md), as the serving layer does.
    """

    item_idx: np.ndarray
    ctx_idx: np.ndarray  # (N, T, C) event type, channel, time gap
    target: np.ndarray
    customer_id: np.ndarray
    older_idx: np.ndarray


def encode_next_item(table: pa.Table, vocab: ItemVocabulary, max_len: int) -> NextItemSplit:
    item_idx, ctx_idx = _encode_table(table, vocab, max_len)
    target = vocab.lookup(table.column(S.TARGET_ITEM).to_numpy(zero_copy_only=False))
    customers = table.column(S.CUSTOMER_ID).to_numpy(zero_copy_only=False)
    return NextItemSplit(item_idx, ctx_idx, target, customers, older_items(table, vocab, max_len))


def older_items(table: pa.Table, vocab: ItemVocabulary, max_len: int) -> np.ndarray:
    """(N, S) distinct known items of each sequence before its newest ``max_len`` known items, left-aligned,
    0-padded, minus those items that also appear among the newest (the graph removes those itself)."""
    flat = flatten_sequences(table.column(S.ITEMS), vocab)
    from_end = flat.from_end()  # 0 = newest known item
    recent = pd.DataFrame({"row": flat.row[from_end < max_len], "item": flat.item[from_end < max_len]})
    old = pd.DataFrame({"row": flat.row[from_end >= max_len], "item": flat.item[from_end >= max_len]})
    old = old.drop_duplicates().merge(recent.drop_duplicates(), how="left", indicator=True)
    old = old[old["_merge"] == "left_only"]
    width = max(1, int(old.groupby("row").size().max()) if len(old) else 1)
    out = np.zeros((flat.n_rows, width), dtype=np.int64)
    col = old.groupby("row").cumcount().to_numpy()
    out[old["row"].to_numpy(), col] = old["item"].to_numpy()
    return out


def recommender_items(features_dir: Path, tables: NextItemTables) -> pa.Table:
    """The vocabulary table a recommender run trains with (items.parquet columns).

    R2: the one prep fit on the training window. R1: items of the training sequences by frequency, with
    the catalogue category where prep knows it.
    """
    prep_items = pq.read_table(features_dir / S.ITEMS_FILE)
    if tables.protocol == R2:
        return prep_items.sort_by(S.ITEM_IDX)
    counts = item_counts(tables.train)
    idx = pa.array(np.arange(1, counts.num_rows + 1, dtype=np.int64))
    counts = counts.append_column(S.ITEM_IDX, idx)
    cats = prep_items.select([S.ITEM_ID, S.CATEGORY])
    joined = counts.join(cats, S.ITEM_ID, join_type="left outer").sort_by(S.ITEM_IDX)
    return joined.select([S.ITEM_ID, S.ITEM_IDX, S.CATEGORY, S.POPULARITY])


def training_windows(
    table: pa.Table, vocab: ItemVocabulary, max_len: int, stride: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every next-item pair of every training sequence, as left-padded windows (W, max_len + 1).

    A sequence longer than the model's context is cut, from its newest end, into windows of max_len + 1
    items that start every ``stride`` items (default max_len: windows overlap by one item). Each window
    trains only its newest ``stride`` targets (the oldest window: all it has), so every (item → next item)
    pair is trained exactly once, with at least max_len − stride items of context when the history has
    them. Returns items (W, max_len + 1), their context (W, max_len + 1, C), and the target matrix
    (W, max_len) with 0 where nothing is trained. Items unknown to the vocabulary are dropped (as the
    encoder does).
    """
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"window stride must be in 1..max_len={max_len}, got {stride}")
    f = flatten_sequences(table.column(S.ITEMS), vocab, **_side_columns(table))
    n = np.bincount(f.row, minlength=f.n_rows)  # kept items per sequence
    start = np.concatenate([[0], np.cumsum(n)[:-1]])  # offset of each sequence in the flat arrays
    n_win = np.where(n >= 2, -(-(n - 1) // stride), 0)  # ceil((n - 1) / stride) windows
    seq = np.repeat(np.arange(len(n)), n_win)
    j = np.arange(int(n_win.sum())) - np.repeat(np.cumsum(n_win) - n_win, n_win)  # 0 = newest window
    end = n[seq] - j * stride  # exclusive end inside the sequence
    width = max_len + 1
    pos = (end - width)[:, None] + np.arange(width)[None, :]  # (W, width) position inside the sequence
    valid = pos >= 0
    flat_pos = np.where(valid, start[seq][:, None] + pos, 0)
    if len(f.item):
        items = np.where(valid, f.item[flat_pos], 0)
        ctx = np.where(valid[:, :, None], f.ctx[flat_pos], 0)
    else:
        items, ctx = np.zeros(pos.shape, np.int64), np.zeros((*pos.shape, N_CONTEXT), np.int64)
    trained = pos[:, 1:] >= np.maximum(end - stride, 1)[:, None]  # (W, max_len): this window's targets
    targets = np.where(trained, items[:, 1:], 0)
    return items.astype(np.int64), ctx.astype(np.int64), targets.astype(np.int64)


class RecommenderDataModule(L.LightningDataModule):
    """Train: every position of each training sequence; val/test: one next-item example per customer.

    ``protocol`` R2 reads prep's global-time-split tables, R1 the leave-one-out split of the full
    sequences (:mod:`training.protocols`). ``through_val`` trains through the validation window too.
    """

    def __init__(
        self,
        features_dir: Path,
        max_len: int,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        protocol: str = R2,
        window_stride: int | None = None,
        through_val: bool = False,
    ):
        super().__init__()
        self.window_stride = window_stride
        self.features_dir, self.max_len = Path(features_dir), max_len
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.tables = load_tables(self.features_dir, protocol)
        if through_val:  # retraining on train + validation (the vocabulary stays the training window's)
            self.tables = through_validation(self.tables)
        self.items = recommender_items(self.features_dir, self.tables)
        self.vocab = ItemVocabulary().fit(self.items.column(S.ITEM_ID).to_pylist())
        self.popularity = self.items.column(S.POPULARITY).to_numpy().astype(np.float64)
        self.splits: dict[str, NextItemSplit] = {}
        self.train_tensors: list[torch.Tensor] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_tensors:
            return
        items, types, y = training_windows(self.tables.train, self.vocab, self.max_len, self.window_stride)
        x, tx = items[:, :-1], types[:, :-1]
        self.train_tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x, tx, y)]
        self.splits[S.SPLIT_VAL] = encode_next_item(self.tables.val, self.vocab, self.max_len)
        self.splits[S.SPLIT_TEST] = encode_next_item(self.tables.test, self.vocab, self.max_len)

    def _eval_loader(self, split: str) -> DataLoader:
        s = self.splits[split]
        tensors = [torch.from_numpy(a) for a in (s.item_idx, s.ctx_idx, s.target, s.older_idx)]
        return _loader(tensors, 512, False, 0, self.seed)

    def train_dataloader(self) -> DataLoader:
        return _loader(self.train_tensors, self.batch_size, True, self.num_workers, self.seed, self.trainer)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(S.SPLIT_VAL)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(S.SPLIT_TEST)


@dataclass
class IntentSplit:
    """Encoded I1 examples: sequences (N, T), raw aggregates (N, F), labels (N,)."""

    item_idx: np.ndarray
    ctx_idx: np.ndarray  # (N, T, C)
    features: np.ndarray
    label: np.ndarray


# intent target → (file prefix in 04_features, aggregate feature columns)
INTENT_TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "purchase": ("intent", S.INTENT_FEATURES),  # I1: customers at a cutoff
    "session": ("session", S.SESSION_FEATURES),  # I2: sessions at their first add-to-cart
    "churn": (S.CHURN_PREFIX, S.INTENT_FEATURES),  # buyers at a cutoff: no purchase in 60 days
}


def load_intent_split(
    path: Path, vocab: ItemVocabulary, max_len: int, feature_names: Sequence[str] = S.INTENT_FEATURES
) -> IntentSplit:
    item_idx, ctx_idx, table = _encode(path, vocab, max_len)
    feats = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in feature_names])
    label = table.column(S.LABEL).to_numpy(zero_copy_only=False).astype(np.float32)
    return IntentSplit(item_idx, ctx_idx, feats.astype(np.float32), label)


class IntentDataModule(L.LightningDataModule):
    """Intent examples of one target (:data:`INTENT_TARGETS`). I1: train at the train cutoffs, val at T_val,
    test at T_test. I2: sessions whose add-to-cart falls before T_val, in [T_val, T_test), after T_test."""

    def __init__(
        self,
        features_dir: Path,
        max_len: int,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        target: str = "purchase",
    ):
        super().__init__()
        if target not in INTENT_TARGETS:
            raise ValueError(f"unknown intent target {target!r}: expected one of {sorted(INTENT_TARGETS)}")
        self.features_dir, self.max_len = Path(features_dir), max_len
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.prefix, self.feature_names = INTENT_TARGETS[target]
        self.vocab = load_vocabulary(self.features_dir)
        self.splits: dict[str, IntentSplit] = {}

    def setup(self, stage: str | None = None) -> None:
        for split in S.SPLITS:
            if split not in self.splits:
                path = self.features_dir / S.split_file(self.prefix, split)
                if not path.is_file():
                    why = (
                        " (churn examples need three 60-day label windows after 28 days of history; "
                        "04_features/manifest.json says when prep skipped them)"
                        if self.prefix == S.CHURN_PREFIX
                        else ""
                    )
                    raise FileNotFoundError(f"{path} is missing: run `o2o prep` first{why}")
                s = load_intent_split(path, self.vocab, self.max_len, self.feature_names)
                if len(s.label) == 0 or len(np.unique(s.label)) < 2:
                    raise ValueError(
                        f"{path} has {len(s.label)} examples and {int(s.label.sum())} positives: the "
                        f"{split} split needs both classes (does this data have {self.prefix} examples?)"
                    )
                self.splits[split] = s

    def feature_scaling(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of ``log1p(features)`` on the training split only."""
        self.setup()
        logf = np.log1p(np.clip(self.splits[S.SPLIT_TRAIN].features, 0, None))
        return torch.from_numpy(logf.mean(axis=0)), torch.from_numpy(logf.std(axis=0))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        s = self.splits[split]
        tensors = [torch.from_numpy(a) for a in (s.item_idx, s.ctx_idx, s.features, s.label)]
        bs = self.batch_size if shuffle else 1024
        workers = self.num_workers if shuffle else 0
        return _loader(tensors, bs, shuffle, workers, self.seed, self.trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader(S.SPLIT_TRAIN, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(S.SPLIT_VAL, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(S.SPLIT_TEST, False)

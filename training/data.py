"""DataModules: ``04_features`` Parquet → tensors, through the shared numpy encoder.

The item vocabulary is the one prep fit on the training window (``items.parquet``); it travels with the
run and the exported artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, TensorDataset

from data_prep import schema as S
from models.encoding import ItemVocabulary, encode_sequences

TYPE_NAMES = S.ITEM_EVENT_TYPES


def load_popularity(features_dir: Path) -> np.ndarray:
    """(n_items,) training-window event counts in item-index order."""
    items = pq.read_table(features_dir / S.ITEMS_FILE, columns=[S.ITEM_IDX, S.POPULARITY]).sort_by(S.ITEM_IDX)
    return items.column(S.POPULARITY).to_numpy().astype(np.float64)


def load_vocabulary(features_dir: Path) -> ItemVocabulary:
    items = pq.read_table(features_dir / S.ITEMS_FILE, columns=[S.ITEM_ID, S.ITEM_IDX]).sort_by(S.ITEM_IDX)
    return ItemVocabulary().fit(items.column(S.ITEM_ID).to_pylist())


def _encode(path: Path, vocab: ItemVocabulary, max_len: int) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    table = pq.read_table(path)
    item_idx, type_idx = encode_sequences(
        table.column(S.ITEMS), vocab, max_len, table.column(S.EVENT_TYPES_COL), TYPE_NAMES
    )
    return item_idx, type_idx, table


def _loader(
    tensors: list[torch.Tensor], batch_size: int, shuffle: bool, workers: int, seed: int
) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(*tensors),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=g,
        persistent_workers=workers > 0,
    )


@dataclass
class NextItemSplit:
    """Encoded R2 examples: input (N, T) item/type indices and target item index (N,), 0 if unknown."""

    item_idx: np.ndarray
    type_idx: np.ndarray
    target: np.ndarray
    customer_id: np.ndarray


def load_next_item_split(path: Path, vocab: ItemVocabulary, max_len: int) -> NextItemSplit:
    item_idx, type_idx, table = _encode(path, vocab, max_len)
    target = vocab.lookup(table.column(S.TARGET_ITEM).to_numpy(zero_copy_only=False))
    customers = table.column(S.CUSTOMER_ID).to_numpy(zero_copy_only=False)
    return NextItemSplit(item_idx, type_idx, target, customers)


class RecommenderDataModule(L.LightningDataModule):
    """Train: every position of each sequence before T_val; val/test: R2 examples at T_val / T_test."""

    def __init__(
        self, features_dir: Path, max_len: int, batch_size: int, num_workers: int = 0, seed: int = 0
    ):
        super().__init__()
        self.features_dir, self.max_len = Path(features_dir), max_len
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.vocab = load_vocabulary(self.features_dir)
        self.splits: dict[str, NextItemSplit] = {}
        self.train_tensors: list[torch.Tensor] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_tensors:
            return
        items, types, _ = _encode(
            self.features_dir / S.split_file("rec", S.SPLIT_TRAIN), self.vocab, self.max_len + 1
        )
        x, tx, y = items[:, :-1], types[:, :-1], items[:, 1:].copy()
        y[x == 0] = 0  # no loss where the input is padding
        self.train_tensors = [torch.from_numpy(a) for a in (x, tx, y)]
        for split in (S.SPLIT_VAL, S.SPLIT_TEST):
            self.splits[split] = load_next_item_split(
                self.features_dir / S.split_file("rec", split), self.vocab, self.max_len
            )

    def _eval_loader(self, split: str) -> DataLoader:
        s = self.splits[split]
        tensors = [torch.from_numpy(a) for a in (s.item_idx, s.type_idx, s.target)]
        return _loader(tensors, 512, False, 0, self.seed)

    def train_dataloader(self) -> DataLoader:
        return _loader(self.train_tensors, self.batch_size, True, self.num_workers, self.seed)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(S.SPLIT_VAL)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(S.SPLIT_TEST)


@dataclass
class IntentSplit:
    """Encoded I1 examples: sequences (N, T), raw aggregates (N, F), labels (N,)."""

    item_idx: np.ndarray
    type_idx: np.ndarray
    features: np.ndarray
    label: np.ndarray


def load_intent_split(path: Path, vocab: ItemVocabulary, max_len: int) -> IntentSplit:
    item_idx, type_idx, table = _encode(path, vocab, max_len)
    feats = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in S.INTENT_FEATURES])
    label = table.column(S.LABEL).to_numpy(zero_copy_only=False).astype(np.float32)
    return IntentSplit(item_idx, type_idx, feats.astype(np.float32), label)


class IntentDataModule(L.LightningDataModule):
    """I1 examples: train at the train cutoffs, val at T_val, test at T_test."""

    def __init__(
        self, features_dir: Path, max_len: int, batch_size: int, num_workers: int = 0, seed: int = 0
    ):
        super().__init__()
        self.features_dir, self.max_len = Path(features_dir), max_len
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.vocab = load_vocabulary(self.features_dir)
        self.splits: dict[str, IntentSplit] = {}

    def setup(self, stage: str | None = None) -> None:
        for split in S.SPLITS:
            if split not in self.splits:
                path = self.features_dir / S.split_file("intent", split)
                self.splits[split] = load_intent_split(path, self.vocab, self.max_len)

    def feature_scaling(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of ``log1p(features)`` on the training split only."""
        self.setup()
        logf = np.log1p(np.clip(self.splits[S.SPLIT_TRAIN].features, 0, None))
        return torch.from_numpy(logf.mean(axis=0)), torch.from_numpy(logf.std(axis=0))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        s = self.splits[split]
        tensors = [torch.from_numpy(a) for a in (s.item_idx, s.type_idx, s.features, s.label)]
        bs = self.batch_size if shuffle else 1024
        return _loader(tensors, bs, shuffle, self.num_workers if shuffle else 0, self.seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader(S.SPLIT_TRAIN, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(S.SPLIT_VAL, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(S.SPLIT_TEST, False)

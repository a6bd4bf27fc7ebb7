"""RecTools 0.19 SASRecModel on an R1 leave-one-out split: train, select by validation, write top-k.

Run inside the RecTools venv (see ``requirements-rectools.txt``)::

    python experiments/peers/run_rectools.py --input DIR --output DIR

File contract: ``_common.py``. What the script does, and why:

* Data. One RecTools ``Dataset`` of all train+val events (weight 1, ``position`` as the datetime, in
  seconds). ``get_val_mask_func`` marks each user's last event, which by the contract is the val event:
  RecTools then leaves those events out of training and uses them as validation targets, with the
  user's train events as the validation input (its documented way to validate a transformer model).
* Model. ``SASRecModel`` with capacity and optimiser settings from config.json (``n_factors``,
  ``n_blocks``, ``n_heads``, ``session_max_len`` = max_len, ``dropout_rate``, ``lr``, ``batch_size``) and
  ``loss="softmax"`` (full cross-entropy over the catalogue); everything else is RecTools' default.
* Model selection. RecTools 0.19 supports a validation mask plus a custom Lightning trainer
  (``get_trainer_func``), so training runs for at most ``max_epochs`` epochs with Lightning
  ``EarlyStopping`` on RecTools' own validation loss (``val_loss``: the same softmax cross-entropy, on
  the val targets) and ``ModelCheckpoint`` keeping the best epoch, which is reloaded with RecTools'
  ``load_weights_from_checkpoint`` before predicting (it passes ``weights_only=False`` itself, so torch
  2.13's ``torch.load`` default needs no shim here). Lightning's patience is config.json's ``patience`` + 1
  (default 11 checks) so that it stops exactly when RecBole's ``stopping_step`` would (RecBole stops at
  the 11th epoch in a row without improvement for stopping_step 10). Validation loss rather than NDCG@10: it is what RecTools computes and logs, with no
  code of ours in the training loop; the two peers' selection criteria therefore differ (RecBole:
  full-ranking NDCG@10 on the same val targets).
* Prediction. ``model.recommend`` for every user on the full train+val dataset (so the val event is
  the last input item) with ``filter_viewed=True`` (every history item removed), k from config.
* Library behaviour worth knowing when comparing: RecTools trains on the last ``max_len + 1`` events of
  each user (one shifted sequence per user per epoch, loss at every position), RecBole on every prefix
  of each user's sequence. RecTools' catalogue is the items of the training events, so an item seen only
  as some user's val event can be neither a validation target nor recommended; ``result.json`` gives
  the catalogue size (``n_items_catalogue``) beside the number of train+val items.
"""

import os

import _common

os.environ.update(_common.thread_env())  # before numpy/torch are imported: their thread pools read it

import tempfile
import time

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import rectools
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from rectools import Columns
from rectools.dataset import Dataset
from rectools.models import SASRecModel


def last_event_mask(interactions: pd.DataFrame) -> np.ndarray:
    """Validation mask: each user's last event by time (the val event of the contract)."""
    last = interactions.groupby(Columns.User)[Columns.Datetime].transform("max")
    return (interactions[Columns.Datetime] == last).to_numpy()


class EpochLog(Callback):
    """Keeps (epoch, train loss, val loss) per epoch and prints one line each; never touches training."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row: dict[str, float] = {"epoch": trainer.current_epoch + 1}
        for name in ("train_loss", "val_loss"):
            if name in metrics:
                row[name] = float(metrics[name])
        self.rows.append(row)
        print("epoch", row["epoch"], {k: round(v, 5) for k, v in row.items() if k != "epoch"}, flush=True)


def make_trainer(max_epochs: int, checkpoint_dir: str, patience: int) -> pl.Trainer:
    """The Lightning trainer RecTools fits with (through ``get_trainer_func``)."""
    return pl.Trainer(
        max_epochs=max_epochs,
        min_epochs=1,
        deterministic=True,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        num_sanity_val_steps=0,
        callbacks=[
            EarlyStopping(monitor="val_loss", mode="min", patience=patience + 1),
            ModelCheckpoint(dirpath=checkpoint_dir, monitor="val_loss", mode="min", save_top_k=1),
            EpochLog(),
        ],
    )


def main() -> None:
    _common.exit_on_sigterm()
    args = _common.parse_args()
    config = _common.load_config(args.input)
    seed, threads, k = int(config["seed"]), int(config["threads"]), int(config["k"])
    _common.seed_everything(seed, threads)
    pl.seed_everything(seed, workers=True)
    train, val = _common.read_split(args.input)
    hist = _common.history(train, val).reset_index(drop=True)
    interactions = pd.DataFrame(
        {
            Columns.User: hist["user_id"],
            Columns.Item: hist["item_id"],
            Columns.Weight: 1.0,
            Columns.Datetime: pd.to_datetime(hist["position"], unit="s"),
        }
    )
    dataset = Dataset.construct(interactions)
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rectools-work-", dir=args.output) as tmp:
        model = SASRecModel(
            n_factors=int(config["n_factors"]),
            n_blocks=int(config["n_blocks"]),
            n_heads=int(config["n_heads"]),
            session_max_len=int(config["max_len"]),
            dropout_rate=float(config["dropout"]),
            lr=float(config["lr"]),
            batch_size=int(config["batch_size"]),
            loss="softmax",
            get_val_mask_func=last_event_mask,
            get_trainer_func=make_trainer,
            get_trainer_func_kwargs={
                "max_epochs": int(config["max_epochs"]),
                "checkpoint_dir": tmp,
                "patience": _common.patience(config),
            },
            recommend_torch_device="cpu",
        )
        t0 = time.perf_counter()
        model.fit(dataset)
        train_seconds = time.perf_counter() - t0
        trainer = model.fit_trainer
        assert trainer is not None
        checkpoint = next(cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint))
        epoch_log = next(cb for cb in trainer.callbacks if isinstance(cb, EpochLog))
        if checkpoint.best_model_path:
            model.load_weights_from_checkpoint(checkpoint.best_model_path)
        val_losses = [row.get("val_loss", np.inf) for row in epoch_log.rows]
        best_epoch = int(np.argmin(val_losses)) + 1 if val_losses else None

        t0 = time.perf_counter()
        recos = model.recommend(
            users=hist["user_id"].unique(),
            dataset=dataset,
            k=k,
            filter_viewed=True,
            on_unsupported_targets="warn",
        )
        predict_seconds = time.perf_counter() - t0
    topk = pd.DataFrame(
        {
            "user_id": recos[Columns.User].astype(str),
            "rank": recos[Columns.Rank].astype(int),
            "item_id": recos[Columns.Item].astype(str),
        }
    )
    effective = model.get_config(simple_types=True)
    # get_trainer_func replaces RecTools' own trainer, which is what epochs / deterministic / verbose set
    for key in ("get_trainer_func", "get_trainer_func_kwargs", "epochs", "deterministic", "verbose"):
        effective.pop(key, None)
    result = {
        "library": "rectools",
        "version": rectools.__version__,
        **_common.versions("torch", "numpy", "pandas", "pytorch_lightning"),
        "train_seconds": train_seconds,
        "predict_seconds": predict_seconds,
        "epochs": len(epoch_log.rows),
        "best_epoch": best_epoch,
        "best_val_loss": float(min(val_losses)) if val_losses else None,
        "val_loss_by_epoch": [round(float(v), 6) for v in val_losses],
        "n_items_catalogue": len(model.data_preparator.get_known_item_ids()),
        "n_items_train_val": int(hist["item_id"].nunique()),
        "config": {
            **config,
            "rectools": effective,
            "trainer": {
                "max_epochs": int(config["max_epochs"]),
                "deterministic": True,
                "early_stopping": {
                    "monitor": "val_loss",
                    "mode": "min",
                    "patience": _common.patience(config) + 1,
                },
                "best_weights": "ModelCheckpoint(monitor=val_loss) + load_weights_from_checkpoint",
            },
        },
    }
    _common.write_outputs(args.output, topk, hist, result)


if __name__ == "__main__":
    main()

"""RecBole 1.2.1 SASRec on an R1 leave-one-out split: train, select by validation, write top-k.

Run inside the RecBole venv (see ``requirements-recbole.txt``)::

    python experiments/peers/run_recbole.py --input DIR --output DIR

File contract: ``_common.py``. What the script does, and why:

* Data. train+val events go into one RecBole atomic file (``user_id:token, item_id:token,
  timestamp:float``; ``position`` is the timestamp; ids are re-coded to dense integers first so odd
  characters in ids cannot upset RecBole's tab-separated reader). RecBole's sequential dataset turns each
  user's sequence into (prefix -> next item) samples, and ``eval_args.split = {"LS": "valid_only"}`` puts
  each user's last sample (history = train events, target = the val event) in the validation set and
  the rest in training. The catalogue is every item of train+val (RecBole's token map).
* Model and training. RecBole's own SASRec and Trainer with ``loss_type: CE`` and
  ``train_neg_sample_args: None`` (full softmax), capacity and optimiser settings from config.json
  (``hidden_size``, ``n_layers``, ``n_heads``, ``MAX_ITEM_LIST_LENGTH``, both dropouts, ``learning_rate``,
  ``train_batch_size``, ``epochs`` = max_epochs); everything else is RecBole's default (inner_size 256,
  gelu, Adam without weight decay, ...). Validation after every epoch with RecBole's full-ranking
  NDCG@10, early stopping once more than ``patience`` epochs (config.json, default 10) pass without
  improvement (``stopping_step``). Note that RecBole
  does not remove history items when it scores a sequential model's validation ranking; this only affects
  model selection, not our top-k.
* Best model. The Trainer saves a checkpoint whenever validation improves. torch 2.13's ``torch.load``
  defaults to ``weights_only=True``, which refuses RecBole's checkpoint (it pickles the Config), so the
  script never calls ``Trainer.evaluate`` / ``resume_checkpoint`` (the only places RecBole reloads) and
  reads the checkpoint itself with ``weights_only=False``: it is a file this run just wrote. No
  monkeypatching.
* Prediction. For each user: the last ``max_len`` items of the train+val history (val event last) ->
  ``SASRec.full_sort_predict`` -> scores over all items; padding id and every item of the user's history
  set to -inf; top k.
* Anomaly mode. Importing RecBole's sequential models runs ``torch.autograd.set_detect_anomaly(True)``
  (module level of ``sine.py``); the script switches it off again right after the imports. With it on,
  an ML-100k epoch took 552 s instead of 242 s here (same loss, one thread, a busy 2-core machine).
  This is the one change to RecBole's behaviour, and it changes speed only, not results.
* Imports. Only ``recbole.config``, ``recbole.data``, ``recbole.model``, ``recbole.trainer``,
  ``recbole.utils``: ``recbole.quick_start`` (which imports ray) is never touched, which is why the venv
  installs RecBole with ``--no-deps`` and leaves ray out.
* Side files. RecBole writes ``./log``, ``./log_tensorboard`` and checkpoints relative to the working
  directory; the script works in a temporary folder inside ``--output`` and removes it at the end.
"""

import os
import sys

import _common

os.environ.update(_common.thread_env())  # before numpy/torch are imported: their thread pools read it

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import recbole
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_logger, init_seed

# Importing recbole.model.sequential_recommender imports every sequential model, and sine.py switches on
# torch.autograd.set_detect_anomaly(True) for the whole process at import time: SASRec then trains about
# twice as slowly (every backward node is checked for NaN, every forward records a traceback). Off again.
torch.autograd.set_detect_anomaly(False)

DATASET = "peer"
VALID_K = 10


def write_atomic(history: pd.DataFrame, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write ``folder/peer/peer.inter`` with dense integer tokens; return (user ids, item ids) by code."""
    user_codes, users = pd.factorize(history["user_id"], sort=True)
    item_codes, items = pd.factorize(history["item_id"], sort=True)
    atomic = pd.DataFrame(
        {
            "user_id:token": user_codes,
            "item_id:token": item_codes,
            "timestamp:float": history["position"].to_numpy(dtype=np.float64),
        }
    )
    (folder / DATASET).mkdir(parents=True, exist_ok=True)
    atomic.to_csv(folder / DATASET / f"{DATASET}.inter", sep="\t", index=False)
    return np.asarray(users), np.asarray(items)


def recbole_config(config: dict, work: Path) -> Config:
    settings = {
        # data
        "data_path": str(work),
        "checkpoint_dir": str(work / "saved"),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": int(config["max_len"]),
        "eval_args": {"split": {"LS": "valid_only"}, "order": "TO", "group_by": "user", "mode": "full"},
        # model
        "hidden_size": int(config["n_factors"]),
        "n_layers": int(config["n_blocks"]),
        "n_heads": int(config["n_heads"]),
        "hidden_dropout_prob": float(config["dropout"]),
        "attn_dropout_prob": float(config["dropout"]),
        "loss_type": "CE",
        "train_neg_sample_args": None,
        # training and model selection
        "learning_rate": float(config["lr"]),
        "train_batch_size": int(config["batch_size"]),
        "epochs": int(config["max_epochs"]),
        "eval_step": 1,
        "stopping_step": _common.patience(config),
        "metrics": ["Hit", "NDCG"],
        "topk": [VALID_K],
        "valid_metric": f"NDCG@{VALID_K}",
        # machine
        "seed": int(config["seed"]),
        "reproducibility": True,
        "use_gpu": False,
        "gpu_id": "",
        "show_progress": False,
        "log_wandb": False,
        "save_dataset": False,
        "save_dataloaders": False,
    }
    return Config(model="SASRec", dataset=DATASET, config_dict=settings)


def effective(rb_config: Config, config: dict) -> dict:
    keys = (
        "hidden_size",
        "inner_size",
        "n_layers",
        "n_heads",
        "hidden_dropout_prob",
        "attn_dropout_prob",
        "hidden_act",
        "layer_norm_eps",
        "initializer_range",
        "loss_type",
        "MAX_ITEM_LIST_LENGTH",
        "learner",
        "learning_rate",
        "weight_decay",
        "train_batch_size",
        "epochs",
        "stopping_step",
        "valid_metric",
        "eval_args",
        "seed",
        "reproducibility",
        "train_neg_sample_args",
    )
    out = {key: rb_config[key] for key in keys}
    return {**config, "recbole": json.loads(json.dumps(out, default=str))}


def predict(
    model: SASRec, dataset, history: pd.DataFrame, users, items, k: int, max_len: int
) -> pd.DataFrame:
    """Top-k for every user from its full train+val history, history items removed."""
    item_token_to_id = dataset.field2token_id["item_id"]
    # history item -> RecBole internal id, through our dense code (the token)
    item_code = pd.Series(np.arange(len(items)), index=items)
    internal = np.array([item_token_to_id[str(c)] for c in range(len(items))], dtype=np.int64)
    hist_internal = internal[item_code.reindex(history["item_id"]).to_numpy()]
    user_of_row = pd.Categorical(history["user_id"], categories=users).codes
    starts = np.searchsorted(user_of_row, np.arange(len(users)))
    ends = np.searchsorted(user_of_row, np.arange(len(users)), side="right")
    id_to_token = dataset.field2id_token["item_id"]
    code_of_internal = np.full(len(id_to_token), -1, dtype=np.int64)
    code_of_internal[1:] = id_to_token[1:].astype(np.int64)  # id 0 is RecBole's [PAD]
    rows = []
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(users), 256):
            batch = range(lo, min(lo + 256, len(users)))
            seq = np.zeros((len(batch), max_len), dtype=np.int64)
            lens = np.zeros(len(batch), dtype=np.int64)
            for i, u in enumerate(batch):
                tail = hist_internal[starts[u] : ends[u]][-max_len:]
                seq[i, : len(tail)] = tail  # RecBole pads on the right
                lens[i] = len(tail)
            inter = Interaction(
                {model.ITEM_SEQ: torch.from_numpy(seq), model.ITEM_SEQ_LEN: torch.from_numpy(lens)}
            )
            scores = model.full_sort_predict(inter).view(len(batch), -1)
            scores[:, 0] = -torch.inf
            for i, u in enumerate(batch):
                scores[i, torch.from_numpy(hist_internal[starts[u] : ends[u]])] = -torch.inf
            top_scores, top_ids = torch.topk(scores, k=min(k, scores.shape[1]), dim=1)
            for i, u in enumerate(batch):
                keep = torch.isfinite(top_scores[i]).numpy()
                codes = code_of_internal[top_ids[i].numpy()[keep]]
                rows.append(
                    pd.DataFrame(
                        {"user_id": users[u], "rank": np.arange(1, len(codes) + 1), "item_id": items[codes]}
                    )
                )
    return pd.concat(rows, ignore_index=True)


def main() -> None:
    _common.exit_on_sigterm()
    args = _common.parse_args()
    config = _common.load_config(args.input)
    sys.argv = sys.argv[:1]  # RecBole's Config also parses the command line
    _common.seed_everything(int(config["seed"]), int(config["threads"]))
    train, val = _common.read_split(args.input)
    hist = _common.history(train, val).reset_index(drop=True)
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recbole-work-", dir=args.output) as tmp:
        work = Path(tmp)
        os.chdir(work)
        t0 = time.perf_counter()
        users, items = write_atomic(hist, work)
        rb_config = recbole_config(config, work)
        init_seed(rb_config["seed"], rb_config["reproducibility"])
        init_logger(rb_config)
        dataset = create_dataset(rb_config)
        train_data, valid_data, _ = data_preparation(rb_config, dataset)
        init_seed(rb_config["seed"], rb_config["reproducibility"])
        model = SASRec(rb_config, train_data._dataset).to(rb_config["device"])
        trainer = Trainer(rb_config, model)
        prepare_seconds = time.perf_counter() - t0

        scores: list[float] = []
        best_epoch: list[int] = []

        def on_epoch(epoch_idx: int, valid_score: float) -> None:
            scores.append(float(valid_score))
            if trainer.cur_step == 0:  # RecBole's early_stopping just took this epoch as the best
                best_epoch.append(epoch_idx + 1)

        t0 = time.perf_counter()
        trainer.fit(
            train_data, valid_data, verbose=True, saved=True, show_progress=False, callback_fn=on_epoch
        )
        train_seconds = time.perf_counter() - t0

        checkpoint = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
        model.load_state_dict(checkpoint["state_dict"])
        model.load_other_parameter(checkpoint.get("other_parameter"))
        t0 = time.perf_counter()
        topk = predict(model, dataset, hist, users, items, int(config["k"]), int(config["max_len"]))
        predict_seconds = time.perf_counter() - t0
        result = {
            "library": "recbole",
            "version": recbole.__version__,
            **_common.versions("torch", "numpy", "pandas"),
            "train_seconds": train_seconds,
            "predict_seconds": predict_seconds,
            "prepare_seconds": prepare_seconds,
            "epochs": len(scores),
            "best_epoch": best_epoch[-1] if best_epoch else None,
            "best_valid_ndcg10": max(scores) if scores else None,
            "valid_ndcg10_by_epoch": scores,
            "n_items_catalogue": len(items),
            "config": effective(rb_config, config),
        }
        os.chdir(args.output)
    _common.write_outputs(args.output, topk, hist, result)


if __name__ == "__main__":
    main()

"""Typed run configs: the source of truth for every hyperparameter. Unknown keys are errors.

A run config is loaded from one YAML file (``experiments/configs/<name>.yaml``) plus dotted overrides
(``train.lr=3e-4``); the resolved config is saved with every run and artifact and the model is rebuilt
from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    features_dir: Path = Field(
        Path("data/synthetic/04_features"), description="prep output layer 04_features"
    )


SideFeature = Literal["event_type", "channel", "category", "time_gap"]


class SequenceModelConfig(_Strict):
    max_len: int = Field(50, ge=1, le=1024, description="newest items kept per sequence")
    d_model: int = Field(64, ge=8, description="embedding / hidden width")
    n_heads: int = Field(2, ge=1, description="attention heads; d_model must divide by it")
    n_layers: int = Field(2, ge=1, le=12, description="transformer blocks")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout rate")
    side_features: list[SideFeature] = Field(
        [],
        description="side information added to each input item: event_type, channel, category (the "
        "item's catalogue category), time_gap (time since the previous event, bucketed)",
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> SequenceModelConfig:
        if len(set(self.side_features)) != len(self.side_features):
            raise ValueError(f"model.side_features lists a feature twice: {self.side_features}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}"
            )
        return self


class RecommenderModelConfig(SequenceModelConfig):
    repeat_head: bool = Field(
        False,
        description="repeat-aware scoring for data with repeat purchases (grocery): an item already in the "
        "input gains g(h)·log(1 + Σ w[age]) over its occurrences, with the weight per age and the gate "
        "learned; needs eval.exclude_seen false",
    )
    knn_neighbours: int = Field(
        0,
        ge=0,
        description="> 0: blend the network with item-to-item neighbours (ItemKNN on the training sequences, "
        "this many neighbours per item): the head ranks by standardised logits + w · standardised neighbour "
        "scores; w, the co-occurrence window and the recency decay are chosen on validation after training "
        "(w = 0, the network alone, is a candidate) and ship in the exported graph; 0 = off",
    )


class IntentModelConfig(SequenceModelConfig):
    side_features: list[SideFeature] = Field(
        ["event_type"], description="side information added to each input item (see the recommender's)"
    )
    hidden: int = Field(64, ge=1, description="width of the classification head")
    item_identity: bool = Field(
        True,
        description="false: the encoder does not see which item each event was, only its side information "
        "(category, time gap, ...) and position — one shared item embedding instead of one per item, so "
        "little to overfit when there are few customers",
    )
    revisit_features: int = Field(
        0,
        ge=0,
        le=16,
        description="> 0: the head also gets this many learned age-weighted counts of the newest item's "
        "earlier occurrences in the sequence (session intent: was the item just carted looked at before, "
        "and how recently); 0 = off",
    )
    init_from: Path | None = Field(
        None,
        description="a finished recommender run folder: the sequence encoder starts from its weights (items "
        "matched by id; needs the same d_model)",
    )
    activity: bool = Field(
        True,
        description="read the weekly activity calendar (orders by channel, spend, active days, carts per week "
        "before the cutoff) with a GRU beside the item-event encoder; works when there are no items at all. "
        "false: the calendar's cells go to the head as plain features",
    )
    activity_hidden: int = Field(32, ge=1, le=256, description="width of the activity calendar's GRU")


class TrainConfig(_Strict):
    max_epochs: int = Field(
        30, ge=1, description="upper bound on epochs (early stopping usually ends sooner)"
    )
    batch_size: int = Field(128, ge=1, description="sequences per optimiser step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    patience: int = Field(
        5,
        ge=1,
        description="stop after this many validation checks in a row without improvement (Lightning's "
        "count: RecBole's stopping_step p equals patience p + 1)",
    )
    seed: int = Field(0, description="seed for torch, numpy and Python")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: load in the main process)")
    deterministic: bool = Field(True, description="Lightning deterministic mode (same seed → same metrics)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: all cores")
    accelerator: Literal["cpu", "gpu", "auto"] = Field(
        "cpu", description="Lightning accelerator (one device)"
    )
    strategy: Literal["auto", "ddp"] = Field(
        "auto",
        description="ddp: data-parallel over train.devices processes per node (CPU: gloo; GPU: NCCL), training "
        "data sharded, every process evaluating the whole validation split (training.distributed)",
    )
    devices: int = Field(1, ge=1, description="processes (CPU) or GPUs per node; > 1 needs strategy ddp")
    num_nodes: int = Field(1, ge=1, description="machines; > 1 needs strategy ddp")
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = Field(
        "32-true", description="Lightning precision; bf16-mixed where the hardware supports bfloat16"
    )
    compile: bool = Field(False, description="torch.compile the encoder for training")

    @model_validator(mode="after")
    def _parallel_needs_ddp(self) -> TrainConfig:
        if (self.devices > 1 or self.num_nodes > 1) and self.strategy != "ddp":
            raise ValueError(
                f"train.devices={self.devices}, train.num_nodes={self.num_nodes} run several processes: "
                "set train.strategy=ddp"
            )
        return self


class RecommenderTrainConfig(TrainConfig):
    loss: Literal["ce", "sampled_softmax", "gbce"] = Field(
        "ce",
        description="ce: full softmax cross-entropy; sampled_softmax: log-q corrected, for huge "
        "catalogues; gbce: generalised BCE with uniform negatives (gSASRec)",
    )
    n_negatives: int = Field(256, ge=1, description="negatives per batch (sampled_softmax) or per row (gbce)")
    gbce_t: float = Field(0.75, ge=0.0, le=1.0, description="gBCE calibration t (0 = plain BCE)")
    window_stride: int | None = Field(
        None,
        ge=1,
        description="long histories are cut into max_len windows starting every this many items, each "
        "training its newest targets only (default max_len; smaller = more context per target, more compute)",
    )
    fit_on: Literal["train", "train+val"] = Field(
        "train",
        description="train: fit on the training window, early-stop and select on validation; train+val: "
        "retrain a chosen config on training and validation together for exactly max_epochs (no early "
        "stopping, nothing held out to select on) and evaluate once on test — what `o2o tune --retrain` does",
    )
    loss_excludes_seen: bool = Field(
        False,
        description="ce only: each position's softmax leaves out the items already in its input (not its "
        "own target), as ranking with the seen filter does; for data without repeats (MovieLens)",
    )

    @model_validator(mode="after")
    def _seen_needs_ce(self) -> RecommenderTrainConfig:
        if self.loss_excludes_seen and self.loss != "ce":
            raise ValueError(f"loss_excludes_seen needs loss 'ce', not {self.loss!r}")
        return self


class EvalConfig(_Strict):
    protocol: Literal["R1", "R2"] = Field(
        "R2", description="R1: leave-one-out (public benchmarks); R2: global time split (retail)"
    )
    k: Annotated[int, Field(ge=1, le=1000)] = Field(10, description="cut-off of the ranking metrics")
    exclude_seen: bool = Field(True, description="remove items already in the history before top-k")
    baselines: bool = Field(
        True,
        description="fit and score the baselines beside the model (an ablation fits them for one variant "
        "only: they do not depend on the model's settings)",
    )


class ParamSpec(_Strict):
    """One dimension of a tuning search space: a float or int range (optionally log-scaled or stepped), or
    a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = Field(None, description="float/int: lower bound (inclusive)")
    high: float | None = Field(None, description="float/int: upper bound (inclusive)")
    log: bool = Field(False, description="float/int: sample on a log scale")
    step: float | None = Field(None, gt=0, description="float/int: grid step (not with log)")
    choices: list[Any] | None = Field(None, description="categorical: the values to choose from")

    @model_validator(mode="after")
    def _complete(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical parameter takes 'choices', not low/high")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low={self.low} is above high={self.high}")
        if self.log and (self.step is not None or self.low <= 0):
            raise ValueError("a log-scaled parameter needs low > 0 and no step")
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low/high, not 'choices'")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int parameter needs whole bounds, got {self.low}..{self.high}")
        return self


class TuneConfig(_Strict):
    """How ``o2o tune`` searches this config: the space (dotted config keys → distributions), the metric,
    the sampler and the pruner. The space lives here, in the config file, not in code."""

    metric: str | None = Field(
        None,
        description="validation metric to optimise, as named in metrics.json (recommender: ndcg@k, hr@k, "
        "mrr@k; intent: roc_auc, pr_auc, log_loss); default: the one early stopping watches (ndcg@k, "
        "roc_auc). log_loss is minimised, the others maximised",
    )
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median",
        description="stops unpromising trials on the per-epoch validation metric: median (below the "
        "median of earlier trials at the same epoch) or hyperband (successive halving brackets)",
    )
    startup_trials: int = Field(
        5, ge=0, description="trials sampled at random before TPE, and finished before median pruning starts"
    )
    warmup_epochs: int = Field(1, ge=0, description="median pruner: epochs a trial always gets")
    sampler_seed: int = Field(0, description="seed of the TPE sampler (same seed, same proposals)")
    heartbeat_seconds: int = Field(
        10,
        ge=1,
        description="a running trial writes a heartbeat this often; one silent for 3× this (its worker was "
        "killed) is marked failed and retried once with the same parameters",
    )
    space: dict[str, ParamSpec] = Field(
        {}, description="dotted config key (train.lr, model.dropout, ...) → its distribution"
    )


class RecommenderRunConfig(_Strict):
    task: Literal["recommender"] = "recommender"
    name: str = Field("recommender", description="run name; the run id is <name>-<timestamp>")
    data: DataConfig = DataConfig()
    model: RecommenderModelConfig = RecommenderModelConfig()
    train: RecommenderTrainConfig = RecommenderTrainConfig()
    eval: EvalConfig = EvalConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _seen_loss_needs_seen_filter(self) -> RecommenderRunConfig:
        if self.train.loss_excludes_seen and not self.eval.exclude_seen:
            raise ValueError(
                "train.loss_excludes_seen trains the model never to repeat an item, but eval.exclude_seen "
                "is false (repeats allowed): set one of them the other way"
            )
        if self.model.repeat_head and self.eval.exclude_seen:
            raise ValueError(
                "model.repeat_head scores items the customer already has, but eval.exclude_seen removes them "
                "from every list: set eval.exclude_seen: false (repeats allowed) or drop the repeat head"
            )
        if self.model.knn_neighbours and self.train.fit_on == "train+val":
            raise ValueError(
                "model.knn_neighbours chooses its blend weight on validation, but train.fit_on train+val "
                "trains on the validation split: set model.knn_neighbours: 0 or fit on train"
            )
        return self


class IntentTrainConfig(TrainConfig):
    calibration: Literal["auto", "none", "temperature", "isotonic"] = Field(
        "auto",
        description="probability calibration fitted on validation: auto chooses none, temperature or "
        "isotonic by cross-validated log-loss within the validation split",
    )


class IntentRunConfig(_Strict):
    task: Literal["intent"] = "intent"
    name: str = Field("intent", description="run name; the run id is <name>-<timestamp>")
    data: DataConfig = DataConfig()
    model: IntentModelConfig = IntentModelConfig()
    train: IntentTrainConfig = IntentTrainConfig()
    target: Literal["purchase", "session", "churn"] = Field(
        "purchase",
        description="purchase: protocol I1, a purchase in any channel within horizon_days of a cutoff; "
        "session: protocol I2, an online session ends in an order, scored at its first add-to-cart; "
        "churn: a customer who purchased before a cutoff makes no purchase in the 60 days after it",
    )
    horizon_days: int = Field(14, ge=1, description="label window after the cutoff (must match prep)")
    select: Literal["best", "net"] = Field(
        "best",
        description="best: ship the candidate with the best validation ROC-AUC among the network, logistic "
        "regression, gradient boosting and a stack of the three (training.stacking; the stack scored "
        "out-of-fold); net: ship the network alone",
    )
    tune: TuneConfig = TuneConfig()


RunConfig = RecommenderRunConfig | IntentRunConfig


def _set_dotted(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {p!r} is not a section")
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["train.lr=3e-4", "model.n_layers=1"]`` → [(key, YAML-parsed value)]."""
    out = []
    for o in overrides:
        key, sep, raw = o.partition("=")
        if not sep or not key:
            raise ValueError(f"override {o!r} is not of the form section.key=value")
        out.append((key.strip(), yaml.safe_load(raw)))
    return out


def load_config(task: str, path: Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or defaults), apply dotted overrides, validate into a typed run config."""
    if task not in ("recommender", "intent"):
        raise ValueError(f"unknown task {task!r}: expected 'recommender' or 'intent'")
    doc: dict[str, Any] = (yaml.safe_load(path.read_text()) or {}) if path else {}
    doc.setdefault("task", task)
    if doc["task"] != task:
        raise ValueError(f"{path} is a {doc['task']!r} config, not {task!r}")
    return _validated(task, doc, overrides or [])


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """``cfg`` with dotted overrides applied and validated again (e.g. one variant of an ablation)."""
    return _validated(cfg.task, cfg.model_dump(mode="json"), overrides)


def _validated(task: str, doc: dict[str, Any], overrides: list[str]) -> RunConfig:
    for key, value in parse_overrides(overrides):
        _set_dotted(doc, key, value)
    cls = RecommenderRunConfig if task == "recommender" else IntentRunConfig
    return cls.model_validate(doc)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

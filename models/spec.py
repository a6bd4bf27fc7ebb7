"""The model contract, typed and versioned: what a run records about its network and a bundle serves.

One definition, no torch: training builds a spec from the run config and writes it beside the checkpoint
(``runs/<id>/model.json``), export adds what the ONNX graph takes and returns (``<role>/config.json`` in the
bundle) and describes the bundle (``bundle.json``), and serving validates all of them on load. The network
configs (:class:`SASRecConfig`, :class:`IntentConfig`) are the ones the torch modules are built from.

Every document carries ``spec_version`` ("major.minor"). A reader refuses another major version, and unknown,
missing or mistyped fields in any version (:func:`parse`): nothing guesses at an older or newer shape.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from models.calibration import Calibration

SPEC_VERSION = "2.0"  # 2.0: the first typed contract (bundles before it carried no version)
Role = Literal["recommender", "intent", "churn"]  # a model's folder in a bundle
Target = Literal["purchase", "session", "churn"]  # what an intent-task network predicts
SideFeature = Literal["event_type", "channel", "category", "time_gap"]
# the graphs' inputs and outputs, in the order the exporter declares them
RECOMMENDER_INPUTS = ("item_idx", "ctx_idx", "exclude_seen", "allowed")
RECOMMENDER_OUTPUTS = ("scores", "indices")
INTENT_INPUTS = ("item_idx", "ctx_idx", "features")
INTENT_OUTPUTS = ("probability",)
_STRICT = ConfigDict(extra="forbid")


class SpecError(ValueError):
    """A spec document of another major version, or with unknown, missing or mistyped fields."""


@dataclass(frozen=True)
class SASRecConfig:
    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    n_items: int  # real items; embedding table has n_items + 1 rows (row 0 = padding); 0 = an encoder for a
    # source without item ids (order-level records only): every input is padding, the intent head uses aggregates
    max_len: int = 50  # longest input sequence (newest items kept)
    d_model: int = 64  # embedding and hidden width
    n_heads: int = 2  # attention heads (d_model must divide by it)
    n_layers: int = 2  # transformer blocks
    dropout: float = 0.2  # dropout on embeddings, attention output and MLP
    # side information, each added to the item embedding when > 0 (row 0 of each table = padding/unknown)
    n_event_types: int = 0  # event type of each input event (ctx_idx column CTX_EVENT_TYPE)
    n_channels: int = 0  # channel of each input event (CTX_CHANNEL)
    n_gap_buckets: int = 0  # time since the previous event, bucketed (CTX_TIME_GAP)
    n_categories: int = 0  # the item's catalogue category, looked up from the item (no input needed)
    # repeat-aware head (grocery): an item already in the input gets g(h) · log(1 + Σ w[age] over its
    # occurrences) added to its score; w per age (positions back from the query) and the gate g are learned
    repeat_head: bool = False
    # False: every real item shares one input embedding (the encoder sees each event's side information,
    # position and the category looked up from its item, not which item it was): far fewer parameters to
    # overfit for classifiers trained on few customers. Needs no output head (the recommender keeps it True).
    item_identity: bool = True
    # item-neighbour blend: > 0 keeps this many co-occurrence neighbours per item (ItemKNN fitted on the
    # training sequences); the head ranks by standardised logits + w · standardised neighbour scores, with
    # w, the neighbours' window and their decay chosen on validation after training (0 = the network alone)
    knn_neighbours: int = 0

    def __post_init__(self) -> None:
        if self.knn_neighbours < 0:
            raise ValueError(f"knn_neighbours must be ≥ 0, got {self.knn_neighbours}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_items < 0 or self.max_len < 1:
            raise ValueError(f"n_items must be ≥ 0 and max_len ≥ 1, got {self.n_items} and {self.max_len}")


@dataclass(frozen=True)
class IntentConfig:
    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    n_items: int  # real items in the vocabulary
    n_features: int  # aggregate features per customer
    n_event_types: int  # event types in sequences (row 0 = padding)
    max_len: int = 50  # longest input sequence
    d_model: int = 64  # encoder width
    n_heads: int = 2  # attention heads
    n_layers: int = 2  # encoder blocks
    dropout: float = 0.2  # dropout in encoder and head
    hidden: int = 64  # width of the classification head
    n_channels: int = 0  # > 0: channel embedding on each event
    n_gap_buckets: int = 0  # > 0: time-gap embedding on each event
    n_categories: int = 0  # > 0: the item's category embedding
    item_identity: bool = True  # False: one shared embedding for every item (see SASRecConfig)
    # > 0: the head also gets this many learned, age-weighted counts of the newest item's earlier
    # occurrences in the input (I2: was the item just carted looked at before, and how recently)
    revisit_features: int = 0
    # > 0: the last activity_weeks × activity_measures features are a weekly activity calendar (week 0 the
    # newest, week-major; data_prep.schema.ACTIVITY_FEATURES), read by a GRU of width activity_hidden
    activity_weeks: int = 0
    activity_measures: int = 0
    activity_hidden: int = 32

    def __post_init__(self) -> None:
        if (self.activity_weeks > 0) != (self.activity_measures > 0):
            raise ValueError("activity_weeks and activity_measures are both 0 (no calendar) or both > 0")
        if self.activity_weeks * self.activity_measures > self.n_features:
            raise ValueError(
                f"an activity calendar of {self.activity_weeks} × {self.activity_measures} does not fit in "
                f"{self.n_features} features"
            )

    @property
    def n_activity(self) -> int:
        """Features that are calendar cells (the last ones of the ``features`` input)."""
        return self.activity_weeks * self.activity_measures

    @property
    def n_flat(self) -> int:
        """Features the head takes as they are (the aggregates; all of them without a calendar)."""
        return self.n_features - self.n_activity

    def encoder_config(self) -> SASRecConfig:
        return SASRecConfig(
            n_items=self.n_items,
            max_len=self.max_len,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_layers=self.n_layers,
            dropout=self.dropout,
            n_event_types=self.n_event_types,
            n_channels=self.n_channels,
            n_gap_buckets=self.n_gap_buckets,
            n_categories=self.n_categories,
            item_identity=self.item_identity,
        )


NET = "net"  # the sequence network among a stack's components


@dataclass(frozen=True)
class Stack:
    """What an intent graph outputs: σ(bias + Σ weights[k] · logit(p_k)) over its components' probabilities —
    ``net`` (the sequence network) and/or scikit-learn models on the same features (``logistic_regression``,
    ``gradient_boosting``), composed into one graph at export. The default, the network alone, is
    σ(logit(p_net)) = p_net."""

    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    components: tuple[str, ...] = (NET,)
    weights: tuple[float, ...] = (1.0,)
    bias: float = 0.0

    def __post_init__(self) -> None:
        if not self.components or len(self.components) != len(self.weights):
            raise ValueError("a stack needs one weight per component, and at least one component")
        if len(set(self.components)) != len(self.components):
            raise ValueError(f"a stack lists a component twice: {self.components}")

    @classmethod
    def single(cls, name: str) -> Stack:
        return cls((name,), (1.0,), 0.0)

    @property
    def is_net_only(self) -> bool:
        return self == Stack()

    def to_dict(self) -> dict[str, Any]:
        return {"components": list(self.components), "weights": list(self.weights), "bias": self.bias}


NetConfig = TypeVar("NetConfig", SASRecConfig, IntentConfig)


def net_config(kind: type[NetConfig], hyper: object, **sizes: int) -> NetConfig:
    """``kind`` built from the run config's model section ``hyper`` (every field of the same name) and the
    sizes only the data knows (``n_items``, ``n_features``, side-table sizes), which win over ``hyper``."""
    names = {f.name for f in fields(kind)}
    given: dict[str, Any] = {n: getattr(hyper, n) for n in names if hasattr(hyper, n)}
    return kind(**(given | sizes))


@dataclass(frozen=True, kw_only=True)
class _Sequences:
    """How a model's input events are encoded (shared by both tasks)."""

    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    spec_version: str = SPEC_VERSION
    type_names: tuple[str, ...]  # event types: ctx column 0 = 1 + position here (0 = padding / unknown)
    channel_names: tuple[str, ...]  # channels: ctx column 1 = 1 + position here
    side_features: tuple[SideFeature, ...]  # side information the network adds to each event
    category_names: tuple[str, ...]  # category index i + 1 = category_names[i] (0 = none)


@dataclass(frozen=True, kw_only=True)
class RecommenderSpec(_Sequences):
    """A trained recommender (``model.json`` of its run)."""

    task: Literal["recommender"] = "recommender"
    model_config: SASRecConfig
    k: int  # the cutoff it was evaluated at
    exclude_seen: bool  # the seen filter it was evaluated with: the scorer's and the API's default


@dataclass(frozen=True, kw_only=True)
class IntentSpec(_Sequences):
    """A trained purchase-intent, session or churn classifier (``model.json`` of its run)."""

    task: Literal["intent"] = "intent"
    model_config: IntentConfig
    target: Target
    feature_names: tuple[str, ...]  # aggregate columns, in the order of the graph's ``features`` input
    calibration: Calibration  # applied to the graph's probability (fitted on validation)
    stack: Stack = Stack()  # the shipped candidate (training.stacking): the network alone by default


@dataclass(frozen=True, kw_only=True)
class ServedRecommender(RecommenderSpec):
    """A recommender as exported (``recommender/config.json``): the run's spec and what its graph does."""

    inputs: tuple[str, ...] = RECOMMENDER_INPUTS
    outputs: tuple[str, ...] = RECOMMENDER_OUTPUTS
    max_k: int  # the graph's top-k: requests may ask for 1..max_k (≤ catalogue size)
    masked_below: float  # a score under this is a removed item (seen, blocked, padding)
    run_config: dict[str, Any]  # the run's resolved config, as saved with it
    quantization: dict[str, Any] | None = None  # int8 graph: how and at what cost (``o2o export --int8``)

    def __post_init__(self) -> None:
        _check_graph(self.inputs, self.outputs, RECOMMENDER_INPUTS, RECOMMENDER_OUTPUTS)
        if not 1 <= self.max_k <= max(1, self.model_config.n_items):
            raise ValueError(f"max_k={self.max_k} is outside 1..{self.model_config.n_items} (the catalogue)")


@dataclass(frozen=True, kw_only=True)
class ServedIntent(IntentSpec):
    """A classifier as exported (``intent/config.json``, ``churn/config.json``)."""

    inputs: tuple[str, ...] = INTENT_INPUTS
    outputs: tuple[str, ...] = INTENT_OUTPUTS
    run_config: dict[str, Any]

    def __post_init__(self) -> None:
        _check_graph(self.inputs, self.outputs, INTENT_INPUTS, INTENT_OUTPUTS)
        if len(self.feature_names) != self.model_config.n_features:
            raise ValueError(
                f"{len(self.feature_names)} feature_names for a network of {self.model_config.n_features}"
            )


def _check_graph(
    inputs: tuple[str, ...], outputs: tuple[str, ...], want_in: tuple[str, ...], want_out: tuple[str, ...]
) -> None:
    if inputs != want_in or outputs != want_out:
        raise ValueError(
            f"graph {list(inputs)} → {list(outputs)}, expected {list(want_in)} → {list(want_out)}"
        )


@dataclass(frozen=True, kw_only=True)
class BundleModel:
    """One model's entry in ``bundle.json``."""

    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    role: Role
    run_id: str  # the run folder's name
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    parity: dict[str, float]  # ONNX Runtime vs torch: max_abs_diff, n_shapes, atol
    quantization: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class BundleSpec:
    """``bundle.json``: what the bundle holds and what it was built from."""

    __pydantic_config__: ClassVar[ConfigDict] = _STRICT

    spec_version: str = SPEC_VERSION
    version: str  # the bundle version (folder name, model-store tag version)
    created_at: str  # ISO 8601, UTC
    schema_version: str  # data schema (data_prep.schema.SCHEMA_VERSION) of the layers it was trained on
    models: dict[Role, BundleModel]
    data_manifest: dict[str, Any]  # prep's 04_features outputs (file → sha256, rows) at training time

    def __post_init__(self) -> None:
        wrong = [f"{key} (entry says {m.role})" for key, m in self.models.items() if m.role != key]
        if wrong:
            raise ValueError(f"models: role does not match its key: {wrong}")


RunSpec = RecommenderSpec | IntentSpec
ServedSpec = ServedRecommender | ServedIntent
_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}
_RUN = Annotated[RecommenderSpec | IntentSpec, Field(discriminator="task")]
_SERVED = Annotated[ServedRecommender | ServedIntent, Field(discriminator="task")]


def _adapter(kind: Any) -> TypeAdapter[Any]:
    if kind not in _ADAPTERS:
        _ADAPTERS[kind] = TypeAdapter(kind)
    return _ADAPTERS[kind]


def check_version(doc: object) -> None:
    """SpecError unless ``doc`` is a JSON object whose ``spec_version`` has this code's major version."""
    if not isinstance(doc, dict):
        raise SpecError(f"expected a JSON object, got {type(doc).__name__}")
    version = doc.get("spec_version")
    if version is None:
        raise SpecError(
            f"no spec_version: written before the typed contract (this code reads {SPEC_VERSION})"
        )
    if str(version).split(".")[0] != SPEC_VERSION.split(".")[0]:
        raise SpecError(f"spec_version {version}, this code reads major version {SPEC_VERSION.split('.')[0]}")


def _parse(kind: Any, doc: object) -> Any:
    check_version(doc)
    try:
        return _adapter(kind).validate_python(doc)
    except ValidationError as e:
        problems = "; ".join(_problem(err) for err in e.errors())
        raise SpecError(problems) from None


def _problem(err: Any) -> str:
    """One validation error as ``field.path: what is wrong`` (the union's tag left out of the path)."""
    loc = [str(p) for p in err["loc"]]
    if loc and loc[0] in ("recommender", "intent"):
        loc = loc[1:]
    unknown = err["type"] in ("unexpected_keyword_argument", "extra_forbidden")
    return f"{'.'.join(loc) or '(document)'}: {'unknown field' if unknown else err['msg']}"


def parse_run(doc: object) -> RunSpec:
    """A run's ``model.json`` (SpecError when it is not a valid spec of this major version)."""
    spec: RunSpec = _parse(_RUN, doc)
    return spec


def parse_served(doc: object) -> ServedSpec:
    """A bundle model's ``config.json`` (SpecError when it is not a valid spec of this major version)."""
    spec: ServedSpec = _parse(_SERVED, doc)
    return spec


def parse_bundle(doc: object) -> BundleSpec:
    """A bundle's ``bundle.json`` (SpecError when it is not a valid spec of this major version)."""
    spec: BundleSpec = _parse(BundleSpec, doc)
    return spec


def to_json(spec: RunSpec | ServedSpec | BundleSpec) -> dict[str, Any]:
    """The spec as the JSON object :func:`parse_run` / :func:`parse_served` / :func:`parse_bundle` read."""
    out: dict[str, Any] = _adapter(type(spec)).dump_python(spec, mode="json")
    return out


def role_of(spec: RunSpec) -> Role:
    """The folder a model takes in a bundle: recommender, intent (purchase) or churn. ValueError for a
    classifier that bundles do not serve (session intent)."""
    if isinstance(spec, RecommenderSpec):
        return "recommender"
    if spec.target == "purchase":
        return "intent"
    if spec.target == "churn":
        return "churn"
    raise ValueError(
        f"a {spec.target!r} intent model: bundles serve customer-level models (recommender, purchase intent, "
        "churn) only so far"
    )

"""BentoML 1.4 HTTP service on ONNX Runtime: ``/recommend``, ``/intent``, ``/events`` (apps report what a
customer did since the snapshot), ``/similar-items``; plus BentoML's /livez, /readyz and /metrics.

Configured from the environment (set by ``o2o serve``):
``O2O_BUNDLE`` — exported bundle folder; ``O2O_SNAPSHOT`` — ``04_features/snapshot.parquet`` holding each
known customer's history and aggregates; ``O2O_ORT_THREADS`` — ONNX Runtime intra-op threads (unset: the
cores this process may use divided by BentoML's worker count, at least 1);
``O2O_HISTORY_URL`` — the customer-history store (:func:`serving.history.open_history_store`): unset or
``memory`` keeps it in this process (appended events are lost on exit and unseen by other workers),
``sqlite:///path.db`` (``sqlite:////abs/path.db``) survives restarts, ``redis://127.0.0.1:6379/0`` is shared
by replicas; ``O2O_API_KEYS`` — comma-separated API keys required in the ``X-API-Key`` header of every route
but the probes and /metrics (:mod:`serving.auth`; unset: no check, with a warning at startup);
``O2O_TRACING=1`` — trace the API routes too (:func:`tracing_config`);
``O2O_CUSTOMERS`` — prep's ``03_customers`` folder, whose identity map and shared identifiers start the identity
store (:mod:`serving.identity`); ``O2O_IDENTITY_URL`` — that store: unset or ``memory`` in this process,
``redis://...`` shared by replicas; ``O2O_PII_KEY`` — prep's pseudonymisation key, which identifier requests
need (``/identify``, and ``identifier`` / ``identifiers`` in place of ``customer_id``).

Every endpoint takes one JSON object whose unknown fields are refused; its values are read strictly (a JSON
integer where the schema says integer, not ``"5"`` or ``5.0``; ``true``/``false``, not ``1`` or ``"yes"``), so
that the OpenAPI document at ``/docs.json`` (:func:`openapi_document`) says exactly what is accepted. A failed
request gets one JSON shape,
``{"error": <code>, "message": <text>, "fields": [<dotted paths>]}`` (:mod:`serving.logs`): pydantic
validation (types, ranges, lengths, unknown fields, exactly one of ``customer_id``/``items``) and invalid JSON
answer 400, a rule checked against the bundle 400, an unknown customer or item 404, a missing or wrong API key
401, a body over 1 MiB 413, a content type other than JSON 415. Logs name the endpoint, status, code and
fields of a failed request, never its values; client errors log no traceback.
"""

from __future__ import annotations

import copy
import os
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast, get_args

import anyio.to_thread
import bentoml
from bentoml.models import BentoModel
from prometheus_client import Histogram
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import DEFAULT_REF_TEMPLATE, GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import core_schema
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from data_prep import pii
from data_prep import schema as S
from serving.artifact import THREADS_ENV, Bundle, OnnxModel, is_store_tag, load_bundle
from serving.auth import API_KEY_HEADER, EXEMPT_PATHS, ApiKeyMiddleware, api_keys_from_env
from serving.dispatcher import Batcher
from serving.history import (
    MAX_EPOCH_SECONDS,
    MAX_HISTORY_EVENTS,
    CustomerHistory,
    HistoryStore,
    NewEvent,
    empty_history,
    open_history_store,
)
from serving.http import install_limits
from serving.identity import IdentityStore, identifier_node, open_identity_store
from serving.lifecycle import report_startup_failure, watch_for_failed_workers
from serving.logs import (
    ERROR_BODY_SCHEMA,
    ApiError,
    ErrorResponseMiddleware,
    install_logging,
    log_event,
)
from serving.metrics import RequestMetricsMiddleware, use_instance_folder
from serving.scoring import (
    ItemFilter,
    check_k,
    feature_matrix,
    intent_probability,
    recommend,
    similar_items,
)

SERVICE_NAME = "O2OService"
BUNDLE_ENV = "O2O_BUNDLE"
SNAPSHOT_ENV = "O2O_SNAPSHOT"
HISTORY_URL_ENV = "O2O_HISTORY_URL"
CUSTOMERS_ENV = (
    "O2O_CUSTOMERS"  # prep's 03_customers folder: the identity map identifier requests resolve with
)
IDENTITY_URL_ENV = "O2O_IDENTITY_URL"  # the online identity store: unset / memory, or redis://...
TRACING_ENV = "O2O_TRACING"
# adaptive batching of /recommend and /intent (serving.dispatcher): at most this many requests per batch, and
# a request still queued after this long is refused with 503 (an overloaded server sheds load)
BATCH_MAX_SIZE = 64
BATCH_MAX_LATENCY_MS = 2_000
BATCH_SIZE = Histogram(  # on /metrics: how many requests each batch served, per endpoint
    "o2o_batch_size",
    "requests scored together in one batch (adaptive batching of /recommend and /intent)",
    ["endpoint"],
    buckets=(1, 2, 4, 8, 16, 32, BATCH_MAX_SIZE),
)
API_ROUTES = (
    "/recommend",
    "/events",
    "/similar-items",
    "/intent",
    "/identify",
)  # checked against the service below
IDENTIFIER_ROUTES = (
    "/recommend",
    "/events",
    "/intent",
    "/identify",
)  # take raw identifiers (need O2O_PII_KEY)
# "not blank": a character that is white space neither to the JSON Schema (ECMA-262) regex the published
# schema uses nor to pydantic's (Rust) regex, which also counts U+0085 as white space
NOT_BLANK = r"[^\s\u0085]"
MAX_SESSION_ITEMS = 200
MAX_EVENTS_PER_CALL = 100
MAX_IDENTIFIERS_PER_CALL = 8
IdentifierType = Literal["device", "account", "email", "phone", "card"]
if get_args(IdentifierType) != S.IDENTIFIER_TYPES:
    raise RuntimeError("serving.service's IdentifierType differs from data_prep.schema's IDENTIFIER_TYPES")

CustomerId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-:.]+$")]
ItemId = Annotated[str, Field(min_length=1, max_length=64)]
Name = Annotated[str, Field(min_length=1, max_length=64)]
MAX_FILTER_ENTRIES = 1000
# spelled out for the type checker and the schema's enums; checked against data_prep.schema below
ItemEventType = Literal["view", "add_to_cart", "remove_from_cart", "order", "purchase"]
Channel = Literal["web", "app", "miniprogram", "store"]
if get_args(ItemEventType) != S.ITEM_EVENT_TYPES or get_args(Channel) != S.CHANNELS:
    raise RuntimeError("serving.service's ItemEventType/Channel differ from data_prep.schema's")
# BentoML gives no hook between loading this module in a worker and starting uvicorn, so the connection limits,
# this server's own Prometheus folder and the exit status of a server whose worker cannot load are set here
install_limits()
use_instance_folder()
watch_for_failed_workers()
OPENAPI_PATH = "/docs.json"  # where BentoML serves the OpenAPI document (its UI at / reads it)
API_KEY_SCHEME = "ApiKey"


class OpenApi30JsonSchema(GenerateJsonSchema):
    """JSON Schema in OpenAPI 3.0's dialect, which has no ``null`` type: an optional value is the value's
    schema plus ``nullable: true`` instead of ``anyOf: [<schema>, {"type": "null"}]`` (BentoML, inlining a
    body's schema into the OpenAPI document, keeps only the first ``anyOf`` branch, which would publish such
    a field as never null)."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        if "$ref" in inner:  # 3.0 ignores a $ref's siblings
            return {"allOf": [inner], "nullable": True}
        return {**inner, "nullable": True}


class ApiModel(BaseModel):
    """A request or response body: its JSON schema is in OpenAPI 3.0's dialect (:class:`OpenApi30JsonSchema`)."""

    @classmethod
    def model_json_schema(
        cls,
        by_alias: bool | None = None,
        ref_template: str = DEFAULT_REF_TEMPLATE,
        schema_generator: type[GenerateJsonSchema] = OpenApi30JsonSchema,
        mode: JsonSchemaMode = "validation",
        *,
        union_format: Literal["any_of", "primitive_type_array"] = "any_of",
    ) -> dict[str, Any]:
        return super().model_json_schema(
            by_alias, ref_template, schema_generator, mode, union_format=union_format
        )


# request bodies: unknown fields refused, JSON types taken as they are (no "5" for 5, no 1 for true)
REQUEST_CONFIG = ConfigDict(extra="forbid", strict=True)


class Identifier(ApiModel):
    """A raw identifier the app holds. The service normalises and keyed-hashes it as prep does (phones to
    E.164, emails trimmed and lower-cased) and never stores or logs the value."""

    model_config = REQUEST_CONFIG

    type: IdentifierType
    value: str = Field(min_length=1, max_length=256, pattern=NOT_BLANK, description="not blank")


def _exactly_one(request: BaseModel, names: Sequence[str], what: str) -> None:
    given = [n for n in names if getattr(request, n) is not None]
    if len(given) != 1:
        quoted = ", ".join(f"'{n}'" for n in names[:-1]) + f" or '{names[-1]}'"
        raise ValueError(f"give exactly one of {quoted} ({what})")


def _one_of(**types: str) -> dict[str, Any]:
    """JSON-schema ``oneOf``: exactly one of the fields is present and of its JSON type (so not null), the
    schema's form of :func:`_exactly_one`."""
    return {"oneOf": [{"required": [n], "properties": {n: {"type": t}}} for n, t in types.items()]}


class RecommendRequest(ApiModel):
    model_config = ConfigDict(
        **REQUEST_CONFIG, json_schema_extra=_one_of(customer_id="string", identifier="object", items="array")
    )

    customer_id: CustomerId | None = Field(
        None, description="pseudonymous customer id; give this, 'identifier' or 'items'"
    )
    identifier: Identifier | None = Field(
        None, description="any identifier the app holds; an unknown one is an anonymous visitor (cold start)"
    )
    items: Annotated[list[ItemId], Field(min_length=1, max_length=MAX_SESSION_ITEMS)] | None = Field(
        None, description="an anonymous session's item ids, oldest first; give this or 'customer_id'"
    )
    k: Annotated[int, Field(ge=1, le=S.MAX_K)] = Field(10, description="at most the bundle's max_k")
    exclude_seen: bool | None = Field(None, description="default: the setting the model was evaluated with")
    exclude_items: Annotated[list[ItemId], Field(max_length=MAX_FILTER_ENTRIES)] | None = None
    exclude_categories: Annotated[list[Name], Field(max_length=MAX_FILTER_ENTRIES)] | None = None
    store_id: Name | None = Field(
        None, description="only items this store sold in the last 90 days of the data"
    )
    segment: Name | None = Field(None, description="RFM segment for the cold-start fallback")

    @model_validator(mode="after")
    def _one_history(self) -> RecommendRequest:
        _exactly_one(
            self,
            ("customer_id", "identifier", "items"),
            "a known customer, an identifier, or an anonymous session",
        )
        return self


class IntentRequest(ApiModel):
    model_config = ConfigDict(
        **REQUEST_CONFIG, json_schema_extra=_one_of(customer_id="string", identifier="object")
    )

    customer_id: CustomerId | None = Field(None, description="pseudonymous customer id, as in /recommend")
    identifier: Identifier | None = Field(None, description="or any identifier the app holds")

    @model_validator(mode="after")
    def _one_customer(self) -> IntentRequest:
        _exactly_one(self, ("customer_id", "identifier"), "who")
        return self


class IdentifyRequest(ApiModel):
    model_config = REQUEST_CONFIG

    identifier: Identifier


class IdentifyResponse(ApiModel):
    customer_id: str | None = Field(description="the customer the identifier belongs to (null: not known)")
    found: bool


class ScoredItem(ApiModel):
    item_id: str
    score: float


class RecommendResponse(ApiModel):
    customer_id: str | None
    items: list[ScoredItem]
    source: str = Field(
        description="'history' (model on the history); cold start: 'segment_popular' (popular in the "
        "customer's segment) or 'popular' (overall)"
    )
    bundle_version: str


class EventIn(ApiModel):
    model_config = REQUEST_CONFIG

    item_id: ItemId = Field(pattern=NOT_BLANK, description="not blank")
    event_type: ItemEventType
    channel: Channel
    ts: int = Field(
        ge=0,
        le=MAX_EPOCH_SECONDS - 1,  # not lt: 3.0's exclusiveMaximum is a flag, pydantic writes a number
        description="when it happened, whole epoch seconds (UTC; milliseconds are out of range); "
        "not true, 1.0 or '1'",
    )


class EventsRequest(ApiModel):
    model_config = ConfigDict(
        **REQUEST_CONFIG, json_schema_extra=_one_of(customer_id="string", identifiers="array")
    )

    customer_id: CustomerId | None = Field(None, description="pseudonymous customer id, as in /recommend")
    identifiers: (
        Annotated[list[Identifier], Field(min_length=1, max_length=MAX_IDENTIFIERS_PER_CALL)] | None
    ) = Field(
        None,
        description="or the identifiers the app holds for whoever did it; several together are linked at "
        "once (a device with the account that logged in, a card with the phone given at the till)",
    )
    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_EVENTS_PER_CALL)]

    @model_validator(mode="after")
    def _one_customer(self) -> EventsRequest:
        _exactly_one(self, ("customer_id", "identifiers"), "who")
        return self


class EventsResponse(ApiModel):
    customer_id: str
    n_events: int = Field(
        description=f"events in the customer's stored history now (its newest {MAX_HISTORY_EVENTS} are kept)"
    )
    accepted: int = Field(description="events of this call stored (all of them: a call is all or nothing)")
    merged: list[str] = Field(
        [], description="customers this call's identifiers joined into customer_id (their events moved)"
    )


class SimilarItemsRequest(ApiModel):
    model_config = REQUEST_CONFIG

    item_id: ItemId
    k: Annotated[int, Field(ge=1, le=S.MAX_K)] = 10


class SimilarItemsResponse(ApiModel):
    item_id: str
    items: list[ScoredItem] = Field(description="nearest first; score = cosine similarity of item embeddings")
    bundle_version: str


class IntentResponse(ApiModel):
    customer_id: str
    probability: float = Field(
        description="calibrated probability of a purchase in any channel within the label horizon"
    )
    churn_risk: float | None = Field(
        None,
        description="probability of no purchase in the next 60 days (null: the bundle has no churn model)",
    )
    segment: str | None = Field(None, description="RFM segment as of the end of the data")
    bundle_version: str


def _env_path(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: start the service with `o2o serve`")
    return value


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under ``taskset``; else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def bentoml_workers(service_name: str = SERVICE_NAME) -> int:
    """Worker processes BentoML runs for the service: the decorator's ``workers`` merged with overrides
    (``BENTOML_CONFIG_OPTIONS``, a configuration file), read where BentoML's own scheduler reads it (an
    internal container: bentoml is pinned below 1.5). ``"cpu_count"`` counts as :func:`available_cores`."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    workers = BentoMLContainer.config.services[service_name].get().get("workers") or 1
    return available_cores() if workers == "cpu_count" else int(workers)


def ort_threads(environ: Mapping[str, str], n_cores: int, n_workers: int) -> tuple[int, str]:
    """ONNX Runtime intra-op threads per worker and where the figure came from: ``O2O_ORT_THREADS`` when set,
    else ``max(1, n_cores // n_workers)`` so that the workers together use each core once. Raises ValueError
    for a setting that is not a whole number ≥ 1."""
    raw = environ.get(THREADS_ENV, "").strip()
    if not raw:
        return max(1, n_cores // max(1, n_workers)), "cores/workers"
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{THREADS_ENV} must be a whole number >= 1, got {raw!r}")
    return threads, THREADS_ENV


def bundle_model() -> BentoModel | None:
    """The bundle as a BentoML model of the service when ``O2O_BUNDLE`` names a model-store tag (then
    ``bentoml build`` packs that model into the bento and the service resolves it from the bento's store);
    None for a bundle folder."""
    ref = os.environ.get(BUNDLE_ENV, "")
    return BentoModel(ref) if ref and is_store_tag(ref) else None


@dataclass(frozen=True)
class RecommendJob:
    """One /recommend request, ready to score: its history and everything that shapes its answer."""

    items: list[str]
    event_types: list[str]
    channels: list[str] | None  # with timestamps: both or neither (an anonymous session has neither)
    timestamps: list[int] | None
    k: int
    exclude_seen: bool | None
    rules: ItemFilter
    segment: str | None

    def group(self) -> tuple[object, ...]:
        """Jobs with equal keys are scored in one call (one k, one filter, side lists or none)."""
        return (self.k, self.exclude_seen, self.rules, self.channels is None or self.timestamps is None)


ScoredList = tuple[list[str], list[float], str]  # item ids, scores, source
J = TypeVar("J")
R = TypeVar("R")


def score_in_groups(
    jobs: Sequence[J],
    key: Callable[[J], Hashable],
    score: Callable[[list[J]], list[R]],
    refuse: Callable[[Exception], Exception],
) -> list[R | Exception]:
    """``score`` run once per group of ``jobs`` with equal ``key``, an answer per job, in the jobs' order.

    When a group fails, its jobs are scored again one at a time, so an error stays with the job that
    caused it (``refuse`` maps it to what that caller gets) and every other job of the batch is answered.
    """
    out: list[R | Exception | None] = [None] * len(jobs)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[key(job)].append(i)
    for members in groups.values():
        answers: list[R | Exception]
        try:
            answers = list(score([jobs[i] for i in members]))
        except Exception as e:  # handed to the request that caused it
            if len(members) > 1:
                answers = [score_in_groups([jobs[i]], key, score, refuse)[0] for i in members]
            else:
                answers = [refuse(e)]
        for i, answer in zip(members, answers, strict=True):
            out[i] = answer
    return cast("list[R | Exception]", out)


def _refuse_recommendation(e: Exception) -> Exception:
    """A rule the bundle refuses (unknown store or category) is the caller's 400; anything else stays a 500."""
    if isinstance(e, ValueError):
        return ApiError(HTTPStatus.BAD_REQUEST, "invalid_request", str(e))
    return e


def recommend_batch(model: OnnxModel, jobs: Sequence[RecommendJob]) -> list[ScoredList | Exception]:
    """Each job's top-k, scoring jobs that share k, filters and side information in one graph call; a job
    whose filters the bundle refuses (unknown store or category) gets its 400, the others their answers."""

    def score(batch: list[RecommendJob]) -> list[ScoredList]:
        first = batch[0]
        side: tuple[Any, Any] = (None, None)
        if first.channels is not None and first.timestamps is not None:
            side = ([j.channels for j in batch], [j.timestamps for j in batch])
        recs = recommend(
            model,
            [j.items for j in batch],
            [j.event_types for j in batch],
            first.k,
            first.exclude_seen,
            first.rules,
            [j.segment for j in batch],
            *side,
        )
        return list(zip(recs.item_ids, recs.scores, recs.source, strict=True))

    return score_in_groups(jobs, RecommendJob.group, score, _refuse_recommendation)


@dataclass(frozen=True)
class IntentJob:
    """One /intent request: the customer's history and raw aggregates."""

    items: list[str]
    event_types: list[str]
    channels: list[str] | None
    timestamps: list[int] | None
    features: Mapping[str, float]


def intent_batch(
    models: Mapping[str, OnnxModel], jobs: Sequence[IntentJob]
) -> list[dict[str, float] | Exception]:
    """Each job's calibrated probability under every model of ``models`` (``intent``, and ``churn`` when the
    bundle has it), the jobs with side lists scored in one call per model and those without in another; a
    job that fails (a stored history whose lists do not align) fails alone, as a 500."""

    def score(batch: list[IntentJob]) -> list[dict[str, float]]:
        side: tuple[Any, Any] = (None, None)
        if batch[0].channels is not None and batch[0].timestamps is not None:
            side = ([j.channels for j in batch], [j.timestamps for j in batch])
        out: list[dict[str, float]] = [{} for _ in batch]
        for name, model in models.items():
            # a name some job lacks is left out, so that feature_matrix names what is missing
            have = [n for n in model.config["feature_names"] if all(n in j.features for j in batch)]
            features = feature_matrix(model, {n: [j.features[n] for j in batch] for n in have})
            p = intent_probability(
                model, [j.items for j in batch], [j.event_types for j in batch], features, *side
            )
            for answer, value in zip(out, p.tolist(), strict=True):
                answer[name] = value
        return out

    def no_side(job: IntentJob) -> bool:
        return job.channels is None or job.timestamps is None

    return score_in_groups(jobs, no_side, score, lambda e: e)


def _overloaded() -> ApiError:
    return ApiError(
        HTTPStatus.SERVICE_UNAVAILABLE,
        "overloaded",
        f"the request left the batching queue unscored (the server is past its capacity: a request waits at "
        f"most {BATCH_MAX_LATENCY_MS} ms): retry later",
    )


def tracing_config(environ: Mapping[str, str]) -> dict[str, Any]:
    """BentoML's tracing settings for the service: the API routes untraced unless ``O2O_TRACING`` is 1.

    BentoML records an OpenTelemetry span for every request and for each of its response's send events even
    when no exporter is configured (they are then dropped): that halved /recommend's throughput on 2 cores
    (docs/benchmarks.md). With ``O2O_TRACING=1`` every route is traced, for a deployment whose BentoML
    configuration names an exporter (``tracing.exporter_type``).
    """
    if environ.get(TRACING_ENV, "").strip().lower() in ("1", "true", "yes"):
        return {}
    return {"excluded_urls": list(API_ROUTES)}


@bentoml.service(
    name=SERVICE_NAME,
    traffic={"timeout": 10},
    workers=1,
    tracing=tracing_config(os.environ),
    # BentoML's request metrics and access log name the raw path: serving.metrics counts and logs instead
    metrics={"enabled": False},
    logging={"access": {"enabled": False}},
)
class O2OService:
    bundle_model = bundle_model()

    def __init__(self) -> None:
        install_logging()
        try:
            self._load()
        except Exception as e:  # in a worker: one line, and the whole server stops (serving.lifecycle)
            report_startup_failure(e)
            raise

    def _load(self) -> None:
        n_cores, n_workers = available_cores(), bentoml_workers()
        threads, source = ort_threads(os.environ, n_cores, n_workers)
        # a tag: resolved through BentoML's model store, then verified as any tag is
        tagged = type(self).bundle_model is not None
        ref = str(cast(Any, self.bundle_model).tag) if tagged else _env_path(BUNDLE_ENV)
        self.bundle: Bundle = load_bundle(ref, threads)
        url = os.environ.get(HISTORY_URL_ENV) or None
        self.history: HistoryStore = open_history_store(url, Path(_env_path(SNAPSHOT_ENV)))
        customers = os.environ.get(CUSTOMERS_ENV)
        folder = Path(customers) if customers else None
        self.identities: IdentityStore = open_identity_store(
            os.environ.get(IDENTITY_URL_ENV) or None,
            None if folder is None else folder / S.IDENTITY_MAP_FILE,
            None if folder is None else folder / S.SHARED_IDENTIFIERS_FILE,
        )
        self._pii_key = pii.existing_key()
        self._batchers: dict[str, Batcher[Any, Any]] = {}  # see _batched
        log_event(
            "service_loaded",
            bundle_version=self.bundle.version,
            ort_intra_op_threads=threads,
            threads_from=source,
            cores=n_cores,
            workers=n_workers,
        )

    @bentoml.on_shutdown
    def close_history(self) -> None:
        self.history.close()
        self.identities.close()

    def _node(self, identifier: Identifier, field: str) -> str:
        """The identifier's node (normalised, keyed-hashed); 400 naming ``field`` when the value cannot be
        one of its type, 503 when the service has no pseudonymisation key."""
        if self._pii_key is None:
            raise ApiError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "no_identity_key",
                f"identifier requests need prep's pseudonymisation key: start the service with {pii.KEY_ENV}",
            )
        node = identifier_node(identifier.type, identifier.value, self._pii_key)
        if node is None:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "invalid_identifier",
                f"the value is not a usable {identifier.type} (after normalisation nothing is left)",
                (f"{field}.value",),
            )
        return node

    async def _customer_of(self, identifier: Identifier, field: str) -> str | None:
        node = self._node(identifier, field)
        return await anyio.to_thread.run_sync(self.identities.customer_of, node)

    @bentoml.api(route="/identify")
    async def identify(self, request: IdentifyRequest, /) -> IdentifyResponse:
        """The customer an identifier belongs to (``found`` false: nobody yet, an anonymous visitor). The
        value is normalised and keyed-hashed as prep does; it is never stored or logged."""
        customer_id = await self._customer_of(request.identifier, "identifier")
        return IdentifyResponse(customer_id=customer_id, found=customer_id is not None)

    @bentoml.api(route="/recommend")
    async def recommend(self, request: RecommendRequest, /) -> RecommendResponse:
        """Top-k items for a known customer (``customer_id``) or an anonymous visitor (``items``, oldest first).

        ``exclude_seen`` defaults to the setting the model was evaluated with (see the model card).
        ``exclude_items``, ``exclude_categories`` and ``store_id`` (only items that store sold recently) are
        applied before the top-k. With no usable history the answer is the most popular items of the
        customer's RFM segment (``segment`` for an anonymous visitor), then overall. Concurrent requests
        are scored together (adaptive batching): the answer is the one a request alone would get.
        """
        model = self.bundle.recommender
        if model is None:
            raise _not_in_bundle("recommender model")
        rules = ItemFilter(
            tuple(request.exclude_items or ()), tuple(request.exclude_categories or ()), request.store_id
        )
        if request.items is not None:  # an anonymous session carries no channel or time
            job = RecommendJob(
                request.items,
                [S.EV_VIEW] * len(request.items),
                None,
                None,
                request.k,
                request.exclude_seen,
                rules,
                request.segment,
            )
        else:
            customer_id = request.customer_id
            if request.identifier is not None:  # an unknown identifier: an anonymous visitor, cold start
                customer_id = await self._customer_of(request.identifier, "identifier")
                found = (await self._history(customer_id) if customer_id else None) or empty_history()
            else:
                stored = await self._history(cast(str, customer_id))
                if stored is None:
                    raise _unknown_customer(cast(str, customer_id))
                found = stored
            job = RecommendJob(
                found.items,
                found.event_types,
                found.channels,
                found.timestamps,
                request.k,
                request.exclude_seen,
                rules,
                request.segment or found.segment,
            )
        _check_k(model, request.k)  # after the lookup, as before batching: an unknown customer is 404 first
        ids, scores, source = cast(
            ScoredList, await self._batched("/recommend", self._score_recommendations, job)
        )
        return RecommendResponse(
            customer_id=customer_id if request.items is None else None,
            items=[ScoredItem(item_id=i, score=s) for i, s in zip(ids, scores, strict=True)],
            source=source,
            bundle_version=self.bundle.version,
        )

    async def _history(self, customer_id: str) -> CustomerHistory | None:
        """The stored history, read off the event loop when the store's reads block."""
        if not self.history.reads_block:
            return self.history.get(customer_id)
        return await anyio.to_thread.run_sync(self.history.get, customer_id)

    def _score_recommendations(self, jobs: Sequence[RecommendJob]) -> list[ScoredList | Exception]:
        return recommend_batch(cast(OnnxModel, self.bundle.recommender), jobs)

    def _score_intents(self, jobs: Sequence[IntentJob]) -> list[dict[str, float] | Exception]:
        models = {"intent": cast(OnnxModel, self.bundle.intent)}
        if self.bundle.churn is not None:
            models["churn"] = self.bundle.churn
        return intent_batch(models, jobs)

    async def _batched(
        self, endpoint: str, score: Callable[[Sequence[Any]], list[Any]], job: object
    ) -> object:
        """``job``'s answer through adaptive batching (:class:`serving.dispatcher.Batcher`, one per endpoint,
        made on first use with that endpoint's ``score``): concurrent jobs are scored together in a worker
        thread. An answer that is an exception (a job's own error) is raised here, for that request only."""
        if endpoint not in self._batchers:
            self._batchers[endpoint] = Batcher(
                score,
                max_batch_size=BATCH_MAX_SIZE,
                max_latency_s=BATCH_MAX_LATENCY_MS / 1000,
                overloaded=_overloaded,
                observe=BATCH_SIZE.labels(endpoint=endpoint).observe,
            )
        return await self._batchers[endpoint](job)

    @bentoml.api(route="/events")
    def events(self, request: EventsRequest, /) -> EventsResponse:
        """Append what a customer did after the snapshot (at most 100 events a call, any time order); the next
        /recommend and /intent for that customer read them. An unknown ``customer_id`` is created (a new
        customer: no aggregates, no segment). Aggregates and the RFM segment stay as of the snapshot."""
        new = [_new_event(i, e) for i, e in enumerate(request.events)]
        customer_id = request.customer_id
        merged: tuple[str, ...] = ()
        if request.identifiers is not None:
            nodes = [self._node(x, f"identifiers.{i}") for i, x in enumerate(request.identifiers)]
            link = self.identities.link(nodes)
            if link.customer_id is None:
                raise ApiError(
                    HTTPStatus.BAD_REQUEST,
                    "shared_identifiers",
                    "every identifier given is shared by several people (a store kiosk, a family phone), so "
                    "the events belong to nobody: send the account or the loyalty card with them",
                    ("identifiers",),
                )
            customer_id, merged = link.customer_id, link.merged
            for other in merged:  # what the merged customers did is now the survivor's
                self._move_history(other, customer_id)
        assert customer_id is not None
        try:
            history = self.history.append(customer_id, new)
        except ValueError as e:
            raise ApiError(HTTPStatus.BAD_REQUEST, "invalid_request", str(e)) from None
        return EventsResponse(
            customer_id=customer_id, n_events=len(history.items), accepted=len(new), merged=list(merged)
        )

    def _move_history(self, source: str, target: str) -> None:
        """Append ``source``'s stored events (with their channel and time) to ``target`` and drop it. A row of
        an old snapshot without channels and times stays where it is (the next prep merges it)."""
        found = self.history.get(source)
        if found is None or found.channels is None or found.timestamps is None:
            return
        if found.items:  # one append: the target keeps its newest MAX_HISTORY_EVENTS, as any append does
            moved = zip(found.items, found.event_types, found.channels, found.timestamps, strict=True)
            self.history.append(target, [NewEvent(i, t, c, ts) for i, t, c, ts in moved])
        self.history.delete([source])

    @bentoml.api(route="/similar-items")
    def similar_items(self, request: SimilarItemsRequest, /) -> SimilarItemsResponse:
        """The ``k`` items nearest to ``item_id`` by cosine similarity of the recommender's item embeddings,
        nearest first; never the item itself. ``k`` is bounded like /recommend's."""
        model = self.bundle.recommender
        if model is None or model.item_embeddings is None:
            raise _not_in_bundle("recommender item embeddings (re-export it to serve similar items)")
        _check_k(model, request.k)
        try:
            ids, scores = similar_items(model, request.item_id, request.k)
        except LookupError as e:
            raise ApiError(HTTPStatus.NOT_FOUND, "unknown_item", str(e), ("item_id",)) from None
        return SimilarItemsResponse(
            item_id=request.item_id,
            items=[ScoredItem(item_id=i, score=s) for i, s in zip(ids, scores, strict=True)],
            bundle_version=self.bundle.version,
        )

    @bentoml.api(route="/intent")
    async def intent(self, request: IntentRequest, /) -> IntentResponse:
        """Calibrated probability that a known customer purchases (any channel) within the label horizon, their
        churn risk (no purchase in 60 days; when the bundle has a churn model) and RFM segment. Concurrent
        requests are scored together (adaptive batching), each getting what it would get alone."""
        if self.bundle.intent is None:
            raise _not_in_bundle("intent model")
        customer_id = request.customer_id
        if request.identifier is not None:
            customer_id = await self._customer_of(request.identifier, "identifier")
            if customer_id is None:
                raise ApiError(
                    HTTPStatus.NOT_FOUND,
                    "unknown_identifier",
                    "no customer has this identifier yet (an anonymous visitor): /recommend serves it cold",
                    ("identifier",),
                )
        found = await self._history(cast(str, customer_id))
        if found is None:
            raise _unknown_customer(cast(str, customer_id))
        job = IntentJob(found.items, found.event_types, found.channels, found.timestamps, found.features)
        probability = cast(dict[str, float], await self._batched("/intent", self._score_intents, job))
        return IntentResponse(
            customer_id=cast(str, customer_id),
            probability=probability["intent"],
            churn_risk=probability.get("churn"),
            segment=found.segment,
            bundle_version=self.bundle.version,
        )


# mypy ignores what a class decorator returns; at runtime O2OService is the bentoml.Service it built
_service = cast("bentoml.Service[O2OService]", O2OService)
if sorted(api.route for api in _service.apis.values()) != sorted(API_ROUTES):
    raise RuntimeError("serving.service's API_ROUTES differ from the service's routes")
# the metrics go first (outermost of ours) so that refused requests are counted too; then the error middleware,
# so that it also rewrites and logs the API-key 401s
_service.add_asgi_middleware(RequestMetricsMiddleware, routes=API_ROUTES)
_service.add_asgi_middleware(
    ErrorResponseMiddleware,
    api_paths=[api.route for api in _service.apis.values()],
    exempt_paths=EXEMPT_PATHS,
)
_service.add_asgi_middleware(ApiKeyMiddleware)


# what an endpoint may answer besides 200; 401 only when API keys are required
ERROR_RESPONSES = {
    400: "invalid JSON, a body the schema refuses, or a rule checked against the bundle or the store",
    401: f"missing or wrong {API_KEY_HEADER} header",
    404: "unknown customer or item, or a model the bundle lacks",
    413: "a body over 1 MiB",
    415: "a content type other than application/json",
    503: "overloaded: a /recommend or /intent request queued longer than the batching limit; retry",
    500: "a bug: the message is generic, the server log has the traceback",
}


BATCHED_ROUTES = ("/recommend", "/intent")  # adaptive batching: may answer 503 when overloaded


def error_statuses(route: str, keys_required: bool) -> list[int]:
    """The statuses besides 200 that ``route`` may answer: 401 only with API keys; 503 when batched (an
    overloaded queue) or when it takes identifiers (a service started without prep's key)."""
    return [
        status
        for status in ERROR_RESPONSES
        if (status != HTTPStatus.UNAUTHORIZED or keys_required)
        and (
            status != HTTPStatus.SERVICE_UNAVAILABLE or route in BATCHED_ROUTES or route in IDENTIFIER_ROUTES
        )
    ]


def openapi_document(
    spec: Mapping[str, Any], api_routes: Collection[str], keys_required: bool
) -> dict[str, Any]:
    """BentoML's OpenAPI document (``Service.openapi_spec.asdict()``) made true to this service: for each
    endpoint in ``api_routes``, every error status it answers, each with the service's error body
    (:data:`serving.logs.ERROR_BODY_SCHEMA`) instead of BentoML's ``{"error", "detail": string}``; its body
    marked required; and, when ``keys_required``, the ``X-API-Key`` header as its security scheme."""
    doc = copy.deepcopy(dict(spec))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for bentoml_error in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(bentoml_error, None)
    schemas["Error"] = copy.deepcopy(ERROR_BODY_SCHEMA)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    if keys_required:
        scheme = {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
        doc["components"]["securitySchemes"] = {API_KEY_SCHEME: scheme}
    for route in api_routes:
        operation = doc["paths"][route]["post"]
        responses = {str(s): r for s, r in operation["responses"].items() if str(s).startswith("2")}
        for status in error_statuses(route, keys_required):
            responses[str(status)] = {"description": ERROR_RESPONSES[status], "content": copy.deepcopy(error)}
        operation["responses"] = responses
        operation["requestBody"]["required"] = True  # no body reads as {}, which no endpoint accepts
        if keys_required:
            operation["security"] = [{API_KEY_SCHEME: []}]
    return doc


class OpenApiDocumentMiddleware:
    """Answers ``GET /docs.json`` with :func:`openapi_document` instead of BentoML's own document (built once,
    on the first request). Register it after :class:`ApiKeyMiddleware`, which then guards it as before."""

    def __init__(self, app: ASGIApp, service: bentoml.Service[Any]) -> None:
        self.app = app
        self.service = service
        self.keys_required = bool(api_keys_from_env())
        self.document: dict[str, Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != OPENAPI_PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if self.document is None:
            routes = [api.route for api in self.service.apis.values()]
            self.document = openapi_document(self.service.openapi_spec.asdict(), routes, self.keys_required)
        await JSONResponse(self.document)(scope, receive, send)


_service.add_asgi_middleware(OpenApiDocumentMiddleware, service=_service)


def _new_event(position: int, event: EventIn) -> NewEvent:
    """The store's event for ``events[position]``; a 400 names the position."""
    try:
        return NewEvent(event.item_id, event.event_type, event.channel, event.ts)
    except ValueError as e:
        raise ApiError(
            HTTPStatus.BAD_REQUEST, "invalid_request", f"events[{position}]: {e}", (f"events.{position}",)
        ) from None


def _check_k(model: OnnxModel, k: int) -> None:
    """400 for a ``k`` above this bundle's ``max_k`` (the schema already bounds it by :data:`S.MAX_K`)."""
    try:
        check_k(model, k)
    except ValueError as e:
        raise ApiError(HTTPStatus.BAD_REQUEST, "invalid_request", str(e), ("k",)) from None


def _unknown_customer(customer_id: str) -> ApiError:
    return ApiError(
        HTTPStatus.NOT_FOUND, "unknown_customer", f"unknown customer_id {customer_id!r}", ("customer_id",)
    )


def _not_in_bundle(what: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, "not_in_bundle", f"this bundle has no {what}")

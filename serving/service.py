"""BentoML 1.4 HTTP service on ONNX Runtime: ``/recommend``, ``/intent``, ``/events`` (apps report what a
customer did since the snapshot), ``/similar-items``; plus BentoML's /livez, /readyz and /metrics.

Configured from the environment (set by ``o2o serve``):
``O2O_BUNDLE`` — exported bundle folder; ``O2O_SNAPSHOT`` — ``04_features/snapshot.parquet`` holding each
known customer's history and aggregates; ``O2O_ORT_THREADS`` — ONNX Runtime intra-op threads;
``O2O_HISTORY_URL`` — the customer-history store (:func:`serving.history.open_history_store`): unset or
``memory`` keeps it in this process (appended events are lost on exit and unseen by other workers),
``sqlite:///path.db`` (``sqlite:////abs/path.db``) survives restarts, ``redis://127.0.0.1:6379/0`` is shared
by replicas; ``O2O_API_KEYS`` — comma-separated API keys required in the ``X-API-Key`` header of every route
but the probes and /metrics (:mod:`serving.auth`; unset: no check, with a warning at startup).

Bad requests get a 4xx whose JSON body says what is wrong: pydantic validation (types, ranges, lengths;
unknown fields in the bodies of /events and /similar-items) answers 400, a request that names no history
answers 400, an unknown customer or item answers 404, a missing or wrong API key answers 401.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, cast

import bentoml
from bentoml.exceptions import InvalidArgument, NotFound
from pydantic import BaseModel, ConfigDict, Field

from data_prep import schema as S
from serving.artifact import Bundle, load_bundle
from serving.auth import ApiKeyMiddleware
from serving.history import MAX_HISTORY_EVENTS, HistoryStore, NewEvent, open_history_store
from serving.scoring import ItemFilter, feature_matrix, intent_probability, recommend, similar_items

BUNDLE_ENV = "O2O_BUNDLE"
SNAPSHOT_ENV = "O2O_SNAPSHOT"
HISTORY_URL_ENV = "O2O_HISTORY_URL"
MAX_SESSION_ITEMS = 200
MAX_EVENTS_PER_CALL = 100

CustomerId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-:.]+$")]
ItemId = Annotated[str, Field(min_length=1, max_length=64)]
Name = Annotated[str, Field(min_length=1, max_length=64)]
MAX_FILTER_ENTRIES = 1000


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    customer_id: str | None
    items: list[ScoredItem]
    source: str = Field(
        description="'history' (model on the history); cold start: 'segment_popular' (popular in the "
        "customer's segment) or 'popular' (overall)"
    )
    bundle_version: str


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: ItemId
    event_type: Name = Field(description=f"one of {', '.join(S.ITEM_EVENT_TYPES)}")
    channel: Name = Field(description=f"one of {', '.join(S.CHANNELS)}")
    ts: int = Field(description="when it happened, whole epoch seconds (UTC)")


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId = Field(description="pseudonymous customer id, as in /recommend")
    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_EVENTS_PER_CALL)]


class EventsResponse(BaseModel):
    customer_id: str
    n_events: int = Field(
        description=f"events in the customer's stored history now (its newest {MAX_HISTORY_EVENTS} are kept)"
    )
    accepted: int = Field(description="events of this call stored (all of them: a call is all or nothing)")


class SimilarItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: ItemId
    k: Annotated[int, Field(ge=1, le=S.MAX_K)] = 10


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[ScoredItem] = Field(description="nearest first; score = cosine similarity of item embeddings")
    bundle_version: str


class IntentResponse(BaseModel):
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


@bentoml.service(traffic={"timeout": 10}, workers=1)
class O2OService:
    def __init__(self) -> None:
        self.bundle: Bundle = load_bundle(_env_path(BUNDLE_ENV))
        url = os.environ.get(HISTORY_URL_ENV) or None
        self.history: HistoryStore = open_history_store(url, Path(_env_path(SNAPSHOT_ENV)))

    @bentoml.on_shutdown
    def close_history(self) -> None:
        self.history.close()

    @bentoml.api(route="/recommend")
    def recommend(
        self,
        customer_id: CustomerId | None = None,
        items: Annotated[list[ItemId], Field(max_length=MAX_SESSION_ITEMS)] | None = None,
        k: Annotated[int, Field(ge=1, le=S.MAX_K)] = 10,
        exclude_seen: bool | None = None,
        exclude_items: Annotated[list[ItemId], Field(max_length=MAX_FILTER_ENTRIES)] | None = None,
        exclude_categories: Annotated[list[Name], Field(max_length=MAX_FILTER_ENTRIES)] | None = None,
        store_id: Name | None = None,
        segment: Name | None = None,
    ) -> RecommendResponse:
        """Top-k items for a known customer (``customer_id``) or an anonymous visitor (``items``, oldest first).

        ``exclude_seen`` defaults to the setting the model was evaluated with (see the model card).
        ``exclude_items``, ``exclude_categories`` and ``store_id`` (only items that store sold recently) are
        applied before the top-k. With no usable history the answer is the most popular items of the
        customer's RFM segment (``segment`` for an anonymous visitor), then overall.
        """
        model = self.bundle.recommender
        if model is None:
            raise NotFound("this bundle has no recommender model")
        if (customer_id is None) == (items is None):
            raise InvalidArgument(
                "give exactly one of 'customer_id' (known customer) or 'items' (anonymous session)"
            )
        if items is not None:
            if not items:
                raise InvalidArgument("'items' must hold at least one item id (the session's recent items)")
            side: tuple[Any, Any] = (None, None)  # an anonymous session carries no channel or time
            history, types = items, [S.EV_VIEW] * len(items)
        else:
            found = self.history.get(customer_id)  # type: ignore[arg-type]
            if found is None:
                raise NotFound(f"unknown customer_id {customer_id!r}")
            history, types = found.items, found.event_types
            side = found.side_lists()
            segment = segment or found.segment
        rules = ItemFilter(tuple(exclude_items or ()), tuple(exclude_categories or ()), store_id)
        try:
            recs = recommend(model, [history], [types], k, exclude_seen, rules, [segment], *side)
        except ValueError as e:  # k out of range, unknown store or category: the caller's to fix
            raise InvalidArgument(str(e)) from None
        scored = [
            ScoredItem(item_id=i, score=float(s))
            for i, s in zip(recs.item_ids[0], recs.scores[0], strict=True)
        ]
        return RecommendResponse(
            customer_id=customer_id,
            items=scored,
            source=str(recs.source[0]),
            bundle_version=self.bundle.version,
        )

    @bentoml.api(route="/events")
    def events(self, request: EventsRequest, /) -> EventsResponse:
        """Append what a customer did after the snapshot (at most 100 events a call, any time order); the next
        /recommend and /intent for that customer read them. An unknown ``customer_id`` is created (a new
        customer: no aggregates, no segment). Aggregates and the RFM segment stay as of the snapshot."""
        try:
            new = [_new_event(i, e) for i, e in enumerate(request.events)]
            history = self.history.append(request.customer_id, new)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        return EventsResponse(customer_id=request.customer_id, n_events=len(history.items), accepted=len(new))

    @bentoml.api(route="/similar-items")
    def similar_items(self, request: SimilarItemsRequest, /) -> SimilarItemsResponse:
        """The ``k`` items nearest to ``item_id`` by cosine similarity of the recommender's item embeddings,
        nearest first; never the item itself. ``k`` is bounded like /recommend's."""
        model = self.bundle.recommender
        if model is None or model.item_embeddings is None:
            raise NotFound(
                "this bundle has no recommender item embeddings: re-export it to serve similar items"
            )
        try:
            ids, scores = similar_items(model, request.item_id, request.k)
        except LookupError as e:
            raise NotFound(str(e)) from None
        except ValueError as e:  # k out of range for this catalogue
            raise InvalidArgument(str(e)) from None
        return SimilarItemsResponse(
            item_id=request.item_id,
            items=[ScoredItem(item_id=i, score=s) for i, s in zip(ids, scores, strict=True)],
            bundle_version=self.bundle.version,
        )

    @bentoml.api(route="/intent")
    def intent(self, customer_id: CustomerId) -> IntentResponse:
        """Calibrated probability that a known customer purchases (any channel) within the label horizon, their
        churn risk (no purchase in 60 days; when the bundle has a churn model) and RFM segment."""
        model = self.bundle.intent
        if model is None:
            raise NotFound("this bundle has no intent model")
        found = self.history.get(customer_id)
        if found is None:
            raise NotFound(f"unknown customer_id {customer_id!r}")
        probability = {}
        for name, m in (("intent", model), ("churn", self.bundle.churn)):
            if m is not None:
                features = feature_matrix(m, {n: [v] for n, v in found.features.items()})
                p = intent_probability(m, [found.items], [found.event_types], features, *found.side_lists())
                probability[name] = float(p[0])
        return IntentResponse(
            customer_id=customer_id,
            probability=probability["intent"],
            churn_risk=probability.get("churn"),
            segment=found.segment,
            bundle_version=self.bundle.version,
        )


# mypy ignores what a class decorator returns; at runtime O2OService is the bentoml.Service it built
cast("bentoml.Service[O2OService]", O2OService).add_asgi_middleware(ApiKeyMiddleware)


def _new_event(position: int, event: EventIn) -> NewEvent:
    """The store's event for ``events[position]``; a ValueError names the position."""
    try:
        return NewEvent(event.item_id, event.event_type, event.channel, event.ts)
    except ValueError as e:
        raise ValueError(f"events[{position}]: {e}") from None

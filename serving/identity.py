"""The service's identity store: which customer an identifier belongs to, and stitching in real time.

An app holds a device id, an account, a loyalty card, a phone or an email, not our ``customer_id``. The API
takes any of them (``{"type": ..., "value": ...}``): :func:`identifier_node` normalises and keyed-hashes
the value exactly as prep does (:func:`data_prep.pii.pseudonymise`, the same ``O2O_PII_KEY``), and the store
maps the resulting node (``"<type>:<key>"``) to its customer. The raw value is never stored or logged.

The store starts from prep's identity map (``03_customers/identity_map.parquet``, the registry's stable ids)
and its shared identifiers (``shared_identifiers.parquet``: a kiosk device or a family phone, which link
nobody). It then learns online: :meth:`IdentityStore.link` takes identifiers seen together (a device with
the account that logged in on it, a card with the phone given at the till) and joins them at once, so the
very next request by any of them finds the same customer.

**Merge protection, as in prep** (:mod:`data_prep.identity`). An account or a loyalty card is an *anchor*,
one person's relationship with the retailer. A link whose result would hold two different anchors of one
type (a device seen with a second account) joins nobody. Its non-anchor identifiers that would have bridged
the two become *shared*, as prep would make them, and link nobody from then on.

**Merge rules, as the registry's** (:mod:`data_prep.registry`). Joining two customers keeps the id with more
identifiers (ties: the smaller id). Identifiers nobody knew join the customer, and a batch of unknown
identifiers only becomes a new customer named as prep names one, ``c`` + 16 hex of SHA-256 of its smallest
node. :class:`Link` tells the caller which ids were merged away, so it can move their histories.

Two stores share the logic: in memory (one process: the default, links are lost on restart) and Redis
(``redis://``, shared by replicas; a lock serialises links). Every link is also kept in the store's *link
log*, so the next prep can adopt what the service saw.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pyarrow.parquet as pq

from data_prep import pii
from data_prep import schema as S

ANCHOR_TYPES = (S.ID_ACCOUNT, S.ID_CARD)
ID_LEN = 16


def identifier_node(identifier_type: str, value: str, key: bytes) -> str | None:
    """``"<type>:<keyed hash>"`` of a raw identifier, normalised as prep normalises it; None when nothing
    usable remains (an email without ``@``, a string that cannot be a phone)."""
    hashed = pii.pseudonymise(identifier_type, value, key)
    return None if hashed is None else f"{identifier_type}:{hashed}"


def new_customer_id(nodes: Iterable[str]) -> str:
    """The id prep gives a new component: ``c`` + 16 hex of SHA-256 of its smallest node."""
    return "c" + hashlib.sha256(min(nodes).encode()).hexdigest()[:ID_LEN]


def _node_type(node: str) -> str:
    return node.split(":", 1)[0]


@dataclass(frozen=True)
class Link:
    """What :meth:`IdentityStore.link` did."""

    customer_id: str | None  # the customer the identifiers belong to now (None: every one is shared)
    created: bool = False  # a new customer
    merged: tuple[str, ...] = ()  # customers merged into ``customer_id`` (move their histories)
    added: int = 0  # identifiers that joined ``customer_id``
    refused: str | None = None  # why nothing was joined ("conflicting_anchors"), or None
    shared: tuple[str, ...] = field(default=(), repr=False)  # identifiers now shared (nodes; never logged)


class IdentityStore(ABC):
    """Identifier node → customer id, with merge-protected linking (see the module doc)."""

    @abstractmethod
    def customer_of(self, node: str) -> str | None: ...

    @abstractmethod
    def _members(self, customer_id: str) -> set[str]: ...

    @abstractmethod
    def _is_shared(self, nodes: Sequence[str]) -> list[bool]: ...

    @abstractmethod
    def _assign(self, nodes: Iterable[str], customer_id: str) -> None: ...

    @abstractmethod
    def _mark_shared(self, nodes: Iterable[str]) -> None:
        """These identifiers link nobody from now on (and leave the customer that held them)."""

    @abstractmethod
    def _log_link(self, record: dict[str, object]) -> None:
        """Append ``record`` (with the time, ``ts`` in epoch seconds) to the link log."""

    @abstractmethod
    def link_log(self) -> list[dict[str, object]]:
        """Every link made online, oldest first: ``nodes`` linked, ``customer_id`` and ``merged`` (or
        ``refused``), for the next prep to adopt."""

    @abstractmethod
    def _locked(self) -> AbstractContextManager[None]:
        """Serialises links (a thread lock; across replicas, a Redis lock)."""

    @abstractmethod
    def delete_customers(self, customer_ids: Iterable[str], nodes: Iterable[str] = ()) -> int:
        """Erasure: forget these customers' identifiers and ``nodes`` (shared ones too), and every link-log
        entry naming any of them; returns the identifiers removed from customers."""

    def close(self) -> None:  # noqa: B027 - the in-memory store holds nothing to close
        """Release connections."""

    def resolve(self, nodes: Sequence[str]) -> str | None:
        """The customer of the first of ``nodes`` that has one (None: an anonymous visitor)."""
        for node in nodes:
            found = self.customer_of(node)
            if found is not None:
                return found
        return None

    def link(self, nodes: Sequence[str]) -> Link:
        """Join identifiers seen together on one record (see the module doc); one identifier only resolves
        it, making it a new customer when nobody knows it (and it is not shared)."""
        nodes = list(dict.fromkeys(nodes))
        if not nodes:
            raise ValueError("no identifiers to link")
        with self._locked():
            shared = self._is_shared(nodes)
            usable = [n for n, s in zip(nodes, shared, strict=True) if not s]
            if not usable:
                return Link(None)
            owners = {n: self.customer_of(n) for n in usable}
            customers = sorted({c for c in owners.values() if c is not None})
            members = {c: self._members(c) for c in customers}
            anchors: dict[str, set[str]] = {}
            for n in [*usable, *(m for ms in members.values() for m in ms)]:
                if _node_type(n) in ANCHOR_TYPES:
                    anchors.setdefault(_node_type(n), set()).add(n)
            if any(len(a) > 1 for a in anchors.values()):
                # two accounts or two cards would become one person: as in prep, the identifiers seen with
                # them (the batch's non-anchors) are shared from now on and link nobody; the record belongs
                # to the customer of its first anchor (who logged in, whose card it was)
                bridges = [n for n in usable if _node_type(n) not in ANCHOR_TYPES]
                self._mark_shared(bridges)
                self._log_link({"nodes": usable, "refused": "conflicting_anchors", "ts": int(time.time())})
                owner = next((owners[n] for n in usable if _node_type(n) in ANCHOR_TYPES and owners[n]), None)
                return Link(owner, refused="conflicting_anchors", shared=tuple(bridges))
            if customers:
                survivor = min(customers, key=lambda c: (-len(members[c]), c))
                created = False
            else:
                survivor, created = new_customer_id(usable), True
            merged = tuple(c for c in customers if c != survivor)
            moving = [n for n in usable if owners[n] != survivor]
            for c in merged:
                moving += sorted(members[c] - set(moving))
            if moving:
                self._assign(moving, survivor)
            if merged or moving:
                record = {
                    "nodes": usable,
                    "customer_id": survivor,
                    "merged": list(merged),
                    "ts": int(time.time()),
                }
                self._log_link(record)
            return Link(survivor, created, merged, sum(owners.get(n) is None for n in usable))


class InMemoryIdentityStore(IdentityStore):
    """Dictionaries in this process: the default. Links are lost when the service stops (the next prep
    adopts only what another store kept); each worker process has its own."""

    def __init__(self, identity_map: Path | None = None, shared: Path | None = None) -> None:
        self._customer: dict[str, str] = {}
        self._nodes: dict[str, set[str]] = {}
        self._shared: set[str] = set()
        self._log: list[dict[str, object]] = []
        self._lock = threading.Lock()
        for node, customer_id in read_identity_map(identity_map):
            self._customer[node] = customer_id
            self._nodes.setdefault(customer_id, set()).add(node)
        self._shared.update(read_shared(shared))

    def __len__(self) -> int:
        return len(self._customer)

    def customer_of(self, node: str) -> str | None:
        return self._customer.get(node)

    def _members(self, customer_id: str) -> set[str]:
        return set(self._nodes.get(customer_id, ()))

    def _is_shared(self, nodes: Sequence[str]) -> list[bool]:
        return [n in self._shared for n in nodes]

    def _assign(self, nodes: Iterable[str], customer_id: str) -> None:
        for n in nodes:
            old = self._customer.get(n)
            if old is not None and old != customer_id:
                self._nodes[old].discard(n)
                if not self._nodes[old]:
                    del self._nodes[old]
            self._customer[n] = customer_id
            self._nodes.setdefault(customer_id, set()).add(n)

    def _mark_shared(self, nodes: Iterable[str]) -> None:
        for n in nodes:
            self._shared.add(n)
            old = self._customer.pop(n, None)
            if old is not None:
                self._nodes[old].discard(n)
                if not self._nodes[old]:
                    del self._nodes[old]

    def _log_link(self, record: dict[str, object]) -> None:
        self._log.append(record)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            yield

    def link_log(self) -> list[dict[str, object]]:
        return list(self._log)

    def delete_customers(self, customer_ids: Iterable[str], nodes: Iterable[str] = ()) -> int:
        ids, gone, n = set(customer_ids), set(nodes), 0
        with self._lock:
            for c in ids:
                for node in self._nodes.pop(c, set()):
                    self._customer.pop(node, None)
                    gone.add(node)
                    n += 1
            self._shared -= gone
            self._log = [r for r in self._log if not _mentions(r, ids, gone)]
        return n


def _mentions(record: dict[str, object], customer_ids: set[str], nodes: set[str]) -> bool:
    merged = cast(list[str], record.get("merged", []))
    linked = cast(list[str], record.get("nodes", []))
    return (
        record.get("customer_id") in customer_ids
        or bool(customer_ids & set(merged))
        or bool(nodes & set(linked))
    )


def read_identity_map(path: Path | None) -> Iterator[tuple[str, str]]:
    """(node, customer_id) of an identity map file (nothing when None or missing)."""
    if path is None or not path.is_file():
        return
    table = pq.read_table(path, columns=[S.IDENTIFIER_TYPE, S.IDENTIFIER_KEY, S.CUSTOMER_ID])
    for t, k, c in zip(*(table.column(i).to_pylist() for i in range(3)), strict=True):
        yield f"{t}:{k}", c


def read_shared(path: Path | None) -> list[str]:
    """Nodes of a shared-identifiers file (nothing when None or missing)."""
    if path is None or not path.is_file():
        return []
    return [n for n in pq.read_table(path, columns=["node"]).column("node").to_pylist() if n]


def encode_record(record: dict[str, object]) -> str:
    return json.dumps(record, sort_keys=True)


class RedisIdentityStore(IdentityStore):
    """Shared by every replica that opens the same URL and prefix: a hash node → customer id
    (``<prefix>node``), a set of nodes per customer (``<prefix>members:<id>``), the shared identifiers
    (``<prefix>shared``) and the link log (a list of JSON records, ``<prefix>log``). Links take a Redis lock,
    so two replicas never merge the same customers at once. The identity map is loaded once per file
    content (``<prefix>map`` holds its hash): a restart keeps what was linked since."""

    def __init__(
        self,
        url: str,
        identity_map: Path | None = None,
        shared: Path | None = None,
        prefix: str = "o2o:identity:",
    ) -> None:
        import redis

        self.prefix = prefix
        self._client = redis.Redis.from_url(url, decode_responses=True)
        self._client.ping()
        if identity_map is not None and identity_map.is_file():
            self._load(identity_map, shared)

    def _k(self, name: str) -> str:
        return self.prefix + name

    def _load(self, identity_map: Path, shared: Path | None) -> None:
        fingerprint = hashlib.sha256(identity_map.read_bytes()).hexdigest()
        if self._client.get(self._k("map")) == fingerprint:
            return
        with self._locked():
            rows = list(read_identity_map(identity_map))
            by_customer: dict[str, list[str]] = {}
            for node, customer_id in rows:
                by_customer.setdefault(customer_id, []).append(node)
            for start in range(0, len(rows), 10_000):
                chunk = dict(rows[start : start + 10_000])
                self._client.hset(self._k("node"), mapping=chunk)
            with self._client.pipeline(transaction=False) as pipe:
                for customer_id, nodes in by_customer.items():
                    pipe.delete(self._k(f"members:{customer_id}"))
                    pipe.sadd(self._k(f"members:{customer_id}"), *nodes)
                pipe.execute()
            nodes_shared = read_shared(shared)
            if nodes_shared:
                self._client.sadd(self._k("shared"), *nodes_shared)
            self._client.set(self._k("map"), fingerprint)

    def customer_of(self, node: str) -> str | None:
        return cast("str | None", self._client.hget(self._k("node"), node))

    def _members(self, customer_id: str) -> set[str]:
        return cast("set[str]", self._client.smembers(self._k(f"members:{customer_id}")))

    def _is_shared(self, nodes: Sequence[str]) -> list[bool]:
        return [bool(x) for x in cast("list[int]", self._client.smismember(self._k("shared"), list(nodes)))]

    def _assign(self, nodes: Iterable[str], customer_id: str) -> None:
        nodes = list(nodes)
        old = cast("list[str | None]", self._client.hmget(self._k("node"), nodes))
        with self._client.pipeline() as pipe:
            for n, o in zip(nodes, old, strict=True):
                if o is not None and o != customer_id:
                    pipe.srem(self._k(f"members:{o}"), n)
            pipe.hset(self._k("node"), mapping=dict.fromkeys(nodes, customer_id))
            pipe.sadd(self._k(f"members:{customer_id}"), *nodes)
            pipe.execute()

    def _mark_shared(self, nodes: Iterable[str]) -> None:
        nodes = list(nodes)
        if not nodes:
            return
        old = cast("list[str | None]", self._client.hmget(self._k("node"), nodes))
        with self._client.pipeline() as pipe:
            pipe.sadd(self._k("shared"), *nodes)
            for n, o in zip(nodes, old, strict=True):
                if o is not None:
                    pipe.srem(self._k(f"members:{o}"), n)
            pipe.hdel(self._k("node"), *nodes)
            pipe.execute()

    def _log_link(self, record: dict[str, object]) -> None:
        self._client.rpush(self._k("log"), encode_record(record))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._client.lock(self._k("lock"), timeout=10, blocking_timeout=10):
            yield

    def link_log(self) -> list[dict[str, object]]:
        return [json.loads(r) for r in cast("list[str]", self._client.lrange(self._k("log"), 0, -1))]

    def delete_customers(self, customer_ids: Iterable[str], nodes: Iterable[str] = ()) -> int:
        ids, gone, n = set(customer_ids), set(nodes), 0
        with self._locked():
            for c in ids:
                members = list(self._members(c))
                if members:
                    self._client.hdel(self._k("node"), *members)
                    gone.update(members)
                    n += len(members)
                self._client.delete(self._k(f"members:{c}"))
            if gone:
                self._client.srem(self._k("shared"), *gone)
            kept = [r for r in self.link_log() if not _mentions(r, ids, gone)]
            with self._client.pipeline() as pipe:
                pipe.delete(self._k("log"))
                if kept:
                    pipe.rpush(self._k("log"), *(encode_record(r) for r in kept))
                pipe.execute()
        return n

    def close(self) -> None:
        self._client.close()


def open_identity_store(url: str | None, identity_map: Path | None, shared: Path | None) -> IdentityStore:
    """In memory for None or ``"memory"``, Redis for ``redis://`` / ``rediss://``; anything else ValueError
    (the URL itself is not echoed: it may carry a password)."""
    if url is None or url == "memory":
        return InMemoryIdentityStore(identity_map, shared)
    scheme = url.partition("://")[0]
    if scheme in ("redis", "rediss"):
        return RedisIdentityStore(url, identity_map, shared)
    raise ValueError(
        f"unsupported identity store URL (scheme {scheme!r}): use 'memory' or 'redis://host:port/db'"
    )

"""Every call of the client API as a :class:`~kilndb.client.core.Request`, without I/O.

One function per call, taking the call's own arguments: it checks them with the
embedded database's rules (the same error for the same mistake, and nothing
unserialisable ever reaches the wire), builds the request and says how its reply becomes
the API's value. The sync and asyncio clients both call these and only move the bytes.
Paging a ``replay`` is :class:`Replay`; splitting a ``write_each`` into independent
requests is :func:`write_each`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, cast, runtime_checkable

from orjson import Fragment

from kilndb import _core
from kilndb.client.core import Ready, Request, reply_of
from kilndb.engine.writes import fact_write, prepare_write, snapshot_facts
from kilndb.errors import InvalidArgumentError, KilnError, LeaseLostError
from kilndb.leases import Lease, check_fence, check_ttl, lease_from_wire
from kilndb.model import Fact, Write, fact_from_dict, facts_from_dicts, validate_store_name
from kilndb.storage.facts import check_limit, check_position
from kilndb.streams import (
    Entry,
    Record,
    check_time,
    clamp_limit,
    entry_from_wire,
    record_to_wire,
    record_write,
)

#: Facts fetched per ``replay`` request while iterating.
REPLAY_PAGE = 1000


# -- checking arguments ------------------------------------------------------------------


def _check(store: str, key: Any, value: Any, options: dict[str, Any]) -> None:
    try:
        prepare_write(store, key, value, store_checked=True, **options)
    except TypeError as exc:  # an unknown keyword argument
        raise InvalidArgumentError(str(exc)) from exc


@runtime_checkable
class KeptLease(Protocol):
    """A lease kept alive in the background (the sync or the asyncio keeper)."""

    lost: bool
    lease: Lease


def fence_of(fence: object) -> dict[str, Any] | None:
    """The wire form ``{"key", "token"}`` of a ``fence=`` argument: a Lease, a keeper
    (LeaseLostError once it lost its lease) or such a mapping."""
    if isinstance(fence, KeptLease) and not isinstance(fence, Lease):
        if fence.lost:
            raise LeaseLostError(fence.lease.key, fence.lease.token, None, "its keeper lost it")
        fence = fence.lease
    checked = check_fence(fence)
    return None if checked is None else {"key": checked[0], "token": checked[1]}


def _replicas(replicas: object) -> int | None:
    """``replicas``: followers that must have the write durably before it returns."""
    if replicas is not None and (type(replicas) is not int or replicas < 0):
        raise InvalidArgumentError("replicas must be a non-negative integer or None")
    return replicas


def stores_of(stores: Iterable[str] | None) -> list[str] | None:
    """A ``stores=`` filter as a list (None: every store)."""
    if stores is None:
        return None
    if isinstance(stores, str) or not isinstance(stores, Iterable):
        raise InvalidArgumentError("stores must be a list of store names or None")
    return [validate_store_name(name) for name in stores]


def _batch(writes: Iterable[Write]) -> list[dict[str, Any]]:
    """The wire form of a ``write_many`` batch, checked with the embedded rules."""
    batch = []
    for write in writes:
        if type(write) is not Write:
            raise InvalidArgumentError(
                f"write_many takes kilndb.Write objects, not {type(write).__name__}"
            )
        fields = write._asdict()
        options = {k: v for k, v in fields.items() if k not in ("store", "key", "value")}
        _check(validate_store_name(write.store), write.key, write.value, options)
        batch.append(fields)
    return batch


# -- decoding replies --------------------------------------------------------------------


def _fact(reply: dict[str, Any]) -> Fact:
    return fact_from_dict(reply["fact"])


def _maybe_fact(reply: dict[str, Any]) -> Fact | None:
    return None if reply["fact"] is None else fact_from_dict(reply["fact"])


def _facts(reply: dict[str, Any]) -> list[Fact]:
    return facts_from_dicts(reply["facts"])


def _lease(reply: dict[str, Any]) -> Lease:
    return lease_from_wire(reply["lease"])


def _nothing(reply: dict[str, Any]) -> None:
    return None


def _field(name: str) -> Any:
    def decode(reply: dict[str, Any]) -> Any:
        return reply[name]

    return decode


def _entries(reply: dict[str, Any]) -> list[Entry]:
    # In one call into the core: it builds each Entry as entry_from_wire would.
    entries: list[Entry] = _core.entries_from_wire(reply["entries"], Entry, base64.b64decode)
    return entries


def _consumed(body: bytes) -> list[Entry]:
    # A page of JSON payloads is parsed straight into entries; anything else (an error,
    # a bytes payload) is decoded the general way.
    entries: list[Entry] | None = _core.consume_entries(body, Entry)
    return _entries(reply_of(body)) if entries is None else entries


def outcome(body: bytes) -> Fact | KilnError:
    """A ``write_each`` write's result: its fact, or the error that refused it."""
    try:
        return _fact(reply_of(body))
    except KilnError as exc:
        return exc


# -- the database's calls ----------------------------------------------------------------


#: A write option left at this value is not sent (the server's default is the same), so
#: that a plain write stays plain on the wire.
_DEFAULTS = {"schema_version": 1}


def _given(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None and v != _DEFAULTS.get(k)}


def write(store: str, key: Any, value: Any, options: dict[str, Any]) -> Request[Fact]:
    """``store.write(key, value, **options)``; ``fence=`` and ``replicas=`` included."""
    fence, replicas = fence_of(options.pop("fence", None)), _replicas(options.pop("replicas", None))
    _check(store, key, value, options)
    params = {"store": store, "key": key, "value": value, "fence": fence, "replicas": replicas}
    return Request.make("write", {**params, **_given(options)}, _fact)


def delete(store: str, key: Any, options: dict[str, Any]) -> Request[Fact]:
    """``store.delete(key, **options)``."""
    fence, replicas = fence_of(options.pop("fence", None)), _replicas(options.pop("replicas", None))
    _check(store, key, None, {**options, "deleted": True})
    params = {"store": store, "key": key, "fence": fence, "replicas": replicas}
    return Request.make("delete", {**params, **_given(options)}, _fact)


def read(store: str, key: str, as_of: float | None) -> Request[Fact | None]:
    return Request.make("read", {"store": store, "key": key, "as_of": as_of}, _maybe_fact)


def history(
    store: str, key: str, since_seq: int, until_seq: int | None, limit: int | None
) -> Request[list[Fact]]:
    params = {
        "store": store,
        "key": key,
        "since_seq": since_seq,
        "until_seq": until_seq,
        "limit": limit,
    }
    return Request.make("history", params, _facts)


def keys(store: str, prefix: str, limit: int | None, after: str | None) -> Request[list[str]]:
    params = {"store": store, "prefix": prefix, "limit": limit, "after": after}
    return Request.make("keys", params, _field("keys"))


def write_many(
    writes: Iterable[Write], fence: Any, replicas: int | None
) -> Request[list[Fact]] | Ready[list[Fact]]:
    """``db.write_many(...)``; an empty batch is answered here."""
    fenced, count = fence_of(fence), _replicas(replicas)
    batch = _batch(writes)
    if not batch:
        return Ready([])
    params = {"writes": batch, "fence": fenced, "replicas": count}
    return Request.make("write_many", params, _facts)


def write_each(writes: Iterable[Write]) -> list[Request[Fact | KilnError] | KilnError]:
    """The independent requests of ``db.write_each``, or the error that refuses a write
    here; each request's reply decodes to its fact or the server's refusal."""
    requests: list[Request[Fact | KilnError] | KilnError] = []
    for each in writes:
        try:
            (fields,) = _batch([each])
        except KilnError as exc:
            requests.append(exc)
            continue
        op = "delete" if fields["deleted"] else "write"
        params = {k: v for k, v in fields.items() if v is not None}
        del params["deleted"]  # the op says it; a delete ignores a write's other fields
        requests.append(Request.raw(op, params, outcome))
    return requests


def _whole_fact(fact: object) -> dict[str, Any]:
    """A whole fact's wire form (``to_dict``), checked with the embedded rules first
    (its ``value_hash`` too); the server keeps and assigns what the embedded database
    does (:func:`~kilndb.engine.writes.fact_write`)."""
    write = fact_write(fact)
    options = {k: v for k, v in write.items() if k not in ("store", "key", "value")}
    _check(validate_store_name(write["store"]), write["key"], write["value"], options)
    return fact.to_dict() if isinstance(fact, Fact) else dict(cast(Mapping[str, Any], fact))


def write_fact(fact: object) -> Request[Fact]:
    """``db.write_fact(fact)``: Igniter's op, the whole fact sent as it is."""
    return Request.make("write_fact", {"fact": _whole_fact(fact)}, _fact)


def write_snapshot(facts: Iterable[Any]) -> Request[dict[str, int]] | Ready[dict[str, int]]:
    """``db.write_snapshot(facts)``; an empty snapshot is answered here."""
    wire = [_whole_fact(fact) for fact in snapshot_facts(facts)]
    if not wire:
        return Ready({"written": 0, "skipped": 0})

    def counts(reply: dict[str, Any]) -> dict[str, int]:
        return {"written": reply["written"], "skipped": reply["skipped"]}

    return Request.make("write_snapshot", {"facts": wire}, counts)


def reply(op: str, **params: Any) -> Request[dict[str, Any]]:
    """Any op, its value the whole reply (for ops the API has no method for)."""
    return Request.make(op, params, _whole)


def _whole(reply: dict[str, Any]) -> dict[str, Any]:
    return reply


def simple(op: str, result: str | None = None, **params: Any) -> Request[Any]:
    """A request whose value is its reply's field ``result`` (None: nothing)."""
    return Request.make(op, params, _nothing if result is None else _field(result))


def set_retention(store: str, keep: str, max_age: float | None) -> Request[None]:
    params = {"store": store, "keep": keep, "max_age": max_age}
    return Request.make("set_retention", params, _nothing)


class Replay:
    """Paging through ``replay``: :meth:`request` the next page until it is None, and
    :meth:`take` each reply's facts (cut to ``limit``)."""

    def __init__(self, after: int, stores: Iterable[str] | None, limit: int | None) -> None:
        self.after = check_position("after", after)
        self.stores = stores_of(stores)
        self.left = check_limit(limit)
        self._done = self.left == 0

    def request(self) -> Request[dict[str, Any]] | None:
        """The next page's request (None: done)."""
        if self._done:
            return None
        page = REPLAY_PAGE if self.left is None else min(self.left, REPLAY_PAGE)
        return reply("replay", after=self.after, stores=self.stores, limit=page)

    def take(self, reply: dict[str, Any]) -> list[Fact]:
        """The facts of a page's reply; the next request starts after them."""
        wire = reply["facts"]
        facts = facts_from_dicts(wire)
        if self.left is not None:
            self.left -= len(facts)
        self._done = len(wire) < REPLAY_PAGE or self.left == 0
        self.after = reply.get("next_after", facts[-1].position if facts else self.after)
        return facts


# -- leases ------------------------------------------------------------------------------


def acquire_lease(key: str, holder: str, ttl: float) -> Request[Lease]:
    params = {"key": key, "holder": holder, "ttl": check_ttl(ttl)}
    return Request.make("acquire_lease", params, _lease)


def renew_lease(lease: Lease, ttl: float | None) -> Request[Lease]:
    ttl = None if ttl is None else check_ttl(ttl)
    return Request.make("renew_lease", {**lease.to_dict(), "ttl": ttl}, _lease)


def release_lease(lease: Lease) -> Request[bool]:
    return Request.make("release_lease", lease.to_dict(), _field("released"))


def leases() -> Request[list[Lease]]:
    return Request.make(
        "leases", {}, lambda reply: [lease_from_wire(wire) for wire in reply["leases"]]
    )


# -- streams -----------------------------------------------------------------------------


def produce(
    space: str, segment: str, records: Iterable[Any], expected_seq: int | None, fence: Any
) -> Request[list[Entry]] | Ready[list[Entry]]:
    """``segment.produce(...)``: the records checked with the embedded rules first."""
    fenced = fence_of(fence)
    checked = list(records)
    # The core checks the common records and writes their wire form in one call; the
    # rest are checked here.
    wire: Fragment | list[dict[str, Any]]
    encoded = _core.produce_records(checked, Record)
    if encoded is not None:
        wire = Fragment(encoded)
    else:
        for record in checked:
            each = record_write(space, segment, record)
            prepare_write(each.store, each.key, each.value, metadata=each.metadata)
        wire = [record_to_wire(record) for record in checked]
    if not checked:
        return Ready([])

    def entries(reply: dict[str, Any]) -> list[Entry]:
        made: list[Entry] = _core.produced_entries(
            space, segment, checked, reply["produced"], Entry
        )
        return made

    params = {
        "space": space,
        "segment": segment,
        "records": wire,
        "expected_seq": expected_seq,
        "fence": fenced,
    }
    return Request.make("produce", params, entries)


def consume(
    space: str,
    segment: str,
    min_seq: int,
    max_seq: int | None,
    min_ts: float | None,
    max_ts: float | None,
    limit: int | None,
) -> Request[list[Entry]]:
    params = {
        "space": space,
        "segment": segment,
        "min_seq": min_seq,
        "max_seq": max_seq,
        "min_ts": check_time("min_ts", min_ts),
        "max_ts": check_time("max_ts", max_ts),
        "limit": clamp_limit(limit),
    }
    return Request.raw("consume", params, _consumed)


def space_consume(
    space: str, after: int, min_ts: float | None, max_ts: float | None, limit: int | None
) -> Request[list[Entry]]:
    params = {
        "space": space,
        "after": after,
        "min_ts": check_time("min_ts", min_ts),
        "max_ts": check_time("max_ts", max_ts),
        "limit": clamp_limit(limit),
    }
    return Request.make("space_consume", params, _entries)


def peek(space: str, segment: str) -> Request[Entry | None]:
    def entry(reply: dict[str, Any]) -> Entry | None:
        return None if reply["entry"] is None else entry_from_wire(reply["entry"])

    return Request.make("peek", {"space": space, "segment": segment}, entry)

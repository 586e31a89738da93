"""How the fields of each op's request are checked.

Each op of the table (:mod:`kilndb.protocol.ops`) has a checker here: it takes the
decoded request object and returns the op's parameters, normalised (defaults filled in,
only known fields kept), or raises :class:`InvalidArgumentError` naming the field. The
checks here are structural — is the field present, is it a string, a non-negative
integer, a list of strings — so that a malformed request is refused before it reaches a
database; the engine still checks meaning (store-name syntax, JSON-serialisable values,
expected seqs).

A checker is named after its op, or after the shape several ops share (``key_of``,
``segment_of``, ``held_lease``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kilndb.engine.writes import fact_write
from kilndb.errors import InvalidArgumentError
from kilndb.streams import check_channel

__all__ = ["WRITE_OPTIONS", "Checker", "Params"]

Params = dict[str, Any]
#: Takes a decoded request object, returns its checked parameters.
Checker = Callable[[dict[str, Any]], Params]
_MISSING = object()

#: Fields a write carries besides store, key and value (the keyword arguments of write).
WRITE_OPTIONS = (
    "expected_seq",
    "id",
    "causation",
    "valid_time",
    "schema_version",
    "producer",
    "derivation",
    "metadata",
)


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "count": (lambda v: type(v) is int and v >= 0, "a non-negative integer"),
    "number": (lambda v: type(v) in (int, float), "a number"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "strings": (
        lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
        "a list of strings",
    ),
}


def _field(body: dict[str, Any], name: str, kind: str, *, required: bool = False) -> Any:
    """``body[name]`` if it is of ``kind``; None if absent or null (unless required)."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise InvalidArgumentError(f"missing field {name!r}")
        return None
    check, expected = _CHECKS[kind]
    if not check(value):
        raise InvalidArgumentError(f"field {name!r} must be {expected}")
    return value


#: The fields of the most common write: store, key and value and nothing else.
_PLAIN_WRITE = frozenset({"op", "request_id", "database", "store", "key", "value"})


def _fence(body: dict[str, Any]) -> dict[str, Any] | None:
    """A ``fence``: the ``{"key", "token"}`` of the lease the write is made under."""
    fence: dict[str, Any] | None = _field(body, "fence", "object")
    if fence is not None and not (
        isinstance(fence.get("key"), str) and type(fence.get("token")) is int
    ):
        raise InvalidArgumentError('field \'fence\' must be {"key": string, "token": integer}')
    return fence


def _write_fields(body: dict[str, Any], *, value_required: bool = True) -> Params:
    store, key = body.get("store"), body.get("key")
    if type(store) is str and type(key) is str and "value" in body and body.keys() <= _PLAIN_WRITE:
        # The common case in one check; anything else gets the field-by-field checks.
        return {
            "store": store,
            "key": key,
            "value": body["value"],
            "expected_seq": None,
            "id": None,
            "causation": None,
            "valid_time": None,
            "schema_version": 1,
            "producer": None,
            "derivation": None,
            "metadata": None,
            "fence": None,
            "replicas": None,
        }
    params: Params = {
        "store": _field(body, "store", "str", required=True),
        "key": _field(body, "key", "str", required=True),
    }
    if value_required and "value" not in body:
        raise InvalidArgumentError("missing field 'value'")
    params["value"] = body.get("value")
    params["expected_seq"] = _field(body, "expected_seq", "count")
    params["id"] = _field(body, "id", "str")
    params["causation"] = _field(body, "causation", "str")
    params["valid_time"] = _field(body, "valid_time", "number")
    schema_version = _field(body, "schema_version", "count")
    params["schema_version"] = 1 if schema_version is None else schema_version
    params["producer"] = body.get("producer")
    params["derivation"] = body.get("derivation")
    params["metadata"] = _field(body, "metadata", "object")
    params["fence"] = _fence(body)
    params["replicas"] = _field(body, "replicas", "count")
    return params


def none(body: dict[str, Any]) -> Params:
    return {}


def hello(body: dict[str, Any]) -> Params:
    return {
        "protocol_version": _field(body, "protocol_version", "count"),
        "database": _field(body, "database", "str"),
        "token": _field(body, "token", "str"),
    }


def write(body: dict[str, Any]) -> Params:
    return _write_fields(body)


def _whole_fact(fact: dict[str, Any]) -> Params:
    """A whole fact's write (Igniter's ``write_fact``): checked as a write, then made the
    write that stores it (:func:`~kilndb.engine.writes.fact_write`: the fact's
    ``transaction_time`` kept in its metadata, its ``value_hash`` checked)."""
    params = _write_fields(fact, value_required=fact.get("deleted") is not True)
    _field(fact, "transaction_time", "number")
    _field(fact, "value_hash", "str")
    return {**params, **fact_write({**fact, **params})}


def write_fact(body: dict[str, Any]) -> Params:
    fact = _field(body, "fact", "object", required=True)
    try:
        return _whole_fact(fact)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"fact: {exc.message}") from exc


def write_many(body: dict[str, Any]) -> Params:
    writes = _field(body, "writes", "list", required=True)
    checked = []
    for index, write in enumerate(writes):
        if not isinstance(write, dict):
            raise InvalidArgumentError(f"writes[{index}] must be an object")
        try:
            params = _write_fields(write, value_required=not write.get("deleted"))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"writes[{index}]: {exc.message}") from exc
        deleted = write.get("deleted", False)
        if type(deleted) is not bool:
            raise InvalidArgumentError(f"writes[{index}]: field 'deleted' must be a boolean")
        params["deleted"] = deleted
        checked.append(params)
    return {
        "writes": checked,
        "fence": _fence(body),
        "replicas": _field(body, "replicas", "count"),
    }


def write_snapshot(body: dict[str, Any]) -> Params:
    facts = _field(body, "facts", "list", required=True)
    checked = []
    for index, fact in enumerate(facts):
        if not isinstance(fact, dict):
            raise InvalidArgumentError(f"facts[{index}] must be an object")
        try:
            checked.append(_whole_fact(fact))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"facts[{index}]: {exc.message}") from exc
    return {"facts": checked}


def key_of(body: dict[str, Any]) -> Params:
    return {
        "store": _field(body, "store", "str", required=True),
        "key": _field(body, "key", "str", required=True),
    }


def read(body: dict[str, Any]) -> Params:
    return {**key_of(body), "as_of": _field(body, "as_of", "number")}


def history(body: dict[str, Any]) -> Params:
    since = _field(body, "since_seq", "count")
    return {
        **key_of(body),
        "since_seq": 1 if since is None else since,
        "until_seq": _field(body, "until_seq", "count"),
        "limit": _field(body, "limit", "count"),
    }


def delete(body: dict[str, Any]) -> Params:
    return {
        **key_of(body),
        "expected_seq": _field(body, "expected_seq", "count"),
        "id": _field(body, "id", "str"),
        "causation": _field(body, "causation", "str"),
        "metadata": _field(body, "metadata", "object"),
        "fence": _fence(body),
        "replicas": _field(body, "replicas", "count"),
    }


def keys(body: dict[str, Any]) -> Params:
    prefix = _field(body, "prefix", "str")
    return {
        "store": _field(body, "store", "str", required=True),
        "prefix": "" if prefix is None else prefix,
        "limit": _field(body, "limit", "count"),
        "after": _field(body, "after", "str"),
    }


def replay(body: dict[str, Any]) -> Params:
    after = _field(body, "after", "count")
    return {
        "after": 0 if after is None else after,
        "stores": _field(body, "stores", "strings"),
        "limit": _field(body, "limit", "count"),
    }


def _channel(body: dict[str, Any]) -> str | None:
    """A stream's ``channel`` id (None: the server assigns a UUID)."""
    return check_channel(body.get("channel"))


def subscribe(body: dict[str, Any]) -> Params:
    # Without ``after`` (Igniter's form) a subscription is live only: it starts at the
    # end of the log. With it, it catches up from that position first.
    return {
        "stores": _field(body, "stores", "strings"),
        "after": _field(body, "after", "count"),
        "channel": _channel(body),
    }


def set_retention(body: dict[str, Any]) -> Params:
    keep = _field(body, "keep", "str")
    return {
        "store": _field(body, "store", "str", required=True),
        "keep": "all" if keep is None else keep,
        "max_age": _field(body, "max_age", "number"),
    }


def store_of(body: dict[str, Any]) -> Params:
    return {"store": _field(body, "store", "str", required=True)}


def space_of(body: dict[str, Any]) -> Params:
    return {"space": _field(body, "space", "str", required=True)}


def name_of(body: dict[str, Any]) -> Params:
    """An op on a whole database, named by ``name``."""
    return {"name": _field(body, "name", "str", required=True)}


def segment_of(body: dict[str, Any]) -> Params:
    return {
        "space": _field(body, "space", "str", required=True),
        "segment": _field(body, "segment", "str", required=True),
    }


def produce(body: dict[str, Any]) -> Params:
    records = _field(body, "records", "list", required=True)
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise InvalidArgumentError(f"records[{index}] must be an object")
    return {
        **segment_of(body),
        "records": records,
        "expected_seq": _field(body, "expected_seq", "count"),
        "fence": _fence(body),
        "replicas": _field(body, "replicas", "count"),
    }


def consume(body: dict[str, Any]) -> Params:
    min_seq = _field(body, "min_seq", "count")
    return {
        **segment_of(body),
        "min_seq": 1 if min_seq is None else min_seq,
        "max_seq": _field(body, "max_seq", "count"),
        "min_ts": _field(body, "min_ts", "number"),
        "max_ts": _field(body, "max_ts", "number"),
        "limit": _field(body, "limit", "count"),
    }


def space_consume(body: dict[str, Any]) -> Params:
    after = _field(body, "after", "count")
    return {
        "space": _field(body, "space", "str", required=True),
        "after": 0 if after is None else after,
        "min_ts": _field(body, "min_ts", "number"),
        "max_ts": _field(body, "max_ts", "number"),
        "limit": _field(body, "limit", "count"),
    }


def subscribe_status(body: dict[str, Any]) -> Params:
    segment = _field(body, "segment", "str")
    heartbeat = _field(body, "heartbeat", "number")
    return {
        "space": _field(body, "space", "str", required=True),
        "segment": "*" if segment is None else segment,
        "heartbeat": 30.0 if heartbeat is None else heartbeat,
        "channel": _channel(body),
    }


def acquire_lease(body: dict[str, Any]) -> Params:
    return {
        "key": _field(body, "key", "str", required=True),
        "holder": _field(body, "holder", "str", required=True),
        "ttl": _field(body, "ttl", "number", required=True),
    }


def held_lease(body: dict[str, Any]) -> Params:
    return {
        "key": _field(body, "key", "str", required=True),
        "holder": _field(body, "holder", "str", required=True),
        "token": _field(body, "token", "count", required=True),
        "expires_at": _field(body, "expires_at", "number") or 0.0,
        "ttl": _field(body, "ttl", "number"),
    }


def unsubscribe(body: dict[str, Any]) -> Params:
    name = body.get("subscription")
    if not isinstance(name, str | int) or isinstance(name, bool):
        raise InvalidArgumentError("field 'subscription' must be a subscription's request_id")
    return {"subscription": name}


def sync_request(body: dict[str, Any]) -> Params:
    flags = _field(body, "flags", "strings")
    return {
        "protocol_version": _field(body, "protocol_version", "count", required=True),
        "leader_epoch": _field(body, "leader_epoch", "count", required=True),
        "position": _field(body, "position", "count", required=True),
        "epochs": _epochs(body),
        "compacted_through": _field(body, "compacted_through", "count") or 0,
        "flags": [] if flags is None else flags,
        "node": _field(body, "node", "str"),
    }


def _epochs(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A follower's leader epoch history: ``[{"epoch", "start_position", "id"?}, …]``."""
    epochs: list[Any] | None = _field(body, "epochs", "list")
    if epochs is not None and not all(
        isinstance(e, dict)
        and type(e.get("epoch")) is int
        and type(e.get("start_position")) is int
        and isinstance(e.get("id", ""), str)
        for e in epochs
    ):
        raise InvalidArgumentError(
            'field \'epochs\' must be a list of {"epoch": integer, "start_position":'
            ' integer, "id": string}'
        )
    return epochs


def replication_ack(body: dict[str, Any]) -> Params:
    return {
        "applied": _field(body, "applied", "count", required=True),
        "durable": _field(body, "durable", "count", required=True),
        # The newest leader epoch the follower knows (absent from older followers).
        "epoch": _field(body, "epoch", "count"),
    }


def promote(body: dict[str, Any]) -> Params:
    """``to``: with a coordinator, the node a leader hands its database's lead to."""
    return {"database": _field(body, "database", "str"), "to": _field(body, "to", "str")}


def replicate(body: dict[str, Any]) -> Params:
    databases = _field(body, "databases", "strings")
    return {
        "leader": _field(body, "leader", "str", required=True),
        "databases": databases if databases else ["default"],
    }


def remove_database(body: dict[str, Any]) -> Params:
    delete = body.get("delete", False)
    if type(delete) is not bool:
        raise InvalidArgumentError("field 'delete' must be a boolean")
    return {"name": _field(body, "name", "str", required=True), "delete": delete}

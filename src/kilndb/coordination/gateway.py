"""Etcd v3's JSON gateway, without I/O: the request bodies and the parsing of replies.

Theory of operation. Etcd serves its gRPC API as JSON over plain HTTP (the "gateway",
``POST /v3/<service>/<method>``). The client in :mod:`kilndb.coordination.etcd` sends
the bodies built here and hands each reply to the parsers here, so that everything
about the encoding lives in one place and is tested without a server:

- keys, values and range ends are base64 strings;
- int64 fields (revisions, versions, lease ids, TTLs) are sent and received as decimal
  strings;
- a field at its zero value is absent from a reply: ``succeeded`` of a failed
  transaction, ``type`` of a PUT event, ``kvs`` of an empty range, ``TTL`` of a
  keep-alive for a lease that is gone;
- streaming methods (watch, lease keep-alive) answer newline-delimited JSON objects,
  each ``{"result": {...}}`` or ``{"error": {...}}``;
- a refused request answers an HTTP error status with
  ``{"error": str, "message": str, "code": grpc_code}``.

Etcd 3.4 serves these paths under ``/v3/`` (and the older ``/v3beta/``); 3.5 and later
serve only ``/v3/``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

from kilndb.errors import CursorTooOldError, InvalidArgumentError, KilnError, NotFoundError

__all__ = [
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteOp",
    "DeleteResult",
    "GetOp",
    "KeyValue",
    "Lease",
    "PutOp",
    "PutResult",
    "RangeResult",
    "TxnOp",
    "TxnResult",
    "WatchEvent",
]

#: gRPC status codes etcd answers with, by name (only those the client tells apart).
GRPC_INVALID_ARGUMENT = 3
GRPC_DEADLINE_EXCEEDED = 4
GRPC_NOT_FOUND = 5
GRPC_OUT_OF_RANGE = 11
GRPC_UNAVAILABLE = 14
#: Codes of a member that cannot answer now (no leader, stopping, timed out): another
#: member may.
RETRYABLE_CODES = frozenset({GRPC_DEADLINE_EXCEEDED, GRPC_UNAVAILABLE})


# -- the types ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd holds it. ``create_revision`` is the revision that created it
    (0 for a key that does not exist), ``mod_revision`` the one that last changed it,
    ``version`` how many times it was written since it was created, ``lease`` the id
    of the lease it is bound to (0 for none). In a DELETE event only ``key`` and
    ``mod_revision`` (the deleting revision) are set."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease granted by etcd: its ``id`` and the ``ttl`` in seconds it was granted."""

    id: int
    ttl: int


CompareTarget = Literal["version", "create_revision", "mod_revision", "value", "lease"]
CompareOp = Literal["=", "!=", "<", ">"]

_TARGETS: dict[str, tuple[str, str]] = {
    # target: (etcd's enum name, the field that holds the operand)
    "version": ("VERSION", "version"),
    "create_revision": ("CREATE", "create_revision"),
    "mod_revision": ("MOD", "mod_revision"),
    "value": ("VALUE", "value"),
    "lease": ("LEASE", "lease"),
}
_OPS = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction: ``target`` of ``key`` compared with ``operand``.

    ``Compare("leader", "create_revision", "=", 0)`` holds when nobody holds
    ``leader``. ``value`` compares bytes; the other targets compare integers (a key
    that does not exist has version, revisions and lease 0). Raises
    InvalidArgumentError for an unknown target or operator, or an operand of the
    wrong type.
    """

    key: str
    target: CompareTarget
    op: CompareOp
    operand: int | bytes

    def __post_init__(self) -> None:
        if self.target not in _TARGETS:
            raise InvalidArgumentError(f"unknown compare target {self.target!r}")
        if self.op not in _OPS:
            raise InvalidArgumentError(f"unknown compare operator {self.op!r}")
        wants_bytes = self.target == "value"
        if wants_bytes != isinstance(self.operand, bytes) or isinstance(self.operand, bool):
            kind = "bytes" if wants_bytes else "an int"
            raise InvalidArgumentError(f"a {self.target} compare takes {kind}")


@dataclass(frozen=True, slots=True)
class GetOp:
    """Read ``key`` (every key that starts with it, with ``prefix``) in a transaction."""

    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class PutOp:
    """Write ``value`` at ``key`` in a transaction, bound to lease ``lease`` (0: none)."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class DeleteOp:
    """Delete ``key`` (every key that starts with it, with ``prefix``) in a transaction."""

    key: str
    prefix: bool = False


TxnOp = GetOp | PutOp | DeleteOp


@dataclass(frozen=True, slots=True)
class RangeResult:
    """What a :class:`GetOp` read: the keys, in key order."""

    kvs: list[KeyValue]


@dataclass(frozen=True, slots=True)
class PutResult:
    """A :class:`PutOp` applied at ``revision``."""

    revision: int


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """A :class:`DeleteOp` removed ``deleted`` keys at ``revision``."""

    deleted: int
    revision: int


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A transaction's outcome: whether every compare held (and so which branch ran),
    the store's revision after it (the transaction's own revision when its branch
    wrote), and one result per operation of the branch that ran, in order."""

    succeeded: bool
    revision: int
    responses: list[RangeResult | PutResult | DeleteResult]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by a watch: ``type`` PUT or DELETE, the key after it (for a
    DELETE, its key and the deleting revision only) and the ``revision`` of the
    change."""

    type: Literal["PUT", "DELETE"]
    kv: KeyValue
    revision: int


# -- the encoding ------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_bytes(key: str) -> bytes:
    """The bytes etcd stores for ``key`` (UTF-8). Raises InvalidArgumentError for an
    empty key, which etcd refuses."""
    if not isinstance(key, str) or not key:
        raise InvalidArgumentError("an etcd key is a non-empty str")
    return key.encode()


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``:
    the prefix with its last byte that is not 0xff incremented (and what follows it
    dropped); ``b"\\0"`` — every key — when there is none."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def range_body(key: str, *, prefix: bool = False, revision: int = 0) -> dict[str, Any]:
    raw = key_bytes(key)
    body: dict[str, Any] = {"key": b64(raw)}
    if prefix:
        body["range_end"] = b64(prefix_end(raw))
    if revision:
        body["revision"] = str(revision)
    return body


def put_body(key: str, value: bytes, lease: int = 0) -> dict[str, Any]:
    if not isinstance(value, bytes):
        raise InvalidArgumentError("an etcd value is bytes")
    body: dict[str, Any] = {"key": b64(key_bytes(key)), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return body


def compare_body(compare: Compare) -> dict[str, Any]:
    target, field = _TARGETS[compare.target]
    operand = compare.operand
    encoded = b64(operand) if isinstance(operand, bytes) else str(operand)
    return {
        "key": b64(key_bytes(compare.key)),
        "target": target,
        "result": _OPS[compare.op],
        field: encoded,
    }


def op_body(op: TxnOp) -> dict[str, Any]:
    if isinstance(op, GetOp):
        return {"request_range": range_body(op.key, prefix=op.prefix)}
    if isinstance(op, PutOp):
        return {"request_put": put_body(op.key, op.value, op.lease)}
    if isinstance(op, DeleteOp):
        return {"request_delete_range": range_body(op.key, prefix=op.prefix)}
    raise InvalidArgumentError(f"not a transaction operation: {op!r}")


def txn_body(compare: list[Compare], success: list[TxnOp], failure: list[TxnOp]) -> dict[str, Any]:
    return {
        "compare": [compare_body(item) for item in compare],
        "success": [op_body(op) for op in success],
        "failure": [op_body(op) for op in failure],
    }


def watch_body(prefix: str, start_revision: int) -> dict[str, Any]:
    body = range_body(prefix, prefix=True)
    if start_revision:
        body["start_revision"] = str(start_revision)
    return {"create_request": body}


# -- the parsing -------------------------------------------------------------------------


def integer(reply: dict[str, Any], name: str) -> int:
    """An int64 field of a reply: a decimal string, absent when zero."""
    return int(reply.get(name, 0))


def revision_of(reply: dict[str, Any]) -> int:
    return integer(reply.get("header", {}), "revision")


def key_value(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")).decode(errors="surrogateescape"),
        value=base64.b64decode(raw.get("value", "")),
        create_revision=integer(raw, "create_revision"),
        mod_revision=integer(raw, "mod_revision"),
        version=integer(raw, "version"),
        lease=integer(raw, "lease"),
    )


def key_values(reply: dict[str, Any]) -> list[KeyValue]:
    return [key_value(raw) for raw in reply.get("kvs", [])]


def txn_result(reply: dict[str, Any]) -> TxnResult:
    responses: list[RangeResult | PutResult | DeleteResult] = []
    for item in reply.get("responses", []):
        if "response_range" in item:
            responses.append(RangeResult(key_values(item["response_range"])))
        elif "response_put" in item:
            responses.append(PutResult(revision_of(item["response_put"])))
        elif "response_delete_range" in item:
            deleted = item["response_delete_range"]
            responses.append(DeleteResult(integer(deleted, "deleted"), revision_of(deleted)))
        else:
            raise KilnError(f"etcd answered a transaction step this client cannot read: {item}")
    return TxnResult(bool(reply.get("succeeded", False)), revision_of(reply), responses)


def watch_events(result: dict[str, Any]) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    for raw in result.get("events", []):
        kv = key_value(raw.get("kv", {}))
        kind: Literal["PUT", "DELETE"] = "DELETE" if raw.get("type") == "DELETE" else "PUT"
        events.append(WatchEvent(kind, kv, kv.mod_revision))
    return events


def refusal(code: int, message: str, what: str) -> KilnError:
    """The error for a request etcd refused with gRPC ``code`` (not one to retry on
    another member)."""
    text = f"etcd refused {what}: {message}"
    if code == GRPC_NOT_FOUND:
        return NotFoundError(text)
    if code == GRPC_INVALID_ARGUMENT:
        return InvalidArgumentError(text)
    return KilnError(text)


def compacted(requested: int, compact_revision: int, what: str) -> CursorTooOldError:
    """The error for a read or watch from revision ``requested`` that etcd has
    compacted away; ``compact_revision`` is the oldest revision still available."""
    return CursorTooOldError(
        requested,
        compact_revision - 1,
        f"{what} from etcd revision {requested}: etcd has compacted its history up to"
        f" revision {compact_revision}; read the keys again and watch from the revision"
        " that read returns",
    )

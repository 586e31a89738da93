"""The KilnDB error tree.

Every error KilnDB raises is a :class:`KilnError`. Each class declares its stable wire
``error_code``, so that a server can name the error in a reply and the client can raise
the very same class on its side, and the ``http_status`` an HTTP reply carrying it has
(derived from the class, never from a separate table)::

    class                              error_code           HTTP
    KilnError                          internal             500
    ├── InvalidArgumentError           bad_request          400  (also a ValueError)
    ├── ConflictError                  conflict             409  expected_seq mismatch
    ├── NotFoundError                  not_found            404
    ├── CursorTooOldError              cursor_too_old       409  cursor compacted away
    ├── ClosedError                    closed               503  database or subscription closed
    ├── ProtocolError                  protocol_error       400  malformed frame or message
    │   ├── FrameTooLargeError         frame_too_large      413
    │   └── UnknownOpError             unknown_op           400
    ├── StorageError                   storage_error        500  I/O failure, fsync failure
    │   ├── CorruptRecordError         corrupt_record       500  damage in the middle of a log
    │   ├── DatabaseLockedError        database_locked      503  opened by another process
    │   └── DiskFullError              disk_full            507
    ├── AuthenticationError            unauthenticated      401
    ├── PermissionDeniedError          permission_denied    403
    ├── LeaseHeldError                 lease_held           409
    ├── LeaseLostError                 lease_lost           409
    ├── ConnectionLostError            connection_lost      503  (raised by clients)
    │   └── WriteOutcomeUnknownError   outcome_unknown      503  a write sent, its reply lost
    ├── ReadOnlyReplicaError           read_only_replica    421  write to a follower
    ├── StaleEpochError                stale_epoch          409  a leader epoch older than one known
    ├── UnavailableError               unavailable          503
    │   └── CoordinatorUnavailableError coordinator_unavailable 503  no etcd member answered
    ├── SubscriberOverflowError        subscriber_overflow  503
    └── ReplicationTimeoutError        replication_timeout  504

4xx statuses are the client's to fix; 5xx are the server's state, and a retry may
succeed. ``read_only_replica`` is 421 (Misdirected Request): the same request succeeds
on the leader the error names, not on this node later. ``database_locked`` is 503: another
process holds the database and it is free again once that process lets go.
``cursor_too_old`` is 409, as the SSE endpoint has always answered it. ``stale_epoch`` is
409: the node (or the leader a follower reached) led the database at an epoch another
node has since superseded; a write there conflicts with the newer leader's history.

Errors carry structured fields (``ConflictError.actual``, ``CorruptRecordError.path``
and ``.offset`` …); :meth:`KilnError.to_wire` and :func:`error_from_wire` turn them into
a reply dict and back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

__all__ = [
    "AuthenticationError",
    "ClosedError",
    "ConflictError",
    "ConnectionLostError",
    "CoordinatorUnavailableError",
    "CorruptRecordError",
    "CursorTooOldError",
    "DatabaseLockedError",
    "DiskFullError",
    "FrameTooLargeError",
    "InvalidArgumentError",
    "KilnError",
    "LeaseHeldError",
    "LeaseLostError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "ReadOnlyReplicaError",
    "ReplicationTimeoutError",
    "StaleEpochError",
    "StorageError",
    "SubscriberOverflowError",
    "UnavailableError",
    "UnknownOpError",
    "WriteOutcomeUnknownError",
    "error_classes",
    "error_from_wire",
]


class KilnError(Exception):
    """Root of every error KilnDB raises."""

    #: The error's stable name on every transport.
    error_code: ClassVar[str] = "internal"
    #: The status of an HTTP reply carrying this error.
    http_status: ClassVar[int] = 500
    #: Names of the structured fields carried on the wire besides the message.
    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, Any]:
        """The error as the body of a failed reply."""
        reply: dict[str, Any] = {"ok": False, "error": self.message, "error_code": self.error_code}
        for name in self.fields:
            reply[name] = getattr(self, name)
        return reply


class InvalidArgumentError(KilnError, ValueError):
    """An argument has the wrong type or value; nothing was written."""

    error_code = "bad_request"
    http_status = 400


class ConflictError(KilnError):
    """``expected_seq`` did not match the key's latest sequence number."""

    error_code = "conflict"
    http_status = 409
    fields = ("store", "key", "expected", "actual")

    def __init__(self, store: str, key: str, expected: int, actual: int, message: str = "") -> None:
        super().__init__(
            message or f"conflict on {store}/{key}: expected seq {expected}, actual seq {actual}"
        )
        self.store = store
        self.key = key
        self.expected = expected
        self.actual = actual


class NotFoundError(KilnError):
    """The key, store or database does not exist."""

    error_code = "not_found"
    http_status = 404


class CursorTooOldError(KilnError):
    """The requested cursor points before facts that compaction has removed.

    ``cursor``: the position asked for. ``oldest``: the compaction watermark that refused
    it, the highest position removed (of ``store``, or of the whole log when ``store``
    is None, as for a replication position). ``store``: the store whose facts were
    removed after the cursor. ``oldest_available``: the oldest position a reader can
    still resume from without missing anything, ``oldest + 1`` (not necessarily a
    position of that store: the first position after the watermark, whatever its
    store).
    """

    error_code = "cursor_too_old"
    http_status = 409
    fields = ("cursor", "oldest", "store", "oldest_available")

    def __init__(
        self, cursor: int, oldest: int, message: str = "", store: str | None = None
    ) -> None:
        self.cursor = cursor
        self.oldest = oldest
        self.store = store
        #: None only on an error rebuilt from an older server's reply.
        self.oldest_available: int | None = oldest + 1
        super().__init__(message or self._describe())

    def _describe(self) -> str:
        scope = "" if self.store is None else f" for store {self.store!r}"
        return (
            f"cursor {self.cursor} is too old{scope}: facts up to position {self.oldest} were"
            f" compacted away; the oldest still available is {self.oldest_available}"
        )


class ClosedError(KilnError):
    """The database or subscription has been closed."""

    error_code = "closed"
    http_status = 503


class ProtocolError(KilnError):
    """A frame or message broke the protocol."""

    error_code = "protocol_error"
    http_status = 400


class FrameTooLargeError(ProtocolError):
    """A frame, HTTP body or WebSocket message larger than the server's
    ``max_frame_bytes``: ``size`` is the size announced (where the transport does not
    announce it, the least it can be) and ``limit`` the maximum."""

    error_code = "frame_too_large"
    http_status = 413
    fields = ("size", "limit")

    def __init__(self, size: int, limit: int, message: str = "") -> None:
        super().__init__(message or f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class UnknownOpError(ProtocolError):
    """The request named an operation the server does not know."""

    error_code = "unknown_op"
    http_status = 400


class StorageError(KilnError):
    """The storage engine could not complete an I/O operation."""

    error_code = "storage_error"
    http_status = 500


class CorruptRecordError(StorageError):
    """A record in the middle of a data file failed its CRC or framing check."""

    error_code = "corrupt_record"
    http_status = 500
    fields = ("path", "offset")

    def __init__(self, path: str, offset: int, message: str = "") -> None:
        super().__init__(message or f"corrupt record in {path} at offset {offset}")
        self.path = path
        self.offset = offset


class DatabaseLockedError(StorageError):
    """Another process holds the database's ``LOCK``."""

    error_code = "database_locked"
    http_status = 503


class DiskFullError(StorageError):
    """The disk is full; the write was not applied."""

    error_code = "disk_full"
    http_status = 507


class AuthenticationError(KilnError):
    """Missing, expired or invalid credentials."""

    error_code = "unauthenticated"
    http_status = 401


class PermissionDeniedError(KilnError):
    """The credentials do not grant this operation."""

    error_code = "permission_denied"
    http_status = 403


class LeaseHeldError(KilnError):
    """The lease is held by someone else: ``holder`` until ``expires_at``."""

    error_code = "lease_held"
    http_status = 409
    fields = ("key", "holder", "expires_at")

    def __init__(self, key: str, holder: str, expires_at: float) -> None:
        until = datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="milliseconds")
        super().__init__(
            f"lease {key!r} is held by {holder!r} until {until.replace('+00:00', 'Z')}"
        )
        self.key = key
        self.holder = holder
        self.expires_at = expires_at


class LeaseLostError(KilnError):
    """The lease expired or a newer fencing token exists for its key."""

    error_code = "lease_lost"
    http_status = 409
    fields = ("key", "token", "current_token")

    def __init__(self, key: str, token: int, current_token: int | None, reason: str) -> None:
        super().__init__(f"lease {key!r} with token {token} is lost: {reason}")
        self.key = key
        self.token = token
        self.current_token = current_token


class ConnectionLostError(KilnError):
    """The connection to the server is gone."""

    error_code = "connection_lost"
    http_status = 503


class WriteOutcomeUnknownError(ConnectionLostError):
    """A write was sent but the connection broke before its reply came: the server may
    or may not have applied it (raised by clients).

    Clients send reads, and writes that carry an ``id``, again on a new connection by
    themselves (the server applies an ``id`` once); a write without one cannot be
    repeated safely, so this error hands the decision back. ``op`` names the request,
    ``url`` the server it went to.
    """

    error_code = "outcome_unknown"
    http_status = 503
    fields = ("op", "url")

    def __init__(self, op: str, url: str, message: str = "") -> None:
        super().__init__(
            message
            or f"{op} was sent to {url} but no reply came: it may or may not have been"
            " applied; retry it with an id= so that the server applies it once"
        )
        self.op = op
        self.url = url


class ReadOnlyReplicaError(KilnError):
    """Writes go to the leader; this node is a read-only replica."""

    error_code = "read_only_replica"
    http_status = 421
    fields = ("leader",)

    def __init__(self, leader: str | None, message: str = "") -> None:
        super().__init__(message or f"read-only replica; the leader is {leader or 'unknown'}")
        self.leader = leader


class StaleEpochError(KilnError):
    """Database ``database`` was led here (or by the leader a follower reached) at leader
    epoch ``epoch``, older than the ``newest`` epoch known for it: that leader is fenced,
    and neither takes writes nor ships its log to followers that know better."""

    error_code = "stale_epoch"
    http_status = 409
    fields = ("database", "epoch", "newest")

    def __init__(self, database: str, epoch: int, newest: int, message: str = "") -> None:
        super().__init__(
            message
            or f"database {database} is fenced: its leader epoch {epoch} is older than epoch"
            f" {newest}, which another node leads"
        )
        self.database = database
        self.epoch = epoch
        self.newest = newest


class UnavailableError(KilnError):
    """The resource is temporarily unavailable; retry later."""

    error_code = "unavailable"
    http_status = 503


class CoordinatorUnavailableError(UnavailableError):
    """No member of the coordinator (etcd) answered: the request could not be made, or
    was sent and its answer lost (the message says which). Leadership cannot be taken,
    renewed or checked until one answers again."""

    error_code = "coordinator_unavailable"
    http_status = 503


class SubscriberOverflowError(KilnError):
    """A subscriber fell too far behind and was disconnected."""

    error_code = "subscriber_overflow"
    http_status = 503
    fields = ("position",)

    def __init__(self, position: int, message: str = "") -> None:
        super().__init__(message or f"subscriber overflow; resume after position {position}")
        self.position = position


class ReplicationTimeoutError(KilnError):
    """Not enough replicas acknowledged the write in time (it stays committed)."""

    error_code = "replication_timeout"
    http_status = 504


def error_classes() -> list[type[KilnError]]:
    """Every class of the tree that names its own ``error_code``, root first."""
    classes: list[type[KilnError]] = []
    pending: list[type[KilnError]] = [KilnError]
    while pending:
        cls = pending.pop(0)
        if "error_code" in vars(cls):
            classes.append(cls)
        pending.extend(cls.__subclasses__())
    return classes


_BY_CODE = {cls.error_code: cls for cls in error_classes()}


def error_from_wire(reply: dict[str, Any]) -> KilnError:
    """Rebuild the error a server raised from its failed reply."""
    code = str(reply.get("error_code", "internal"))
    message = str(reply.get("error", code))
    cls = _BY_CODE.get(code, KilnError)
    if not cls.fields:
        return cls(message)
    kwargs = {name: reply.get(name) for name in cls.fields}
    error = cls.__new__(cls)
    KilnError.__init__(error, message)
    for name, value in kwargs.items():
        setattr(error, name, value)
    return error

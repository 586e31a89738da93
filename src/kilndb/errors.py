"""The KilnDB error tree.

Every error KilnDB raises is a :class:`KilnError`. Each class has a stable wire
``error_code`` so that a server can name the error in a reply and the client can
raise the very same class on its side::

    KilnError                          internal
    ├── InvalidArgumentError           bad_request      (also a ValueError)
    ├── ConflictError                  conflict         expected_seq mismatch
    ├── NotFoundError                  not_found
    ├── CursorTooOldError              cursor_too_old   cursor compacted away
    ├── ClosedError                    closed           database or subscription closed
    ├── ProtocolError                  protocol_error   malformed frame or message
    │   ├── FrameTooLargeError         frame_too_large
    │   └── UnknownOpError             unknown_op
    ├── StorageError                   storage_error    I/O failure, fsync failure
    │   ├── CorruptRecordError         corrupt_record   damage in the middle of a log
    │   ├── DatabaseLockedError        database_locked  opened by another process
    │   └── DiskFullError              disk_full
    ├── AuthenticationError            unauthenticated
    ├── PermissionDeniedError          permission_denied
    ├── LeaseHeldError                 lease_held
    ├── LeaseLostError                 lease_lost
    ├── ConnectionLostError            connection_lost
    ├── ReadOnlyReplicaError           read_only_replica
    ├── UnavailableError               unavailable
    ├── SubscriberOverflowError        subscriber_overflow
    └── ReplicationTimeoutError        replication_timeout

Errors carry structured fields (``ConflictError.actual``, ``CorruptRecordError.path``
and ``.offset`` …); :meth:`KilnError.to_wire` and :func:`error_from_wire` turn them into
a reply dict and back.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AuthenticationError",
    "ClosedError",
    "ConflictError",
    "ConnectionLostError",
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
    "StorageError",
    "SubscriberOverflowError",
    "UnavailableError",
    "UnknownOpError",
    "error_from_wire",
]


class KilnError(Exception):
    """Root of every error KilnDB raises."""

    error_code: ClassVar[str] = "internal"
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


class ConflictError(KilnError):
    """``expected_seq`` did not match the key's latest sequence number."""

    error_code = "conflict"
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


class ProtocolError(KilnError):
    """A frame or message broke the protocol."""

    error_code = "protocol_error"


class FrameTooLargeError(ProtocolError):
    """A frame announced a body larger than the configured maximum."""

    error_code = "frame_too_large"
    fields = ("size", "limit")

    def __init__(self, size: int, limit: int, message: str = "") -> None:
        super().__init__(message or f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class UnknownOpError(ProtocolError):
    """The request named an operation the server does not know."""

    error_code = "unknown_op"


class StorageError(KilnError):
    """The storage engine could not complete an I/O operation."""

    error_code = "storage_error"


class CorruptRecordError(StorageError):
    """A record in the middle of a data file failed its CRC or framing check."""

    error_code = "corrupt_record"
    fields = ("path", "offset")

    def __init__(self, path: str, offset: int, message: str = "") -> None:
        super().__init__(message or f"corrupt record in {path} at offset {offset}")
        self.path = path
        self.offset = offset


class DatabaseLockedError(StorageError):
    """Another process holds the database's ``LOCK``."""

    error_code = "database_locked"


class DiskFullError(StorageError):
    """The disk is full; the write was not applied."""

    error_code = "disk_full"


class AuthenticationError(KilnError):
    """Missing, expired or invalid credentials."""

    error_code = "unauthenticated"


class PermissionDeniedError(KilnError):
    """The credentials do not grant this operation."""

    error_code = "permission_denied"


class LeaseHeldError(KilnError):
    """The lease is held by someone else: ``holder`` until ``expires_at``."""

    error_code = "lease_held"
    fields = ("key", "holder", "expires_at")

    def __init__(self, key: str, holder: str, expires_at: float) -> None:
        super().__init__(f"lease {key!r} is held by {holder!r} until {expires_at:.3f}")
        self.key = key
        self.holder = holder
        self.expires_at = expires_at


class LeaseLostError(KilnError):
    """The lease expired or a newer fencing token exists for its key."""

    error_code = "lease_lost"
    fields = ("key", "token", "current_token")

    def __init__(self, key: str, token: int, current_token: int | None, reason: str) -> None:
        super().__init__(f"lease {key!r} with token {token} is lost: {reason}")
        self.key = key
        self.token = token
        self.current_token = current_token


class ConnectionLostError(KilnError):
    """The connection to the server is gone."""

    error_code = "connection_lost"


class ReadOnlyReplicaError(KilnError):
    """Writes go to the leader; this node is a read-only replica."""

    error_code = "read_only_replica"
    fields = ("leader",)

    def __init__(self, leader: str | None, message: str = "") -> None:
        super().__init__(message or f"read-only replica; the leader is {leader or 'unknown'}")
        self.leader = leader


class UnavailableError(KilnError):
    """The resource is temporarily unavailable; retry later."""

    error_code = "unavailable"


class SubscriberOverflowError(KilnError):
    """A subscriber fell too far behind and was disconnected."""

    error_code = "subscriber_overflow"
    fields = ("position",)

    def __init__(self, position: int, message: str = "") -> None:
        super().__init__(message or f"subscriber overflow; resume after position {position}")
        self.position = position


class ReplicationTimeoutError(KilnError):
    """Not enough replicas acknowledged the write in time (it stays committed)."""

    error_code = "replication_timeout"


def _all_error_classes() -> dict[str, type[KilnError]]:
    classes: dict[str, type[KilnError]] = {}
    pending: list[type[KilnError]] = [KilnError]
    while pending:
        cls = pending.pop()
        classes.setdefault(cls.error_code, cls)
        pending.extend(cls.__subclasses__())
    return classes


_BY_CODE = _all_error_classes()


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

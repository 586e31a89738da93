"""KilnDB: a durable, replicated fact store for Python.

>>> import kilndb
>>> db = kilndb.open("./data")                     # doctest: +SKIP
>>> db.store("tasks").write("t1", {"title": "Hello"})   # doctest: +SKIP
"""

from importlib import import_module as _import_module
from pathlib import Path as _Path
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from kilndb.config import DatabaseConfig, SyncMode
from kilndb.errors import (
    AuthenticationError,
    ClosedError,
    ConflictError,
    ConnectionLostError,
    CoordinatorUnavailableError,
    CorruptRecordError,
    CursorTooOldError,
    DatabaseLockedError,
    DiskFullError,
    FrameTooLargeError,
    InvalidArgumentError,
    KilnError,
    LeaseHeldError,
    LeaseLostError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ReadOnlyReplicaError,
    ReplicationTimeoutError,
    StaleEpochError,
    StorageError,
    SubscriberOverflowError,
    UnavailableError,
    UnknownOpError,
    WriteOutcomeUnknownError,
)
from kilndb.leases import Lease, LeaseKeeper
from kilndb.model import Fact, Write
from kilndb.streams import Entry, Record

if _TYPE_CHECKING:
    from kilndb.client import AsyncRemoteDatabase, RemoteDatabase, connect, connect_async
    from kilndb.engine import CallbackSubscription, Database, Store, Subscription

__version__ = "0.1.0"

# The engine and the client (asyncio, aiohttp) are imported on first use, so that
# importing a light part of the package — the ``kiln`` command's start-up, the error
# classes — does not pay for them.
_LAZY = {
    "AsyncRemoteDatabase": "kilndb.client",
    "RemoteDatabase": "kilndb.client",
    "connect": "kilndb.client",
    "connect_async": "kilndb.client",
    "CallbackSubscription": "kilndb.engine",
    "Database": "kilndb.engine",
    "Store": "kilndb.engine",
    "Subscription": "kilndb.engine",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kilndb' has no attribute {name!r}")
    value = getattr(_import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AsyncRemoteDatabase",
    "AuthenticationError",
    "CallbackSubscription",
    "ClosedError",
    "ConflictError",
    "ConnectionLostError",
    "CoordinatorUnavailableError",
    "CorruptRecordError",
    "CursorTooOldError",
    "Database",
    "DatabaseConfig",
    "DatabaseLockedError",
    "DiskFullError",
    "Entry",
    "Fact",
    "FrameTooLargeError",
    "InvalidArgumentError",
    "KilnError",
    "Lease",
    "LeaseHeldError",
    "LeaseKeeper",
    "LeaseLostError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "ReadOnlyReplicaError",
    "Record",
    "RemoteDatabase",
    "ReplicationTimeoutError",
    "StaleEpochError",
    "StorageError",
    "Store",
    "Subscription",
    "SubscriberOverflowError",
    "SyncMode",
    "UnavailableError",
    "UnknownOpError",
    "Write",
    "WriteOutcomeUnknownError",
    "__version__",
    "connect",
    "connect_async",
    "open",
]


def open(
    path: str | _Path = "./data",
    database: str = "default",
    *,
    sync: SyncMode = "always",
    **options: _Any,
) -> "Database":
    """Open (creating if needed) database ``database`` under the data directory ``path``.

    ``sync`` and the other keyword options fill a :class:`DatabaseConfig`
    (``sync_interval_ms``, ``max_file_size``, ``compaction_threshold``, ``auto_compact``,
    ``max_record_bytes``). Raises DatabaseLockedError if another process has it open,
    CorruptRecordError if a sealed data file is damaged (see ``kiln check --fix``).

    ``path=":memory:"`` (as in SQLite) opens a new, empty, private database that lives
    only until it is closed: its files are kept in a directory in RAM that ``close()``
    removes, every call gives an independent database, and ``sync`` has no effect
    (``db.config.sync`` is ``"none"``); ``db.in_memory`` is then True.
    """
    try:
        config = DatabaseConfig(sync=sync, **options)
    except TypeError as exc:
        raise InvalidArgumentError(str(exc)) from exc
    from kilndb.engine import Database

    return Database(path, database, config)

"""Coordination through etcd v3: the client the coordinator's leadership, fencing and
in-sync replica sets are built on.

:class:`Etcd` speaks etcd's v3 JSON gateway over aiohttp (etcd 3.4 or newer);
:func:`parse_coordinator_url` turns ``etcd://HOST:PORT[,HOST:PORT…]`` into its
endpoints. See docs/coordination.md.
"""

from __future__ import annotations

from kilndb.coordination.etcd import Etcd, parse_coordinator_url
from kilndb.coordination.gateway import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteOp,
    DeleteResult,
    GetOp,
    KeyValue,
    Lease,
    PutOp,
    PutResult,
    RangeResult,
    TxnOp,
    TxnResult,
    WatchEvent,
)

__all__ = [
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteOp",
    "DeleteResult",
    "Etcd",
    "GetOp",
    "KeyValue",
    "Lease",
    "PutOp",
    "PutResult",
    "RangeResult",
    "TxnOp",
    "TxnResult",
    "WatchEvent",
    "parse_coordinator_url",
]

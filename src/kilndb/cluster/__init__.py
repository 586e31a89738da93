"""Cluster membership and metadata by gossip.

SWIM failure detection (probes, indirect probes, suspicion, refutation by incarnation)
and scuttlebutt-replicated per-node metadata, in Pokan's API: :class:`Gossip` runs in a
thread of its own, :class:`AsyncGossip` inside the caller's event loop. The protocol
core (:mod:`kilndb.cluster.core`) is pure; the transport is asyncio UDP + TCP, with
packets authenticated under a cluster key (:mod:`kilndb.cluster.wire`).
"""

from kilndb.cluster.config import ClusterConfig
from kilndb.cluster.gossip import AsyncGossip
from kilndb.cluster.hooks import EVENTS
from kilndb.cluster.messages import (
    PEER,
    ROLES,
    SEED,
    KeyEvent,
    Member,
    MemberEvent,
    MemberState,
    ShutdownEvent,
    StartEvent,
    SyncEvent,
)
from kilndb.cluster.threaded import Gossip
from kilndb.cluster.wire import WireError

__all__ = [
    "EVENTS",
    "PEER",
    "ROLES",
    "SEED",
    "AsyncGossip",
    "ClusterConfig",
    "Gossip",
    "KeyEvent",
    "Member",
    "MemberEvent",
    "MemberState",
    "ShutdownEvent",
    "StartEvent",
    "SyncEvent",
    "WireError",
]

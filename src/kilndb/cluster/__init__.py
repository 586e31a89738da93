"""Cluster membership and metadata by gossip (SWIM failure detection, scuttlebutt
metadata); the protocol core is pure, the transport is asyncio UDP + TCP."""

from kilndb.cluster.config import ClusterConfig
from kilndb.cluster.messages import KeyEvent, Member, MemberEvent, MemberState, SyncEvent

__all__ = ["ClusterConfig", "KeyEvent", "Member", "MemberEvent", "MemberState", "SyncEvent"]

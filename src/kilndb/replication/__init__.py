"""Replication: followers that stream a leader's databases, record for record.

:class:`Follower` keeps a local copy of one database of a leader, from Python, without
a server (see :mod:`kilndb.replication.embedded`); :class:`ReplicaView` is how it is
read meanwhile.
"""

from kilndb.replication.embedded import Follower
from kilndb.replication.follower import CONNECT_TIMEOUT
from kilndb.replication.protocol import PROTOCOL_VERSION
from kilndb.replication.replica import ReplicaStore, ReplicaView

__all__ = ["CONNECT_TIMEOUT", "PROTOCOL_VERSION", "Follower", "ReplicaStore", "ReplicaView"]

"""The leader's side of replication for a whole server: handshakes, links and acks.

A follower's ``sync_request`` is answered here (:meth:`LeaderSide.handshake`) with the
database's ``shard_info`` — and, when the follower holds records this leader's history
does not or lacks records compaction removed, with what it must cut or that it must
start over. Otherwise its connection becomes a :class:`FollowerLink`, which ships the
log; the links' acknowledgements wake the writes waiting for replicas
(:meth:`LeaderSide.wait_replicas`).

Fencing: a follower that sends a leader epoch newer than this server's (in
``sync_request`` or an ack) tells it that it has been superseded. That epoch goes into
the server's :class:`~kilndb.replication.fencing.EpochFence`, which fences the database
here at once (:meth:`kilndb.server.following.Following.fence`); the follower is refused
with ``stale_epoch``. A database fenced here ships to no one, and a write waiting for
replicas when the fence lands fails with ``stale_epoch`` instead of being acknowledged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kilndb.engine import Database
from kilndb.errors import (
    NotFoundError,
    ProtocolError,
    ReplicationTimeoutError,
    StaleEpochError,
)
from kilndb.protocol import Request
from kilndb.protocol.ops import OPS
from kilndb.replication.fencing import EpochFence
from kilndb.replication.protocol import PROTOCOL_VERSION as REPLICATION_PROTOCOL
from kilndb.replication.protocol import divergence_point
from kilndb.server.metrics import Metrics
from kilndb.server.nodes import NodeManager
from kilndb.server.replication import FollowerLink

__all__ = ["Handshake", "LeaderSide"]


@dataclass(frozen=True, slots=True)
class Handshake:
    """The reply to a ``sync_request``; ``db`` is set when shipping may start, from the
    follower's ``position`` (``holds``: how far its copy of a compacted log reaches)."""

    reply: dict[str, Any]
    db: Database | None = None
    position: int = 0
    holds: int = 0


class LeaderSide:
    """The followers streaming this server's databases, and the writes waiting for them."""

    def __init__(
        self,
        databases: NodeManager,
        metrics: Metrics,
        min_insync_replicas: int = 0,
        replica_timeout: float = 5.0,
        fence: EpochFence | None = None,
    ) -> None:
        self.databases = databases
        #: The newest leader epochs this server knows.
        self.fence = fence if fence is not None else EpochFence()
        self.metrics = metrics
        self.min_insync_replicas = min_insync_replicas
        self.replica_timeout = replica_timeout
        self.links: set[FollowerLink] = set()
        #: Notified when a follower acknowledges (writes waiting for replicas).
        self._acks = threading.Condition()
        self._ack_count = 0
        #: Held while the in-sync set is decided and published (one change at a time).
        self._isr_lock = threading.Lock()
        #: With a coordinator: publishes a database's in-sync set (blocking; raises if
        #: this node no longer leads it), and the sets published, by database.
        self.publish_isr: Callable[[str, frozenset[str]], None] | None = None
        self.isr: dict[str, frozenset[str]] = {}
        #: The furthest position acknowledged per database (in-sync bookkeeping).
        self.acked_through: dict[str, int] = {}
        #: How long an in-sync member may lag behind a write before it leaves the set.
        self.lag_max = 2.0
        # A fence wakes the writes waiting for replicas: they fail rather than wait.
        self.fence.on_newer(lambda database, epoch, leader: self.acked())

    def handshake(self, request: Request) -> Handshake:
        """Answer a follower's ``sync_request`` for ``request.database``; raises the
        KilnError that refuses it."""
        params = request.params
        name = request.database or "default"
        if params["protocol_version"] != REPLICATION_PROTOCOL:
            raise ProtocolError(
                f"replication protocol version {params['protocol_version']} is not"
                f" {REPLICATION_PROTOCOL}"
            )
        if not self.databases.exists(name):
            raise NotFoundError(f"this server has no database {name!r} to replicate")
        db = self.databases.get(name)
        if params["leader_epoch"] > db.leader_epoch:
            # The follower knows a newer leader: this one is superseded. Fenced first,
            # then refused.
            self.fence.learn(name, params["leader_epoch"])
            raise StaleEpochError(
                name,
                db.leader_epoch,
                params["leader_epoch"],
                f"epoch mismatch: the follower is at leader epoch {params['leader_epoch']},"
                f" this server at {db.leader_epoch}; this server no longer leads {name}",
            )
        # A leader that knows it is superseded ships nothing.
        self.fence.check(name, db.leader_epoch)
        epochs = db.epochs
        history = params["epochs"]
        if history is None:  # a follower that sends only its epoch number
            history = [e for e in epochs if e["epoch"] <= params["leader_epoch"]]
        diverged_after = divergence_point(epochs, history, params["position"])
        stats = db.stats()
        compacted = db.compacted_through
        shard_info = {
            "type": "shard_info",
            "database": name,
            "database_id": db.database_id,
            "protocol_version": REPLICATION_PROTOCOL,
            "leader_epoch": db.leader_epoch,
            "epochs": epochs,
            "last_position": stats["last_position"],
            "durable_position": stats["durable_position"],
            "compacted_through": compacted,
            "compacted_through_by_store": db.compacted_through_by_store,
        }
        if diverged_after is None and params["position"] > stats["last_position"]:
            # The follower holds records this leader lost (a crash before they were
            # durable here): they are not this leader's, whatever their positions.
            diverged_after = stats["last_position"]
        # A copy made from this log compacted as far as it is now lacks nothing (an
        # interrupted full copy resumes); any other copy behind compaction may.
        holds = params["compacted_through"]
        full_resync = (
            diverged_after is None and 0 < params["position"] < compacted and holds < compacted
        )
        if diverged_after is None and not full_resync:
            return Handshake(shard_info, db, params["position"], holds)
        # The follower holds records this leader's history does not (it must cut them),
        # or compaction removed records it lacks (it must start over): either way it
        # asks again before anything is shipped.
        if full_resync:
            self.metrics.event("follower_full_resync", database=name, compacted=compacted)
        else:
            self.metrics.event("follower_diverged", database=name, truncate_after=diverged_after)
        return Handshake(
            {**shard_info, "truncate_after": diverged_after, "full_resync": full_resync}
        )

    def add(self, link: FollowerLink) -> None:
        self.links.add(link)
        self.metrics.event("follower_connected", database=link.db.name, peer=link.peer)

    def remove(self, link: FollowerLink) -> None:
        link.close()
        self.links.discard(link)

    def replicas_for(self, request: Request) -> int:
        """How many followers must have a write durably before it is answered."""
        if not OPS[request.op].writes:
            return 0
        asked = request.params.get("replicas")
        return self.min_insync_replicas if asked is None else int(asked)

    def acked(self) -> None:
        """A follower acknowledged something: wake the writes waiting for replicas."""
        with self._acks:
            self._ack_count += 1
            self._acks.notify_all()

    def wait_replicas(self, database: str, position: int, replicas: int) -> None:
        """Block until ``replicas`` followers of ``database`` have ``position`` durably;
        ReplicationTimeoutError after ``replica_timeout`` (the write stays committed).

        With in-sync replicas (a coordinator): also until every member of the published
        in-sync set holds it. A member that lags for ``lag_max`` seconds is first taken
        out of the set (published before the write is answered), and a follower that
        holds every acknowledged write is added, so that the published set always names
        followers holding every acknowledged write: only they may take over."""
        timeout = self.replica_timeout
        started = time.monotonic()
        deadline = started + timeout
        while True:
            with self._acks:
                seen = self._ack_count
            own = self.databases.leader_epoch(database)
            self.fence.check(database, own)  # fenced while waiting: not acknowledged
            holders = {
                link.node or link.peer
                for link in list(self.links)
                if not link.closed
                and link.replica
                and link.superseded_by is None
                and link.db.name == database
                and link.durable >= position
            }
            if len(holders) >= replicas:
                if self.publish_isr is None:
                    return
                # Never under ``_acks``: publishing waits for the event loop, which takes
                # ``_acks`` to record a follower's acknowledgement.
                with self._isr_lock:
                    waited = time.monotonic() - started
                    if self._in_sync(database, position, holders, replicas, waited):
                        return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplicationTimeoutError(
                    f"{len(holders)} of {replicas} replicas acknowledged position"
                    f" {position} within {timeout:g} s; the write is committed on the"
                    " leader and will reach the followers when they catch up"
                )
            with self._acks:
                if self._ack_count == seen:  # nothing new since the holders were counted
                    self._acks.wait(min(remaining, self.lag_max / 4))

    def _in_sync(
        self, database: str, position: int, holders: set[str], replicas: int, waited: float
    ) -> bool:
        """Whether a write at ``position`` held by ``holders`` may be answered now; moves
        the published in-sync set first if it must (hold ``_isr_lock``)."""
        assert self.publish_isr is not None
        current = self.isr.get(database, frozenset())
        through = max(self.acked_through.get(database, 0), position)
        if current <= holders:
            # Everyone in the set holds it. Followers that hold every acknowledged write
            # (this one included) may join the set.
            joined = frozenset(
                link.node
                for link in list(self.links)
                if link.node
                and link.replica
                and not link.closed
                and link.db.name == database
                and link.durable >= through
            )
            wanted = current | joined
        elif waited >= self.lag_max:
            # The laggards leave; whoever holds every acknowledged write stays or joins.
            wanted = frozenset(
                link.node or link.peer
                for link in list(self.links)
                if not link.closed
                and link.replica
                and link.db.name == database
                and link.durable >= through
            )
            if len(wanted) < replicas:
                return False
        else:
            return False  # wait for the laggards a little longer
        if wanted != current:
            self.publish_isr(database, wanted)  # raises if this node no longer leads
            self.isr[database] = wanted
            self.metrics.event("isr_changed", database=database, members=sorted(wanted))
        self.acked_through[database] = through
        return True

    def start_isr(self, database: str, members: frozenset[str]) -> None:
        """A new leadership of ``database`` begins with these in-sync members."""
        with self._isr_lock:
            self.isr[database] = members
            self.acked_through.pop(database, None)

    def status(self) -> list[dict[str, Any]]:
        """The followers this server ships to."""
        return [link.status() for link in list(self.links) if not link.closed]

    def close(self) -> None:
        """Stop shipping to every follower (the server is stopping)."""
        for link in list(self.links):
            self.remove(link)

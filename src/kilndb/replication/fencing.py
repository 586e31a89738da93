"""Epoch fencing: the newest leader epoch a server knows for each database.

Theory of operation
-------------------
Every promotion starts a new leader epoch (a number that only grows, recorded in the
database's ``META``). A node that led a database at epoch E and has been superseded — a
follower promoted at E + 1 while it was dead, partitioned or paused — must neither take
writes for it nor have its log appended anywhere: whatever it acknowledges there is cut
as a divergent tail once it rejoins. KilnDB fences such a leader *at the resource*:

* A server remembers, per database, the newest epoch it has heard of — from its own
  ``META``, from a leader's ``shard_info``, from gossip metadata (a member publishing
  ``role: leader`` at a higher epoch), from a follower's ``sync_request`` or
  ``replication_ack``. :class:`EpochFence` is that memory (in RAM: ``META`` holds the
  durable part, the history this node's log was written under).
* A follower refuses a leader whose epoch is older than the newest it knows: the
  handshake fails with :class:`~kilndb.errors.StaleEpochError`, a stream already open
  stops before the next shipment is appended, and no acknowledgement goes back.
* A leader that hears of a newer epoch for a database it leads fences itself: writes
  are refused from that moment (``read_only_replica`` naming the new leader, or
  ``stale_epoch`` while it is unknown) — see :meth:`kilndb.server.following.Following.fence`.

This module holds no I/O and no clock; listeners registered with :meth:`EpochFence.on_newer`
are told (from the thread that learned it) when a newer epoch becomes known.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from kilndb.errors import StaleEpochError

__all__ = ["EpochFence", "Known"]

#: ``listener(database, epoch, leader_url | None)``.
Listener = Callable[[str, int, str | None], None]


@dataclass(frozen=True, slots=True)
class Known:
    """The newest epoch heard of for one database, and who leads it there (if known)."""

    epoch: int
    leader: str | None = None


class EpochFence:
    """The newest leader epoch known per database, shared by a server's parts.

    Thread-safe: followers' threads, the event loop and workers all read and teach it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, Known] = {}
        self._listeners: list[Listener] = []

    def on_newer(self, listener: Listener) -> None:
        """Call ``listener(database, epoch, leader)`` whenever :meth:`learn` hears of an
        epoch newer than any known before for that database, or of the leader at the
        newest one."""
        self._listeners.append(listener)

    def learn(self, database: str, epoch: int, leader: str | None = None) -> bool:
        """Record that ``database`` is led at ``epoch`` (by ``leader``, when known).

        Returns True when that is news — a newer epoch, or the leader of the newest one
        learned for the first time — and tells the listeners; False otherwise.
        """
        with self._lock:
            known = self._known.get(database)
            if known is not None and (
                epoch < known.epoch
                or (epoch == known.epoch and (leader is None or leader == known.leader))
            ):
                return False
            if known is not None and epoch == known.epoch:
                leader = leader or known.leader
            self._known[database] = Known(epoch, leader)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(database, epoch, leader)
        return True

    def known(self, database: str) -> Known | None:
        """The newest epoch learned for ``database`` (not counting its own ``META``)."""
        with self._lock:
            return self._known.get(database)

    def newest(self, database: str, own: int = 0) -> int:
        """The newest epoch known for ``database``: ``own`` (its ``META``) or a newer
        one learned."""
        known = self.known(database)
        return own if known is None else max(own, known.epoch)

    def check(self, database: str, epoch: int, own: int = 0) -> None:
        """Raise StaleEpochError when ``epoch`` is older than the newest known epoch of
        ``database`` (``own``: the epoch of the local copy's ``META``)."""
        newest = self.newest(database, own)
        if epoch < newest:
            raise StaleEpochError(database, epoch, newest)

    def snapshot(self) -> dict[str, Known]:
        """Everything learned, for status."""
        with self._lock:
            return dict(self._known)

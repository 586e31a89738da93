"""The member table: SWIM's state rules, refutation and the suspicion timers.

One row per member other than this node (``_Peer``), and this node's own incarnation.
:meth:`MemberTable.apply` is the whole state table (see :mod:`kilndb.cluster.core` for
the protocol around it):

=========  ============================================  ===============================
update     accepted when                                  effect
=========  ============================================  ===============================
Alive      unknown member, or incarnation > known          alive (joined / alive again)
           incarnation = known, which was only heard of      its addresses and role taken
                                                           (state kept)
Suspect    alive or suspect, incarnation >= known          suspect; a new ``by`` at the
                                                           same incarnation confirms and
                                                           shortens the timer
Dead       alive or suspect, incarnation >= known          dead
Left       alive or suspect, incarnation >= known          left
=========  ============================================  ===============================

An update about this node itself is never stored: a ``Suspect``/``Dead``/``Left`` at an
incarnation at least ours, or an ``Alive`` of a newer incarnation (or another address)
that we did not send, makes us *refute* with a higher incarnation. Every accepted
update is queued for re-broadcast and produces a :class:`MemberEvent`.

Any packet carries its sender's incarnation (:meth:`MemberTable.heard_from`): a newer
one than we hold means the sender refuted a suspicion or death we have not heard of.
It is taken locally (the member is alive at that incarnation) but not spread, since
the packet does not say at which address: a restarted member may have moved, and an
invented ``Alive`` at the old address would undo the real one. The row is marked
*heard of* until the member's own ``Alive`` at that incarnation arrives, which is then
taken (and spread) although its incarnation is not newer.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from kilndb.cluster.broadcasts import BroadcastQueue
from kilndb.cluster.config import ClusterConfig
from kilndb.cluster.messages import (
    PEER,
    Alive,
    Dead,
    KeyEvent,
    Left,
    Member,
    MemberEvent,
    MemberRecord,
    MemberState,
    Suspect,
    SyncEvent,
    tcp_address,
)
from kilndb.cluster.metadata import MetadataStore

__all__ = ["LIVE", "MemberTable", "Peer"]

LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
_GONE = (MemberState.DEAD, MemberState.LEFT)
Event = KeyEvent | MemberEvent | SyncEvent


@dataclass
class Peer:
    """A row of the member table (mutable; the public record is :class:`Member`)."""

    name: str
    address: str
    incarnation: int
    state: MemberState
    since: float
    suspected_at: float = 0.0
    suspected_by: set[str] = field(default_factory=set)
    deadline: float = 0.0
    heard_of: int | None = None  # an incarnation learnt from its packets, address unknown
    tcp_port: int = 0  # 0: the port of ``address``
    role: str = PEER

    @property
    def tcp_address(self) -> str:
        """Where it takes joins, push-pulls and goodbyes."""
        return tcp_address(self.address, self.tcp_port)


class MemberTable:
    """Every member this node knows and the rules that change their states."""

    def __init__(
        self,
        name: str,
        address: str,
        config: ClusterConfig,
        rng: random.Random,
        queue: BroadcastQueue,
        metadata: MetadataStore,
        counters: Counter[str],
        *,
        tcp_port: int = 0,
        role: str = PEER,
    ) -> None:
        self.name, self.address, self.config = name, address, config
        self.tcp_port, self.role = tcp_port, role
        self.incarnation = 0
        self.leaving = False
        self.events: list[Event] = []
        self.peers: dict[str, Peer] = {}
        self.suspects: dict[str, Peer] = {}
        self._rng, self._queue, self._metadata, self._counters = rng, queue, metadata, counters
        self._live: list[Peer] | None = []
        self._order: list[str] = []

    # -- views -----------------------------------------------------------------------

    def live(self) -> list[Peer]:
        """Peers alive or suspect (cached until a state changes)."""
        if self._live is None:
            self._live = [p for p in self.peers.values() if p.state in LIVE]
        return self._live

    def live_count(self) -> int:
        """Members alive or suspect, this node included (the N of the formulas)."""
        return 1 + len(self.live())

    def in_state(self, state: MemberState) -> list[Peer]:
        return [p for p in self.peers.values() if p.state is state]

    def public(self, peer: Peer) -> Member:
        metadata = self._metadata.items(peer.name)
        return Member(
            peer.name,
            peer.address,
            peer.state,
            peer.incarnation,
            metadata,
            peer.role,
            peer.tcp_address,
        )

    def me(self) -> Member:
        state = MemberState.LEFT if self.leaving else MemberState.ALIVE
        metadata = self._metadata.items(self.name)
        return Member(
            self.name,
            self.address,
            state,
            self.incarnation,
            metadata,
            self.role,
            tcp_address(self.address, self.tcp_port),
        )

    def alive(self) -> Alive:
        """This node's own ``Alive`` at its current incarnation."""
        return Alive(self.name, self.address, self.incarnation, self.tcp_port, self.role)

    def records(self) -> tuple[MemberRecord, ...]:
        """The whole table for a push-pull, this node first."""
        alive = MemberState.ALIVE.value
        me = MemberRecord(
            self.name, self.address, self.incarnation, alive, self.tcp_port, self.role
        )
        rest = [
            MemberRecord(p.name, p.address, p.incarnation, p.state.value, p.tcp_port, p.role)
            for p in self.peers.values()
        ]
        return (me, *rest)

    def next_target(self) -> Peer | None:
        """The next member to probe: round robin over a shuffled order, reshuffled after
        each pass."""
        for _ in range(2):
            while self._order:
                peer = self.peers.get(self._order.pop())
                if peer is not None and peer.state in LIVE:
                    return peer
            self._order = [p.name for p in self.live()]
            self._rng.shuffle(self._order)
        return None

    # -- changes ---------------------------------------------------------------------

    def prime(self, members: list[tuple[str, str]], now: float) -> None:
        """Record members as alive without events or rumours (simulation bootstrap)."""
        for name, address in members:
            if name != self.name and name not in self.peers:
                self.peers[name] = Peer(name, address, 0, MemberState.ALIVE, now)
                self._order.append(name)
        self._rng.shuffle(self._order)
        self._live = None

    def reap(self, now: float) -> None:
        """Forget dead and left members (and their metadata) after ``reap_after``.

        The metadata of a reaped member's run is refused for another ``reap_after``, so
        that a peer which has not reaped it yet cannot hand it back.
        """
        self._metadata.expire(now)
        for peer in [p for p in self.peers.values() if p.state in _GONE]:
            if now - peer.since >= self.config.reap_after:
                del self.peers[peer.name]
                until = now + self.config.reap_after
                self.events.extend(self._metadata.forget(peer.name, refuse_until=until))
                self._counters["reaped"] += 1

    def merge(self, record: MemberRecord, sender: str, now: float) -> None:
        """Take in one row of a peer's push-pull."""
        state = record.state
        if state in (MemberState.ALIVE.value, MemberState.SUSPECT.value):
            alive = Alive(
                record.name, record.address, record.incarnation, record.tcp_port, record.role
            )
            self.apply(alive, now)
        if state in (MemberState.SUSPECT.value, MemberState.DEAD.value):
            # Someone else's verdict of death is only a suspicion here (as memberlist).
            self.apply(Suspect(record.name, record.incarnation, sender), now)
        elif state == MemberState.LEFT.value:
            self.apply(Left(record.name, record.incarnation), now)

    def heard_from(self, name: str, incarnation: int, now: float) -> None:
        """A packet came from ``name`` at ``incarnation``: if that is newer than we hold,
        it refuted a suspicion or death we have not heard of yet. It is alive at that
        incarnation here, but nothing is spread (see the module docstring)."""
        peer = self.peers.get(name)
        if peer is None or incarnation <= peer.incarnation:
            return
        peer.incarnation = peer.heard_of = incarnation
        self._revive(peer, now)

    def apply(self, update: Alive | Suspect | Dead | Left, now: float) -> None:
        """Apply one membership update (the table in the module docstring)."""
        if update.name == self.name:
            self._about_me(update)
            return
        peer = self.peers.get(update.name)
        if isinstance(update, Alive):
            self._on_alive(peer, update, now)
        elif peer is None or update.incarnation < peer.incarnation or peer.state in _GONE:
            return
        elif isinstance(update, Suspect):
            self._on_suspect(peer, update, now)
        else:
            dead = isinstance(update, Dead)
            self._set(peer, MemberState.DEAD if dead else MemberState.LEFT, now)
            peer.incarnation = update.incarnation
            self._queue.push(update)
            self._emit("member_dead" if dead else "member_left", peer)

    def _about_me(self, update: Alive | Suspect | Dead | Left) -> None:
        if self.leaving:
            return
        if isinstance(update, Alive):
            if update.incarnation < self.incarnation:
                return
            if update.incarnation == self.incarnation and update == self.alive():
                return  # our own rumour coming back
        elif update.incarnation < self.incarnation:
            return
        self.incarnation = update.incarnation + 1
        self._counters["refutations"] += 1
        self._queue.push(self.alive())

    def _on_alive(self, peer: Peer | None, update: Alive, now: float) -> None:
        if peer is None:
            peer = Peer(update.name, update.address, update.incarnation, MemberState.ALIVE, now)
            peer.tcp_port, peer.role = update.tcp_port, update.role
            self.peers[update.name] = peer
            self._metadata.rejoined(update.name)
            self._live = None
            self._order.insert(self._rng.randint(0, len(self._order)), peer.name)
            self._queue.push(update)
            self._emit("member_joined", peer)
            return
        if update.incarnation == peer.incarnation == peer.heard_of:
            # Its own word at the incarnation we only heard of: take the address (it
            # may have restarted elsewhere), and spread it; the state is that of the
            # incarnation already.
            peer.address, peer.heard_of = update.address, None
            peer.tcp_port, peer.role = update.tcp_port, update.role
            self._queue.push(update)
            return
        if update.incarnation <= peer.incarnation:
            return
        peer.address, peer.incarnation = update.address, update.incarnation
        peer.tcp_port, peer.role = update.tcp_port, update.role
        peer.heard_of = None
        self._queue.push(update)
        self._revive(peer, now)

    def _revive(self, peer: Peer, now: float) -> None:
        """Make ``peer`` alive after a newer incarnation, with the events that follow."""
        before = peer.state
        self._set(peer, MemberState.ALIVE, now)
        if before is not MemberState.ALIVE:
            self._emit("member_joined" if before is MemberState.LEFT else "member_alive", peer)
        if before in _GONE:
            self._order.insert(self._rng.randint(0, len(self._order)), peer.name)

    def _on_suspect(self, peer: Peer, update: Suspect, now: float) -> None:
        n = self.live_count()
        if peer.state is MemberState.SUSPECT and update.incarnation == peer.incarnation:
            if update.by in peer.suspected_by:
                return
            peer.suspected_by.add(update.by)
            confirmations = len(peer.suspected_by) - 1
            peer.deadline = peer.suspected_at + self.config.suspicion_deadline(n, confirmations)
            self._queue.push(update)
            return
        self._set(peer, MemberState.SUSPECT, now)
        peer.incarnation = update.incarnation
        peer.suspected_at, peer.suspected_by = now, {update.by}
        peer.deadline = now + self.config.suspicion_deadline(n, 0)
        self._counters["suspicions"] += 1
        self._queue.push(update)
        self._emit("member_suspect", peer)

    def _set(self, peer: Peer, state: MemberState, now: float) -> None:
        if (peer.state in LIVE) != (state in LIVE):
            self._live = None
        peer.state, peer.since = state, now
        if state is MemberState.SUSPECT:
            self.suspects[peer.name] = peer
        else:
            self.suspects.pop(peer.name, None)

    def _emit(self, kind: str, peer: Peer) -> None:
        self.events.append(MemberEvent(kind, self.public(peer)))

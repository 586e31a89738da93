"""The gossip protocol core: SWIM membership and scuttlebutt metadata, with no I/O.

Theory of operation
-------------------
:class:`SwimCore` is one node's protocol state. It never touches a socket, a clock or
global randomness: the transport feeds it packets with :meth:`~SwimCore.step`, calls
:meth:`~SwimCore.tick` when :meth:`~SwimCore.next_deadline` comes, sends the
:class:`Outgoing` packets both return, and drains :meth:`~SwimCore.pop_events`. Time
is the ``now`` argument; randomness is the ``random.Random`` it was given. A simulation
drives many cores with a fake clock and a lossy fake network.

Failure detection (SWIM, with memberlist's refinements):

* Every ``probe_interval`` the node pings the next member of a shuffled round-robin
  order (reshuffled after each pass; new members are inserted at a random place).
* No ack after ``probe_timeout``: it asks ``indirect_checks`` other members to ping the
  target for it (``PingReq``); they relay the ack, or send a ``Nack`` if they got none.
* Still no ack when the probe interval ends: the target becomes ``suspect``. A suspicion
  times out after ``suspicion_max_timeout(N)``; each independent ``Suspect`` about the
  same incarnation from another member (a confirmation) shortens it towards
  ``suspicion_timeout(N)`` (Lifeguard). On time-out the member is declared ``dead``.
* A node that hears itself suspected, declared dead or left at an incarnation at least
  its own (or an ``Alive`` of itself it did not send) *refutes*: it takes a higher
  incarnation and spreads ``Alive``. An ``Alive`` overrides any state only with a
  higher incarnation; ``Suspect`` overrides ``alive`` at the same or a higher one;
  ``Dead``/``Left`` override ``alive``/``suspect`` at the same or a higher one.

Dissemination: every update (membership rumour or metadata delta) goes into a
:class:`BroadcastQueue` and rides along on pings, acks and gossip rounds (every
``gossip_interval`` to ``gossip_nodes`` random live members) until it has been sent
``retransmit_limit(N)`` times, as many per datagram as fit ``max_udp_bytes``.

Anti-entropy: every ``push_pull_interval`` the node syncs full state with one random
live member over TCP (``PushPull`` → reply with the deltas the initiator lacks →
``Deltas`` with what the peer lacks), and with one random dead member, which is how a
healed partition rediscovers itself (the "dead" side refutes). Joining sends ``Hello``
to the seeds, which answer with a push-pull reply; a node with no live member left
says ``Hello`` to its seeds again, every probe interval. ``Goodbye`` marks the sender
``left`` at once. Probes and gossip go to a member's UDP address; ``Hello``, push-pulls
and ``Goodbye`` to its TCP address (the same port unless its ``Alive`` names another),
and seeds are TCP addresses. A member's role (``seed`` or ``peer``) rides in its
``Alive`` and is only reported, never acted on.
Dead and left members (and their metadata) are forgotten after ``reap_after``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from kilndb.cluster.broadcasts import BroadcastQueue
from kilndb.cluster.config import ClusterConfig
from kilndb.cluster.membership import LIVE, Event, MemberTable
from kilndb.cluster.messages import (
    PEER,
    ROLES,
    Ack,
    Body,
    Channel,
    Dead,
    Deltas,
    Goodbye,
    Hello,
    KeyDelta,
    KeyEvent,
    Left,
    Member,
    MemberState,
    Nack,
    Outgoing,
    Packet,
    Ping,
    PingReq,
    PushPull,
    Rumors,
    Suspect,
    SyncEvent,
    Update,
    tcp_address,
)
from kilndb.cluster.metadata import MetadataStore
from kilndb.cluster.wire import packet_size
from kilndb.errors import InvalidArgumentError

__all__ = ["Event", "SwimCore"]


@dataclass
class _Probe:
    seq: int
    target: str
    started: float
    indirect: bool = False
    acked: bool = False


class SwimCore:
    """One node's membership and metadata state machine (see the module docstring)."""

    def __init__(
        self,
        name: str,
        address: str,
        *,
        rng: random.Random,
        now: float,
        generation: int,
        config: ClusterConfig | None = None,
        tcp_port: int = 0,
        role: str = PEER,
    ) -> None:
        """``address`` is where this node gossips over UDP; ``tcp_port`` where it takes
        TCP on the same host (0: the port of ``address``); ``role`` is carried in its
        ``Alive`` and member records (:data:`~kilndb.cluster.messages.ROLES`).

        Raises:
            InvalidArgumentError: an unknown role.
        """
        if role not in ROLES:
            raise InvalidArgumentError(f"role must be one of {list(ROLES)}, not {role!r}")
        self.name = name
        self.address = address
        self.tcp_address = tcp_address(address, tcp_port)
        self.generation = generation
        self.config = cfg = config or ClusterConfig()
        self.metadata = MetadataStore(name, generation)
        self.counters: Counter[str] = Counter()
        room = cfg.max_udp_bytes - packet_size(name, 2**40, PingReq(2**40, name, address))
        self._queue = BroadcastQueue(max_size=room)
        self._rng = rng
        self._table = MemberTable(
            name,
            address,
            cfg,
            rng,
            self._queue,
            self.metadata,
            self.counters,
            tcp_port=0 if tcp_address(address, tcp_port) == address else tcp_port,
            role=role,
        )
        self._seq = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, tuple[str, int, float]] = {}  # seq → requester, seq, expiry
        self._seeds: tuple[str, ...] = ()
        self._next_probe = now + rng.uniform(0, cfg.probe_interval)
        self._next_gossip = now + rng.uniform(0, cfg.gossip_every)
        self._next_push_pull = now + cfg.push_pull_every * rng.uniform(0.5, 1.0)
        self._queue.push(self._table.alive())

    @property
    def role(self) -> str:
        """This node's role: ``seed`` or ``peer``."""
        return self._table.role

    @property
    def incarnation(self) -> int:
        """This node's incarnation (raised by every refutation)."""
        return self._table.incarnation

    # -- public operations -----------------------------------------------------------

    def join(self, seeds: Sequence[str], now: float) -> list[Outgoing]:
        """Say ``Hello`` to every seed, at its TCP address (its answer is a push-pull of
        its state)."""
        self._seeds = tuple(s for s in seeds if s not in (self.address, self.tcp_address))
        return [self._hello(seed) for seed in self._seeds]

    def leave(self, now: float) -> list[Outgoing]:
        """Leave gracefully: ``Goodbye`` to every live member, then stay quiet."""
        self._table.leaving = True
        self._queue.push(Left(self.name, self.incarnation))
        bye = Goodbye(self.name, self.incarnation)
        return [self._tcp(p.tcp_address, bye) for p in self._table.live()]

    def reconfigure(self, config: ClusterConfig, now: float) -> None:
        """Take new protocol parameters (every member should use the same ones); a
        shorter gossip interval takes effect from ``now``."""
        self.config = self._table.config = config
        self._next_gossip = min(self._next_gossip, now + config.gossip_every)

    def set_key(self, key: str, value: object) -> None:
        """Publish ``key = value`` as this node's metadata."""
        delta, events = self.metadata.set(key, value)
        self._broadcast_delta(delta, events)

    def delete_key(self, key: str) -> None:
        """Delete one of this node's keys (a tombstone that replicates)."""
        delta, events = self.metadata.delete(key)
        self._broadcast_delta(delta, events)

    def _broadcast_delta(self, delta: KeyDelta, events: list[KeyEvent]) -> None:
        self._table.events.extend(events)
        if not self._queue.push(delta):
            self.counters["deltas_too_big_for_udp"] += 1  # they travel by push-pull

    def prime(self, members: Sequence[tuple[str, str]], now: float) -> None:
        """Record ``(name, address)`` members as alive without events or rumours: for
        simulations and tests that start from an already converged cluster."""
        self._table.prime(list(members), now)

    def pop_events(self) -> list[Event]:
        """The events since the last call, oldest first."""
        events = list(self._table.events)
        self._table.events.clear()
        return events

    def members(self) -> list[Member]:
        """Every member known, this node included, by name."""
        peers = [self._table.public(p) for p in self._table.peers.values()]
        return sorted([self._table.me(), *peers], key=lambda m: m.name)

    def member(self, name: str) -> Member | None:
        """One member by name (this node included), or None if unknown."""
        if name == self.name:
            return self._table.me()
        peer = self._table.peers.get(name)
        return None if peer is None else self._table.public(peer)

    def live_count(self) -> int:
        """Members alive or suspect, this node included (the N of the formulas)."""
        return self._table.live_count()

    def gossip_due(self, now: float) -> bool:
        """Whether the next :meth:`tick` runs a gossip round (for before-gossip hooks)."""
        return not self._table.leaving and now >= self._next_gossip

    def next_deadline(self) -> float:
        """When :meth:`tick` has something to do next (inf while leaving: nothing)."""
        if self._table.leaving:
            return float("inf")
        times = [self._next_probe, self._next_gossip, self._next_push_pull]
        probe = self._probe
        if probe is not None and not probe.acked:
            wait = self.config.probe_interval if probe.indirect else self.config.ack_timeout
            times.append(probe.started + wait)
        times.extend(expiry for _, _, expiry in self._relays.values())
        times.extend(p.deadline for p in self._table.suspects.values())
        return min(times)

    # -- timers ----------------------------------------------------------------------

    def tick(self, now: float) -> list[Outgoing]:
        """Run every timer that is due: probes, suspicions, gossip, push-pull, reaping."""
        out: list[Outgoing] = []
        if self._table.leaving:
            return out
        cfg = self.config
        probe = self._probe
        if probe is not None and not probe.acked:
            if not probe.indirect and now >= probe.started + cfg.ack_timeout:
                probe.indirect = True
                out.extend(self._indirect(probe))
            if now >= probe.started + cfg.probe_interval:
                self._probe = None
                self._probe_failed(probe.target, now)
        for seq, (requester, their_seq, expiry) in list(self._relays.items()):
            if now >= expiry:
                del self._relays[seq]
                out.append(self._udp(requester, Nack(their_seq)))
        for peer in list(self._table.suspects.values()):
            if now >= peer.deadline:
                self._table.apply(Dead(peer.name, peer.incarnation, self.name), now)
                self.counters["declared_dead"] += 1
        probe = self._probe
        if now >= self._next_probe and probe is not None and not probe.acked:
            if now < probe.started + cfg.probe_interval - cfg.ack_timeout / 10:
                # The probe itself started late (the loop was busy): it gets its whole
                # interval, or a lagging node would suspect healthy members.
                self._next_probe = probe.started + cfg.probe_interval
            else:
                # Its interval is over, give or take a timer firing a hair early: it is
                # never replaced unanswered without counting as failed.
                self._probe = None
                self._probe_failed(probe.target, now)
        if now >= self._next_probe:
            self._next_probe = _advance(self._next_probe, cfg.probe_interval, now)
            out.extend(self._start_probe(now))
            self._table.reap(now)
            if self._seeds and not self._table.live():
                # Alone (a seed that was not up yet when this node started, or every
                # member gone): ask the seeds again every probe interval, not only at
                # the next push-pull.
                out.extend(self._hello(seed) for seed in self._seeds)
        if now >= self._next_gossip:
            self._next_gossip = _advance(self._next_gossip, cfg.gossip_every, now)
            out.extend(self._gossip())
        if now >= self._next_push_pull:
            self._next_push_pull = _advance(self._next_push_pull, cfg.push_pull_every, now)
            out.extend(self._anti_entropy())
        return out

    def _start_probe(self, now: float) -> list[Outgoing]:
        target = self._table.next_target()
        if target is None:
            return []
        self._probe = _Probe(self._next_seq(), target.name, now)
        self.counters["probes"] += 1
        return [self._udp(target.address, Ping(self._probe.seq, target.name))]

    def _indirect(self, probe: _Probe) -> list[Outgoing]:
        target = self._table.peers.get(probe.target)
        helpers = [p for p in self._table.live() if p.name != probe.target]
        if target is None or not helpers:
            return []
        chosen = self._rng.sample(helpers, min(self.config.indirect_checks, len(helpers)))
        self.counters["indirect_probes"] += len(chosen)
        request = PingReq(probe.seq, target.name, target.address)
        return [self._udp(p.address, request) for p in chosen]

    def _probe_failed(self, name: str, now: float) -> None:
        peer = self._table.peers.get(name)
        self.counters["probe_failures"] += 1
        if peer is not None and peer.state in LIVE:
            # Suspected already (by someone else): this failed probe is an independent
            # confirmation — it shortens this node's own timer too, and is spread so
            # that it shortens the others' (as in memberlist).
            self._table.apply(Suspect(name, peer.incarnation, self.name), now)

    def _gossip(self) -> list[Outgoing]:
        if not len(self._queue):
            return []
        peers = self._table.live()
        chosen = self._rng.sample(peers, min(self.config.gossip_nodes, len(peers)))
        self.counters["gossip_rounds"] += 1 if chosen else 0
        return [self._udp(p.address, Rumors()) for p in chosen]

    def _anti_entropy(self) -> list[Outgoing]:
        live = self._table.live()
        dead = self._table.in_state(MemberState.DEAD)
        out = [
            self._push_pull(self._rng.choice(group).tcp_address) for group in (live, dead) if group
        ]
        if not live:
            out.extend(self._hello(seed) for seed in self._seeds)
        self.counters["push_pulls"] += len(out)
        return out

    # -- packets in ------------------------------------------------------------------

    def step(self, packet: Packet, source: str, now: float) -> list[Outgoing]:
        """Handle one packet that arrived from ``source`` (the UDP source address; the
        TCP peer's own address is taken from the packet)."""
        out: list[Outgoing] = []
        if self._table.leaving:
            return out
        for update in packet.updates:
            self._apply(update, now)
        self._table.heard_from(packet.sender, packet.incarnation, now)
        body = packet.body
        if isinstance(body, Ping):
            if body.target == self.name:
                out.append(self._udp(source, Ack(body.seq)))
        elif isinstance(body, PingReq):
            seq = self._next_seq()
            self._relays[seq] = (source, body.seq, now + self.config.ack_timeout)
            out.append(self._udp(body.address, Ping(seq, body.target)))
        elif isinstance(body, Ack):
            relay = self._relays.pop(body.seq, None)
            if relay is not None:
                out.append(self._udp(relay[0], Ack(relay[1])))
            elif self._probe is not None and self._probe.seq == body.seq:
                self._probe.acked = True
        elif isinstance(body, Nack):
            self.counters["nacks"] += 1
        elif isinstance(body, Hello):
            self.counters["hellos"] += 1
            self._table.apply(body.member, now)
            missing = self.metadata.missing(body.digest)
            reply = PushPull(self._table.records(), self.metadata.digest(), missing, True, True)
            member = body.member
            out.append(self._tcp(tcp_address(member.address, member.tcp_port), reply))
        elif isinstance(body, PushPull):
            out.extend(self._on_push_pull(packet.sender, body, now))
        elif isinstance(body, Deltas):
            self._table.events.extend(self.metadata.apply_complete(body.deltas, body.digest))
        elif isinstance(body, Goodbye):
            self._table.apply(Left(body.name, body.incarnation), now)
        return out

    def _apply(self, update: Update, now: float) -> None:
        if not isinstance(update, KeyDelta):
            self._table.apply(update, now)
            return
        fresh, events = self.metadata.apply(update)
        self._table.events.extend(events)
        if fresh:
            self._queue.push(update)

    def _on_push_pull(self, sender: str, body: PushPull, now: float) -> list[Outgoing]:
        for record in body.members:
            self._table.merge(record, sender, now)
        if not body.reply:
            own = next((r for r in body.members if r.name == sender), None)
            if own is None:
                return []
            missing = self.metadata.missing(body.digest)
            reply = PushPull(
                self._table.records(), self.metadata.digest(), missing, True, body.join
            )
            return [self._tcp(tcp_address(own.address, own.tcp_port), reply)]
        self._table.events.extend(self.metadata.apply_complete(body.deltas, body.digest))
        self._table.events.append(SyncEvent(sender, body.join))
        missing = self.metadata.missing(body.digest)
        peer = self._table.peers.get(sender)
        if not missing or peer is None:
            return []
        return [self._tcp(peer.tcp_address, Deltas(missing, self.metadata.digest()))]

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _hello(self, address: str) -> Outgoing:
        return self._tcp(address, Hello(self._table.alive(), self.metadata.digest()))

    def _push_pull(self, address: str) -> Outgoing:
        body = PushPull(self._table.records(), self.metadata.digest(), (), False, False)
        return self._tcp(address, body)

    def _udp(self, address: str, body: Body) -> Outgoing:
        budget = self.config.max_udp_bytes - packet_size(self.name, self.incarnation, body)
        limit = self.config.retransmit_limit(self.live_count())
        updates = tuple(self._queue.take(budget, limit))
        return Outgoing(address, Packet(self.name, body, updates, self.incarnation), "udp")

    def _tcp(self, address: str, body: Body) -> Outgoing:
        return Outgoing(address, Packet(self.name, body, (), self.incarnation), _TCP)


_TCP: Channel = "tcp"


def _advance(due: float, every: float, now: float) -> float:
    """The next due time after ``due``; skips ahead rather than bursting when late."""
    due += every
    return due if due > now else now + every

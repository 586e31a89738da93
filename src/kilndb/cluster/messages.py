"""The gossip vocabulary: packets, their bodies, piggybacked updates, records and events.

Everything here is a frozen, slotted dataclass with no behaviour, so that the protocol
core (:mod:`kilndb.cluster.core`) can be driven and inspected in tests without bytes and
the wire codec (:mod:`kilndb.cluster.wire`) can encode every class the same generic way.

A :class:`Packet` is what travels, over UDP or TCP: the sender's name and incarnation,
one *body* (what the packet is for: a probe, an ack, a push-pull…) and the *updates*
that ride along with it (membership rumours and metadata deltas, SWIM's
"piggybacking").

Addresses are ``"host:port"`` strings. A member's address is its UDP port; its TCP
port is the same number unless it says otherwise (``tcp_port``, 0 meaning "the same"),
and :func:`tcp_address` puts the two together. Fields with defaults come last in a
record and are left off the wire while they hold their default, so that a member which
knows nothing of them (one port, no role) reads and writes the same bytes as before.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Ack",
    "Alive",
    "Body",
    "Channel",
    "Dead",
    "Deltas",
    "Digest",
    "Goodbye",
    "Hello",
    "KeyDelta",
    "KeyEvent",
    "Left",
    "Member",
    "MemberEvent",
    "MemberRecord",
    "MemberState",
    "Nack",
    "Outgoing",
    "Packet",
    "PEER",
    "ROLES",
    "SEED",
    "Ping",
    "PingReq",
    "PushPull",
    "Rumors",
    "ShutdownEvent",
    "StartEvent",
    "Suspect",
    "SyncEvent",
    "Update",
    "parse_address",
    "tcp_address",
]

#: ``"udp"`` for probes and gossip, ``"tcp"`` for join, push-pull and goodbye.
Channel = Literal["udp", "tcp"]

#: A member started without seeds to join through (Pokan's ``act_as_seed``).
SEED = "seed"
#: A member that joined through seeds; what a record without a role is taken for.
PEER = "peer"
#: The roles a member may have.
ROLES = (SEED, PEER)


class MemberState(enum.Enum):
    """Where a member stands in one node's view (SWIM's states plus a graceful leave)."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


# -- updates: piggybacked rumours ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alive:
    """``name`` is up at ``address`` as of ``incarnation`` (a join or a refutation), with
    its TCP port (0: the port of ``address``) and its role."""

    name: str
    address: str
    incarnation: int
    tcp_port: int = 0
    role: str = PEER


@dataclass(frozen=True, slots=True)
class Suspect:
    """``by`` could not reach ``name`` at ``incarnation``: it is dead unless it refutes."""

    name: str
    incarnation: int
    by: str


@dataclass(frozen=True, slots=True)
class Dead:
    """``by`` declared ``name`` dead at ``incarnation`` after its suspicion ran out."""

    name: str
    incarnation: int
    by: str


@dataclass(frozen=True, slots=True)
class Left:
    """``name`` left the cluster on purpose (a goodbye) at ``incarnation``."""

    name: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class KeyDelta:
    """One metadata key of ``owner``: its value at ``version`` (or a tombstone).

    ``generation`` identifies one run of the owner: a restarted node starts a new,
    larger generation and its keys replace everything of the old one.
    """

    owner: str
    generation: int
    key: str
    version: int
    value: Any
    deleted: bool


Update = Alive | Suspect | Dead | Left | KeyDelta


# -- records exchanged in full state sync ------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One row of a node's member table, as sent in a push-pull."""

    name: str
    address: str
    incarnation: int
    state: str  # a MemberState value
    tcp_port: int = 0  # 0: the port of ``address``
    role: str = PEER


@dataclass(frozen=True, slots=True)
class Digest:
    """Scuttlebutt digest entry: "of ``owner``'s run ``generation`` I hold all up to
    ``version``"."""

    owner: str
    generation: int
    version: int


# -- bodies --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """A probe of ``target`` (the name guards against a reused address)."""

    seq: int
    target: str


@dataclass(frozen=True, slots=True)
class PingReq:
    """Please probe ``target`` at ``address`` for me and relay its ack as ``seq``."""

    seq: int
    target: str
    address: str


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to the ping (or relayed ping) numbered ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class Nack:
    """A relay could not reach the target of the ping-req numbered ``seq`` in time."""

    seq: int


@dataclass(frozen=True, slots=True)
class Rumors:
    """A packet that only carries piggybacked updates (a gossip round)."""


@dataclass(frozen=True, slots=True)
class Hello:
    """A join request (TCP): here I am, this is what metadata I hold; send me your state."""

    member: Alive
    digest: tuple[Digest, ...]


@dataclass(frozen=True, slots=True)
class Goodbye:
    """A graceful leave (TCP): mark me ``left`` at once."""

    name: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full-state anti-entropy (TCP).

    The initiator sends its members and digest (``reply=False``); the peer answers with
    its own and the deltas the initiator lacks (``reply=True``); the initiator ends the
    exchange with a :class:`Deltas` of what the peer lacks.
    """

    members: tuple[MemberRecord, ...]
    digest: tuple[Digest, ...]
    deltas: tuple[KeyDelta, ...]
    reply: bool
    join: bool


@dataclass(frozen=True, slots=True)
class Deltas:
    """The last leg of a push-pull: the deltas the peer lacked, and the sender's digest."""

    deltas: tuple[KeyDelta, ...]
    digest: tuple[Digest, ...]


Body = Ping | PingReq | Ack | Nack | Rumors | Hello | Goodbye | PushPull | Deltas


@dataclass(frozen=True, slots=True)
class Packet:
    """What one datagram or one TCP frame carries."""

    sender: str
    body: Body
    updates: tuple[Update, ...] = ()
    incarnation: int = 0  # the sender's: any contact refreshes a stale view of it


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A packet the core wants sent to ``address`` over ``channel``."""

    address: str
    packet: Packet
    channel: Channel


# -- the public view and events ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """One member as this node sees it, with the metadata it published.

    ``address`` is where it gossips over UDP, ``tcp_address`` where it takes joins,
    push-pulls and goodbyes over TCP (the same unless it set a TCP port of its own; left
    empty, it is ``address``); ``role`` is :data:`SEED` or :data:`PEER`.
    """

    name: str
    address: str
    state: MemberState
    incarnation: int
    metadata: dict[str, Any]
    role: str = PEER
    tcp_address: str = ""

    def __post_init__(self) -> None:
        if not self.tcp_address:
            object.__setattr__(self, "tcp_address", self.address)

    def to_json(self) -> dict[str, Any]:
        """The member as JSON-ready data (for status endpoints)."""
        return {
            "name": self.name,
            "address": self.address,
            "tcp_address": self.tcp_address,
            "role": self.role,
            "state": self.state.value,
            "incarnation": self.incarnation,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """``new_key``, ``key_changed`` or ``key_removed`` of ``node``'s ``key``.

    ``value`` is the new value (for ``key_removed``: the value that was removed).
    """

    kind: str
    node: str
    key: str
    value: Any


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """``member_joined``, ``member_alive``, ``member_suspect``, ``member_dead`` or
    ``member_left``, with the member as it is after the change."""

    kind: str
    member: Member


@dataclass(frozen=True, slots=True)
class SyncEvent:
    """A push-pull with ``peer`` finished (``join``: it was the one made on joining)."""

    peer: str
    join: bool


@dataclass(frozen=True, slots=True)
class StartEvent:
    """``start``: the node is bound and about to say hello to its seeds (Pokan's
    ``:start`` with address, TCP port, UDP port, gossip interval and seed).

    ``address`` is the advertised UDP ``host:port``, ``tcp_address`` the TCP one;
    ``udp_port`` and ``tcp_port`` are the ports bound locally; ``seeds`` the TCP
    addresses it joins through (empty for a seed).
    """

    name: str
    address: str
    tcp_address: str
    udp_port: int
    tcp_port: int
    role: str
    gossip_interval: float
    probe_interval: float
    seeds: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The event as JSON-ready data."""
        return {
            "name": self.name,
            "address": self.address,
            "tcp_address": self.tcp_address,
            "udp_port": self.udp_port,
            "tcp_port": self.tcp_port,
            "role": self.role,
            "gossip_interval": self.gossip_interval,
            "probe_interval": self.probe_interval,
            "seeds": list(self.seeds),
        }


@dataclass(frozen=True, slots=True)
class ShutdownEvent:
    """``shutdown``: the node stops; ``graceful`` when it said goodbye first (``leave``),
    not when it just vanished (``stop``)."""

    name: str
    address: str
    graceful: bool

    def to_json(self) -> dict[str, Any]:
        """The event as JSON-ready data."""
        return {"name": self.name, "address": self.address, "graceful": self.graceful}


def tcp_address(address: str, tcp_port: int) -> str:
    """Where a member at UDP ``address`` with ``tcp_port`` (0: the same) takes TCP."""
    if not tcp_port:
        return address
    return f"{address.rpartition(':')[0]}:{tcp_port}"


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[::1]:port"`` for IPv6).

    Raises:
        ValueError: not ``host:port`` with a port in 0..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)

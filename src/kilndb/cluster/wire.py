"""The gossip wire format: packets to bytes and back, authenticated and replay-checked.

One packet is one UDP datagram, or one TCP frame ``[u32 big-endian length][packet]``::

    offset  size  field
    0       1     version        WIRE_VERSION (2)
    1       1     channel        1 = UDP, 2 = TCP: the channel the packet was sealed for
    2       8     boot           u64 BE: the sender's start (µs since the epoch)
    10      8     seq            u64 BE: the sender's packet counter on this channel, from 1
    18      n     payload        orjson: [sender, incarnation, [tag, *body fields],
                                          [[tag, *update fields], ...]]
    18+n    32    mac            HMAC-SHA256(cluster key, bytes 0 .. 18+n)

The MAC covers the header and the payload. Without a cluster key the MAC is computed
under the empty key: it still catches corruption, but anyone can forge packets (the
transport logs a warning at start). Nested records (a :class:`Digest` in a
:class:`PushPull`…) are encoded as lists of their fields in declaration order; bodies
and updates lead with a tag because several types may stand in their place. Trailing
fields that have a default (an :class:`~kilndb.cluster.messages.Alive`'s or a
:class:`~kilndb.cluster.messages.MemberRecord`'s ``tcp_port`` and ``role``) are left
off while they hold it, and a record without them decodes with the default: a member
with one port and the ``peer`` role sends what members from before those fields read.

The channel byte is under the MAC so that a captured datagram cannot be replayed as a
TCP frame (or the reverse): each channel has its own sequence numbers and replay
window, and a packet that arrives on the other channel is refused (``channel``).

Everything decoded must encode again, or a node would take in a rumour it cannot pass
on: every integer field of a message is in ``0 <= x < 2**53`` (JSON's safe integers),
and every metadata value passes :func:`check_value` (JSON-safe integers, nesting shallow
enough to sit inside any packet); anything else is ``malformed``.

Replay protection: a receiver keeps, per sender name and channel, the sender's boot and
a 1,024-packet sliding window of sequence numbers (IPsec style). A packet from an older
boot, below the window, or already seen is a replay. A restarted sender has a later
boot and starts a fresh window. (A sender whose clock went back across a restart is
taken for a replayer until the receiver forgets it.)

:meth:`Codec.open` raises :class:`WireError` whose ``reason`` is one of
:data:`REASONS`; the transport counts drops per reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import struct
import typing
from collections import OrderedDict
from typing import Any

import orjson

from kilndb.cluster import messages as m
from kilndb.errors import ProtocolError

__all__ = [
    "HEADER_BYTES",
    "MAC_BYTES",
    "MAX_INT",
    "MAX_VALUE_DEPTH",
    "REASONS",
    "WIRE_VERSION",
    "Codec",
    "ReplayGuard",
    "WireError",
    "check_value",
    "decode_payload",
    "encode_payload",
    "packet_size",
    "update_size",
]

WIRE_VERSION = 2
_HEADER = struct.Struct(">BBQQ")
HEADER_BYTES = _HEADER.size
MAC_BYTES = 32
assert HEADER_BYTES == 18

_CHANNELS: dict[str, int] = {"udp": 1, "tcp": 2}

#: Why a packet was dropped.
REASONS = ("malformed", "version", "oversize", "bad_mac", "channel", "replay")

#: Integer fields of messages are below this (JSON's safe integers, exact everywhere).
MAX_INT = 2**53

# orjson refuses to encode containers nested deeper than this; a metadata value sits
# at most _VALUE_NESTING lists deep in a packet ([packet, [tag, [deltas, [delta...).
_ORJSON_MAX_DEPTH = 254
_VALUE_NESTING = 4
#: The deepest nesting of containers a metadata value may have.
MAX_VALUE_DEPTH = _ORJSON_MAX_DEPTH - _VALUE_NESTING

_TAGS: dict[type[Any], int] = {
    m.Ping: 1,
    m.PingReq: 2,
    m.Ack: 3,
    m.Nack: 4,
    m.Rumors: 5,
    m.Hello: 6,
    m.Goodbye: 7,
    m.PushPull: 8,
    m.Deltas: 9,
    m.Alive: 20,
    m.Suspect: 21,
    m.Dead: 22,
    m.Left: 23,
    m.KeyDelta: 24,
}
_BODIES = {tag: cls for cls, tag in _TAGS.items() if tag < 20}
_UPDATES = {tag: cls for cls, tag in _TAGS.items() if tag >= 20}


class WireError(ProtocolError):
    """A packet that cannot be accepted; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# -- generic dataclass <-> list ------------------------------------------------------

_Spec = tuple[tuple[str, Any, Any], ...]  # (name, type, default or MISSING)
_SPECS: dict[type[Any], _Spec] = {}


def _spec(cls: type[Any]) -> _Spec:
    spec = _SPECS.get(cls)
    if spec is None:
        hints = typing.get_type_hints(cls, vars(m))
        spec = _SPECS[cls] = tuple(
            (f.name, hints[f.name], f.default) for f in dataclasses.fields(cls)
        )
    return spec


def _required(spec: _Spec) -> int:
    """How many leading fields have no default (the shortest list a record may be)."""
    return sum(1 for _, _, default in spec if default is dataclasses.MISSING)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        spec = _spec(type(obj))
        values = [getattr(obj, name) for name, _, _ in spec]
        # Trailing fields at their defaults are left off: a record that uses none of
        # the later fields has the bytes it had before they existed.
        while len(values) > _required(spec) and values[-1] == spec[len(values) - 1][2]:
            values.pop()
        return [_plain(value) for value in values]
    if isinstance(obj, tuple):
        return [_plain(item) for item in obj]
    return obj


def _tagged(obj: Any) -> list[Any]:
    return [_TAGS[type(obj)], *_plain(obj)]


def _build(kind: Any, raw: Any) -> Any:
    if kind is Any:  # a metadata value
        try:
            check_value(raw)
        except TypeError as exc:
            raise WireError("malformed", str(exc)) from exc
        return raw
    if kind is bool or kind is str:
        if type(raw) is not kind:
            raise WireError("malformed", f"expected {kind.__name__}")
        return raw
    if kind is int:
        if type(raw) is not int or not 0 <= raw < MAX_INT:
            raise WireError("malformed", "expected an int in 0 .. 2**53 - 1")
        return raw
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(raw, list):
            raise WireError("malformed", "expected a list")
        item = typing.get_args(kind)[0]
        return tuple(_build(item, x) for x in raw)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        spec = _spec(kind)
        if not isinstance(raw, list) or not _required(spec) <= len(raw) <= len(spec):
            raise WireError("malformed", f"bad {kind.__name__}")
        return kind(*(_build(t, x) for (_, t, _), x in zip(spec, raw, strict=False)))
    raise TypeError(f"no wire form for {kind!r}")  # pragma: no cover - a bug here


def _build_tagged(table: dict[int, type[Any]], raw: Any) -> Any:
    if not isinstance(raw, list) or not raw or type(raw[0]) is not int or raw[0] not in table:
        raise WireError("malformed", "unknown message tag")
    return _build(table[raw[0]], raw[1:])


# -- sizes (used by the core to fill a datagram) -------------------------------------


def update_size(update: m.Update) -> int:
    """Bytes ``update`` adds to a payload (plus one comma after the first)."""
    return len(orjson.dumps(_tagged(update)))


def packet_size(
    sender: str, incarnation: int, body: m.Body, update_sizes: typing.Iterable[int] = ()
) -> int:
    """The exact size of a sealed packet with updates of the given sizes."""
    sizes = list(update_sizes)
    base = len(orjson.dumps([sender, incarnation, _tagged(body), []]))
    return HEADER_BYTES + MAC_BYTES + base + sum(sizes) + max(0, len(sizes) - 1)


def encode_payload(packet: m.Packet) -> bytes:
    """The orjson payload of ``packet``.

    Raises:
        TypeError: a metadata value that does not pass :func:`check_value` and that
            orjson cannot encode (never for a packet :func:`decode_payload` returned).
    """
    updates = [_tagged(u) for u in packet.updates]
    return orjson.dumps([packet.sender, packet.incarnation, _tagged(packet.body), updates])


def decode_payload(payload: bytes) -> m.Packet:
    """The packet in ``payload``.

    Raises:
        WireError: ``malformed`` (not JSON, not a packet, or a field that could not be
            encoded again: an integer out of range, a metadata value too deeply nested).
    """
    try:
        raw = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise WireError("malformed", "not JSON") from exc
    if not isinstance(raw, list) or len(raw) != 4 or not isinstance(raw[3], list):
        raise WireError("malformed", "not a packet")
    sender = _build(str, raw[0])
    incarnation = _build(int, raw[1])
    body = _build_tagged(_BODIES, raw[2])
    updates = tuple(_build_tagged(_UPDATES, u) for u in raw[3])
    return m.Packet(sender, body, updates, incarnation)


# -- replay window and codec ---------------------------------------------------------


class ReplayGuard:
    """Per (sender, channel): the sender's boot and a sliding window of seen seqs."""

    def __init__(self, window: int = 1024, max_senders: int = 4096) -> None:
        self.window = window
        self.max_senders = max_senders
        self._seen: OrderedDict[tuple[str, str], tuple[int, int, int]] = OrderedDict()

    def accept(self, sender: str, channel: str, boot: int, seq: int) -> bool:
        """Record ``(boot, seq)``; False if it is a replay (or from an older boot)."""
        entry = (sender, channel)
        known = self._seen.get(entry)
        if known is None or boot > known[0]:
            self._remember(entry, (boot, seq, 1))
            return True
        known_boot, highest, bits = known
        if boot < known_boot:
            return False
        if seq > highest:
            shift = seq - highest
            bits = ((bits << shift) | 1) & ((1 << self.window) - 1) if shift < self.window else 1
            self._remember(entry, (boot, seq, bits))
            return True
        offset = highest - seq
        if offset >= self.window or bits >> offset & 1:
            return False
        self._remember(entry, (boot, highest, bits | 1 << offset))
        return True

    def _remember(self, entry: tuple[str, str], value: tuple[int, int, int]) -> None:
        self._seen[entry] = value
        self._seen.move_to_end(entry)
        while len(self._seen) > self.max_senders:
            self._seen.popitem(last=False)


class Codec:
    """Seals outgoing packets and opens incoming ones for one node."""

    def __init__(
        self,
        cluster_key: bytes | None,
        boot: int,
        *,
        max_udp_bytes: int = 1400,
        max_tcp_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._key = cluster_key or b""
        self.boot = boot
        self.limits: dict[str, int] = {"udp": max_udp_bytes, "tcp": max_tcp_bytes}
        self._seq: dict[str, int] = {"udp": 0, "tcp": 0}
        self.guard = ReplayGuard()

    def seal(self, packet: m.Packet, channel: m.Channel) -> bytes:
        """The bytes of ``packet`` for ``channel``.

        Raises:
            WireError: ``oversize`` (larger than the channel's limit).
            TypeError: a metadata value that did not pass :func:`check_value` (never for
                values that did, nor for packets :meth:`open` returned).
        """
        self._seq[channel] += 1
        header = _HEADER.pack(WIRE_VERSION, _CHANNELS[channel], self.boot, self._seq[channel])
        head = header + encode_payload(packet)
        data = head + hmac.new(self._key, head, hashlib.sha256).digest()
        if len(data) > self.limits[channel]:
            raise WireError("oversize", f"{len(data)} bytes > {self.limits[channel]}")
        return data

    def open(self, data: bytes, channel: m.Channel) -> m.Packet:
        """The packet in ``data``, checked in order: size, version, MAC, channel, shape,
        replay.

        Raises:
            WireError: with the first reason the packet fails.
        """
        if len(data) > self.limits[channel]:
            raise WireError("oversize", f"{len(data)} bytes")
        if len(data) < HEADER_BYTES + MAC_BYTES:
            raise WireError("malformed", "shorter than header and MAC")
        version, sealed_for, boot, seq = _HEADER.unpack_from(data)
        if version != WIRE_VERSION:
            raise WireError("version", f"version {version}, expected {WIRE_VERSION}")
        head, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
        if not hmac.compare_digest(hmac.new(self._key, head, hashlib.sha256).digest(), mac):
            raise WireError("bad_mac", "wrong cluster key or corrupted")
        if sealed_for != _CHANNELS[channel]:
            raise WireError("channel", f"sealed for channel {sealed_for}, arrived on {channel}")
        packet = decode_payload(head[HEADER_BYTES:])
        if not self.guard.accept(packet.sender, channel, boot, seq):
            raise WireError("replay", f"{packet.sender} boot {boot} seq {seq}")
        return packet


def check_value(value: Any) -> None:
    """Check that ``value`` can travel as metadata: JSON that orjson encodes, with
    integers in JSON's safe range (``abs(x) < 2**53``) and containers nested at most
    :data:`MAX_VALUE_DEPTH` deep, so that it can be sealed in any packet.

    Raises:
        TypeError: it cannot.
    """
    nested: Any = value
    for _ in range(_VALUE_NESTING):  # where the value sits deepest in a packet
        nested = [nested]
    try:
        orjson.dumps(nested, option=orjson.OPT_STRICT_INTEGER)
    except orjson.JSONEncodeError as exc:
        raise TypeError(
            "metadata values must be JSON with integers under 2**53, nested at most "
            f"{MAX_VALUE_DEPTH} deep: {exc}"
        ) from exc
    # orjson writes NaN and infinities as null: the owner would hold another value than
    # every other node.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise TypeError(f"metadata values must be finite numbers, not {item!r}")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)

"""The streams view: ordered segments over the fact log (streamkit's model), no I/O.

A *space* is a store, a *segment* is a key and an *entry* is a fact: an entry's
``sequence`` is the fact's ``seq`` and its ``timestamp`` the fact's transaction time, so
producing to a segment is writing facts for its key and consuming it is reading the
key's history. There is no second copy of the data.

A :class:`Record` payload is JSON or ``bytes``. Bytes are kept byte-exact: the fact's
value is their base64 text and its metadata carries ``kiln.payload = "base64"``, which
the entry hides again. Metadata keys starting with ``kiln.`` are reserved.

On the wire an entry is ``{"space", "segment", "sequence", "timestamp", "position",
"id", "metadata"}`` plus ``"payload"`` (JSON) or ``"payload_base64"`` (bytes). A
``produce`` reply lists ``{"sequence", "timestamp", "position", "id"}`` per record
(``produced``): the producer has the payloads already.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kilndb.errors import InvalidArgumentError
from kilndb.model import Fact, Write

__all__ = [
    "MAX_CONSUME",
    "Entry",
    "Record",
    "check_channel",
    "clamp_heartbeat",
    "clamp_limit",
    "entry_from_fact",
    "entry_from_produced",
    "entry_from_wire",
    "entry_to_wire",
    "fact_to_entry_wire",
    "new_channel",
    "produced_to_wire",
    "record_from_wire",
    "record_to_wire",
    "record_write",
    "status_of",
]

#: Consume limits are clamped to this many entries.
MAX_CONSUME = 10_000_000
#: Metadata key marking a bytes payload, and the prefix reserved for KilnDB.
PAYLOAD_KEY = "kiln.payload"
RESERVED_PREFIX = "kiln."


class Record(NamedTuple):
    """What a producer appends to a segment: a payload (``bytes`` or JSON) and metadata."""

    payload: Any
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a segment: a fact seen through the streams view."""

    space: str
    segment: str
    sequence: int
    timestamp: float
    payload: Any
    metadata: dict[str, str] = field(default_factory=dict)
    position: int = 0
    id: str = ""


def record_write(space: str, segment: str, record: object) -> Write:
    """The fact write of one record (checked: a Record, no reserved metadata)."""
    if not isinstance(record, Record):
        raise InvalidArgumentError(
            f"produce takes kilndb.Record objects, not {type(record).__name__}"
        )
    payload, metadata = record
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise InvalidArgumentError("metadata must be a dict of strings to strings")
        if any(isinstance(k, str) and k.startswith(RESERVED_PREFIX) for k in metadata):
            raise InvalidArgumentError(
                f"metadata keys starting with {RESERVED_PREFIX!r} are reserved"
            )
    if isinstance(payload, bytes | bytearray | memoryview):
        meta = {**(metadata or {}), PAYLOAD_KEY: "base64"}
        return Write(space, segment, base64.b64encode(bytes(payload)).decode(), metadata=meta)
    return Write(space, segment, payload, metadata=metadata)


def entry_from_fact(fact: Fact) -> Entry:
    """The entry a fact is; a bytes payload is decoded back to the exact bytes."""
    metadata = fact.metadata
    payload = fact.value
    if metadata.get(PAYLOAD_KEY) == "base64" and isinstance(payload, str):
        try:
            payload = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            pass  # not written by produce (a plain write set the key): shown as it is
        else:
            metadata = {k: v for k, v in metadata.items() if k != PAYLOAD_KEY}
    return Entry(
        fact.store,
        fact.key,
        fact.seq,
        fact.transaction_time,
        payload,
        metadata,
        fact.position,
        fact.id,
    )


def status_of(space: str, segment: str, first: Fact | None, last: Fact | None) -> dict[str, Any]:
    """A segment's status from its first and last retained facts."""
    return {
        "space": space,
        "segment": segment,
        "first_sequence": None if first is None else first.seq,
        "first_timestamp": None if first is None else first.transaction_time,
        "last_sequence": None if last is None else last.seq,
        "last_timestamp": None if last is None else last.transaction_time,
    }


def clamp_limit(limit: object) -> int:
    """A consume limit: a non-negative integer, at most :data:`MAX_CONSUME` (None: that)."""
    if limit is None:
        return MAX_CONSUME
    if type(limit) is not int or limit < 0:
        raise InvalidArgumentError("limit must be a non-negative integer or None")
    return min(limit, MAX_CONSUME)


def clamp_heartbeat(seconds: object) -> float:
    """A status-subscription heartbeat interval: 0 turns heartbeats off, other values
    are clamped to 1 to 300 seconds (streamkit's rule). Raises InvalidArgumentError for
    a negative number, NaN or anything else than a number."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidArgumentError("heartbeat must be a number of seconds")
    if not seconds >= 0:  # NaN too
        raise InvalidArgumentError(
            f"heartbeat must be 0 (no heartbeats) or a positive number of seconds, not {seconds}"
        )
    if seconds == 0:
        return 0.0
    return float(min(max(seconds, 1.0), 300.0))


#: What a client may name a stream's channel with (a UUID is one).
CHANNEL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def check_channel(channel: object) -> str | None:
    """A stream's ``channel`` id as given: None (one is assigned) or a string of 1 to
    128 letters, digits, ``_ . : -``. Raises InvalidArgumentError otherwise."""
    if channel is None:
        return None
    if not isinstance(channel, str) or not CHANNEL_ID.fullmatch(channel):
        shown = repr(channel) if isinstance(channel, str) else type(channel).__name__
        raise InvalidArgumentError(
            f"channel must be a string of 1 to 128 letters, digits, '_', '.', ':' or '-'"
            f" (a UUID, say), not {shown[:80]}"
        )
    return channel


def new_channel(channel: str | None = None) -> str:
    """``channel``, or a fresh UUID for a stream that was given none."""
    return str(uuid.uuid4()) if channel is None else channel


def check_time(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{name} must be a timestamp (epoch seconds) or None")
    return float(value)


# -- wire forms --------------------------------------------------------------------------


def record_to_wire(record: Record) -> dict[str, Any]:
    payload, metadata = record
    wire: dict[str, Any] = {"metadata": metadata}
    if isinstance(payload, bytes | bytearray | memoryview):
        wire["payload_base64"] = base64.b64encode(bytes(payload)).decode()
    else:
        wire["payload"] = payload
    return wire


def record_from_wire(wire: dict[str, Any]) -> Record:
    metadata = wire.get("metadata")
    if "payload_base64" in wire:
        encoded = wire["payload_base64"]
        if not isinstance(encoded, str):
            raise InvalidArgumentError("payload_base64 must be a base64 string")
        try:
            return Record(base64.b64decode(encoded, validate=True), metadata)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgumentError(f"payload_base64 is not valid base64: {exc}") from exc
    if "payload" not in wire:
        raise InvalidArgumentError("a record needs 'payload' or 'payload_base64'")
    return Record(wire["payload"], metadata)


def fact_to_entry_wire(fact: Fact) -> dict[str, Any]:
    """The wire form of the entry a fact is, straight from the fact (a bytes payload
    stays in its stored base64 form): ``entry_to_wire(entry_from_fact(fact))``."""
    metadata = fact.metadata
    wire: dict[str, Any] = {
        "space": fact.store,
        "segment": fact.key,
        "sequence": fact.seq,
        "timestamp": fact.transaction_time,
        "position": fact.position,
        "id": fact.id,
        "metadata": metadata,
    }
    if metadata.get(PAYLOAD_KEY) == "base64" and _is_base64(fact.value):
        wire["metadata"] = {k: v for k, v in metadata.items() if k != PAYLOAD_KEY}
        wire["payload_base64"] = fact.value
    else:
        wire["payload"] = fact.value
    return wire


def _is_base64(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def entry_to_wire(entry: Entry) -> dict[str, Any]:
    wire: dict[str, Any] = {
        "space": entry.space,
        "segment": entry.segment,
        "sequence": entry.sequence,
        "timestamp": entry.timestamp,
        "position": entry.position,
        "id": entry.id,
        "metadata": entry.metadata,
    }
    if isinstance(entry.payload, bytes):
        wire["payload_base64"] = base64.b64encode(entry.payload).decode()
    else:
        wire["payload"] = entry.payload
    return wire


def produced_to_wire(entry: Entry) -> dict[str, Any]:
    """What a ``produce`` reply says of each entry: where the log put it."""
    return {
        "sequence": entry.sequence,
        "timestamp": entry.timestamp,
        "position": entry.position,
        "id": entry.id,
    }


def entry_from_produced(space: str, segment: str, record: Record, wire: dict[str, Any]) -> Entry:
    """The entry a produced record became, from the ``produce`` reply."""
    payload, metadata = record
    if isinstance(payload, bytearray | memoryview):
        payload = bytes(payload)
    return Entry(
        space,
        segment,
        wire["sequence"],
        wire["timestamp"],
        payload,
        dict(metadata or {}),
        wire["position"],
        wire["id"],
    )


def entry_from_wire(wire: dict[str, Any]) -> Entry:
    payload = (
        base64.b64decode(wire["payload_base64"]) if "payload_base64" in wire else wire["payload"]
    )
    return Entry(
        wire["space"],
        wire["segment"],
        wire["sequence"],
        wire["timestamp"],
        payload,
        wire["metadata"],
        wire["position"],
        wire["id"],
    )

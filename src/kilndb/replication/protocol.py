"""The replication protocol, sans I/O: the messages a leader and a follower exchange.

A follower opens a connection to the leader's socket port and sends ``sync_request
{database, protocol_version, leader_epoch, position, flags}`` (``position``: its last
durable position). The leader answers ``{"ok": true, "type": "shard_info", database,
database_id, protocol_version, leader_epoch, epochs, last_position, durable_position}`` —
or an error frame saying what differs (protocol version, epoch, database) — and then pushes
``{"event": "replication", "type": …}`` frames on the connection:

``batch {first, last, count, frames}``
    at most ~256 records / 64 KiB of the leader's durable log after the last one sent;
    ``frames`` is the base64 of the records' CRC frames, verbatim.
``caught_up {position}``
    once, when the follower has everything that was durable when it asked.
``heartbeat {durable_position}``
    after a second without a batch.

If the follower's log has left the leader's — it holds records from a position where a
later leader epoch began — ``shard_info`` carries ``truncate_after: P`` instead and ships
nothing: the follower drops its records after ``P`` and asks again.

The follower answers with ``replication_ack {applied, durable}`` after every batch while
catching up and at least every 1,000 records or 100 ms while streaming, and after each
heartbeat; a peer silent for ``SILENCE_SECONDS`` is dropped by the other side.
"""

from __future__ import annotations

import base64
from typing import Any

from kilndb.storage.shipping import Shipment

__all__ = [
    "HEARTBEAT_SECONDS",
    "PROTOCOL_VERSION",
    "SILENCE_SECONDS",
    "ack",
    "batch_event",
    "caught_up_event",
    "divergence_point",
    "frames_of",
    "heartbeat_event",
    "sync_request",
]

PROTOCOL_VERSION = 1
HEARTBEAT_SECONDS = 1.0
SILENCE_SECONDS = 10.0


def sync_request(database: str, epoch: int, position: int) -> dict[str, Any]:
    return {
        "op": "sync_request",
        "database": database,
        "protocol_version": PROTOCOL_VERSION,
        "leader_epoch": epoch,
        "position": position,
        "flags": [],
    }


def divergence_point(epochs: list[dict[str, int]], epoch: int, position: int) -> int | None:
    """Where a follower's log leaves the leader's, if it does: the last position they
    share.

    The follower last followed (or led) in ``epoch`` and holds records up to
    ``position``. The leader's history says at which position each later epoch began;
    records the follower holds from the first such position on were written under an
    older leader the current one never had them from, so the logs agree only before it.
    """
    later = [e["start_position"] for e in epochs if e["epoch"] > epoch]
    if later and position >= later[0]:
        return later[0] - 1
    return None


def batch_event(shipment: Shipment) -> dict[str, Any]:
    return {
        "event": "replication",
        "type": "batch",
        "first": shipment.first,
        "last": shipment.last,
        "count": shipment.count,
        "frames": base64.b64encode(shipment.frames).decode(),
    }


def frames_of(event: dict[str, Any]) -> bytes:
    return base64.b64decode(event["frames"], validate=True)


def caught_up_event(position: int) -> dict[str, Any]:
    return {"event": "replication", "type": "caught_up", "position": position}


def heartbeat_event(durable: int) -> dict[str, Any]:
    return {"event": "replication", "type": "heartbeat", "durable_position": durable}


def ack(applied: int, durable: int) -> dict[str, Any]:
    return {"op": "replication_ack", "applied": applied, "durable": durable}

"""The replication protocol, sans I/O: the messages a leader and a follower exchange.

A follower opens a connection to the leader's socket port and sends ``sync_request
{database, protocol_version, leader_epoch, epochs, position, compacted_through, flags}``
(``position``: its last durable position; ``epochs``: its leader epoch history;
``compacted_through``: how far its leader had compacted the log it copied;
``leader_epoch``: the newest leader epoch it knows, which may be newer than its history's
last one when it learned of a promotion elsewhere). The leader
answers ``{"ok": true, "type": "shard_info", database, database_id, protocol_version,
leader_epoch, epochs, last_position, durable_position, compacted_through,
compacted_through_by_store}`` (the follower adopts both watermarks, so that changefeed
cursors too old on the leader are too old on it; without the per-store map, from an
older leader, the database-wide watermark applies to every store it holds) — or an
error frame saying what differs (protocol version, epoch, database) — and then pushes
``{"event": "replication", "type": …}`` frames on the connection:

``batch {first, last, count, frames}``
    at most ~4,096 records / 512 KiB of the leader's durable log after the last one sent;
    ``frames`` is the base64 of the records' CRC frames, verbatim.
``caught_up {position}``
    once, when the follower has everything that was durable when it asked.
``heartbeat {durable_position}``
    after a second without a batch.
``settings {retention}``
    the database's retention policies, before the first batch and whenever they change,
    so that a follower drops (and hides) the same facts as its leader.

If the follower's log has left the leader's — it holds records from a position where
their epoch histories part (see :func:`divergence_point`) — ``shard_info`` carries
``truncate_after: P`` instead and ships nothing: the follower drops its records after
``P`` and asks again. If the leader's compaction has removed records after the
follower's position (``compacted_through`` above it, and above what the follower's copy
already reflects), no shipment can make the two logs equal again: ``shard_info``
carries ``full_resync: true`` and the follower discards its copy and asks from position
0 — a full copy, done only then. An interrupted full copy resumes where it stopped.

Epoch fencing (see :mod:`kilndb.replication.fencing`): a leader whose epoch is older
than the follower's ``leader_epoch`` answers ``stale_epoch`` and fences itself; a
follower refuses a ``shard_info`` whose ``leader_epoch`` is older than the newest it
knows, and stops applying a stream (without acknowledging) as soon as it learns of a
newer epoch than its leader's.

The follower answers with ``replication_ack {applied, durable, epoch}`` (``epoch``: the
newest leader epoch it knows; a leader ignores acks carrying an epoch above its own, and
fences itself) after every batch while
catching up and at least every 1,000 records or 100 ms while streaming, and after each
heartbeat; a peer silent for ``SILENCE_SECONDS`` is dropped by the other side.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from kilndb.codec import DEFAULT_MAX_FRAME_BYTES
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
    "settings_event",
    "sync_request",
]

PROTOCOL_VERSION = 1
HEARTBEAT_SECONDS = 1.0
SILENCE_SECONDS = 10.0
#: The ``sync_request`` flag of a backup: a copy that stops once it holds the leader's
#: position, so its acknowledgements never count toward ``replicas=N``.
BACKUP_FLAG = "backup"
#: Room in a ``batch`` frame for its JSON around the base64 of its records.
_ENVELOPE_BYTES = 64 * 1024


def shipment_frame_limit(max_record_bytes: int) -> int:
    """The largest ``batch`` frame a follower takes: one whose records are a whole batch
    of ``max_record_bytes`` (base64 makes 4 bytes of every 3), never below the client
    protocol's limit."""
    return max(DEFAULT_MAX_FRAME_BYTES, 4 * -(-max_record_bytes // 3) + _ENVELOPE_BYTES)


def sync_request(
    database: str,
    epochs: list[dict[str, Any]],
    position: int,
    compacted_through: int = 0,
    node: str | None = None,
    newest_epoch: int = 0,
    flags: Sequence[str] = (),
) -> dict[str, Any]:
    """``node``: the follower's node name in a cluster with a coordinator (the leader
    names its in-sync replicas by it); ``newest_epoch``: a leader epoch learned
    elsewhere, sent when newer than the history's last one; ``flags``: what kind of copy
    asks (``BACKUP_FLAG``: one that stops, and so never counts as a replica)."""
    own = int(epochs[-1]["epoch"]) if epochs else 0
    return {
        **({} if node is None else {"node": node}),
        "op": "sync_request",
        "database": database,
        "protocol_version": PROTOCOL_VERSION,
        "leader_epoch": max(own, newest_epoch),
        "epochs": epochs,
        "position": position,
        "compacted_through": compacted_through,
        "flags": list(flags),
    }


def _same_epoch(a: dict[str, Any], b: dict[str, Any]) -> bool:
    fields = ("epoch", "start_position", "id")
    return all(a.get(f, "") == b.get(f, "") for f in fields)


def divergence_point(
    leader: list[dict[str, Any]], follower: list[dict[str, Any]], position: int
) -> int | None:
    """Where a follower's log leaves the leader's, if it does: the last position they
    share.

    Both sides keep a history of leader epochs (``{"epoch", "start_position", "id"}``;
    a promotion appends one with a fresh ``id``, a follower takes its leader's). The two
    logs were written by the same leaders up to where the histories part: the start of
    the first epoch one side has and the other does not — a later epoch the follower
    never followed, or one it led (or followed) that this leader never had, such as a
    second follower promoted from the same epoch. The follower, holding records up to
    ``position``, agrees with the leader only before the earlier of those two starts.
    """
    shared = 0
    for mine, theirs in zip(leader, follower, strict=False):
        if not _same_epoch(mine, theirs):
            break
        shared += 1
    starts = [h[shared]["start_position"] for h in (leader, follower) if shared < len(h)]
    if starts and position >= min(starts):
        return int(min(starts)) - 1
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


def settings_event(retention: dict[str, Any]) -> dict[str, Any]:
    return {"event": "replication", "type": "settings", "retention": retention}


def heartbeat_event(durable: int) -> dict[str, Any]:
    return {"event": "replication", "type": "heartbeat", "durable_position": durable}


def ack(applied: int, durable: int, epoch: int) -> dict[str, Any]:
    """``epoch``: the newest leader epoch the follower knows."""
    return {"op": "replication_ack", "applied": applied, "durable": durable, "epoch": epoch}

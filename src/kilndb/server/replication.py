"""The leader's side of replication: one :class:`FollowerLink` per follower and database.

A socket connection that sends ``sync_request`` (see :mod:`kilndb.replication.protocol`)
becomes a link: after the ``shard_info`` reply a thread ships the database's log from the
follower's position — batches until it has caught up, then live as writes become
durable, heartbeats when idle — through the connection's bounded send buffer (a follower
that does not keep up is cut off like any slow subscriber, and reconnects). The
follower's ``replication_ack`` frames update what the leader knows of it: position
acked, lag in records and seconds, last ack time, state. An ack that carries a leader
epoch newer than this leader's is ignored — a follower that knows of a newer leader
acknowledges nothing to this one — and reported (``newer_epoch``), which fences the
database here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from kilndb.codec import encode_frame
from kilndb.engine import Database
from kilndb.errors import KilnError
from kilndb.replication.protocol import (
    HEARTBEAT_SECONDS,
    SILENCE_SECONDS,
    batch_event,
    caught_up_event,
    heartbeat_event,
    settings_event,
)

__all__ = ["FollowerLink"]

log = logging.getLogger("kilndb.replication")

#: Bytes of shipments a follower may have in flight before shipping waits for it.
SEND_WINDOW = 2 * 1024 * 1024
#: The most facts and bytes of records a shipment carries (a batch is never split).
SHIPMENT_RECORDS = 4096
SHIPMENT_BYTES = 512 * 1024


class FollowerLink:
    """A follower streaming one database from this leader."""

    def __init__(
        self,
        db: Database,
        peer: str,
        after: int,
        send: Callable[[bytes, int], bool],
        drop: Callable[[str], None],
        acked: Callable[[], None] = lambda: None,
        backlog: Callable[[], int] = lambda: 0,
        holds_through: int = 0,
        newer_epoch: Callable[[str, int], object] = lambda database, epoch: None,
    ) -> None:
        self.db = db
        #: Set once the follower reported a leader epoch newer than this one's: its acks
        #: count for nothing from then on.
        self.superseded_by: int | None = None
        self._newer_epoch = newer_epoch
        self.peer = peer
        #: The follower's node name (with a coordinator; None otherwise).
        self.node: str | None = None
        #: False for a backup, whose acknowledgements never count toward replicas=N.
        self.replica = True
        self.state = "catching_up"
        self.sent = after
        self.applied = after
        self.durable = after
        self.last_ack = time.time()
        self._send = send
        self._drop = drop
        self._acked = acked
        #: Bytes handed to the connection and not sent yet: shipping waits while more
        #: than SEND_WINDOW are (flow control, instead of cutting the follower off).
        self._backlog = backlog
        self.closed = False
        # Raises CursorTooOldError past compaction.
        self._reader = db.log_reader(after, holds_through)
        self._thread = threading.Thread(
            target=self._run, name=f"kilndb-ship-{db.name}", daemon=True
        )

    def start(self) -> FollowerLink:
        self._thread.start()
        return self

    def close(self) -> None:
        self.closed = True

    def on_ack(self, applied: int, durable: int, epoch: int | None = None) -> None:
        """A ``replication_ack``; ignored when ``epoch`` (the newest the follower knows)
        is newer than this leader's."""
        if self.superseded_by is not None:
            return
        if epoch is not None and epoch > self.db.leader_epoch:
            self.superseded_by = epoch
            self.state = "superseded"
            log.warning(
                "follower %s of %s acknowledged at leader epoch %d, newer than this"
                " leader's %d: its acknowledgements are ignored",
                self.peer,
                self.db.name,
                epoch,
                self.db.leader_epoch,
            )
            self._newer_epoch(self.db.name, epoch)
            self._drop(f"follower {self.peer} knows leader epoch {epoch}")
            return
        self.applied = max(self.applied, applied)
        self.durable = max(self.durable, durable)
        self.last_ack = time.time()
        self._acked()

    def status(self) -> dict[str, Any]:
        last = self.db.last_position if not self.db.closed else self.sent
        lag_seconds = 0.0 if self.durable >= last else round(time.time() - self.last_ack, 3)
        return {
            "database": self.db.name,
            "peer": self.peer,
            "node": self.node,
            "role": "replica" if self.replica else "backup",
            "state": self.state,
            "position_sent": self.sent,
            "position_acked": self.durable,
            "lag_records": max(0, last - self.durable),
            "lag_seconds": lag_seconds,
            "last_ack_at": self.last_ack,
            "superseded_by": self.superseded_by,
        }

    def _push(self, event: dict[str, Any]) -> bool:
        frame = encode_frame(orjson.dumps(event))
        # A shipment larger than the window (one large batch, never split) waits for an
        # empty outbox, which takes a frame of any size.
        window = SEND_WINDOW if len(frame) <= SEND_WINDOW else 0
        deadline = time.monotonic() + SILENCE_SECONDS
        while self._backlog() > window and not self.closed:
            if time.monotonic() > deadline:
                self._drop(f"follower {self.peer} stopped reading")
                return False
            time.sleep(0.002)
        return self._send(frame, 0)

    def _run(self) -> None:
        db, reader = self.db, self._reader
        target = db.wait_visible(-1, 0)  # what "caught up" means for this follower
        last_push = time.monotonic()
        settings: dict[str, Any] | None = None
        try:
            while not self.closed:
                if db.closed:  # evicted or removed: the follower reconnects and reopens it
                    self._drop(f"database {db.name} was closed")
                    return
                shipment = reader.next(SHIPMENT_RECORDS, SHIPMENT_BYTES)
                # Read after the shipment: a policy set before any of its records was
                # appended (set_retention and appends share the log's lock) is seen
                # here and reaches the follower before them.
                policies = db.retention_policies()
                if policies != settings:
                    if not self._push(settings_event(policies)):
                        return
                    settings = policies
                if shipment is not None:
                    if not self._push(batch_event(shipment)):
                        return
                    self.sent = shipment.last
                    last_push = time.monotonic()
                    continue
                if db.wait_visible(-1, 0) > db.durable_position:
                    # Written but not durable yet (sync "interval" or "none"): a follower
                    # gets only what a crash cannot take back, so make it durable now.
                    db.sync()
                    continue
                if self.state == "catching_up" and reader.after >= target:
                    self.state = "streaming"
                    if not self._push(caught_up_event(reader.after)):
                        return
                now = time.monotonic()
                if time.time() - self.last_ack > SILENCE_SECONDS:
                    self._drop(f"follower {self.peer} silent for {SILENCE_SECONDS:.0f} s")
                    return
                if now - last_push >= HEARTBEAT_SECONDS:
                    if not self._push(heartbeat_event(reader.after)):
                        return
                    last_push = now
                db.wait_visible(reader.after, HEARTBEAT_SECONDS)
        except KilnError as exc:
            log.warning("shipping %s to %s stopped: %s", db.name, self.peer, exc)
            self._drop(str(exc))
        except Exception as exc:  # a bug must not leave the follower waiting silently
            log.exception("shipping %s to %s failed", db.name, self.peer)
            self._drop(f"{type(exc).__name__}: {exc}")
        finally:
            self.closed = True
            self.state = "disconnected"

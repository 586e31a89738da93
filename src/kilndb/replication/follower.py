"""The follower's side of replication: one thread per database, streaming from a leader.

A :class:`Follower` connects to the leader, asks for its database from its own last
durable position (``sync_request``), creates the local database with the leader's id
if it has none, appends each shipment verbatim (:meth:`kilndb.Database.append_shipment`)
and acknowledges what it applied and made durable. When the connection breaks or the
leader goes silent it reconnects with exponential backoff (``backoff_min`` to
``backoff_max`` seconds, with jitter) and resumes from where its log ends — the cursor is
the local log itself, durable by construction. When the leader says the local log has
left its history it cuts the divergent tail; when the leader has compacted away records
the copy lacks it discards the copy and starts over from position 0 (a full resync,
counted in :attr:`full_resyncs`). An error the leader answers (another
protocol version, epoch or database) is kept in :attr:`last_error` and shown in status.

Fencing: the follower knows the newest leader epoch of its database (its ``META`` and
what the server's :class:`~kilndb.replication.fencing.EpochFence` learned elsewhere). It
sends that epoch in ``sync_request`` (a stale leader then fences itself), refuses a
``shard_info`` from an older epoch before touching its copy (no truncation, no
shipment), and stops a stream — before appending the next shipment, and without
acknowledging — once it learns of an epoch newer than its leader's. It then retries
with backoff, as after any refusal, until it is re-pointed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from kilndb.client.endpoint import Endpoint
from kilndb.client.transport import Connection
from kilndb.engine import Database
from kilndb.errors import ConnectionLostError, KilnError, StaleEpochError
from kilndb.replication.fencing import EpochFence
from kilndb.replication.protocol import SILENCE_SECONDS, ack, frames_of, sync_request

__all__ = ["Follower"]

log = logging.getLogger("kilndb.replication")


class _Resync(Exception):
    """Ask the leader again at once (the local log was just cut back)."""


def _ranges(positions: list[int]) -> str:
    """``1..3, 7`` for [1, 2, 3, 7]."""
    if not positions:
        return "none"
    parts: list[str] = []
    start = previous = positions[0]
    for position in [*positions[1:], None]:
        if position is not None and position == previous + 1:
            previous = position
            continue
        parts.append(str(start) if start == previous else f"{start}..{previous}")
        if position is not None:
            start = previous = position
    return ", ".join(parts)


class Follower:
    """Streams database ``name`` from ``leader`` into the local database."""

    def __init__(
        self,
        leader: Endpoint,
        name: str,
        open_local: Callable[[str | None], Database | None],
        truncate_local: Callable[[int], list[int]],
        discard_local: Callable[[], int],
        *,
        backoff_min: float = 1.0,
        backoff_max: float = 30.0,
        fence: EpochFence | None = None,
        node: str | None = None,
    ) -> None:
        self.leader = leader
        #: The newest leader epochs this server knows (shared with the rest of it).
        self.fence = fence if fence is not None else EpochFence()
        #: The epoch of the leader the current stream comes from.
        self.leader_epoch: int | None = None
        self.name = name
        #: This server's node name, sent to the leader (in-sync replicas are named by it).
        self.node = node
        #: ``open_local(database_id)``: the local database (created with that id when it
        #: does not exist); ``open_local(None)``: the existing one, or None.
        self._open_local = open_local
        #: ``truncate_local(position)``: close the local database and cut its records
        #: after ``position`` (a divergent tail); the positions dropped.
        self._truncate_local = truncate_local
        #: ``discard_local()``: close the local database and empty it for a full copy;
        #: the number of facts it held.
        self._discard_local = discard_local
        #: Full copies made because the leader had compacted away what this copy lacked.
        self.full_resyncs = 0
        #: Positions dropped from a divergent tail, most recent truncation.
        self.dropped: list[int] = []
        self.truncations = 0
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.state = "connecting"
        self.position = 0
        self.leader_position = 0
        self.last_error: str | None = None
        self.reconnects = 0
        self.caught_up_at: float | None = None
        self._stop = threading.Event()
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._run, name=f"kilndb-follow-{name}", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            conn.abandon()
        self._thread.join(10)

    def status(self) -> dict[str, Any]:
        return {
            "database": self.name,
            "leader": self.leader.url,
            "state": self.state,
            "position": self.position,
            "leader_position": self.leader_position,
            "leader_epoch": self.leader_epoch,
            "lag_records": max(0, self.leader_position - self.position),
            "reconnects": self.reconnects,
            "truncations": self.truncations,
            "full_resyncs": self.full_resyncs,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        delay = self.backoff_min
        while not self._stop.is_set():
            progress = self.position
            try:
                self._follow()
                delay = self.backoff_min
            except _Resync:
                delay = self.backoff_min
                continue  # at once: the log was cut back to where the leader's history is
            except KilnError as exc:
                if self._stop.is_set():
                    return
                self.last_error = str(exc)
                if isinstance(exc, StaleEpochError):
                    self.state = "stale_leader"
                elif isinstance(exc, ConnectionLostError):
                    self.state = "retrying"
                else:
                    self.state = "error"
                log.warning("following %s from %s: %s", self.name, self.leader.url, exc)
            except Exception as exc:  # a bug or a local fault: report it, retry later
                if self._stop.is_set():
                    return
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.state = "error"
                log.exception("following %s from %s failed", self.name, self.leader.url)
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.abandon()
            self.reconnects += 1
            if self.position > progress:
                delay = self.backoff_min  # it was working: a fresh start, not a long wait
            # Exponential backoff with jitter, so that followers do not return in step.
            self._stop.wait(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.backoff_max)

    def _follow(self) -> None:
        local = self._open_local(None)
        if local is not None:
            local.sync()  # everything it holds is durable: ask from the end of its log
        position = 0 if local is None else local.last_position
        epochs = [{"epoch": 0, "start_position": 1}] if local is None else local.epochs
        self.state = "connecting"
        conn = self._conn = Connection(self.leader, timeout=SILENCE_SECONDS)
        conn.hello(self.name)
        compacted = 0 if local is None else local.compacted_through
        own = 0 if local is None else local.leader_epoch
        newest = self.fence.newest(self.name, own)
        request = sync_request(
            self.name, epochs, position, compacted, node=self.node, newest_epoch=newest
        )
        info = conn.call(**request)
        if self._stop.is_set():
            return
        # Before the copy is touched (no cut, no shipment): a leader older than the
        # newest epoch known here has been superseded.
        leader_epoch = self.leader_epoch = int(info["leader_epoch"])
        self._check_epoch(leader_epoch, own)
        if local is None:
            local = self._open_local(info["database_id"])
            assert local is not None
        elif local.database_id != info["database_id"]:
            raise KilnError(
                f"local database {self.name} has id {local.database_id}, the leader's is"
                f" {info['database_id']}: it is another database (a full copy is needed)"
            )
        if info.get("truncate_after") is not None:
            conn.close()
            self._conn = None
            self.state = "truncating"
            self.dropped = self._truncate_local(int(info["truncate_after"]))
            self.truncations += 1
            log.warning(
                "database %s diverged from its leader %s: dropped positions %s",
                self.name,
                self.leader.url,
                _ranges(self.dropped),
            )
            raise _Resync
        if info.get("full_resync"):
            conn.close()
            self._conn = None
            self.state = "resyncing"
            discarded = self._discard_local()
            self.full_resyncs += 1
            log.warning(
                "database %s is behind what its leader %s compacted (position %d, compacted"
                " through %d): discarded its %d facts for a full copy",
                self.name,
                self.leader.url,
                position,
                info.get("compacted_through", 0),
                discarded,
            )
            raise _Resync
        local.adopt_epochs(info["epochs"])
        by_store = info.get("compacted_through_by_store")  # absent from older leaders
        local.adopt_compacted(
            int(info.get("compacted_through", 0)),
            None if by_store is None else {str(s): int(p) for s, p in by_store.items()},
        )
        self.position = position
        self.leader_position = info["last_position"]
        self.state = "catching_up"
        self.last_error = None
        while not self._stop.is_set():
            message = conn.receive()
            kind = message.get("type")
            if message.get("ok") is False:
                raise KilnError(f"the leader refused: {message.get('error')}")
            if message.get("event") != "replication":
                continue
            if self._stop.is_set():
                return
            self._check_epoch(leader_epoch)  # a newer epoch learned mid-stream
            if kind == "batch":
                self.position = local.append_shipment(frames_of(message))
                self.leader_position = max(self.leader_position, message["last"])
            elif kind == "caught_up":
                self.state = "streaming"
                self.caught_up_at = time.time()
            elif kind == "heartbeat":
                self.leader_position = max(self.leader_position, message["durable_position"])
            elif kind == "settings":
                local.adopt_retention(message["retention"])
                continue
            else:
                continue
            self._check_epoch(leader_epoch)  # never acknowledge to a superseded leader
            newest = self.fence.newest(self.name, leader_epoch)
            conn.send(ack(self.position, local.durable_position, newest))

    def _check_epoch(self, leader_epoch: int, own: int = 0) -> None:
        """Raise StaleEpochError when the leader's epoch is older than the newest known."""
        try:
            self.fence.check(self.name, leader_epoch, own)
        except StaleEpochError as exc:
            raise StaleEpochError(
                exc.database,
                exc.epoch,
                exc.newest,
                f"refusing the leader {self.leader.url} of {self.name}: its epoch"
                f" {exc.epoch} is older than epoch {exc.newest}, known here",
            ) from None

"""The follower's side of replication: one thread per database, streaming from a leader.

A :class:`StreamFollower` connects to the leader (within ``connect_timeout`` seconds,
5 by default), asks for its database from its own last
durable position (``sync_request``), creates the local database with the leader's id
if it has none, appends each shipment verbatim (:meth:`kilndb.Database.append_shipment`)
and acknowledges what it applied and made durable. When the connection breaks or the
leader goes silent — or sends a message it has no business sending at that point of
the stream, an error named in :attr:`last_error` — it reconnects with exponential
backoff (``backoff_min`` to ``backoff_max`` seconds, with jitter; each reconnection
counted in :attr:`reconnects`) and resumes from where its log ends — the cursor is
the local log itself, durable by construction. When the leader says the local log has
left its history it cuts the divergent tail; when the leader has compacted away records
the copy lacks it discards the copy and starts over from position 0 (a full resync,
counted in :attr:`full_resyncs`). An error the leader answers (another
protocol version, epoch or database) is kept in :attr:`last_error` and shown in status.

A :class:`StreamFollower` leaves its local database to its owner, through three
callbacks: a server supplies its own (:mod:`kilndb.server.following`), and
:class:`kilndb.replication.Follower` owns a data directory.

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
from kilndb.config import DEFAULT_MAX_RECORD_BYTES
from kilndb.engine import Database
from kilndb.errors import (
    ConnectionLostError,
    InvalidArgumentError,
    KilnError,
    ProtocolError,
    StaleEpochError,
)
from kilndb.replication.fencing import EpochFence
from kilndb.replication.protocol import (
    BACKUP_FLAG,
    SILENCE_SECONDS,
    ack,
    frames_of,
    shipment_frame_limit,
    sync_request,
)

__all__ = ["CONNECT_TIMEOUT", "StreamFollower"]

log = logging.getLogger("kilndb.replication")

#: Seconds a connection to the leader may take to open (armdb's ``connect_timeout``).
CONNECT_TIMEOUT = 5.0
#: The stream's message kinds a follower acts on (``{"event": "replication", "type": …}``).
_STREAM_KINDS = frozenset({"batch", "caught_up", "heartbeat", "settings"})


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


def _kind(message: dict[str, Any]) -> str:
    """How an unexpected message is named in an error: its type, event or reply."""
    for field in ("type", "event"):
        if isinstance(message.get(field), str):
            return f"{field} {message[field]!r}"
    if "ok" in message:
        return "a reply"
    return f"a message with fields {sorted(message)}"


class StreamFollower:
    """Streams database ``name`` from ``leader`` into the local database its owner
    supplies through ``open_local``, ``truncate_local`` and ``discard_local``."""

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
        connect_timeout: float = CONNECT_TIMEOUT,
        fence: EpochFence | None = None,
        node: str | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        replica: bool = True,
    ) -> None:
        if not 0 < backoff_min <= backoff_max:
            raise InvalidArgumentError("backoff needs 0 < backoff_min <= backoff_max")
        if not connect_timeout > 0:
            raise InvalidArgumentError("connect_timeout must be a positive number of seconds")
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
        #: Seconds a connection to the leader may take to open.
        self.connect_timeout = connect_timeout
        #: The largest frame taken from the leader: a shipment holding a whole batch of
        #: ``max_record_bytes`` (the leader's, as configured alike across a cluster).
        self.max_frame_bytes = shipment_frame_limit(max_record_bytes)
        #: False for a copy that does not count as a replica (a backup): the leader
        #: never counts its acknowledgements toward ``replicas=N``.
        self.replica = replica
        #: ``connecting``, ``catching_up``, ``streaming``, ``retrying`` (the connection
        #: broke), ``error`` (see :attr:`last_error`), ``stale_leader``, ``truncating``,
        #: ``resyncing``, or ``stopped``.
        self.state = "connecting"
        #: The last position of the local copy (every position up to it is applied).
        self.position = 0
        #: The highest position the copy has held since this follower started (where it
        #: ended, then each shipment applied; a divergent tail cut does not lower it):
        #: armdb's ``max_version_seen``.
        self.max_position_seen = 0
        self.leader_position = 0
        #: The error that ended the latest stream; None once a stream works again (it
        #: applied a shipment or caught up).
        self.last_error: str | None = None
        #: Times the stream ended in an error and was opened again after a backoff.
        self.reconnects = 0
        #: Seconds (before jitter) of the wait after the latest error: ``backoff_min``,
        #: doubled after each further failure up to ``backoff_max`` (0 before any).
        self.backoff = 0.0
        self.caught_up_at: float | None = None
        self._stop = threading.Event()
        #: Notified whenever position or state change (see :meth:`wait_for`).
        self._progress = threading.Condition()
        self._lifecycle = threading.Lock()
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StreamFollower:
        """Start following (in a thread of its own); again after :meth:`stop`, from
        where the local copy ends. Does nothing while it runs."""
        with self._lifecycle:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stop.clear()
            self.state = "connecting"
            self._thread = threading.Thread(
                target=self._run, name=f"kilndb-follow-{self.name}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following and wait for the thread to end (at most 10 s; a backoff wait
        or a blocked read ends at once). Idempotent; safe from any thread, the
        follower's own included (which then does not wait for itself)."""
        self._stop.set()
        conn = self._conn
        if conn is not None:
            conn.abandon()
        with self._lifecycle:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        self._changed()

    @property
    def running(self) -> bool:
        """Whether the follower's thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wait_for(self, position: int | None = None, timeout: float | None = None) -> bool:
        """Block until the local copy holds ``position`` — by default, until it has
        caught up with its leader (streaming, with everything the leader had) — or
        ``timeout`` seconds pass (None: no limit), or the follower stops. Returns
        whether the copy got there."""

        def reached() -> bool:
            if position is not None:
                return self.position >= position
            return self.state == "streaming" and self.position >= self.leader_position

        with self._progress:
            return (
                self._progress.wait_for(lambda: reached() or self._stop.is_set(), timeout)
                and reached()
            )

    def _changed(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def status(self) -> dict[str, Any]:
        return {
            "database": self.name,
            "leader": self.leader.url,
            "state": self.state,
            "position": self.position,
            "leader_position": self.leader_position,
            "leader_epoch": self.leader_epoch,
            "lag_records": max(0, self.leader_position - self.position),
            "max_position_seen": self.max_position_seen,
            "reconnects": self.reconnects,
            "backoff": self.backoff,
            "truncations": self.truncations,
            "full_resyncs": self.full_resyncs,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        try:
            self._follow_with_backoff()
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.abandon()
            self.state = "stopped"
            self._changed()

    def _follow_with_backoff(self) -> None:
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
            self._changed()
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.abandon()
            self.reconnects += 1
            if self.position > progress:
                delay = self.backoff_min  # it was working: a fresh start, not a long wait
            self.backoff = delay
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
        self.position = position
        self.max_position_seen = max(self.max_position_seen, position)
        conn = self._conn = self._connect()
        if self._stop.is_set():  # stop() ran while connecting: it could not abandon this
            return
        conn.hello(self.name)
        compacted = 0 if local is None else local.compacted_through
        own = 0 if local is None else local.leader_epoch
        newest = self.fence.newest(self.name, own)
        request = sync_request(
            self.name,
            epochs,
            position,
            compacted,
            node=self.node,
            newest_epoch=newest,
            flags=() if self.replica else (BACKUP_FLAG,),
        )
        info = conn.call(**request)
        if self._stop.is_set():
            return
        if info.get("type") != "shard_info":
            raise ProtocolError(
                f"unexpected message from the leader {self.leader.url}: {_kind(info)}"
                " where shard_info was due"
            )
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
        self._changed()
        while not self._stop.is_set():
            message = conn.receive()
            kind = message.get("type")
            if message.get("ok") is False:
                raise KilnError(f"the leader refused: {message.get('error')}")
            if message.get("event") != "replication" or kind not in _STREAM_KINDS:
                # As armdb's client: a stream that carries what it should not cannot be
                # trusted any further; a fresh one starts from the local log's end.
                raise ProtocolError(
                    f"unexpected message from the leader {self.leader.url}: {_kind(message)}"
                )
            if self._stop.is_set():
                return
            self._check_epoch(leader_epoch)  # a newer epoch learned mid-stream
            if kind == "batch":
                self.position = local.append_shipment(frames_of(message))
                self.max_position_seen = max(self.max_position_seen, self.position)
                self.leader_position = max(self.leader_position, message["last"])
                self.last_error = None  # the stream works (until the next error)
            elif kind == "caught_up":
                self.state = "streaming"
                self.caught_up_at = time.time()
                self.last_error = None
            elif kind == "heartbeat":
                self.leader_position = max(self.leader_position, message["durable_position"])
            else:  # settings
                local.adopt_retention(message["retention"])
                continue
            self._changed()
            self._check_epoch(leader_epoch)  # never acknowledge to a superseded leader
            newest = self.fence.newest(self.name, leader_epoch)
            conn.send(ack(self.position, local.durable_position, newest))

    def _connect(self) -> Connection:
        """A connection to the leader, opened within ``connect_timeout`` seconds; its
        reads then wait up to SILENCE_SECONDS."""
        try:
            conn = Connection(
                self.leader, timeout=self.connect_timeout, max_frame_bytes=self.max_frame_bytes
            )
        except ConnectionLostError as exc:
            if isinstance(exc.__cause__, TimeoutError):
                raise ConnectionLostError(
                    f"cannot connect to {self.leader.url}: no answer within"
                    f" {self.connect_timeout:g} s (connect_timeout)"
                ) from exc
            raise
        conn.set_timeout(SILENCE_SECONDS)
        return conn

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

"""Socket connections (TCP, TLS, Unix) speaking the framed wire protocol.

Theory of operation
-------------------
Each connection is an :class:`asyncio.Protocol` (no per-frame stream objects): received
bytes go to a sans-I/O :class:`~kilndb.protocol.ServerConnection`, each request to the
connection's :class:`~kilndb.server.session.Session`, and every request gets a slot in
the connection's *pending* queue, in arrival order. Slots are written out strictly from
the head of the queue, so a client may pipeline any number of requests and gets its
replies in request order. Reading pauses while a connection has ``max_pipeline``
requests in flight.

Cheap requests (``ping``, ``hello``, bad requests) fill their slot at once. Database
requests are applied in batches, one batch of a connection at a time and in request
order, without waiting for fsyncs (a run of single-fact writes is committed together,
one lock and one append); the replies of a batch are filled once its writes are durable:

- a batch of *quick* ops (the op table's ``quick``: writes, deletes, reads, small
  batches, on a database that is open) is applied on the event loop itself, and every
  batch applied during one turn of the loop — from every connection — is made durable
  with one fsync at the end of the turn (:mod:`kilndb.server.commit`). Handing work to a
  thread and back costs more than these ops;
- anything else (replay, history, keys, compaction, opening a database) runs on the
  bounded worker pool, which then waits for the batch's durability; writes from all
  connections share fsyncs through group commit.

A replay first makes its connection's earlier writes durable, so it shows every write
acknowledged before it.

``subscribe`` turns a connection into a changefeed: after the ``{"ok": true}`` reply,
facts are pushed as ``{"event": "fact_written", "fact": …}`` frames until the client
sends ``close`` or goes away, by a pusher task from the connection's
:class:`~kilndb.server.push.Outbox`, fed by the database's fan-out hub. A subscriber
that lets ``max_subscriber_buffer`` bytes pile up unread is sent ``subscriber_overflow``
and the position it reached, so that it can resume; it never slows writers or other
subscribers. ``subscribe_status`` and a follower's ``sync_request`` stream the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

import orjson

from kilndb.errors import KilnError, ProtocolError, UnavailableError
from kilndb.protocol import (
    BadRequest,
    ConnectionBroken,
    Request,
    ServerConnection,
    WriteRun,
)
from kilndb.protocol.ops import OPS
from kilndb.server.commit import CommitRounds
from kilndb.server.replies import (
    CLOSE_GRACE_SECONDS,
    RUN,
    SINGLE_WRITES,
    Applied,
    Replies,
    Slot,
    batch_end,
    groupable,
)
from kilndb.server.services import Services
from kilndb.server.session import (
    Acknowledge,
    Answer,
    Close,
    Execute,
    Open,
    Refuse,
    Session,
    Unsubscribe,
)
from kilndb.server.socket_streams import SocketStream, peer_address

__all__ = ["SocketConnection"]


class SocketConnection(asyncio.Protocol):
    """One client connection on a TCP, TLS or Unix socket."""

    def __init__(
        self, services: Services, commits: CommitRounds, connections: set[SocketConnection]
    ) -> None:
        self.services = services
        self.config = services.config
        self.metrics = services.metrics
        self.commits = commits
        self.connections = connections
        self.wire = ServerConnection(services.config.max_frame_bytes, write_runs=True)
        self.session = Session("tcp", services.auth, services.routing)
        self.replies = Replies(services.metrics, services.config.slow_op_ms)
        #: Reply slots in request order; written out from the head as they fill.
        self.pending: deque[Slot] = deque()
        self.transport: asyncio.Transport | None = None
        self.closing = False
        #: The server is stopping: in-flight requests are answered, nothing new is read,
        #: and the last reply is followed by end-of-file.
        self.draining = False
        self.eof_sent = False
        self.paused = False
        #: The connection's stream (changefeed, status or replication), once opened.
        self.stream: SocketStream | None = None
        #: Database requests waiting to be applied, in order, with their reply slots.
        self._queued: list[tuple[Request, Slot]] = []
        self._applying = False
        self._continuing = False
        #: The transport's buffer is over its high-water mark (the client is not reading).
        self._write_paused = False
        #: Started when a frame begins, cancelled when none is open (``frame_timeout``).
        self._frame_timer: asyncio.TimerHandle | None = None
        #: Per database name: the furthest position this connection has written.
        self._written: dict[str, int] = {}

    # -- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        refusal = None
        if self.services.state() == "draining":
            refusal = UnavailableError("the server is draining; retry later or elsewhere")
        elif len(self.connections) >= self.config.max_connections:
            refusal = UnavailableError("too many connections; retry later")
            self.metrics.event(
                "alert",
                type="max_connections",
                active=len(self.connections),
                max=self.config.max_connections,
            )
        if refusal is not None:
            self.metrics.count("rejected_connections_total")
            transport.write(ServerConnection.error(refusal))
            transport.close()
            return
        self.connections.add(self)
        self.metrics.count("accepted_connections_total")
        self.metrics.event(
            "connection_opened", peer=peer_address(transport.get_extra_info("peername"))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._frame_timer is not None:
            self._frame_timer.cancel()
        if self in self.connections:
            self.connections.discard(self)
            self.metrics.count("closed_connections_total")
            self.metrics.event("connection_closed", error=None if exc is None else str(exc))
        if self.stream is not None:
            self._unsubscribe()
            self.metrics.event("subscription_closed", channel_id=self.stream.channel)

    def data_received(self, data: bytes) -> None:
        metrics = self.metrics
        metrics.count("bytes_in", len(data))
        if self.draining:
            return  # sent after the server began to stop: never applied, never answered
        pending = self.pending
        for event in self.wire.receive_data(data):
            # Counted as they arrive: a server_status among them reports them.
            if isinstance(event, Request):
                metrics.count("requests_total")
                pending.append(self._handle(event))
            elif isinstance(event, WriteRun):
                metrics.count("requests_total", len(event.envelopes))
                self._write_run(event)
            elif isinstance(event, BadRequest):
                metrics.count("errors_total")
                pending.append(Slot(ServerConnection.error(event.error, event.request_id)))
            elif isinstance(event, ConnectionBroken):
                metrics.count("errors_total")
                pending.append(Slot(ServerConnection.error(event.error)))
                self.closing = True
        if self._queued and not self._applying:
            self._apply_next()
        self._time_frame()
        self.flush()
        if len(pending) >= self.config.max_pipeline and self.transport:
            self.transport.pause_reading()
            self.paused = True

    def _time_frame(self) -> None:
        """Start the clock on a frame the client began, stop it once none is open."""
        timeout = self.config.frame_timeout
        if not self.wire.partial or self.closing or timeout <= 0:
            if self._frame_timer is not None:
                self._frame_timer.cancel()
                self._frame_timer = None
        elif self._frame_timer is None:
            self._frame_timer = self.services.loop.call_later(timeout, self._frame_timed_out)

    def _frame_timed_out(self) -> None:
        """A frame begun ``frame_timeout`` seconds ago is still not complete: a stalled
        or deliberately slow client, which must not hold its connection forever."""
        self._frame_timer = None
        if self.closing or self.transport is None:
            return
        timeout = self.config.frame_timeout
        self.metrics.count("errors_total")
        self.metrics.event("frame_timeout", seconds=timeout)
        self.closing = True
        error = ProtocolError(f"a frame was begun and not finished within {timeout:g} s")
        self.reply_now(ServerConnection.error(error))
        self.services.loop.call_later(CLOSE_GRACE_SECONDS, self.transport.abort)

    # -- replies in request order ----------------------------------------------------

    def reply_now(self, frame: bytes) -> None:
        """Queue a frame behind every reply still pending, and write what is ready."""
        self.pending.append(Slot(frame))
        self.flush()

    def has_pending(self) -> bool:
        return bool(self.pending)

    @property
    def writable(self) -> bool:
        transport = self.transport
        return transport is not None and not transport.is_closing() and not self.eof_sent

    def drain(self) -> None:
        """Stop taking requests; answer those in flight, then send end-of-file."""
        self.draining = True
        self._unsubscribe()
        self.flush()

    def flush(self) -> None:
        """Write out every reply that is ready, in order."""
        transport = self.transport
        pending = self.pending
        ready = []
        while pending and (frame := pending[0].frame) is not None:
            pending.popleft()
            ready.append(frame)
        if ready and self.writable:
            assert transport is not None
            # One write (one syscall) for every reply that is ready, in order.
            data = b"".join(ready) if len(ready) > 1 else ready[0]
            self.metrics.count("bytes_out", len(data))
            transport.write(data)
        if transport is None:
            return
        if self.paused and len(pending) < self.config.max_pipeline // 2:
            self.paused = False
            if not self._write_paused:
                transport.resume_reading()
        if self.closing and not pending:
            transport.close()
        elif self.draining and not pending and not self.eof_sent:
            # FIN after the last reply; the client closes, or stop() does after a grace.
            self.eof_sent = True
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()

    # -- requests --------------------------------------------------------------------

    def _handle(self, request: Request) -> Slot:
        step = self.session.receive(request)
        request_id = request.request_id
        if isinstance(step, Execute):
            if step.op.runs == "server":
                return self._server_op(step.request)
            # A database request: queued behind this connection's earlier ones.
            slot = Slot()
            self._queued.append((step.request, slot))
            return slot
        if isinstance(step, Answer):
            return Slot(ServerConnection.reply(request_id, **step.fields))
        if isinstance(step, Refuse):
            return Slot(self.failed(request, step.error))
        if isinstance(step, Close):
            self.closing = True
            self._unsubscribe()
            return Slot(ServerConnection.reply(request_id))
        if isinstance(step, Open):
            self.stream = SocketStream(self.services, self)
            frame = self.stream.open(step.request)
            if self.stream.outbox is None:  # refused, or the follower must ask again
                self.stream = None
                self.session.ended(step.name)
            return Slot(frame)
        if isinstance(step, Acknowledge):
            if self.stream is not None:
                self.stream.acknowledged(step.applied, step.durable, step.epoch)
            return Slot(b"")  # acks are not answered
        assert isinstance(step, Unsubscribe)  # WebSocket only: never carried here
        return Slot(ServerConnection.reply(request_id))

    def _write_run(self, run: WriteRun) -> None:
        """A run of plain writes to this connection's database: committed on the loop as
        one group, its replies framed in one call, when nothing is queued before it and
        the run may be applied right here (see :meth:`_quick`); otherwise taken apart
        and handled request by request."""
        services = self.services
        session = self.session
        database = session.database
        principal = session.principal
        fast = not (
            self._queued
            or self._applying
            or self.closing
            or principal is None
            or services.leader.min_insync_replicas
            or database in services.dispatcher.read_only
            or not services.databases.is_open(database)
        )
        if fast:
            assert principal is not None
            try:
                principal.check("write", database)
            except KilnError:
                fast = False  # each write gets its own refusal
        if not fast:
            for request in run.requests():
                self.pending.append(self._handle(request))
            return
        slot = Slot()
        self.pending.append(slot)
        started = time.monotonic()
        try:
            outcomes, db, position = services.dispatcher.apply_write_run(run.envelopes, database)
        except Exception as exc:
            slot.frame = b"".join(self.replies.refusal(request, exc) for request in run.requests())
            return
        finally:
            self.replies.timed("write", started)
        carrier = Request(RUN, {"run": run, "outcomes": outcomes}, None, database)
        applied: list[Applied] = []
        self._note(applied, [(slot, carrier, None, db, position, {})])
        self.commits.soon(self, applied)

    def _run_replies(self, run: WriteRun, outcomes: list[Any], failure: KilnError | None) -> bytes:
        """The replies of a committed run, in order; ``failure``: its fsync failed."""
        if failure is None:
            frames = ServerConnection.write_replies(run, outcomes)
            if frames is not None:
                self.metrics.count("facts_written", len(outcomes))
                return frames
        parts = []
        for request, outcome in zip(run.requests(), outcomes, strict=True):
            if isinstance(outcome, KilnError):
                parts.append(self.failed(request, outcome))
            elif failure is not None:
                parts.append(self.failed(request, failure))
            else:
                fact = orjson.Fragment(outcome) if isinstance(outcome, bytes) else outcome
                parts.append(self.replies.reply(request, {"fact": fact}))
        return b"".join(parts)

    def _apply_next(self) -> None:
        """Apply the next batch of queued requests — unless the client is not reading
        its replies (the transport's buffer is full): then nothing more is applied, and
        nothing more read, until it drains (:meth:`resume_writing`)."""
        if not self._queued or self._write_paused:
            self._applying = False
            return
        cut = batch_end(self._queued)
        batch, self._queued = self._queued[:cut], self._queued[cut:]
        if self._quick(batch):
            # Applied right here; acknowledged with everything else applied during this
            # turn of the loop, after one fsync.
            self._applying = False
            self.commits.soon(self, self._apply_batch(batch))
            if self._queued and not self._continuing:
                # The rest after this turn's replies are out, so that a client that does
                # not read them has paused writing by then.
                self._continuing = True
                self.services.loop.call_soon(self._continue)
            return
        self._applying = True
        self.services.executor.submit(self._apply_job, batch)

    def _continue(self) -> None:
        self._continuing = False
        if not self._applying:
            self._apply_next()

    # -- write-side back-pressure (asyncio.Protocol) ------------------------------------

    def pause_writing(self) -> None:
        """The transport holds more than its high-water mark: the client is not reading."""
        self._write_paused = True
        if self.transport is not None and not self.paused:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()
        if not self._applying:
            self._apply_next()

    def _quick(self, batch: list[tuple[Request, Slot]]) -> bool:
        """Whether a batch is cheap enough to apply on the event loop: only the op
        table's quick ops, on databases that are open already."""
        services = self.services
        databases = services.databases
        checked: set[str] = set()
        for request, _ in batch:
            if not OPS[request.op].is_quick(request.params) or services.leader.replicas_for(
                request
            ):
                return False  # waiting for followers' acks must not hold the loop
            name = request.database or self.session.database
            if name not in checked:
                if not databases.is_open(name):
                    return False
                checked.add(name)
        return True

    def _apply_job(self, batch: list[tuple[Request, Slot]]) -> None:
        """Worker: apply a batch; acknowledge it here unless more requests are waiting."""
        applied = self._apply_batch(batch)
        if self._queued:
            # Let the loop start the next batch while this one waits for its fsync.
            self._to_loop(self._applied, applied)
        else:
            # Nothing else to apply: save the round trip through the loop.
            self.acknowledge(applied)
            self._to_loop(self._acknowledged)

    def _applied(self, applied: list[Applied]) -> None:
        self._apply_next()  # the connection's next requests may be applied meanwhile
        self.services.executor.submit(self._acknowledge_job, applied)

    def _acknowledged(self) -> None:
        self.flush()
        self._apply_next()

    def _acknowledge_job(self, applied: list[Applied]) -> None:
        self.acknowledge(applied)
        self._to_loop(self.flush)  # the whole batch goes out in one write

    def acknowledge(self, applied: list[Applied]) -> None:
        """Wait once per database for the batch's durability, fill its replies."""
        failures: dict[int, KilnError] = {}
        furthest: dict[int, tuple[Any, int]] = {}
        for _, _, frame, db, position, _ in applied:
            if frame is None and db is not None and position:
                known = furthest.get(id(db))
                if known is None or position > known[1]:
                    furthest[id(db)] = (db, position)
        dispatcher = self.services.dispatcher
        for key, (db, position) in furthest.items():
            try:
                db.wait_durable(position)
                dispatcher.confirm(db.name)
            except KilnError as exc:
                failures[key] = exc
        leader = self.services.leader
        reply = ServerConnection.reply
        single_facts = 0  # single-fact writes answered, counted once for the batch
        for slot, request, error_frame, db, position, result in applied:
            if error_frame is not None:
                slot.frame = error_frame
                continue
            failure = failures.get(id(db))
            if request.op == RUN:
                run, outcomes = request.params["run"], request.params["outcomes"]
                try:
                    slot.frame = self._run_replies(run, outcomes, failure)
                except Exception as exc:  # never leave a reply slot empty: it would stall
                    slot.frame = b"".join(self.replies.refusal(r, exc) for r in run.requests())
                continue
            if failure is None and position and (replicas := leader.replicas_for(request)):
                try:
                    leader.wait_replicas(db.name, position, replicas)
                    self.services.dispatcher.confirm(db.name)  # still leading after the wait
                except KilnError as exc:
                    failure = exc
            try:
                if failure is not None:
                    slot.frame = self.failed(request, failure)
                elif request.op in SINGLE_WRITES:
                    slot.frame = reply(request.request_id, **result)
                    single_facts += 1
                else:
                    slot.frame = self.replies.reply(request, result)
            except Exception as exc:  # never leave a reply slot empty: it would stall
                slot.frame = self.replies.refusal(request, exc)
        if single_facts:
            self.metrics.count("facts_written", single_facts)

    def _to_loop(self, callback: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a stopped loop: the server is gone
            self.services.loop.call_soon_threadsafe(callback, *args)

    def _apply_batch(self, batch: list[tuple[Request, Slot]]) -> list[Applied]:
        """Apply requests in order (loop or worker thread); nothing waits for an fsync.

        A run of single-fact writes to one database is committed together
        (:meth:`~kilndb.Database.write_each`): one lock, one append, each write still
        answered on its own.
        """
        applied: list[Applied] = []
        i, end = 0, len(batch)
        while i < end:
            request, slot = batch[i]
            if groupable(request):
                database = request.database
                j = i + 1
                while j < end:
                    following = batch[j][0]
                    if not groupable(following) or following.database != database:
                        break
                    j += 1
                if j - i > 1:
                    self._note(applied, self._apply_writes(batch[i:j], database or "default"))
                    i = j
                    continue
            self._note(applied, [(slot, request, *self._apply(request))])
            i += 1
        return applied

    def _note(self, applied: list[Applied], more: list[Applied]) -> None:
        """Add to ``applied``, remembering how far this connection has written."""
        written = self._written
        for _, _, error, db, position, _ in more:
            if error is None and position and position > written.get(db.name, 0):
                written[db.name] = position
        applied += more

    def _settle(self, request: Request) -> None:
        """Before a replay: make this connection's earlier writes to its database durable,
        so that it shows every write acknowledged before it (replay shows durable facts)."""
        name = request.database or self.session.database
        position = self._written.get(name)
        if position is not None:
            # A database closed meanwhile was flushed: its reopened log is durable already.
            self.services.databases.get(name).wait_durable(position)

    def _apply_writes(self, run: list[tuple[Request, Slot]], database: str) -> list[Applied]:
        started = time.monotonic()
        requests = [request for request, _ in run]
        try:
            outcomes, db, position = self.services.dispatcher.apply_writes(requests, database)
        except Exception as exc:
            return [(slot, request, *self.replies.refused(request, exc)) for request, slot in run]
        finally:
            self.replies.timed(requests[0].op, started)
        applied: list[Applied] = []
        for (request, slot), outcome in zip(run, outcomes, strict=True):
            if isinstance(outcome, KilnError):
                applied.append((slot, request, self.failed(request, outcome), None, 0, {}))
            else:
                applied.append((slot, request, None, db, position, {"fact": outcome}))
        return applied

    def _apply(self, request: Request) -> tuple[bytes | None, Any, int, dict[str, Any]]:
        """Apply a request. An error reply is final; otherwise the reply
        is built once the returned position is durable (:meth:`acknowledge`)."""
        started = time.monotonic()
        try:
            if request.op == "replay":
                self._settle(request)
            result, db, position = self.services.dispatcher.apply(request, "default")
        except Exception as exc:
            return self.replies.refused(request, exc)
        finally:
            self.replies.timed(request.op, started)
        return None, db, position, result

    def failed(self, request: Request, error: KilnError) -> bytes:
        """The error reply of ``request`` (counted, and recorded as an event)."""
        return self.replies.failed(request, error)

    def _server_op(self, request: Request) -> Slot:
        """A server op: a snapshot answered here, anything else (promoting, opening or
        removing a database) on a worker."""
        server_ops = self.services.server_ops
        if OPS[request.op].quick:
            try:
                return Slot(self.replies.reply(request, server_ops.run(request)))
            except Exception as exc:
                return Slot(self.replies.refusal(request, exc))
        slot = Slot()

        def job() -> None:
            try:
                slot.frame = self.replies.reply(request, server_ops.run(request))
            except Exception as exc:
                slot.frame = self.replies.refusal(request, exc)
            self._to_loop(self.flush)

        self.services.executor.submit(job)
        return slot

    # -- the stream --------------------------------------------------------------------

    def _unsubscribe(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.session.ended(None)

    def subscribed(self) -> bool:
        """Whether the connection holds a live changefeed or status stream."""
        return self.stream is not None and self.stream.live

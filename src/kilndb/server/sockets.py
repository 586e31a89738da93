"""The socket server: TCP and Unix listeners speaking the wire protocol.

Theory of operation
-------------------
Each connection is an :class:`asyncio.Protocol` (no per-frame stream objects): received
bytes go to a sans-I/O :class:`~kilndb.protocol.ServerConnection`, and every event it
yields gets a slot in the connection's *pending* queue, in arrival order. Slots are
written out strictly from the head of the queue, so a client may pipeline any number of
requests and gets its replies in request order. Reading pauses while a connection has
``max_pipeline`` requests in flight.

Cheap requests (``ping``, ``hello``, bad requests) fill their slot at once. Database
requests are applied in batches, one batch of a connection at a time and in request
order, without waiting for fsyncs (a run of single-fact writes is committed together,
one lock and one append); the replies of a batch are filled once its writes are durable:

- a batch of *quick* ops (writes, deletes, reads, small ``write_many`` on a database that
  is open) is applied on the event loop itself, and every batch applied during one turn
  of the loop — from every connection — is made durable with one fsync at the end of the
  turn, as Redis does before it sleeps. Handing work to a thread and back costs more
  than these ops;
- anything else (replay, history, keys, compaction, opening a database) runs on a worker
  thread, which then waits for the batch's durability; writes from all connections share
  fsyncs through group commit.

A replay first makes its connection's earlier writes durable, so it shows every write
acknowledged before it.

``subscribe`` turns a connection into a changefeed: after the ``{"ok": true}`` reply,
facts are pushed as ``{"event": "fact_written", "fact": …}`` frames until the client
sends ``close`` or goes away. The frames come from the database's fan-out hub
(:mod:`kilndb.server.fanout`), which reads the log and encodes each event once for all
subscribers. A subscriber that lets ``max_subscriber_buffer`` bytes pile
up unread is disconnected with ``subscriber_overflow`` and the position it reached, so
that it can resume; it never slows writers or other subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from kilndb.client.endpoint import Endpoint
from kilndb.client.transport import Connection
from kilndb.codec import DEFAULT_MAX_FRAME_BYTES, encode_frame
from kilndb.config import DatabaseConfig
from kilndb.engine import Database, StatusSubscription
from kilndb.errors import (
    AuthenticationError,
    InvalidArgumentError,
    KilnError,
    NotFoundError,
    ProtocolError,
    ReplicationTimeoutError,
    SubscriberOverflowError,
    UnavailableError,
)
from kilndb.model import validate_database_name
from kilndb.protocol import (
    PROTOCOL_VERSION,
    BadRequest,
    ConnectionBroken,
    Request,
    ServerConnection,
    WriteRun,
)
from kilndb.replication.follower import Follower
from kilndb.replication.protocol import PROTOCOL_VERSION as REPLICATION_PROTOCOL
from kilndb.replication.protocol import SILENCE_SECONDS, divergence_point
from kilndb.server.auth import ANONYMOUS, AuthConfig, Authenticator, Principal, action_of
from kilndb.server.dispatch import Dispatcher
from kilndb.server.fanout import Fanout, Feed
from kilndb.server.nodes import NodeConfig, NodeManager
from kilndb.server.replication import FollowerLink
from kilndb.storage.lockfile import ServerLock
from kilndb.storage.truncate import discard_copy, truncate_after

if TYPE_CHECKING:
    from kilndb.server.cluster import ClusterAgent

__all__ = ["Server", "ServerConfig"]

_R = TypeVar("_R")

log = logging.getLogger("kilndb.server")

#: How often a follower of every database asks its leader for new ones.
DISCOVER_SECONDS = 2.0

#: How long a stopping server waits for clients to close after their last reply.
CLOSE_GRACE_SECONDS = 1.0

#: How long an overflowed subscriber has to read the rest and its error before the
#: connection is dropped.
OVERFLOW_GRACE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where and how a server listens. ``port=0`` picks a free port."""

    data: Path = Path("./data")
    host: str | None = "127.0.0.1"
    port: int = 7400
    unix: Path | None = None
    #: HTTP/SSE/WebSocket port on ``host`` (None: no HTTP; 0 picks a free port).
    http_port: int | None = None
    max_connections: int = 1024
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_pipeline: int = 1024
    max_subscriber_buffer: int = 8 * 1024 * 1024
    #: How long ``stop()`` lets in-flight requests finish before closing connections.
    drain_timeout: float = 5.0
    #: Requests slower than this are counted and reported as ``slow_op`` events.
    slow_op_ms: float = 500.0
    #: Size of the recent-events ring.
    max_recent_events: int = 100
    workers: int = 32
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    #: Idle eviction, the open-database cap and the circuit breaker.
    nodes: NodeConfig = field(default_factory=NodeConfig)
    #: Tokens required on every transport when a secret or a public key is set.
    auth: AuthConfig = field(default_factory=AuthConfig)
    #: Listen on a non-loopback address without authentication (refused otherwise).
    insecure_bind: bool = False
    #: TLS for TCP and HTTP: certificate chain and key (PEM files).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: With it, clients must present a certificate signed by this CA (mutual TLS).
    tls_client_ca: Path | None = None
    #: Follow the leader at this address (``HOST:PORT`` or a URL): ``replicate``, or
    #: every database it has (new ones as they appear) when ``replicate`` is None.
    replica_of: str | None = None
    #: The databases to follow (with ``replica_of``).
    replicate: tuple[str, ...] | None = ("default",)
    #: The token this server presents to its leader (when the leader requires one).
    replication_token: str | None = None
    #: First and longest wait before reconnecting to the leader.
    replication_backoff: tuple[float, float] = (1.0, 30.0)
    #: Followers that must have a write durably before it is acknowledged, unless the
    #: request says otherwise (``replicas``).
    min_insync_replicas: int = 0
    #: How long a write waits for its replicas before ``replication_timeout``.
    replica_timeout: float = 5.0
    #: Cluster membership (gossip on ``host``:``gossip_port``, UDP and TCP; None: no
    #: cluster). ``node_name`` defaults to the host name and TCP port.
    gossip_port: int | None = None
    node_name: str | None = None
    #: Members to join through (``HOST:GOSSIP_PORT`` each).
    join: tuple[str, ...] = ()
    #: Shared secret that authenticates gossip packets (HMAC-SHA256).
    cluster_key: str | None = None
    #: Seconds between two failure-detection probes (every member should agree).
    probe_interval: float = 1.0
    #: Follow, from whichever member leads it, every database the cluster has.
    follow: bool = False

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None without a certificate."""
        if self.tls_cert is None:
            if self.tls_key is not None or self.tls_client_ca is not None:
                raise InvalidArgumentError("TLS options need a certificate (tls_cert)")
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
            if self.tls_client_ca is not None:
                context.load_verify_locations(cafile=self.tls_client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgumentError(f"cannot set up TLS: {exc}") from exc
        return context


def _following(method: Callable[..., _R]) -> Callable[..., _R]:
    """Run a method that starts, stops or promotes followers under the server's
    ``following_lock``: one change to what this server follows at a time."""

    @functools.wraps(method)
    def locked(self: Server, *args: Any, **kwargs: Any) -> _R:
        with self.following_lock:
            return method(self, *args, **kwargs)

    return locked


class _Slot:
    """A reply's place in its connection's reply order; ``frame`` is set once it is ready.

    A worker thread may fill a slot while the loop is flushing: a reference store is
    atomic, and the loop only writes out a ready prefix of the queue.
    """

    __slots__ = ("frame",)

    def __init__(self, frame: bytes | None = None) -> None:
        self.frame = frame


#: An applied request: its reply slot, the request, an error frame (or None), the
#: database, the position to make durable and the reply fields.
_Applied = tuple[_Slot, Request, bytes | None, Any, int, dict[str, Any]]

#: The op of the internal request that carries a committed :class:`WriteRun` from its
#: application to its acknowledgement (never a wire op).
_RUN = "kiln.write_run"

#: Ops that write one fact: consecutive ones in a pipeline are committed together.
_SINGLE_WRITES = frozenset({"write", "write_fact"})


def _groupable(request: Request) -> bool:
    """A single-fact write that may be committed together with its neighbours."""
    return request.op in _SINGLE_WRITES and request.params["fence"] is None


#: Ops whose work is small and bounded, applied on the event loop itself (saving two
#: thread hand-offs, which cost more than the op). Everything else — replay, history,
#: keys, compaction, opening a database — runs on the worker threads.
QUICK_OPS = frozenset({"write", "write_fact", "delete", "read", "write_many", "produce"})
#: The largest ``write_many`` (or ``produce``) applied on the loop.
QUICK_BATCH = 100


class _Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.wire = ServerConnection(server.config.max_frame_bytes, write_runs=True)
        #: Reply slots in request order; written out from the head as they fill.
        self.pending: deque[_Slot] = deque()
        self.database = "default"
        self.transport: asyncio.Transport | None = None
        self.closing = False
        #: The server is stopping: in-flight requests are answered, nothing new is read,
        #: and the last reply is followed by end-of-file.
        self.draining = False
        self.eof_sent = False
        self.paused = False
        #: Who the connection's token speaks for (None: not authenticated yet).
        self.principal: Principal | None = None if server.auth.enabled else ANONYMOUS
        #: The connection's changefeed, once it has subscribed.
        self.feed: Feed | None = None
        #: Or the follower it ships a database to (replication).
        self.link: FollowerLink | None = None
        #: Or its segment-status subscription.
        self.status_feed: StatusSubscription | None = None
        #: Database requests waiting to be applied, in order, with their reply slots.
        self._queued: list[tuple[Request, _Slot]] = []
        #: Bytes of changefeed frames handed to the loop and not written yet.
        self._unsent = 0
        self._unsent_lock = threading.Lock()
        self._applying = False
        #: Per database name: the furthest position this connection has written.
        self._written: dict[str, int] = {}

    # -- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        if len(server.connections) >= server.config.max_connections:
            server.counters["rejected_connections_total"] += 1
            transport.write(
                ServerConnection.error(UnavailableError("too many connections; retry later"))
            )
            transport.close()
            return
        server.connections.add(self)
        server.counters["accepted_connections_total"] += 1
        server.event("connection_opened", peer=str(transport.get_extra_info("peername")))

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.server.connections:
            self.server.connections.discard(self)
            self.server.counters["closed_connections_total"] += 1
            self.server.event("connection_closed", error=None if exc is None else str(exc))
        if self.feed is not None or self.status_feed is not None:
            self._unsubscribe()
            self.server.event("subscription_closed")

    def data_received(self, data: bytes) -> None:
        counters = self.server.counters
        counters["bytes_in"] += len(data)
        if self.draining:
            return  # sent after the server began to stop: never applied, never answered
        pending = self.pending
        for event in self.wire.receive_data(data):
            if isinstance(event, Request):
                counters["requests_total"] += 1
                pending.append(self._handle(event))
            elif isinstance(event, WriteRun):
                counters["requests_total"] += len(event.envelopes)
                self._write_run(event)
            elif isinstance(event, BadRequest):
                counters["errors_total"] += 1
                pending.append(_Slot(ServerConnection.error(event.error, event.request_id)))
            elif isinstance(event, ConnectionBroken):
                counters["errors_total"] += 1
                pending.append(_Slot(ServerConnection.error(event.error)))
                self.closing = True
        if self._queued and not self._applying:
            self._apply_next()
        self._flush()
        if len(pending) >= self.server.config.max_pipeline and self.transport:
            self.transport.pause_reading()
            self.paused = True

    # -- replies in request order ----------------------------------------------------

    def _reply_now(self, frame: bytes) -> None:
        """Queue a frame behind every reply still pending, and write what is ready."""
        self.pending.append(_Slot(frame))
        self._flush()

    @property
    def writable(self) -> bool:
        transport = self.transport
        return transport is not None and not transport.is_closing() and not self.eof_sent

    def drain(self) -> None:
        """Stop taking requests; answer those in flight, then send end-of-file."""
        self.draining = True
        self._unsubscribe()
        self._flush()

    def _flush(self) -> None:
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
            self.server.counters["bytes_out"] += len(data)
            transport.write(data)
        if transport is None:
            return
        if self.paused and len(pending) < self.server.config.max_pipeline // 2:
            self.paused = False
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

    def _handle(self, request: Request) -> _Slot:
        op, request_id = request.op, request.request_id
        if op == "ping":
            return _Slot(ServerConnection.reply(request_id, pong=True))
        if op == "hello":
            return _Slot(self._hello(request))
        if op == "close":
            self.closing = True
            self._unsubscribe()
            return _Slot(ServerConnection.reply(request_id))
        if request.database is None and op != "remove_database":
            # Resolved now: a later hello {database} must not redirect a queued request.
            request = Request(op, request.params, request_id, self.database)
        try:
            if self.principal is None:
                raise AuthenticationError("authenticate first: hello {token}")
            self.principal.check(op, request.database)
        except KilnError as exc:
            return _Slot(self._failed(request, exc))
        if op == "server_status":
            return _Slot(ServerConnection.reply(request_id, **self.server.status()))
        if op == "cluster":
            return _Slot(ServerConnection.reply(request_id, **self.server.cluster_status()))
        if op == "subscribe":
            return _Slot(self._subscribe(request))
        if op == "subscribe_status":
            return _Slot(self._subscribe_status(request))
        if op == "sync_request":
            return _Slot(self._sync_request(request))
        if op in ("promote", "replicate"):
            return self._server_op(request)
        if op == "replication_ack":
            if self.link is not None:
                self.link.on_ack(request.params["applied"], request.params["durable"])
            return _Slot(b"")  # acks are not answered
        # A database request: queued behind this connection's earlier ones.
        slot = _Slot()
        self._queued.append((request, slot))
        return slot

    def _write_run(self, run: WriteRun) -> None:
        """A run of plain writes to this connection's database: committed on the loop as
        one group, its replies framed in one call, when nothing is queued before it and
        the run may be applied right here (see :meth:`_quick`); otherwise taken apart
        and handled request by request."""
        server = self.server
        database = self.database
        principal = self.principal
        fast = not (
            self._queued
            or self._applying
            or self.closing
            or principal is None
            or server.config.min_insync_replicas
            or database in server.dispatcher.read_only
            or not server.databases.is_open(database)
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
        slot = _Slot()
        self.pending.append(slot)
        started = time.monotonic()
        try:
            outcomes, db, position = server.dispatcher.apply_write_run(run.envelopes, database)
        except Exception as exc:
            slot.frame = b"".join(self._refusal(request, exc) for request in run.requests())
            return
        finally:
            self._timed("write", started)
        carrier = Request(_RUN, {"run": run, "outcomes": outcomes}, None, database)
        applied: list[_Applied] = []
        self._note(applied, [(slot, carrier, None, db, position, {})])
        server.acknowledge_soon(self, applied)

    def _run_replies(self, run: WriteRun, outcomes: list[Any], failure: KilnError | None) -> bytes:
        """The replies of a committed run, in order; ``failure``: its fsync failed."""
        if failure is None:
            frames = ServerConnection.write_replies(run, outcomes)
            if frames is not None:
                self.server.count("facts_written", len(outcomes))
                return frames
        parts = []
        for request, outcome in zip(run.requests(), outcomes, strict=True):
            if isinstance(outcome, KilnError):
                parts.append(self._failed(request, outcome))
            elif failure is not None:
                parts.append(self._failed(request, failure))
            else:
                fact = orjson.Fragment(outcome) if isinstance(outcome, bytes) else outcome
                parts.append(self._reply(request, {"fact": fact}))
        return b"".join(parts)

    def _apply_next(self) -> None:
        if not self._queued:
            self._applying = False
            return
        batch, self._queued = self._queued, []
        if self._quick(batch):
            # Applied right here; acknowledged with everything else applied during this
            # turn of the loop, after one fsync (Server._commit_round).
            self._applying = False
            self.server.acknowledge_soon(self, self._apply_batch(batch))
            return
        self._applying = True
        self.server.executor.submit(self._apply_job, batch)

    def _quick(self, batch: list[tuple[Request, _Slot]]) -> bool:
        """Whether a batch is cheap enough to apply on the event loop: only bounded
        ops (see QUICK_OPS), on databases that are open already."""
        server = self.server
        databases = server.databases
        checked: set[str] = set()
        for request, _ in batch:
            if request.op not in QUICK_OPS or server.replicas_for(request):
                return False  # waiting for followers' acks must not hold the loop
            if request.op == "write_many" and len(request.params["writes"]) > QUICK_BATCH:
                return False
            if request.op == "produce" and len(request.params["records"]) > QUICK_BATCH:
                return False
            name = request.database or self.database
            if name not in checked:
                if not databases.is_open(name):
                    return False
                checked.add(name)
        return True

    def _apply_job(self, batch: list[tuple[Request, _Slot]]) -> None:
        """Worker: apply a batch; acknowledge it here unless more requests are waiting."""
        applied = self._apply_batch(batch)
        if self._queued:
            # Let the loop start the next batch while this one waits for its fsync.
            self._to_loop(self._applied, applied)
        else:
            # Nothing else to apply: save the round trip through the loop.
            self._acknowledge(applied)
            self._to_loop(self._acknowledged)

    def _applied(self, applied: list[_Applied]) -> None:
        self._apply_next()  # the connection's next requests may be applied meanwhile
        self.server.executor.submit(self._acknowledge_job, applied)

    def _acknowledged(self) -> None:
        self._flush()
        self._apply_next()

    def _acknowledge_job(self, applied: list[_Applied]) -> None:
        self._acknowledge(applied)
        self._to_loop(self._flush)  # the whole batch goes out in one write

    def _acknowledge(self, applied: list[_Applied]) -> None:
        """Wait once per database for the batch's durability, fill its replies."""
        failures: dict[int, KilnError] = {}
        furthest: dict[int, tuple[Any, int]] = {}
        for _, _, frame, db, position, _ in applied:
            if frame is None and db is not None and position:
                known = furthest.get(id(db))
                if known is None or position > known[1]:
                    furthest[id(db)] = (db, position)
        for key, (db, position) in furthest.items():
            try:
                db.wait_durable(position)
            except KilnError as exc:
                failures[key] = exc
        server = self.server
        reply = ServerConnection.reply
        single_facts = 0  # single-fact writes answered, counted once for the batch
        for slot, request, error_frame, db, position, result in applied:
            if error_frame is not None:
                slot.frame = error_frame
                continue
            failure = failures.get(id(db))
            if request.op == _RUN:
                run, outcomes = request.params["run"], request.params["outcomes"]
                try:
                    slot.frame = self._run_replies(run, outcomes, failure)
                except Exception as exc:  # never leave a reply slot empty: it would stall
                    slot.frame = b"".join(self._refusal(r, exc) for r in run.requests())
                continue
            if failure is None and position and (replicas := server.replicas_for(request)):
                try:
                    server.wait_replicas(db.name, position, replicas)
                except KilnError as exc:
                    failure = exc
            try:
                if failure is not None:
                    slot.frame = self._failed(request, failure)
                elif request.op in _SINGLE_WRITES:
                    slot.frame = reply(request.request_id, **result)
                    single_facts += 1
                else:
                    slot.frame = self._reply(request, result)
            except Exception as exc:  # never leave a reply slot empty: it would stall
                slot.frame = self._refusal(request, exc)
        if single_facts:
            server.count("facts_written", single_facts)

    def _to_loop(self, callback: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a stopped loop: the server is gone
            self.server.loop.call_soon_threadsafe(callback, *args)

    def _apply_batch(self, batch: list[tuple[Request, _Slot]]) -> list[_Applied]:
        """Apply requests in order (loop or worker thread); nothing waits for an fsync.

        A run of single-fact writes to one database is committed together
        (:meth:`~kilndb.Database.write_each`): one lock, one append, each write still
        answered on its own.
        """
        applied: list[_Applied] = []
        i, end = 0, len(batch)
        while i < end:
            request, slot = batch[i]
            if _groupable(request):
                database = request.database or self.database
                j = i + 1
                while j < end:
                    following = batch[j][0]
                    if not _groupable(following) or (
                        (following.database or self.database) != database
                    ):
                        break
                    j += 1
                if j - i > 1:
                    self._note(applied, self._apply_writes(batch[i:j], database))
                    i = j
                    continue
            self._note(applied, [(slot, request, *self._apply(request))])
            i += 1
        return applied

    def _note(self, applied: list[_Applied], more: list[_Applied]) -> None:
        """Add to ``applied``, remembering how far this connection has written."""
        written = self._written
        for _, _, error, db, position, _ in more:
            if error is None and position and position > written.get(db.name, 0):
                written[db.name] = position
        applied += more

    def _settle(self, request: Request) -> None:
        """Before a replay: make this connection's earlier writes to its database durable,
        so that it shows every write acknowledged before it (replay shows durable facts)."""
        name = request.database or self.database
        position = self._written.get(name)
        if position is not None:
            # A database closed meanwhile was flushed: its reopened log is durable already.
            self.server.databases.get(name).wait_durable(position)

    def _apply_writes(self, run: list[tuple[Request, _Slot]], database: str) -> list[_Applied]:
        started = time.monotonic()
        requests = [request for request, _ in run]
        try:
            outcomes, db, position = self.server.dispatcher.apply_writes(requests, database)
        except Exception as exc:
            return [(slot, request, *self._refused(request, exc)) for request, slot in run]
        finally:
            self._timed(requests[0].op, started)
        applied: list[_Applied] = []
        for (request, slot), outcome in zip(run, outcomes, strict=True):
            if isinstance(outcome, KilnError):
                applied.append((slot, request, self._failed(request, outcome), None, 0, {}))
            else:
                applied.append((slot, request, None, db, position, {"fact": outcome}))
        return applied

    def _hello(self, request: Request) -> bytes:
        params = request.params
        version = params["protocol_version"]
        if version is not None and version != PROTOCOL_VERSION:
            error = ProtocolError(
                f"protocol version {version} is not supported; this server speaks"
                f" {PROTOCOL_VERSION}"
            )
            return ServerConnection.error(error, request.request_id)
        if params["token"] is not None:
            try:
                self.principal = self.server.auth.verify(params["token"])
            except KilnError as exc:
                return self._failed(request, exc)
        if params["database"] is not None:
            self.database = params["database"]
        # Where writes to this database go, and whether this server is in a cluster: a
        # client routes by it without another round trip.
        where: dict[str, Any] = {}
        leader = self.server.dispatcher.read_only.get(self.database)
        cluster = self.server.cluster
        if leader is not None:
            where = {"role": "follower", "leader": leader or None}
        elif cluster is not None and (elsewhere := cluster.elsewhere(self.database)):
            # Not held here, led by another member: the client goes there.
            where = {"role": "elsewhere", "leader": elsewhere.url}
        else:
            where = {"role": "leader"}
        if cluster is not None:
            where["cluster"] = cluster.name
        return ServerConnection.reply(
            request.request_id,
            protocol_version=PROTOCOL_VERSION,
            database=self.database,
            **where,
        )

    def _apply(self, request: Request) -> tuple[bytes | None, Any, int, dict[str, Any]]:
        """Apply a request. An error reply is final; otherwise the reply
        is built once the returned position is durable (:meth:`_acknowledge`)."""
        started = time.monotonic()
        try:
            if request.op == "replay":
                self._settle(request)
            result, db, position = self.server.dispatcher.apply(request, self.database)
        except Exception as exc:
            return self._refused(request, exc)
        finally:
            self._timed(request.op, started)
        return None, db, position, result

    def _refused(
        self, request: Request, exc: Exception
    ) -> tuple[bytes | None, Any, int, dict[str, Any]]:
        return self._refusal(request, exc), None, 0, {}

    def _refusal(self, request: Request, exc: Exception) -> bytes:
        """The error reply of a request that raised ``exc``."""
        if isinstance(exc, KilnError):
            return self._failed(request, exc)
        # A bug must not take the connection down silently.
        log.exception("request %s failed", request.op, exc_info=exc)
        self.server.count("errors_total")
        error = KilnError(f"internal error: {exc}")
        return ServerConnection.error(error, request.request_id)

    def _timed(self, op: str, started: float) -> None:
        elapsed_ms = (time.monotonic() - started) * 1000
        if elapsed_ms >= self.server.config.slow_op_ms:
            self.server.count("slow_ops_total")
            self.server.event("slow_op", op=op, ms=round(elapsed_ms, 1))

    def _failed(self, request: Request, error: KilnError) -> bytes:
        self.server.count("errors_total")
        self.server.event("request_error", op=request.op, error_code=error.error_code)
        return ServerConnection.error(error, request.request_id)

    def _reply(self, request: Request, result: dict[str, Any]) -> bytes:
        self.server.count_result(request, result)
        return ServerConnection.reply(request.request_id, **result)

    # -- changefeed ------------------------------------------------------------------

    def _unsubscribe(self) -> None:
        if self.link is not None:
            self.link.close()
            self.server.links.discard(self.link)
        if self.feed is not None:
            self.server.fanout.detach(self.feed)
        if self.status_feed is not None:
            self.status_feed.close()

    def _subscribe(self, request: Request) -> bytes:
        if self.feed is not None or self.status_feed is not None:
            error = ProtocolError("this connection is already subscribed")
            return ServerConnection.error(error, request.request_id)
        stores = request.params["stores"]
        try:
            db = self.server.databases.get(request.database or self.database, create=False)
            after = request.params["after"]
            if after is None:  # Igniter's form: live only
                after = db.stats()["durable_position"]
            # Checks the cursor (CursorTooOldError) and the store names.
            db.subscribe(stores, after).close()
            chosen = None if stores is None else frozenset(stores)
            self.feed = Feed(chosen, after, self._send, self._feed_gone)
            self.server.fanout.attach(db, self.feed)
        except KilnError as exc:
            self.feed = None
            return ServerConnection.error(exc, request.request_id)
        self.server.counters["subscriptions_total"] += 1
        self.server.event("subscription_opened", after=after)
        # Events are pushed through the loop, so they follow this reply.
        return ServerConnection.reply(request.request_id, position=after)

    def _sync_request(self, request: Request) -> bytes:
        """A follower asks for a database's log: answer shard_info, then ship it."""
        if self.feed is not None or self.status_feed is not None or self.link is not None:
            error = ProtocolError("this connection is already streaming")
            return ServerConnection.error(error, request.request_id)
        params = request.params
        name = request.database or self.database
        try:
            if params["protocol_version"] != REPLICATION_PROTOCOL:
                raise ProtocolError(
                    f"replication protocol version {params['protocol_version']} is not"
                    f" {REPLICATION_PROTOCOL}"
                )
            if not self.server.databases.exists(name):
                raise NotFoundError(f"this server has no database {name!r} to replicate")
            db = self.server.databases.get(name)
            if params["leader_epoch"] > db.leader_epoch:
                raise ProtocolError(
                    f"epoch mismatch: the follower is at leader epoch"
                    f" {params['leader_epoch']}, this server at {db.leader_epoch}"
                )
            epochs = db.epochs
            history = params["epochs"]
            if history is None:  # a follower that sends only its epoch number
                history = [e for e in epochs if e["epoch"] <= params["leader_epoch"]]
            diverged_after = divergence_point(epochs, history, params["position"])
            stats = db.stats()
            compacted = db.compacted_through
            shard_info = {
                "type": "shard_info",
                "database": name,
                "database_id": db.database_id,
                "protocol_version": REPLICATION_PROTOCOL,
                "leader_epoch": db.leader_epoch,
                "epochs": epochs,
                "last_position": stats["last_position"],
                "durable_position": stats["durable_position"],
                "compacted_through": compacted,
                "compacted_through_by_store": db.compacted_through_by_store,
            }
            if diverged_after is None and params["position"] > stats["last_position"]:
                # The follower holds records this leader lost (a crash before they were
                # durable here): they are not this leader's, whatever their positions.
                diverged_after = stats["last_position"]
            # A copy made from this log compacted as far as it is now lacks nothing
            # (an interrupted full copy resumes); any other copy behind compaction may.
            holds = params["compacted_through"]
            full_resync = (
                diverged_after is None and 0 < params["position"] < compacted and holds < compacted
            )
            if diverged_after is not None or full_resync:
                # The follower holds records this leader's history does not (it must cut
                # them), or compaction removed records it lacks (it must start over):
                # either way it asks again before anything is shipped.
                if full_resync:
                    self.server.event("follower_full_resync", database=name, compacted=compacted)
                else:
                    self.server.event(
                        "follower_diverged", database=name, truncate_after=diverged_after
                    )
                return ServerConnection.reply(
                    request.request_id,
                    **shard_info,
                    truncate_after=diverged_after,
                    full_resync=full_resync,
                )
            peer = str(self.transport.get_extra_info("peername")) if self.transport else "?"
            link = FollowerLink(
                db,
                peer,
                params["position"],
                self._send,
                self._drop_link,
                self.server.acked,
                self.backlog,
                holds,
            )
        except KilnError as exc:
            self.server.event("replication_refused", database=name, error=str(exc))
            log.warning("replication of %s refused: %s", name, exc)
            return self._failed(request, exc)
        self.link = link
        self.server.links.add(link)
        self.server.event("follower_connected", database=name, peer=link.peer)
        reply = ServerConnection.reply(request.request_id, **shard_info)
        # Shipments go through the loop, after this reply.
        self.server.loop.call_soon(link.start)
        return reply

    def _server_op(self, request: Request) -> _Slot:
        """``promote``/``replicate``: they stop threads, so they run on a worker."""
        slot = _Slot()
        params = request.params

        def job() -> None:
            try:
                if request.op == "promote":
                    database = params["database"]
                    result = self.server.promote(None if database is None else [database])
                else:
                    result = self.server.follow(params["leader"], params["databases"])
                slot.frame = ServerConnection.reply(request.request_id, **result)
            except Exception as exc:
                slot.frame = self._refusal(request, exc)
            self._to_loop(self._flush)

        self.server.executor.submit(job)
        return slot

    def backlog(self) -> int:
        """Bytes of pushed frames not sent yet (any thread)."""
        transport = self.transport
        with self._unsent_lock:
            unsent = self._unsent
        return unsent + (transport.get_write_buffer_size() if transport is not None else 0)

    def _drop_link(self, reason: str) -> None:
        """Cut a follower's connection (from its shipping thread)."""
        self.server.event("follower_dropped", reason=reason)
        transport = self.transport
        if transport is not None:
            self._to_loop(transport.abort)

    def _subscribe_status(self, request: Request) -> bytes:
        if self.feed is not None or self.status_feed is not None:
            error = ProtocolError("this connection is already subscribed")
            return ServerConnection.error(error, request.request_id)
        params = request.params
        try:
            db = self.server.databases.get(request.database or self.database, create=False)
            status = db.space(params["space"]).subscribe_status(
                params["segment"], params["heartbeat"]
            )
        except KilnError as exc:
            return ServerConnection.error(exc, request.request_id)
        self.status_feed = status
        threading.Thread(
            target=self._pump_status, args=(status,), name="kilndb-status", daemon=True
        ).start()
        self.server.counters["subscriptions_total"] += 1
        self.server.event("subscription_opened", space=status.space, segment=status.segment)
        return ServerConnection.reply(
            request.request_id,
            space=status.space,
            segment=status.segment,
            heartbeat=status.heartbeat,
        )

    def _pump_status(self, status: StatusSubscription) -> None:
        """Push ``{"event": "segment_status", "type": …, …}`` frames (its own thread)."""
        try:
            while not status.closed:
                message = status.get(timeout=0.5)
                if message is not None:
                    frame = encode_frame(orjson.dumps({"event": "segment_status", **message}))
                    if not self._send(frame, 0):
                        break
        finally:
            status.close()

    def _send(self, data: bytes, position: int) -> bool:
        """Queue event frames ending at ``position`` (fan-out thread); False: stop.

        Never blocks: a subscriber with ``max_subscriber_buffer`` bytes not taken yet —
        frames handed to the loop but not written, plus what the transport holds — is
        cut off with ``subscriber_overflow`` and the position it reached.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        limit = self.server.config.max_subscriber_buffer
        with self._unsent_lock:
            unsent = self._unsent + transport.get_write_buffer_size()
            if unsent <= limit:
                self._unsent += len(data)
        if unsent > limit:
            feed = self.feed
            reached = 0
            if feed is not None:
                feed.close()
                reached = feed.position
            if self.status_feed is not None:
                self.status_feed.close()
            self._to_loop(self._overflow, SubscriberOverflowError(reached))
            return False
        self._to_loop(self._push, data)
        return True

    def _push(self, frame: bytes) -> None:
        # Events go out only once every reply queued before them has.
        with self._unsent_lock:
            self._unsent -= len(frame)
        transport = self.transport
        if transport is not None and self.writable:
            if self.pending:
                self._reply_now(frame)
            else:
                self.server.counters["bytes_out"] += len(frame)
                transport.write(frame)

    def _feed_gone(self, feed: Feed) -> None:
        """The database closed under this connection's subscription (fan-out thread)."""
        error = UnavailableError(
            "the database of this subscription was closed under it (removed, or its"
            f" replica copy cut back or recopied); subscribe again after position"
            f" {feed.position} once it is back"
        )
        self._to_loop(self._end_subscription, error)

    def _end_subscription(self, error: KilnError) -> None:
        self.server.event("subscription_ended", error=error.message)
        self.closing = True
        self._reply_now(ServerConnection.error(error))
        transport = self.transport
        if transport is not None:
            self.server.loop.call_later(OVERFLOW_GRACE_SECONDS, transport.abort)

    def _overflow(self, error: SubscriberOverflowError) -> None:
        self.server.event("subscriber_overflow", position=error.position)
        self.closing = True
        self._reply_now(ServerConnection.error(error))
        # The error waits behind what the subscriber has not read yet; one that never
        # reads again is dropped after a grace period instead of holding memory.
        transport = self.transport
        if transport is not None:
            self.server.loop.call_later(OVERFLOW_GRACE_SECONDS, transport.abort)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Server:
    """A KilnDB server: ``start()`` in a background thread, or ``await serve()``."""

    def __init__(self, config: ServerConfig | None = None, **options: Any) -> None:
        self.config = config or ServerConfig(**options)
        self.auth = Authenticator(self.config.auth)
        self.ssl_context = self.config.ssl_context()
        host = self.config.host
        if host is not None and not _is_loopback(host) and not self.auth.enabled:
            if not self.config.insecure_bind:
                raise InvalidArgumentError(
                    f"refusing to listen on {host} without authentication: give an auth"
                    " secret or public key, or insecure_bind (--insecure-bind)"
                )
            log.warning("listening on %s without authentication", host)
        self.databases = NodeManager(self.config.data, self.config.database, self.config.nodes)
        self.dispatcher = Dispatcher(self.databases)
        self.fanout = Fanout()
        #: Followers streaming databases from this server.
        self.links: set[FollowerLink] = set()
        #: The databases this server follows from its leader.
        self.followers: list[Follower] = []
        #: Held while followers are started, stopped or promoted (reentrant: follow
        #: stops the followers it replaces).
        self.following_lock = threading.RLock()
        #: Set to stop discovering a leader's databases.
        self._discovering = threading.Event()
        #: Notified when a follower acknowledges (writes waiting for replicas).
        self._acks = threading.Condition()
        #: Requests applied on the loop, waiting for the end of its turn.
        self._awaiting: list[tuple[_Connection, list[_Applied]]] = []
        self.executor = ThreadPoolExecutor(self.config.workers, thread_name_prefix="kilndb-op")
        self.connections: set[_Connection] = set()
        #: Changefeeds served over HTTP (SSE, WebSocket), closed when the server stops.
        self.streams: set[Any] = set()
        self.counters = dict.fromkeys(
            (
                "requests_total",
                "errors_total",
                "facts_written",
                "facts_replayed",
                "bytes_in",
                "bytes_out",
                "accepted_connections_total",
                "closed_connections_total",
                "rejected_connections_total",
                "subscriptions_total",
                "slow_ops_total",
            ),
            0,
        )
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=self.config.max_recent_events)
        self.state = "starting"
        self._started_at = time.monotonic()
        self._counters_lock = threading.Lock()
        #: The server's event loop, made by :meth:`start`.
        self.loop: asyncio.AbstractEventLoop
        self._servers: list[asyncio.Server] = []
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.addresses: list[str] = []
        self._http: Any = None
        #: This server as a cluster member (with ``gossip_port``).
        self.cluster: ClusterAgent | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def _listen(self) -> None:
        config = self.config
        if config.host is not None:
            server = await self.loop.create_server(
                lambda: _Connection(self),
                config.host,
                config.port,
                reuse_address=True,
                ssl=self.ssl_context,
            )
            self._servers.append(server)
            host, port = server.sockets[0].getsockname()[:2]
            scheme = "tcp" if self.ssl_context is None else "tls"
            self.addresses.append(f"{scheme}://{host}:{port}")
        if config.unix is not None:
            path = Path(config.unix)
            if path.exists():
                path.unlink()
            server = await self.loop.create_unix_server(lambda: _Connection(self), str(path))
            self._servers.append(server)
            self.addresses.append(f"unix://{path}")
        if config.http_port is not None:
            from aiohttp import web

            from kilndb.server.http import build_app

            self._http = web.AppRunner(build_app(self), access_log=None)
            await self._http.setup()
            site = web.TCPSite(
                self._http,
                config.host or "127.0.0.1",
                config.http_port,
                ssl_context=self.ssl_context,
            )
            await site.start()
            bound = site._server
            assert isinstance(bound, asyncio.Server)
            host, port = bound.sockets[0].getsockname()[:2]
            scheme = "http" if self.ssl_context is None else "https"
            self.addresses.append(f"{scheme}://{host}:{port}")
        self.state = "ready"
        self._start_following()  # first: what gossip publishes depends on it
        if self.config.gossip_port is not None:
            from kilndb.server.cluster import ClusterAgent  # only cluster members need it

            self.cluster = ClusterAgent(self)
            await self.cluster.start()  # on failure start() unbinds everything
            self.addresses.append(f"gossip://{self.cluster.address}")
        self._started_at = time.monotonic()
        self.event("server_started", addresses=list(self.addresses))

    def start(self) -> Server:
        """Listen in a background thread; return once the sockets accept connections.

        Raises DatabaseLockedError, naming the holder's pid, if another server already
        serves the data directory.
        """
        data_dir = Path(self.config.data)
        data_dir.mkdir(parents=True, exist_ok=True)
        self._server_lock = ServerLock(data_dir)
        if self.config.replica_of is None and not self.config.follow:
            # The database connections start in exists from the start, as the store of
            # Igniter's StoreServer does; others are created by their first write (reads
            # never create). A replica's databases come from its leader only.
            try:
                self.databases.get("default")
            except BaseException:
                self._server_lock.release()
                raise
        self.loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self._listen())
            except BaseException as exc:
                self._startup_error = exc
                for server in self._servers:  # what was bound before the failure
                    server.close()
                if self._http is not None:
                    self.loop.run_until_complete(self._http.cleanup())
                self.loop.close()
                self._ready.set()
                return
            self._ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="kilndb-server", daemon=True)
        self._thread.start()
        try:
            self.wait_until_ready()
        except BaseException:
            if self._startup_error is not None:  # nothing runs: stop() has nothing to do
                self._thread.join(10)
                self._thread = None
                self._discovering.set()
                for follower in list(self.followers):
                    follower.stop()
                self.executor.shutdown(wait=False)
                self.databases.close_all()
                self._server_lock.release()
            raise
        return self

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        if not self._ready.wait(timeout):
            raise TimeoutError("server did not start in time")
        if self._startup_error is not None:
            raise self._startup_error

    @property
    def url(self) -> str:
        """The first socket address clients can connect to."""
        return next(a for a in self.addresses if not a.startswith("http"))

    @property
    def http_url(self) -> str:
        """The HTTP address (with ``http_port``)."""
        return next(a for a in self.addresses if a.startswith("http"))

    def stop(self) -> None:
        """Drain and stop: refuse new connections, let in-flight requests finish (up to
        ``drain_timeout``), close connections, flush and close every database."""
        if self._thread is None:
            return

        async def shutdown() -> None:
            self.state = "draining"
            self.event("server_draining", timeout=self.config.drain_timeout)
            if self.cluster is not None:
                await self.cluster.stop()  # goodbye: members see this one left at once
            for server in self._servers:
                server.close()
            deadline = self.loop.time() + self.config.drain_timeout
            for connection in list(self.connections):
                connection.drain()
            # In-flight requests are answered, each connection ending with end-of-file...
            while self.loop.time() < deadline and not all(c.eof_sent for c in self.connections):
                await asyncio.sleep(0.01)
            # ... and its client gets a moment to read the replies and close its end.
            grace = min(deadline, self.loop.time() + CLOSE_GRACE_SECONDS)
            while self.loop.time() < grace and self.connections:
                await asyncio.sleep(0.01)
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.close()
            for stream in list(self.streams):  # SSE and WebSocket changefeeds end now
                stream.close()
            for server in self._servers:
                await server.wait_closed()
            if self._http is not None:
                await self._http.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(
            self.config.drain_timeout + 30
        )
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self._thread = None
        self._discovering.set()
        with self.following_lock:  # state is "draining": no follow() starts another
            followers = list(self.followers)
        for follower in followers:
            follower.stop()
        self.executor.shutdown(wait=True)  # requests already running complete
        self.databases.close_all()
        self._server_lock.release()
        self.loop.close()
        if self.config.unix is not None:
            Path(self.config.unix).unlink(missing_ok=True)
        self.state = "stopped"
        self.event("server_stopped")

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observability ---------------------------------------------------------------

    def acknowledge_soon(self, connection: _Connection, applied: list[_Applied]) -> None:
        """Acknowledge requests applied on the loop once this turn of the loop is over."""
        if not self._awaiting:
            self.loop.call_soon(self._commit_round)
        self._awaiting.append((connection, applied))

    def _commit_round(self) -> None:
        """Make everything applied on the loop this turn durable — one fsync for all of
        it, as Redis does before it sleeps — and send the replies."""
        awaiting, self._awaiting = self._awaiting, []
        for connection, applied in awaiting:
            try:
                connection._acknowledge(applied)  # the first wait syncs; the rest find it done
            except Exception as exc:  # a bug: fail this connection's replies, not the round
                log.exception("acknowledging a batch failed", exc_info=exc)
                error = ServerConnection.error(KilnError(f"internal error: {exc}"))
                for slot, *_ in applied:
                    if slot.frame is None:
                        slot.frame = error
        for connection, _ in awaiting:
            connection._flush()

    def replicas_for(self, request: Request) -> int:
        """How many followers must have a write durably before it is answered."""
        if action_of(request.op) != "write":
            return 0
        asked = request.params.get("replicas")
        return self.config.min_insync_replicas if asked is None else int(asked)

    def acked(self) -> None:
        """A follower acknowledged something: wake the writes waiting for replicas."""
        with self._acks:
            self._acks.notify_all()

    def wait_replicas(self, database: str, position: int, replicas: int) -> None:
        """Block until ``replicas`` followers of ``database`` have ``position`` durably;
        ReplicationTimeoutError after ``replica_timeout`` (the write stays committed)."""
        timeout = self.config.replica_timeout
        deadline = time.monotonic() + timeout
        with self._acks:
            while True:
                have = sum(
                    1
                    for link in list(self.links)
                    if not link.closed and link.db.name == database and link.durable >= position
                )
                if have >= replicas:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ReplicationTimeoutError(
                        f"{have} of {replicas} replicas acknowledged position {position} within"
                        f" {timeout:g} s; the write is committed on the leader and will reach"
                        " the followers when they catch up"
                    )
                self._acks.wait(remaining)

    def cluster_status(self) -> dict[str, Any]:
        """The cluster as this member sees it (``{"cluster": None}`` outside one)."""
        if self.cluster is None:
            return {"cluster": None}
        return {"cluster": self.cluster.status()}

    def replication_status(self) -> dict[str, Any]:
        """The followers this server ships to, and the leaders it follows."""
        followers = [link.status() for link in list(self.links) if not link.closed]
        following = [follower.status() for follower in self.followers]
        role = "follower" if following else "leader"
        return {"role": role, "followers": followers, "following": following}

    def _start_following(self) -> None:
        config = self.config
        if config.follow:
            # Every database here is a copy of one some member leads: read-only (leader
            # not known yet) until gossip names its leader, and promotable meanwhile.
            self.databases.replicas_only = True
            for name in self.databases.on_disk():
                self.dispatcher.read_only[name] = ""
                self.databases.pinned.add(name)
        if config.replica_of is None:
            return
        if config.replicate is not None:
            self.follow(config.replica_of, list(config.replicate), discovered=True)
            return
        self._discovering.clear()
        self.databases.replicas_only = True
        held = self.databases.on_disk()
        if held:
            # The copies this server already holds are followed at once — read-only and
            # promotable even while the leader cannot be reached to list its databases.
            self.follow(config.replica_of, held, discovered=True)
        threading.Thread(
            target=self._discover, args=(config.replica_of,), name="kilndb-discover", daemon=True
        ).start()

    def _discover(self, leader_address: str) -> None:
        """Follow every database of the leader, and new ones as they appear."""
        url = leader_address if "://" in leader_address else f"tcp://{leader_address}"
        leader = Endpoint.make(url, token=self.config.replication_token)
        while not self._discovering.wait(DISCOVER_SECONDS if self.followers else 0.2):
            try:
                conn = Connection(leader, timeout=SILENCE_SECONDS)
                try:
                    conn.hello("default")
                    names = conn.call("databases")["databases"]
                finally:
                    conn.close()
            except KilnError as exc:
                log.debug("listing the databases of %s: %s", leader.url, exc)
                continue
            followed = {follower.name for follower in self.followers}
            new = [name for name in names if name not in followed]
            if new and not self._discovering.is_set():
                self.follow(leader_address, new, discovered=True)

    @_following
    def follow(
        self, leader_address: str, names: list[str], discovered: bool = False
    ) -> dict[str, Any]:
        """Follow ``names`` from the leader at ``leader_address`` (``HOST:PORT`` or a
        URL), replacing whatever leader they followed; they become read-only here.
        Unless ``discovered`` (by following every database of a leader), this also ends
        the discovery of a previous leader's databases."""
        if self.state in ("draining", "stopped"):
            raise UnavailableError("the server is stopping")
        if not discovered:
            self._discovering.set()
        config = self.config
        url = leader_address if "://" in leader_address else f"tcp://{leader_address}"
        leader = Endpoint.make(url, token=config.replication_token)
        low, high = config.replication_backoff
        for name in names:
            validate_database_name(name)
        for name in names:  # read-only from now on, without a gap while re-pointing
            self.dispatcher.read_only[name] = leader.url
            self.databases.pinned.add(name)
        for follower in [f for f in self.followers if f.name in names]:
            follower.stop()  # the one that followed another leader
            self.followers.remove(follower)
        for name in names:

            def open_local(database_id: str | None, name: str = name) -> Database | None:
                if database_id is None and not self.databases.exists(name):
                    return None
                return self.databases.get_or_create(name, database_id)

            def truncate_local(position: int, name: str = name) -> list[int]:
                with self.databases.offline(name) as directory:  # no request reopens it
                    dropped = truncate_after(directory, position)
                self.event("divergent_tail_dropped", database=name, positions=len(dropped))
                return dropped

            def discard_local(name: str = name) -> int:
                with self.databases.offline(name) as directory:
                    facts = discard_copy(directory)
                self.event("full_resync", database=name, facts=facts)
                return facts

            follower = Follower(
                leader,
                name,
                open_local,
                truncate_local,
                discard_local,
                backoff_min=low,
                backoff_max=high,
            )
            self.followers.append(follower.start())
        self.event("following", leader=leader.url, databases=names)
        if self.cluster is not None:
            self.cluster.changed()
        return {"leader": leader.url, "databases": names}

    @_following
    def promote(self, names: list[str] | None = None) -> dict[str, Any]:
        """Stop following ``names`` (default: every database followed) and lead them: a
        new leader epoch in each one's META, writes accepted from then on."""
        stopping = [f for f in self.followers if names is None or f.name in names]
        # Copies whose leader is not known yet (``follow`` mode, the leader gone).
        waiting = {f.name for f in self.followers}
        held = [
            name
            for name in list(self.dispatcher.read_only)
            if name not in waiting and (names is None or name in names)
        ]
        if not stopping and not held:
            raise InvalidArgumentError("this server follows none of those databases")
        self._discovering.set()  # a promoted database must not be followed again
        self.databases.replicas_only = False
        for follower in stopping:
            follower.stop()  # its thread has ended: nothing is appended any more
            self.followers.remove(follower)
        promoted = []
        for name in sorted([f.name for f in stopping] + held):
            db = self.databases.get(name)
            epoch = db.promote()  # the new epoch first, then writes are accepted
            self.dispatcher.read_only.pop(name, None)
            self.databases.pinned.discard(name)
            position = db.stats()["last_position"]
            promoted.append({"database": name, "epoch": epoch, "position": position})
            self.event("promoted", database=name, epoch=epoch, position=position)
            log.warning("promoted to leader of %s at epoch %d", name, epoch)
        if self.cluster is not None:
            self.cluster.changed()
        return {"promoted": promoted}

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a counter from any thread."""
        with self._counters_lock:
            self.counters[name] += amount

    def count_result(self, request: Request, result: dict[str, Any]) -> None:
        """Count the facts a successful request wrote or replayed (any transport)."""
        if request.op in ("write", "write_fact"):
            self.count("facts_written")
        elif request.op == "produce":  # atomic: every record was written
            self.count("facts_written", len(request.params["records"]))
        elif request.op == "write_many":
            self.count("facts_written", len(request.params["writes"]))
        elif request.op == "replay":
            self.count("facts_replayed", len(result["facts"]))

    def event(self, kind: str, **details: Any) -> None:
        """Record an event in the bounded recent-events ring (any thread)."""
        with self._counters_lock:
            self.recent_events.append({"event": kind, "at": time.time(), **details})

    def status(self) -> dict[str, Any]:
        """The observability snapshot (Igniter's shape) that ``server_status`` answers."""
        with self._counters_lock:
            counters = dict(self.counters)
        nodes = self.databases.status()
        replication = self.replication_status()
        return {
            "schema_version": 1,
            "generated_at": time.time(),
            "status": self.state,
            "uptime_ms": round((time.monotonic() - self._started_at) * 1000),
            "pid": os.getpid(),
            "addresses": self.addresses,
            "databases": self.databases.names(),
            "nodes": nodes,
            "replication": replication,
            "metrics": {
                **counters,
                "open_databases": nodes["open_count"],
                "opened_databases_total": nodes["opened_total"],
                "evicted_databases_total": nodes["evicted_total"],
                "failing_databases": len(nodes["failing"]),
                "replication_followers": len(replication["followers"]),
                "replication_follower_lag_records": max(
                    (f["lag_records"] for f in replication["followers"]), default=0
                ),
                "replication_lag_records": max(
                    (f["lag_records"] for f in replication["following"]), default=0
                ),
                **({} if self.cluster is None else self.cluster.metrics()),
                "active_connections": len(self.connections),
                "subscription_count": sum(
                    1
                    for c in self.connections
                    if (c.feed is not None and not c.feed.closed)
                    or (c.status_feed is not None and not c.status_feed.closed)
                ),
            },
        }

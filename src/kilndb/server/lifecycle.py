"""A KilnDB server: its parts put together, started and stopped.

The parts, each in its own module, meet here and nowhere else:

- listeners and connections: :mod:`kilndb.server.connections` (TCP, TLS, Unix) and
  :mod:`kilndb.server.http` (HTTP, SSE, WebSocket), each client's protocol state a
  :class:`~kilndb.server.session.Session`;
- commit batching: :mod:`kilndb.server.commit`;
- requests against databases: :mod:`kilndb.server.dispatch` and
  :mod:`kilndb.server.admin`, over the :class:`~kilndb.server.nodes.NodeManager`;
- the leader's side of replication: :mod:`kilndb.server.leader`; what this server
  follows: :mod:`kilndb.server.following`; cluster membership:
  :mod:`kilndb.server.cluster`;
- counters, events and alerts: :mod:`kilndb.server.metrics`; the health and status
  snapshots: :mod:`kilndb.server.observability`; the pid file:
  :mod:`kilndb.server.pidfile`; background work: :mod:`kilndb.server.tasks`.

Transports receive :class:`~kilndb.server.services.Services`, never the server.

Lifecycle: ``start()`` listens in a background thread (``start_foreground()`` blocks
until SIGINT, SIGTERM or SIGQUIT instead), ``drain()`` refuses new socket connections
and waits for the open ones to close, ``stop()`` drains what is in flight and closes
everything. ``state`` goes ``starting`` → ``ready`` → ``draining`` → ``stopped``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from aiohttp import web

from kilndb.cluster.messages import parse_address
from kilndb.coordination import Etcd, parse_coordinator_url
from kilndb.errors import InvalidArgumentError
from kilndb.replication.fencing import EpochFence
from kilndb.server import observability
from kilndb.server.admin import Runner, ServerOps
from kilndb.server.auth import Authenticator
from kilndb.server.cluster import ClusterAgent
from kilndb.server.commit import CommitRounds
from kilndb.server.config import ServerConfig, is_loopback
from kilndb.server.connections import SocketConnection
from kilndb.server.coordinator import Coordinator
from kilndb.server.dispatch import Dispatcher
from kilndb.server.fanout import Fanout
from kilndb.server.following import Following
from kilndb.server.http import build_app
from kilndb.server.leader import LeaderSide
from kilndb.server.leadership import Leadership
from kilndb.server.metrics import Metrics
from kilndb.server.nodes import NodeManager
from kilndb.server.pidfile import PidFile
from kilndb.server.services import Services
from kilndb.server.tasks import TaskOwner
from kilndb.storage.lockfile import ServerLock

__all__ = ["Server", "ServerConfig"]

log = logging.getLogger("kilndb.server")

#: How long a stopping server waits for clients to close after their last reply.
CLOSE_GRACE_SECONDS = 1.0
#: How long ``start()`` waits for its listeners before giving up.
START_TIMEOUT = 10.0
#: Seconds between two evaluations of the alert thresholds (only with thresholds set).
ALERT_CHECK_SECONDS = 1.0
#: The signals ``start_foreground()`` stops the server on, gracefully.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGQUIT") if hasattr(signal, name)
)

_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(ServerConfig))


class Server:
    """A KilnDB server: ``start()`` runs it in a background thread.

    ``Server(config)``, ``Server(**fields)`` or both: keyword arguments, each a
    :class:`ServerConfig` field, take precedence over the config's. ``address="HOST:PORT"``
    (Igniter's legacy form) stands for ``host`` and ``port`` where those are not given.
    Raises TypeError naming any other keyword.
    """

    def __init__(
        self, config: ServerConfig | None = None, *, address: str | None = None, **options: Any
    ) -> None:
        if address is not None:
            try:
                address_host, address_port = parse_address(str(address))
            except ValueError as exc:
                raise InvalidArgumentError(f"address must be HOST:PORT, not {address!r}") from exc
            options.setdefault("host", address_host)
            options.setdefault("port", address_port)
        unknown = sorted(set(options) - _CONFIG_FIELDS)
        if unknown:
            raise TypeError(
                f"Server() got unknown keyword argument(s): {', '.join(unknown)} (it takes"
                " the fields of ServerConfig)"
            )
        if config is None:
            config = ServerConfig(**options)
        elif options:
            config = dataclasses.replace(config, **options)
        self.config = config
        self.auth = Authenticator(config.auth)
        self.ssl_context = config.ssl_context()
        host = config.host
        if host is not None and not is_loopback(host) and not self.auth.enabled:
            if not config.insecure_bind:
                raise InvalidArgumentError(
                    f"refusing to listen on {host} without authentication: give an auth"
                    " secret or public key, or insecure_bind (--insecure-bind)"
                )
            log.warning("listening on %s without authentication", host)
        if config.coordinator is not None:
            parse_coordinator_url(config.coordinator)  # refused now if malformed
            if not config.node_name:
                raise InvalidArgumentError("a server with a coordinator needs a node name")
            if config.replica_of is not None or config.follow:
                raise InvalidArgumentError(
                    "with a coordinator, etcd decides who leads and who follows: drop"
                    " replica_of and follow"
                )
        self.databases = NodeManager(config.data, config.database, config.nodes)
        self.dispatcher = Dispatcher(self.databases)
        self.metrics = Metrics(config.max_recent_events)
        #: The newest leader epoch known per database (fencing).
        self.epochs = EpochFence()
        self.leader = LeaderSide(
            self.databases,
            self.metrics,
            config.min_insync_replicas,
            config.replica_timeout,
            self.epochs,
        )
        self.executor = ThreadPoolExecutor(config.workers, thread_name_prefix="kilndb-op")
        #: Socket connections (TCP, TLS, Unix) open now.
        self.connections: set[SocketConnection] = set()
        self.state = "starting"
        self._started_at = time.monotonic()
        self._servers: list[asyncio.AbstractServer] = []
        self._thread: threading.Thread | None = None
        #: Set once start() has bound its listeners (or failed to).
        self._listening = threading.Event()
        #: Set when a stop begins: start_foreground() returns after it.
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        self._pid_file = PidFile(config.pid_file)
        #: Whether the parts that live on the event loop exist (start() makes them).
        self.assembled = False
        self._startup_error: BaseException | None = None
        self.addresses: list[str] = []
        self._http: web.AppRunner | None = None
        #: This server as a cluster member (with ``gossip_port``).
        self.cluster: ClusterAgent | None = None
        #: Leadership held through etcd (with ``coordinator``).
        self.leadership: Leadership | None = None
        # Made by start(), with the event loop they run on.
        self.loop: asyncio.AbstractEventLoop
        self.tasks: TaskOwner
        self.fanout: Fanout
        self.following: Following
        self.services: Services

    def _assemble(self) -> None:
        """Make the parts that live on the server's event loop."""
        self.loop = asyncio.new_event_loop()
        self.tasks = TaskOwner(self.loop)
        self.fanout = Fanout(
            self.tasks, self.executor, self.metrics, self.config.max_subscriber_buffer
        )
        self.following = Following(
            self.config, self.databases, self.dispatcher, self.metrics, self.tasks, self.epochs
        )
        self.following.changed = self._membership_changed
        # Before anything listens: a restarted member takes no write for what it led
        # until it has heard the cluster.
        self.following.hold_for_cluster()
        server_ops = ServerOps(self.databases, self.following, self.status, self.cluster_status)
        self.services = Services(
            config=self.config,
            loop=self.loop,
            auth=self.auth,
            databases=self.databases,
            dispatcher=self.dispatcher,
            fanout=self.fanout,
            executor=self.executor,
            metrics=self.metrics,
            leader=self.leader,
            following=self.following,
            server_ops=server_ops,
            runner=Runner(
                self.dispatcher,
                server_ops,
                self.leader,
                self.metrics,
                self.executor,
                self.config.slow_op_ms,
            ),
            tasks=self.tasks,
            routing=self._routing,
            state=lambda: self.state,
            status=self.status,
            health=self.health,
            replication_status=self.replication_status,
            cluster_status=self.cluster_status,
        )
        self._commits = CommitRounds(self.loop)
        self.assembled = True

    # -- lifecycle -------------------------------------------------------------------

    async def _listen(self) -> None:
        config = self.config
        services = self.services

        def connection() -> SocketConnection:
            return SocketConnection(services, self._commits, self.connections)

        if config.host is not None:
            server = await self.loop.create_server(
                connection, config.host, config.port, reuse_address=True, ssl=self.ssl_context
            )
            self._servers.append(server)
            host, port = server.sockets[0].getsockname()[:2]
            scheme = "tcp" if self.ssl_context is None else "tls"
            self.addresses.append(f"{scheme}://{host}:{port}")
        if config.unix is not None:
            path = Path(config.unix)
            if path.exists():
                path.unlink()
            server = await self.loop.create_unix_server(connection, str(path))
            self._servers.append(server)
            self.addresses.append(f"unix://{path}")
        if config.http_port is not None:
            self._http = web.AppRunner(
                build_app(services), access_log=None, keepalive_timeout=config.http_keepalive
            )
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
        self.following.start()  # first: what gossip publishes depends on it
        if config.gossip_port is not None:
            self.cluster = ClusterAgent(services, self.addresses)
            await self.cluster.start()  # on failure start() unbinds everything
            self.addresses.append(f"gossip://{self.cluster.address}")
        if config.coordinator is not None:
            self._coordinate(config.coordinator)
        self._started_at = time.monotonic()
        self.metrics.event("server_started", addresses=list(self.addresses))
        if config.metrics_thresholds:
            # Measured without anyone asking for the status, so that an alert begins
            # (and is recorded) on time.
            self.tasks.every(ALERT_CHECK_SECONDS, self.status, "kilndb-alerts")

    def start(self) -> Server:
        """Listen in a background thread; return once the sockets accept connections.

        Raises DatabaseLockedError, naming the holder's pid, if another server already
        serves the data directory; InvalidArgumentError if ``pid_file`` names another
        process that is running (one that names a process gone is overwritten).
        """
        # With ``memory`` the databases live in a fresh directory in RAM (``data`` unused).
        if self.config.memory and self.config.coordinator is not None:
            raise InvalidArgumentError(
                "memory and a coordinator do not go together: automatic failover needs"
                " every node's copy to survive its restart"
            )
        data_dir = self.databases.make_data_dir(memory=self.config.memory)
        self._server_lock = ServerLock(data_dir)
        config = self.config
        try:
            self._pid_file.check()
        except BaseException:
            self._server_lock.release()
            raise
        if config.replica_of is None and not config.follow and config.coordinator is None:
            # The database connections start in exists from the start, as the store of
            # Igniter's StoreServer does; others are created by their first write (reads
            # never create). A replica's databases come from its leader only, and with a
            # coordinator from the node that wins their first election.
            try:
                self.databases.get("default")
            except BaseException:
                self._server_lock.release()
                raise
        self._assemble()

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
                self.loop.run_until_complete(self.tasks.cancel_tasks())
                self.loop.close()
                self._listening.set()
                return
            self._listening.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="kilndb-server", daemon=True)
        self._thread.start()
        try:
            self.wait_until_ready(START_TIMEOUT)
        except BaseException:
            if self._startup_error is not None:  # nothing runs: stop() has nothing to do
                self._thread.join(10)
                self._thread = None
                self.following.stop()
                self.executor.shutdown(wait=False)
                self.databases.close_all()
                self._server_lock.release()
            raise
        self._pid_file.write()
        return self

    def wait_until_ready(self, timeout: float = 2.0) -> Server:
        """Block until the listeners of ``start()`` accept connections; return the server.

        Raises TimeoutError after ``timeout`` seconds, or the error that made the start
        fail."""
        if not self._listening.wait(timeout):
            raise TimeoutError(f"server did not become ready within {timeout:g} s")
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def start_foreground(self, on_start: Callable[[Server], None] | None = None) -> None:
        """Start, call ``on_start(server)``, and block until SIGINT, SIGTERM or SIGQUIT
        (or ``stop()`` from another thread); each is a graceful stop. Returns once the
        server has stopped, with the previous signal handlers back.

        Raises RuntimeError unless called from the main thread (only it may handle
        signals), and whatever ``start()`` raises.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "start_foreground() handles signals, which Python allows only in the main"
                " thread: call start() and stop() from other threads"
            )
        received: list[int] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            # Only a note: a handler runs between two bytecodes of the main thread,
            # which may hold a lock that stopping needs.
            received.append(signum)

        previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
        try:
            self.start()
            if on_start is not None:
                on_start(self)
            while not received and not self._stopping.wait(0.1):
                pass
            if received:
                name = signal.Signals(received[0]).name
                log.info("%s received: stopping", name)
                self.metrics.event("signal_received", signal=name)
        finally:
            try:
                self.stop()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)

    @property
    def ready(self) -> bool:
        """Whether the server is listening and accepting connections (not draining)."""
        return self.state == "ready"

    @property
    def draining(self) -> bool:
        """Whether the server refuses new connections (``drain()``, or stopping)."""
        return self.state == "draining"

    def drain(self, timeout: float | None = None) -> Server:
        """Refuse new socket connections (each gets an ``unavailable`` error frame and
        counts in ``rejected_connections_total``; ``/v1/ready`` answers 503) and wait
        up to ``timeout`` seconds (default ``drain_timeout``) for the open ones to close.
        Returns the server, for ``server.drain().stop()``. Draining is not undone (a
        second call only waits again); nothing happens on a server not started or
        stopped. Call it from any thread but the
        server's own."""
        wait = self.config.drain_timeout if timeout is None else timeout
        if self._thread is None or self.state not in ("ready", "draining"):
            return self
        if self.state == "ready":
            self.state = "draining"
            self.metrics.event("server_draining", timeout=wait)
            log.info("draining (timeout %g s)", wait)
        deadline = time.monotonic() + wait
        while self.connections and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.connections:
            log.warning("drain timed out: %d connection(s) still open", len(self.connections))
        return self

    @property
    def url(self) -> str:
        """The first socket address clients can connect to."""
        return next(a for a in self.addresses if not a.startswith("http"))

    @property
    def http_url(self) -> str:
        """The HTTP address (with ``http_port``)."""
        return next(a for a in self.addresses if a.startswith("http"))

    def stop(self, timeout: float | None = None) -> None:
        """Drain and stop: refuse new connections, let in-flight requests finish (up to
        ``timeout`` seconds, default ``drain_timeout``), close connections, end every
        stream and background task, flush and close every database, remove the pid
        file. Does nothing on a server not started or already stopped; a second caller
        waits for the first to finish."""
        self._stopping.set()
        with self._stop_lock:
            if self._thread is None:
                return
            self._stop(self.config.drain_timeout if timeout is None else timeout)

    def _stop(self, timeout: float) -> None:
        assert self._thread is not None
        asyncio.run_coroutine_threadsafe(self._shutdown(timeout), self.loop).result(timeout + 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self._thread = None
        self.following.stop()
        self.leader.close()
        self.fanout.close()
        self.executor.shutdown(wait=True)  # requests already running complete
        lingering = self.tasks.join_threads()
        if lingering:
            log.warning("threads still running after stop: %s", ", ".join(lingering))
        self.databases.close_all()
        self._server_lock.release()
        self.loop.close()
        if self.config.unix is not None:
            Path(self.config.unix).unlink(missing_ok=True)
        self._pid_file.remove()
        self.state = "stopped"
        self.metrics.event("server_stopped")

    def _coordinate(self, url: str) -> None:
        """Hold leadership through the etcd at ``url`` (see leadership.py)."""
        config = self.config
        assert config.node_name is not None  # checked by __init__
        coordinator = Coordinator(Etcd(parse_coordinator_url(url)), config.cluster_name)
        self.leadership = Leadership(
            coordinator,
            config.node_name,
            config.advertise_url or self.url,
            config.leader_ttl,
            self.databases,
            self.dispatcher,
            self.following,
            self.metrics,
            self.executor,
            self.leader,
            config.min_insync_replicas >= 1,
        )
        if config.min_insync_replicas >= 1:
            self.leader.publish_isr = self.leadership.publish_isr
            self.leader.lag_max = max(1.0, config.leader_ttl / 4)
        self.services.server_ops.handover = self.leadership.hand_over
        # From now on every write asks the leadership first: none is taken before this
        # node holds the database's leader key under a live lease.
        self.dispatcher.write_gate = self.leadership.may_write
        self.tasks.spawn(self.leadership.run(), "kilndb-leadership")

    async def _shutdown(self, timeout: float) -> None:
        if self.state != "draining":  # else drain() said so already
            self.state = "draining"
            self.metrics.event("server_draining", timeout=timeout)
        if self.leadership is not None:
            # Followers take over at once instead of waiting for the lease to expire;
            # writes still in flight here are refused rather than acknowledged.
            await self.leadership.stop()
        if self.cluster is not None:
            await self.cluster.stop()  # goodbye: members see this one left at once
        for server in self._servers:
            server.close()
        loop = self.loop
        deadline = loop.time() + timeout
        for connection in list(self.connections):
            connection.drain()
        # In-flight requests are answered, each connection ending with end-of-file...
        while loop.time() < deadline and not all(c.eof_sent for c in self.connections):
            await asyncio.sleep(0.01)
        # ... and its client gets a moment to read the replies and close its end.
        grace = min(deadline, loop.time() + CLOSE_GRACE_SECONDS)
        while loop.time() < grace and self.connections:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        # SSE and WebSocket streams, status streams, catch-ups: every task ends now.
        await self.tasks.cancel_tasks()
        for server in self._servers:
            await server.wait_closed()
        if self._http is not None:
            await self._http.cleanup()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the parts ask of the whole ------------------------------------------------

    def _routing(self, database: str) -> dict[str, Any]:
        """Where writes to ``database`` go, and whether this server is in a cluster: a
        client routes by it (``hello``) without another round trip."""
        where: dict[str, Any]
        leader = self.dispatcher.read_only.get(database)
        cluster = self.cluster
        if self.leadership is not None:  # etcd says who leads
            return {**self.leadership.routing(database), "cluster": self.config.cluster_name}
        if leader is not None:
            where = {"role": "follower", "leader": leader or None}
        elif cluster is not None and (elsewhere := cluster.elsewhere(database)):
            # Not held here, led by another member: the client goes there.
            where = {"role": "elsewhere", "leader": elsewhere.url}
        else:
            where = {"role": "leader"}
        if cluster is not None:
            where["cluster"] = cluster.name
        elif self.config.coordinator is not None:
            where["cluster"] = self.config.cluster_name  # clients follow the leader
        return where

    def _membership_changed(self) -> None:
        if self.cluster is not None:
            self.cluster.changed()

    def follow(
        self, leader_address: str, names: list[str], discovered: bool = False
    ) -> dict[str, Any]:
        """Follow ``names`` from the leader at ``leader_address`` (see
        :meth:`Following.follow <kilndb.server.following.Following.follow>`)."""
        return self.following.follow(leader_address, names, discovered)

    def promote(self, names: list[str] | None = None) -> dict[str, Any]:
        """Lead ``names`` (default: every database followed) from a new epoch."""
        return self.following.promote(names)

    # -- observability ---------------------------------------------------------------

    @property
    def counters(self) -> dict[str, int]:
        """The counters now (a copy)."""
        return self.metrics.counters()

    @property
    def recent_events(self) -> list[dict[str, Any]]:
        """The recent-events ring, oldest first."""
        return self.metrics.recent_events()

    def cluster_status(self) -> dict[str, Any]:
        """The cluster as this member sees it (``{"cluster": None}`` outside one), and
        the leadership it holds through etcd (``coordinator``, with one)."""
        status: dict[str, Any] = {
            "cluster": None if self.cluster is None else self.cluster.status()
        }
        if self.leadership is not None:
            status["coordinator"] = self.leadership.status()
        return status

    def replication_status(self) -> dict[str, Any]:
        """The followers this server ships to, the leaders it follows, and the databases
        fenced here (name -> the newer epoch led elsewhere)."""
        following = self.following.status()
        role = "follower" if following else "leader"
        return {
            "role": role,
            "followers": self.leader.status(),
            "following": following,
            "fenced": dict(self.following.fenced),
        }

    def subscription_count(self, store: str, database: str = "default") -> int:
        """Changefeed subscribers (every transport) of ``database`` that receive the
        facts of ``store``: those following it and those following every store."""
        if not self.assembled:
            return 0
        return self.fanout.subscription_count(store, database)

    @property
    def active_connections(self) -> int:
        """Socket connections (TCP, TLS, Unix) open now."""
        return len(self.connections)

    @property
    def bind_address(self) -> str | None:
        """The first listener's address, ``127.0.0.1:7400`` or a Unix socket's path (None
        before ``start()``); still answered after ``stop()``."""
        return self.addresses[0].partition("://")[2] if self.addresses else None

    @property
    def uptime_ms(self) -> int:
        """Milliseconds since the server began to listen (or was made)."""
        return round((time.monotonic() - self._started_at) * 1000)

    def health(self) -> dict[str, Any]:
        """The compact health snapshot (``GET /v1/health``): cheap, no database read."""
        return observability.health(self)

    def status(self) -> dict[str, Any]:
        """The observability snapshot (Igniter's shape) that ``server_status`` answers.

        Measuring it evaluates the alert thresholds (``metrics_thresholds``)."""
        return observability.status(self)

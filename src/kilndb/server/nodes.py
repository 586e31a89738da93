"""The node manager: the databases (tenants) of one data directory, as a server sees them.

Theory of operation
-------------------
Each database is opened on first use and then kept open as one *node*. A node records
when it was last used and how many requests are using it right now (``use()``); the
database's own subscriber count says whether a changefeed follows it. A node with
neither, unused for ``idle_evict_after`` seconds, is flushed and closed by a background
checker and reopened transparently by the next request. With ``max_open_databases``,
opening one more database first evicts the least recently used idle node (and refuses
with ``unavailable`` when every open node is busy).

Opening can fail — a damaged log, a directory the server may not read. After
``breaker_threshold`` consecutive failures a database's *circuit breaker* opens: for
``breaker_cooldown`` seconds every request for it fails at once with ``unavailable`` and
the cause, instead of retrying recovery on every request. Then one request may try again;
a success closes the breaker, a failure opens it for another cooldown.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from kilndb.config import DatabaseConfig
from kilndb.engine import Database
from kilndb.errors import InvalidArgumentError, KilnError, NotFoundError, UnavailableError
from kilndb.model import validate_database_name
from kilndb.storage.lockfile import SERVER_LOCK
from kilndb.storage.memory import MemoryDirectory

__all__ = ["NodeConfig", "NodeManager"]

log = logging.getLogger("kilndb.server")


#: How long removing a database (or taking it offline) waits for requests using it.
DRAIN_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """How the node manager keeps databases open."""

    #: Close a database unused (no request, no subscriber) for this long; None: never.
    idle_evict_after: float | None = None
    #: How often the idle checker looks.
    idle_check_interval: float = 30.0
    #: Most databases open at once; None: no cap.
    max_open_databases: int | None = None
    #: Consecutive failures to open a database that open its circuit breaker.
    breaker_threshold: int = 3
    #: How long an open breaker fails requests fast.
    breaker_cooldown: float = 30.0

    def __post_init__(self) -> None:
        if self.idle_evict_after is not None and self.idle_evict_after <= 0:
            raise InvalidArgumentError("idle_evict_after must be positive or None")
        if self.idle_check_interval <= 0:
            raise InvalidArgumentError("idle_check_interval must be positive")
        if self.max_open_databases is not None and self.max_open_databases < 1:
            raise InvalidArgumentError("max_open_databases must be at least 1 or None")


class _Node:
    __slots__ = ("active", "db", "last_used", "opened_at")

    def __init__(self, db: Database, now: float) -> None:
        self.db = db
        self.active = 0
        self.last_used = now
        self.opened_at = now

    def idle(self) -> bool:
        return self.active == 0 and self.db.subscriber_count == 0


class _Breaker:
    __slots__ = ("cause", "failures", "open_until")

    def __init__(self) -> None:
        self.failures = 0
        self.cause = ""
        self.open_until = 0.0


def _close(db: Database) -> None:
    try:
        db.close()  # flushes: everything written is durable
    except KilnError as exc:
        log.warning("closing database %s failed: %s", db.name, exc)


class NodeManager:
    """Opens, keeps, evicts and removes the databases under one data directory."""

    def __init__(
        self,
        data_dir: str | Path,
        config: DatabaseConfig | None = None,
        nodes: NodeConfig | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.config = config or DatabaseConfig()
        self.node_config = nodes or NodeConfig()
        self._nodes: dict[str, _Node] = {}
        self._breakers: dict[str, _Breaker] = {}
        #: Leader epochs of databases seen, for status and gossip without opening them.
        self._epochs: dict[str, int] = {}
        self._removing: set[str] = set()
        #: Databases taken out and still being flushed and closed (outside the lock):
        #: opening one again waits for its close, or it would find its files in use.
        self._closing: dict[str, threading.Event] = {}
        #: Databases a follower streams into: never evicted, and created only by
        #: replication (with the leader's database id), never by a client's request.
        self.pinned: set[str] = set()
        #: A follower of every database of its leader: no database is created here but
        #: by replication.
        self.replicas_only = False
        self._lock = threading.RLock()
        #: Serialises opening, so that one database is never opened twice at once.
        self._opening = threading.Lock()
        self.evicted_total = 0
        self.opened_total = 0
        self._closed = False
        #: With :meth:`make_data_dir` ``(memory=True)``: the directory in RAM in use.
        self._memory: MemoryDirectory | None = None
        self._stop = threading.Event()
        self._checker: threading.Thread | None = None
        if self.node_config.idle_evict_after is not None:
            self._checker = threading.Thread(
                target=self._check_idle, name="kilndb-idle-evict", daemon=True
            )
            self._checker.start()

    def make_data_dir(self, memory: bool = False) -> Path:
        """Create the directory the databases live in and return it: ``data_dir``, or
        with ``memory`` a fresh private directory in RAM, which becomes ``data_dir`` and
        is deleted by :meth:`close` (see :mod:`kilndb.storage.memory`); databases in it
        leave fsyncs out, since nothing of them outlives the server."""
        if memory and self._memory is None:
            self._memory = MemoryDirectory()
            self.data_dir = self._memory.path
            self.config = replace(self.config, sync="none")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir

    @property
    def in_memory(self) -> bool:
        """Whether the databases are kept in memory (:meth:`make_data_dir`)."""
        return self._memory is not None

    # -- getting databases -----------------------------------------------------------

    def get_or_create(
        self, name: str, database_id: str | None = None, *, create: bool = True
    ) -> Database:
        """The open database ``name``, opening it if needed and, with ``create``,
        creating it if it does not exist (else NotFoundError: reads never create).

        Raises UnavailableError while its circuit breaker is open, when every open
        database is busy at the ``max_open_databases`` cap, or while it is being removed.
        """
        node = self._nodes.get(name)
        if node is not None and not node.db.closed:
            node.last_used = time.monotonic()
            return node.db
        return self._open(name, database_id, create).db

    #: The name the rest of the server uses.
    get = get_or_create

    @contextmanager
    def use(self, name: str, *, create: bool = True) -> Iterator[Database]:
        """The database ``name``, counted as in use (never evicted) inside the block;
        ``create`` as for :meth:`get_or_create`."""
        while True:
            node = self._nodes.get(name)
            if node is None or node.db.closed:
                node = self._open(name, create=create)
            with self._lock:
                if name in self._removing:
                    raise UnavailableError(f"database {name!r} is being worked on")
                if self._nodes.get(name) is node and not node.db.closed:
                    node.active += 1
                    node.last_used = time.monotonic()
                    break
        try:
            yield node.db
        finally:
            with self._lock:
                node.active -= 1
                node.last_used = time.monotonic()

    def exists(self, name: str) -> bool:
        """Whether database ``name`` is open or on disk."""
        validate_database_name(name)
        return self.is_open(name) or (self.data_dir / name / "META").is_file()

    def peek(self, name: str) -> Database | None:
        """The open database ``name`` without opening it or counting it as used (for
        status and gossip, which must not keep idle databases from eviction)."""
        node = self._nodes.get(name)
        return None if node is None or node.db.closed else node.db

    def leader_epoch(self, name: str) -> int:
        """The last leader epoch of ``name``: from the open database, else from its
        ``META``, read once per time it was closed (epochs change only while it is open;
        0 if it cannot be read)."""
        db = self.peek(name)
        if db is not None:
            epoch = self._epochs[name] = db.leader_epoch
            return epoch
        if name not in self._epochs:
            try:
                meta = orjson.loads((self.data_dir / name / "META").read_bytes())
                epochs = meta.get("epochs")
                self._epochs[name] = int(epochs[-1]["epoch"]) if epochs else 0
            except (OSError, ValueError, TypeError, KeyError, IndexError):
                return 0
        return self._epochs[name]

    def is_open(self, name: str) -> bool:
        """Whether ``name`` is open (a request for it will not have to open it)."""
        node = self._nodes.get(name)
        return node is not None and not node.db.closed

    def on_disk(self) -> list[str]:
        """Every database of the data directory (open or not), sorted."""
        if not self.data_dir.is_dir():
            return []
        return sorted(p.name for p in self.data_dir.iterdir() if (p / "META").is_file())

    def names(self) -> list[str]:
        """The open databases, sorted."""
        with self._lock:
            return sorted(n for n, node in self._nodes.items() if not node.db.closed)

    def _open(self, name: str, database_id: str | None = None, create: bool = True) -> _Node:
        validate_database_name(name)
        if name == SERVER_LOCK:
            raise InvalidArgumentError(f"{name!r} is the server's lock file, not a database")
        with self._opening:
            with self._lock:
                if self._closed:
                    raise UnavailableError("the server is stopping")
                if name in self._removing:
                    raise UnavailableError(f"database {name!r} is being removed")
                node = self._nodes.get(name)
                if node is not None and not node.db.closed:
                    return node
                if (
                    (name in self.pinned or self.replicas_only)
                    and database_id is None
                    and not (self.data_dir / name / "META").is_file()
                ):
                    raise UnavailableError(f"database {name!r} is not replicated here yet")
                if not create and not (self.data_dir / name / "META").is_file():
                    raise NotFoundError(f"database {name!r} does not exist")
                breaker = self._breakers.get(name)
                now = time.monotonic()
                if breaker is not None and breaker.open_until > now:
                    raise UnavailableError(
                        f"database {name!r} is unavailable for"
                        f" {breaker.open_until - now:.0f} s more after"
                        f" {breaker.failures} failures to open it: {breaker.cause}"
                    )
                victim = self._make_room(name)
                closing = self._closing.get(name)
            if victim is not None:
                self._close_evicted(victim)  # outside the lock: other requests go on
            if closing is not None:
                closing.wait()  # evicted a moment ago: its handle is still closing
            try:
                db = Database(self.data_dir, name, self.config, database_id=database_id)
            except Exception as exc:
                self._failed(name, exc)
                raise
            with self._lock:
                self._breakers.pop(name, None)
                self._epochs.pop(name, None)  # may change while open: read it afresh
                node = self._nodes[name] = _Node(db, time.monotonic())
                self.opened_total += 1
            return node

    def _failed(self, name: str, exc: BaseException) -> None:
        threshold = self.node_config.breaker_threshold
        with self._lock:
            breaker = self._breakers.setdefault(name, _Breaker())
            breaker.failures += 1
            # What went wrong, without the server's own paths.
            breaker.cause = f"{type(exc).__name__}: {exc}".replace(str(self.data_dir), "DATA")
            if breaker.failures >= threshold:
                breaker.open_until = time.monotonic() + self.node_config.breaker_cooldown
        log.warning(
            "opening database %s failed (%d in a row): %s",
            name,
            breaker.failures,
            exc,
            extra={"database": name},
        )

    def _make_room(self, name: str) -> Database | None:
        """At the cap, take the least recently used idle database out (hold the lock);
        the caller closes it once the lock is released."""
        cap = self.node_config.max_open_databases
        if cap is None:
            return None
        open_nodes = [(n, node) for n, node in self._nodes.items() if not node.db.closed]
        if len(open_nodes) < cap:
            return None
        idle = [
            (node.last_used, n) for n, node in open_nodes if node.idle() and n not in self.pinned
        ]
        if not idle:
            raise UnavailableError(
                f"cannot open database {name!r}: {cap} databases are open and all are busy"
            )
        _, victim = min(idle)
        return self._evict_locked(victim)

    # -- eviction and removal --------------------------------------------------------

    def evict_idle(self, now: float | None = None) -> list[str]:
        """Close every database idle for ``idle_evict_after`` seconds; their names."""
        after = self.node_config.idle_evict_after
        if after is None:
            return []
        now = time.monotonic() if now is None else now
        with self._lock:
            victims = [
                name
                for name, node in self._nodes.items()
                if node.idle()
                and now - node.last_used >= after
                and not node.db.closed
                and name not in self.pinned
            ]
            closing = [self._evict_locked(name) for name in victims]
        for db in closing:  # flushing outside the lock: other requests go on meanwhile
            self._close_evicted(db)
        return victims

    def _evict_locked(self, name: str) -> Database:
        """Forget an open database (hold the lock); the caller closes it."""
        node = self._nodes.pop(name)
        self._closing[name] = threading.Event()
        self.evicted_total += 1
        log.info("database %s closed after being idle", name, extra={"database": name})
        return node.db

    def _close_evicted(self, db: Database) -> None:
        """Close a database ``_evict_locked`` took out and wake whoever waits to reopen it."""
        try:
            _close(db)
        finally:
            with self._lock:
                done = self._closing.pop(db.name, None)
            if done is not None:
                done.set()

    def _check_idle(self) -> None:
        interval = self.node_config.idle_check_interval
        while not self._stop.wait(interval):
            try:
                self.evict_idle()
            except Exception:
                log.exception("idle eviction failed")

    def remove(self, name: str, delete: bool = False) -> dict[str, Any]:
        """Close and forget ``name``; with ``delete`` also remove its files.

        Requests for it meanwhile fail with ``unavailable``; a later request opens (and
        after ``delete`` creates) it anew. Raises NotFoundError if it does not exist.
        """
        validate_database_name(name)
        path = self.data_dir / name
        with self._lock:
            if name not in self._nodes and not path.is_dir():
                raise NotFoundError(f"database {name!r} does not exist")
        with self.offline(name):
            with self._lock:
                self._breakers.pop(name, None)
                self._epochs.pop(name, None)
            if delete and path.is_dir():
                shutil.rmtree(path)  # no request reopens it meanwhile
        log.info("database %s removed%s", name, " and deleted" if delete else "")
        return {"database": name, "deleted": delete}

    def _drain(self, name: str) -> None:
        """Let the requests already using ``name`` finish (new ones are refused while it
        is being removed or worked on), for up to ``DRAIN_SECONDS``."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                node = self._nodes.get(name)
                if node is None or node.active == 0:
                    return
            time.sleep(0.005)
        log.warning("database %s still had requests after %.0f s: closing it", name, DRAIN_SECONDS)

    @contextmanager
    def offline(self, name: str) -> Iterator[Path]:
        """Close ``name`` and keep it closed inside the block (requests for it get
        ``unavailable``), for work on its files; yields its directory."""
        validate_database_name(name)
        with self._lock:
            if name in self._removing:
                raise UnavailableError(f"database {name!r} is being worked on")
            self._removing.add(name)
        try:
            self._drain(name)
            with self._opening:
                with self._lock:
                    node = self._nodes.pop(name, None)
                    closing = self._closing.get(name)
                if node is not None:
                    _close(node.db)
                if closing is not None:
                    closing.wait()  # an eviction is still closing it
            yield self.data_dir / name  # other databases open meanwhile
        finally:
            with self._lock:
                self._removing.discard(name)

    def close(self) -> None:
        """Flush and close every open database; stop the idle checker. Databases in
        memory are deleted."""
        self._stop.set()
        with self._lock:
            self._closed = True
            nodes, self._nodes = list(self._nodes.values()), {}
        try:
            for node in nodes:
                node.db.close()
            if self._checker is not None and self._checker is not threading.current_thread():
                self._checker.join(5)
        finally:
            if self._memory is not None:
                self._memory.remove()

    close_all = close

    # -- observability ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Open, evicted and failing databases."""
        now = time.monotonic()
        with self._lock:
            open_nodes = {
                name: {
                    "active_requests": node.active,
                    "subscribers": node.db.subscriber_count,
                    "idle_seconds": round(now - node.last_used, 3),
                }
                for name, node in sorted(self._nodes.items())
                if not node.db.closed
            }
            failing = {
                name: {
                    "failures": breaker.failures,
                    "cause": breaker.cause,
                    "retry_in_seconds": round(max(0.0, breaker.open_until - now), 3),
                }
                for name, breaker in sorted(self._breakers.items())
            }
            return {
                "open": open_nodes,
                "open_count": len(open_nodes),
                "opened_total": self.opened_total,
                "evicted_total": self.evicted_total,
                "failing": failing,
                "max_open_databases": self.node_config.max_open_databases,
                "idle_evict_after": self.node_config.idle_evict_after,
            }

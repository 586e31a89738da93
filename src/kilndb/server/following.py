"""What a server follows: one :class:`~kilndb.replication.Follower` per database it copies
from a leader, re-pointed by ``replicate``, ended by ``promote``.

With ``replica_of`` and no list of databases, the leader's databases are discovered (a
listing every :data:`DISCOVER_SECONDS`) and new ones followed as they appear. Changes
to what is followed are serialised by one lock; each changes the dispatcher's read-only
map first, so that a database never takes a write between two leaders.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kilndb.client.endpoint import Endpoint
from kilndb.client.transport import Connection
from kilndb.engine import Database
from kilndb.errors import InvalidArgumentError, KilnError, UnavailableError
from kilndb.model import validate_database_name
from kilndb.replication.follower import Follower
from kilndb.replication.protocol import SILENCE_SECONDS
from kilndb.server.config import ServerConfig
from kilndb.server.dispatch import Dispatcher
from kilndb.server.metrics import Metrics
from kilndb.server.nodes import NodeManager
from kilndb.server.tasks import TaskOwner
from kilndb.storage.truncate import discard_copy, truncate_after

__all__ = ["DISCOVER_SECONDS", "Following"]

_R = TypeVar("_R")

log = logging.getLogger("kilndb.server")

#: How often a follower of every database asks its leader for new ones.
DISCOVER_SECONDS = 2.0


def _following(method: Callable[..., _R]) -> Callable[..., _R]:
    """Run a method that starts, stops or promotes followers under ``lock``: one change
    to what this server follows at a time."""

    @functools.wraps(method)
    def locked(self: Following, *args: Any, **kwargs: Any) -> _R:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


class Following:
    """The followers of one server."""

    def __init__(
        self,
        config: ServerConfig,
        databases: NodeManager,
        dispatcher: Dispatcher,
        metrics: Metrics,
        tasks: TaskOwner,
    ) -> None:
        self.config = config
        self.databases = databases
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.tasks = tasks
        #: The databases this server follows from its leader.
        self.followers: list[Follower] = []
        #: Held while followers are started, stopped or promoted (reentrant: follow
        #: stops the followers it replaces).
        self.lock = threading.RLock()
        #: Set to stop discovering a leader's databases.
        self._discovering = threading.Event()
        #: Set once the server stops: nothing new is followed.
        self.stopping = False
        #: Told when what this server leads or follows changed (the cluster publishes it).
        self.changed: Callable[[], None] = lambda: None

    def start(self) -> None:
        """Follow what the configuration says (``replica_of``, ``follow``)."""
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
        self.tasks.thread(self._discover, "kilndb-discover", config.replica_of)

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
        if self.stopping:
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
                self.metrics.event("divergent_tail_dropped", database=name, positions=len(dropped))
                return dropped

            def discard_local(name: str = name) -> int:
                with self.databases.offline(name) as directory:
                    facts = discard_copy(directory)
                self.metrics.event("full_resync", database=name, facts=facts)
                return facts

            follower = Follower(
                leader,
                name,
                open_local,
                truncate_local,
                discard_local,
                backoff_min=low,
                backoff_max=high,
                node=config.node_name if config.coordinator is not None else None,
            )
            self.followers.append(follower.start())
        self.metrics.event("following", leader=leader.url, databases=names)
        self.changed()
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
            self.metrics.event("promoted", database=name, epoch=epoch, position=position)
            log.warning("promoted to leader of %s at epoch %d", name, epoch)
        self.changed()
        return {"promoted": promoted}

    @_following
    def lead(self, name: str, epoch: int) -> None:
        """Lead ``name`` from ``epoch`` on, as a coordinator granted it: stop following
        it, start that epoch in its META unless it is there already, take writes."""
        for follower in [f for f in self.followers if f.name == name]:
            follower.stop()  # its thread has ended: nothing is appended any more
            self.followers.remove(follower)
        db = self.databases.get(name)
        if db.leader_epoch < epoch:
            db.promote(epoch)
        elif db.leader_epoch > epoch:
            raise InvalidArgumentError(
                f"{name} is at epoch {db.leader_epoch} here, above the {epoch} granted"
            )
        self.dispatcher.read_only.pop(name, None)
        self.databases.pinned.discard(name)
        position = db.stats()["last_position"]
        self.metrics.event("promoted", database=name, epoch=epoch, position=position)
        log.warning("leading %s at epoch %d from position %d", name, epoch, position)
        self.changed()

    def status(self) -> list[dict[str, Any]]:
        """The leaders this server follows, one entry per database."""
        return [follower.status() for follower in self.followers]

    def stop(self) -> None:
        """Stop every follower and the discovery (the server is stopping)."""
        self._discovering.set()
        with self.lock:  # nothing new starts now
            self.stopping = True
            followers = list(self.followers)
        for follower in followers:
            follower.stop()

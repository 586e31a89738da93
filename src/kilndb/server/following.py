"""What a server follows: one :class:`~kilndb.replication.follower.StreamFollower` per
database it copies from a leader, re-pointed by ``replicate``, ended by ``promote``.

With ``replica_of`` and no list of databases, the leader's databases are discovered (a
listing every :data:`DISCOVER_SECONDS`) and new ones followed as they appear. Changes
to what is followed are serialised by one lock; each changes the dispatcher's read-only
map first, so that a database never takes a write between two leaders.

Fencing: when the server's :class:`~kilndb.replication.fencing.EpochFence` hears of a
leader epoch newer than the one a database is led at here — from gossip, from a
follower's ``sync_request`` or ack, or from a coordinator — :meth:`Following.fence` makes
that database read-only at once, before anything else: writes get ``read_only_replica``
naming the new leader, or ``stale_epoch`` while it is unknown. With ``follow`` (gossip)
it then follows the new leader, which cuts the divergent tail. A server restarted with
``--join`` holds the databases it led (:meth:`Following.hold_for_cluster`: writes get
``unavailable``) until it has heard the cluster's metadata, and then either leads them
again (:meth:`Following.release`) or is fenced.
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
from kilndb.errors import (
    InvalidArgumentError,
    KilnError,
    ReadOnlyReplicaError,
    StaleEpochError,
    UnavailableError,
)
from kilndb.model import validate_database_name
from kilndb.replication.fencing import EpochFence
from kilndb.replication.follower import StreamFollower
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
        epochs: EpochFence | None = None,
    ) -> None:
        self.config = config
        #: The newest leader epoch known per database: a newer one fences it here.
        self.epochs = epochs if epochs is not None else EpochFence()
        self.epochs.on_newer(self._learned)
        #: Databases fenced here: name -> the newer epoch that fenced them.
        self.fenced: dict[str, int] = {}
        #: Databases this server led before a restart with ``--join``, held read-only
        #: until the cluster's metadata is heard.
        self.settling: set[str] = set()
        self.databases = databases
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.tasks = tasks
        #: The databases this server follows from its leader.
        self.followers: list[StreamFollower] = []
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

    # -- fencing ------------------------------------------------------------------------

    def fence(self, name: str, epoch: int, leader: str | None = None) -> bool:
        """Database ``name`` is led elsewhere at ``epoch`` (by the server at ``leader``, a
        URL, when known). If this server leads it at an older epoch, stop accepting
        writes for it at once: it becomes read-only (``read_only_replica`` naming
        ``leader``, or ``stale_epoch`` while no leader is known), the fencing is
        recorded in the recent events and the log, and with ``follow`` the server
        starts following ``leader``. Safe from any thread, and never blocks.

        Returns whether ``name`` is fenced here now. Raises InvalidArgumentError for an
        invalid name.
        """
        validate_database_name(name)
        self.epochs.learn(name, epoch, leader)  # tells _learned, which fences
        return self._fence(name, epoch, leader)

    def _learned(self, name: str, epoch: int, leader: str | None) -> None:
        try:
            self._fence(name, epoch, leader)
        except Exception:  # a listener must not fail the one who learned it
            log.exception("fencing %s at epoch %d failed", name, epoch)

    def _fence(self, name: str, epoch: int, leader: str | None) -> bool:
        try:
            if not self.databases.exists(name):
                return False  # nothing held here: nothing to fence
        except KilnError:
            return False
        if any(f.name == name for f in list(self.followers)):
            return False  # a copy: its follower refuses a stale leader by itself
        dispatcher = self.dispatcher
        leading = name not in dispatcher.read_only
        if not (leading or name in self.fenced or name in self.settling):
            return False  # a copy whose leader is not known yet: nothing it leads
        own = self.databases.leader_epoch(name)
        newest = self.epochs.newest(name, own)
        if newest <= own:
            return name in self.fenced
        known = self.epochs.known(name)
        if epoch < newest:  # news of an epoch older than the newest: not its leader
            leader = None
        leader = leader or (known.leader if known is not None and known.epoch == newest else None)
        before = (self.fenced.get(name), dispatcher.read_only.get(name))
        # At once, before anything else: the next write is refused, and so is the answer
        # to a write applied but not yet acknowledged.
        if leader:
            dispatcher.refusals[name] = functools.partial(ReadOnlyReplicaError, leader)
        else:
            dispatcher.refusals[name] = functools.partial(StaleEpochError, name, own, newest)
        dispatcher.read_only[name] = leader or ""
        self.databases.pinned.add(name)
        self.fenced[name] = newest
        self.settling.discard(name)
        if before == (newest, leader or ""):
            return True  # nothing new
        self.metrics.event("fenced", database=name, epoch=own, newer_epoch=newest, leader=leader)
        log.warning(
            "fenced %s: led here at epoch %d, epoch %d is led by %s; writes refused",
            name,
            own,
            newest,
            leader or "an unknown node",
        )
        self.changed()
        if leader and self.config.follow and not self.stopping:
            self.tasks.thread(self._follow_fenced, f"kilndb-fenced-{name}", name, leader)
        return True

    @_following
    def _follow_fenced(self, name: str, leader: str) -> None:
        """``follow``: a fenced database follows its new leader (unless promoted or
        re-pointed meanwhile)."""
        if self.stopping or self.fenced.get(name) is None:
            return
        if self.dispatcher.read_only.get(name) != leader:
            return  # an even newer leader was learned: its own thread follows it
        if any(f.name == name and f.leader.url == leader for f in self.followers):
            return
        self.follow(leader, [name], discovered=True)

    def hold_for_cluster(self) -> list[str]:
        """Before the server listens, with gossip and ``--join``: hold every database
        this server would lead (writes get ``unavailable``) until the cluster's
        metadata says whether another member leads it at a newer epoch. Returns them."""
        config = self.config
        if config.gossip_port is None or not config.join or config.follow:
            return []
        if config.replica_of is not None or config.coordinator is not None:
            return []  # a replica's databases are followed; a coordinator decides
        held = [name for name in self.databases.on_disk() if name not in self.dispatcher.read_only]
        for name in held:
            self.settling.add(name)
            self.dispatcher.refusals[name] = functools.partial(
                UnavailableError,
                f"database {name} takes no writes until this server has heard the cluster's"
                " metadata (it restarted and another member may lead it now)",
            )
            self.dispatcher.read_only[name] = ""
        if held:
            log.info("holding %s until the cluster's metadata is heard", ", ".join(held))
        return held

    @_following
    def release(self, name: str) -> bool:
        """The cluster's metadata is heard and nobody leads ``name`` at a newer epoch:
        lead it again (writes accepted). Returns False when it is no longer held (fenced,
        promoted or re-pointed meanwhile)."""
        if name not in self.settling:
            return False
        self.settling.discard(name)
        self.dispatcher.refusals.pop(name, None)
        self.dispatcher.read_only.pop(name, None)
        self.metrics.event("leading_after_restart", database=name)
        self.changed()
        return True

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
            self.dispatcher.refusals.pop(name, None)
            self.fenced.pop(name, None)
            self.settling.discard(name)
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

            follower = StreamFollower(
                leader,
                name,
                open_local,
                truncate_local,
                discard_local,
                backoff_min=low,
                backoff_max=high,
                connect_timeout=config.replication_connect_timeout,
                fence=self.epochs,
                node=config.node_name if config.coordinator is not None else None,
                max_record_bytes=self.databases.config.max_record_bytes,
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
            # The new epoch first, then writes are accepted; above any epoch known to be
            # led elsewhere, so that this leader fences that one and not the reverse.
            epoch = db.promote(above=self.epochs.newest(name))
            position = self._take_writes(name, db, epoch)
            promoted.append({"database": name, "epoch": epoch, "position": position})
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
        position = self._take_writes(name, db, epoch)
        log.warning("leading %s at epoch %d from position %d", name, epoch, position)
        self.changed()

    def _take_writes(self, name: str, db: Database, epoch: int) -> int:
        """``name`` is led here from ``epoch`` on: lift every fence, hold and refusal,
        take its writes, record it; the position it is led from."""
        self.fenced.pop(name, None)
        self.settling.discard(name)
        self.dispatcher.refusals.pop(name, None)
        self.dispatcher.read_only.pop(name, None)
        self.databases.pinned.discard(name)
        position: int = db.stats()["last_position"]
        self.metrics.event("promoted", database=name, epoch=epoch, position=position)
        return position

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

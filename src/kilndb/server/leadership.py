"""Leadership held through a coordinator (etcd): who leads each database, decided by etcd.

Theory of operation
-------------------
A server started with ``--coordinator etcd://…`` keeps, under ``/kiln/{cluster}/`` in
etcd (:class:`~kilndb.server.coordinator.Coordinator` names the keys):

``members/{node}``
    where the node is reached, bound to the node's lease;
``leaders/{database}``
    ``{"node", "url", "epoch"}`` of the database's leader, bound to the leader's lease;
``epochs/{database}``
    the last epoch granted for the database: a fencing token that only grows.

**Taking the lead.** A database without a leader key is campaigned for by the nodes
that hold it: each publishes its log position, waits a moment, and the most up-to-date
one (ties: the smallest node name) runs the transaction that creates the leader key only
if nobody holds it and, in the same transaction, moves ``epochs/{database}`` on by one —
the new epoch, above any the database had. The winner starts that epoch in its ``META``
(:meth:`~kilndb.Database.promote`) and takes writes; the others follow it. A database
one node creates by a write appears in etcd, and so on every node.

**Stepping down before the lease can expire.** The node's lease is renewed every third
of ``--leader-ttl``. A leader takes writes only until ``ttl - margin`` seconds after the
last renewal it *sent*; etcd cannot expire the lease before ``ttl`` seconds after it
*received* it, so no moment exists in which the old leader still takes writes and a new
one has been elected. The check is on the monotonic clock at every write and again
before a write is answered, so a process paused past its lease (SIGSTOP, a frozen VM)
refuses writes when it wakes, before touching the log, and answers nothing it wrote
before the pause as acknowledged.

**Failover.** When a leader's key disappears (its lease expired, or it stopped and
revoked it), the followers campaign as above; the winner promotes and the others
re-point to it. A returning old leader finds another's key and follows; the replication
handshake cuts its never-acknowledged tail (logged and kept aside).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from kilndb.errors import (
    InvalidArgumentError,
    KilnError,
    ReadOnlyReplicaError,
    UnavailableError,
)
from kilndb.server.coordinator import Coordinator, LeaderRecord
from kilndb.server.dispatch import Dispatcher
from kilndb.server.following import Following
from kilndb.server.leader import LeaderSide
from kilndb.server.metrics import Metrics
from kilndb.server.nodes import NodeManager

__all__ = ["Leadership"]

log = logging.getLogger("kilndb.leadership")

#: How long candidates wait for each other's positions before the best one campaigns.
SETTLE_SECONDS = 0.5
#: How long a planned switchover waits for its successor to catch up.
HANDOVER_SECONDS = 10.0
#: How long a write to a database without a leader waits for the election it starts.
ELECTION_WAIT_SECONDS = 5.0
#: Elections remembered for status.
ELECTIONS_KEPT = 20


@dataclass
class _Election:
    database: str
    started: float
    node: str | None = None
    epoch: int | None = None
    seconds: float | None = None


class Leadership:
    """This node's side of coordinator-held leadership (runs on the server's loop)."""

    def __init__(
        self,
        coordinator: Coordinator,
        node: str,
        url: str,
        ttl: float,
        databases: NodeManager,
        dispatcher: Dispatcher,
        following: Following,
        metrics: Metrics,
        executor: Any,
        leader_side: LeaderSide,
        require_isr: bool,
    ) -> None:
        self.coordinator = coordinator
        self.leader_side = leader_side
        #: Only in-sync members may be elected (``min_insync_replicas`` >= 1).
        self.require_isr = require_isr
        self.node = node
        self.url = url
        self.ttl = ttl
        #: Writes stop this long before the lease could expire.
        self.margin = max(0.5, ttl / 5)
        self.databases = databases
        self.dispatcher = dispatcher
        self.following = following
        self.metrics = metrics
        self.executor = executor
        #: database -> epoch this node leads it at.
        self.led: dict[str, int] = {}
        #: database -> its leader as etcd says (None: nobody).
        self.leaders: dict[str, LeaderRecord | None] = {}
        #: Writes are taken until then (monotonic), while the lease is renewed.
        self.valid_until = 0.0
        self.lease = 0
        self.elections: deque[_Election] = deque(maxlen=ELECTIONS_KEPT)
        self._open: dict[str, _Election] = {}
        #: Databases a write asked for that nobody leads yet (this node campaigns).
        self.wanted: set[str] = set()
        #: Databases whose lead this node is handing over (planned switchover) -> to whom.
        self.handing: dict[str, str] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._changed = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_id = 0

    # -- the write gate (any thread) -----------------------------------------------------

    def may_write(self, database: str, wait: bool = True) -> None:
        """Raise unless this node leads ``database`` under a lease still valid now.

        With ``wait``, on a worker thread, a write to a database nobody leads yet — a new
        one included — waits (up to :data:`ELECTION_WAIT_SECONDS`) for the election it
        starts."""
        deadline: float | None = None
        while True:
            with self._cond:
                epoch = self.led.get(database)
                handing_to = self.handing.get(database)
                if handing_to is not None:
                    raise UnavailableError(
                        f"the lead of {database!r} is being handed to {handing_to}: retry shortly"
                    )
                if epoch is not None and time.monotonic() < self.valid_until:
                    return
                leader = self.leaders.get(database)
                on_loop = threading.get_ident() == self._loop_id
                undecided = leader is None or leader.node == self.node  # or not led yet
                if wait and epoch is None and undecided and not on_loop:
                    if deadline is None:
                        deadline = time.monotonic() + ELECTION_WAIT_SECONDS
                        self.wanted.add(database)
                        self._poke()
                    remaining = deadline - time.monotonic()
                    if remaining > 0:
                        self._cond.wait(remaining)
                        continue
            break
        if epoch is not None:  # led, but the lease could not be renewed in time
            raise UnavailableError(
                f"this node could not renew its leadership of {database!r} in time and takes"
                " no writes for it until it has: retry, or go to the new leader"
            )
        if leader is not None and leader.node != self.node:
            raise ReadOnlyReplicaError(leader.url)
        raise UnavailableError(
            f"{database!r} has no leader yet (an election is under way): retry shortly"
        )

    def routing(self, database: str) -> dict[str, Any]:
        """``hello``'s fields: ``leader`` only while this node may take the writes."""
        with self._cond:
            leading = database in self.led and time.monotonic() < self.valid_until
            leading = leading and database not in self.handing
        if leading:
            return {"role": "leader"}
        record = self.leaders.get(database)
        url = None if record is None or record.node == self.node else record.url
        return {"role": "follower", "leader": url}

    def _poke(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._changed.set)

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the lease, follow etcd's leaders, campaign where nobody leads."""
        coordinator = self.coordinator
        self._loop = asyncio.get_running_loop()
        self._loop_id = threading.get_ident()
        while True:  # etcd may not be up yet: no writes are taken until it is
            sent = time.monotonic()
            try:
                self.lease = await coordinator.grant(self.ttl)
                await coordinator.register_member(self.node, self.url, self.lease)
                break
            except KilnError as exc:
                log.warning("cannot reach the coordinator yet: %s", exc)
                await asyncio.sleep(1.0)
        self._renewed(sent)
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._keep_alive(), name="kilndb-lease"),
            loop.create_task(self._watch(), name="kilndb-leaders-watch"),
            loop.create_task(self._reconcile_forever(), name="kilndb-reconcile"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _renewed(self, sent: float) -> None:
        with self._lock:
            self.valid_until = max(self.valid_until, sent + self.ttl - self.margin)

    async def _keep_alive(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.ttl / 3)
            sent = time.monotonic()
            try:
                left = await self.coordinator.keepalive(self.lease)
            except Exception as exc:
                log.warning("renewing the leadership lease failed: %s", exc)
                continue  # the gate closes by itself when valid_until passes
            if left > 0:
                self._renewed(sent)
                continue
            # The lease is gone (expired while unreachable): every key it held is too.
            self._lost("its lease expired")
            self.lease = await self.coordinator.grant(self.ttl)
            self._renewed(time.monotonic())
            await self.coordinator.register_member(self.node, self.url, self.lease)
            self._changed.set()

    def _lost(self, why: str) -> None:
        with self._lock:
            lost, self.led = dict(self.led), {}
            self.valid_until = 0.0
        for database, epoch in lost.items():
            self.metrics.event("leadership_lost", database=database, epoch=epoch, reason=why)
            log.warning("lost the leadership of %s (epoch %d): %s", database, epoch, why)

    async def _watch(self) -> None:
        while not self._stopping:
            try:
                leaders, revision = await self.coordinator.leaders()
                self.leaders.update(leaders)
                for name in self.databases.on_disk():
                    self.leaders.setdefault(name, None)
                self._changed.set()
                self._notify()
                async for database, record in self.coordinator.watch_leaders(revision + 1):
                    self.leaders[database] = record
                    self._changed.set()
                    self._notify()
            except Exception as exc:  # never end the watch: list again and resume
                log.warning("watching the leaders failed: %s", exc)
                await asyncio.sleep(0.2)

    async def _reconcile_forever(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.ttl / 2)
            self._changed.clear()
            names = set(self.leaders) | set(self.databases.on_disk()) | self.wanted
            for database in sorted(names):
                try:
                    await self._reconcile(database)
                except Exception as exc:  # the next round tries again
                    log.warning("reconciling %s: %s", database, exc)
                    self._changed.set()
                    await asyncio.sleep(0.2)

    async def _reconcile(self, database: str) -> None:
        record = self.leaders.get(database)
        loop = asyncio.get_running_loop()
        if record is None:
            self._election(database)
            if await self._best_candidate(database):
                await self._campaign(database)
            return
        self._elected(database, record)
        if record.node == self.node:
            if self.led.get(database) != record.epoch:
                await loop.run_in_executor(self.executor, self._lead, database, record.epoch)
            return
        if database in self.led:  # another node holds the key: this one does not lead
            self._lost(f"{record.node} leads it at epoch {record.epoch}")
        followed = {f.name: f.leader.url for f in self.following.followers}
        if followed.get(database) != record.url:
            await loop.run_in_executor(self.executor, self._follow, database, record.url)

    def _election(self, database: str) -> None:
        if database not in self._open:
            self._open[database] = _Election(database, time.monotonic())

    def _elected(self, database: str, record: LeaderRecord) -> None:
        election = self._open.pop(database, None)
        if election is None:
            return
        election.node, election.epoch = record.node, record.epoch
        election.seconds = round(time.monotonic() - election.started, 3)
        self.elections.append(election)
        self.metrics.event(
            "leader_elected",
            database=database,
            node=record.node,
            epoch=record.epoch,
            seconds=election.seconds,
        )

    async def _best_candidate(self, database: str) -> bool:
        """Whether this node should campaign now: it holds the database and is the
        most up-to-date of the candidates (or waited a whole TTL for a better one)."""
        if self.require_isr:
            known = await self.coordinator.isr(database)
            if known is not None and self.node != known[0] and self.node not in known[1]:
                return False  # it may lack acknowledged writes: never elected
        if not self.databases.exists(database):
            if database not in self.wanted:
                return False
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.executor, self.databases.get, database)  # creates
        position = self.databases.get(database).stats()["last_position"]
        await self.coordinator.offer(database, self.node, position, self.lease)
        await asyncio.sleep(SETTLE_SECONDS)
        election = self._open.get(database)
        waited = election is not None and time.monotonic() - election.started > self.ttl
        handed_to = await self.coordinator.handed_to(database)
        if handed_to is not None and not waited:
            return handed_to == self.node  # a planned switchover names its successor
        offers = await self.coordinator.offers(database)
        ranked = sorted(offers.items(), key=lambda item: (-item[1], item[0]))
        return waited or (bool(ranked) and ranked[0][0] == self.node)

    async def _campaign(self, database: str) -> None:
        local = self.databases.get(database).leader_epoch
        won = await self.coordinator.campaign(database, self.node, self.url, local, self.lease)
        if won is None:
            return  # someone else got it: the watch will tell
        self.leaders[database] = LeaderRecord(self.node, self.url, won)
        self.wanted.discard(database)
        log.warning("took the leadership of %s at epoch %d", database, won)
        self._changed.set()

    def _lead(self, database: str, epoch: int) -> None:
        """Start leading ``database`` at ``epoch`` (a worker: stopping a follower waits)."""
        if self.require_isr:
            # The previous in-sync members hold every write acknowledged so far: they
            # stay in sync (as followers of this node) until they lag.
            known = self._call(self.coordinator.isr(database))
            members = frozenset() if known is None else frozenset(known[1]) - {self.node}
            self.leader_side.start_isr(database, members)
            self._publish(database, epoch, members)
        self.following.lead(database, epoch)
        with self._cond:
            self.led[database] = epoch
            self._cond.notify_all()
        self.metrics.event("leading", database=database, epoch=epoch)

    def _call(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the loop from a worker thread and wait for it."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(self.ttl)

    def publish_isr(self, database: str, members: frozenset[str]) -> None:
        """The leader side's hook (a worker thread): publish before answering."""
        epoch = self.led.get(database)
        if epoch is None:
            raise UnavailableError(f"this node no longer leads {database!r}")
        self._publish(database, epoch, members)

    def _publish(self, database: str, epoch: int, members: frozenset[str]) -> None:
        done = self._call(
            self.coordinator.publish_isr(database, self.node, epoch, sorted(members), self.lease)
        )
        if not done:
            raise UnavailableError(f"this node no longer leads {database!r}")

    def hand_over(self, database: str, to: str) -> dict[str, Any]:
        """A planned switchover (a worker thread): stop taking writes for ``database``,
        wait until ``to`` holds every one of them, then let it take the lead. Raises,
        and keeps the lead, if ``to`` does not catch up in time."""
        with self._cond:
            epoch = self.led.get(database)
            if epoch is None:
                leader = self.leaders.get(database)
                where = "" if leader is None else f": {leader.node} at {leader.url}"
                raise InvalidArgumentError(
                    f"this node does not lead {database!r}; send promote --to to its leader" + where
                )
            if to == self.node:
                raise InvalidArgumentError(f"{to} leads {database!r} already")
            self.handing[database] = to
        started = time.monotonic()
        try:
            db = self.databases.get(database)
            deadline = started + HANDOVER_SECONDS
            while not self._caught_up(database, to, db.stats()["last_position"]):
                if time.monotonic() > deadline:
                    raise UnavailableError(
                        f"{to} did not catch up with {database!r} within"
                        f" {HANDOVER_SECONDS:g} s (is it a follower of it?): the lead stays"
                        f" with {self.node}"
                    )
                time.sleep(0.05)
            if self.require_isr:
                self.publish_isr(database, self.leader_side.isr.get(database, frozenset()) | {to})
            if not self._call(self.coordinator.hand_over(database, self.node, to, self.lease)):
                raise UnavailableError(f"this node no longer leads {database!r}")
            with self._cond:
                self.led.pop(database, None)
            self.metrics.event("handed_over", database=database, to=to, epoch=epoch)
            log.warning("handed the lead of %s over to %s", database, to)
        finally:
            with self._cond:
                self.handing.pop(database, None)
        deadline = time.monotonic() + self.ttl * 2
        while time.monotonic() < deadline:
            record = self.leaders.get(database)
            if record is not None and record.node == to:
                seconds = round(time.monotonic() - started, 3)
                return {
                    "database": database,
                    "from": self.node,
                    "to": to,
                    "epoch": record.epoch,
                    "seconds": seconds,
                }
            time.sleep(0.05)
        raise UnavailableError(f"{to} has not taken the lead of {database!r} yet")

    def _caught_up(self, database: str, node: str, position: int) -> bool:
        return any(
            link.node == node
            and link.replica
            and link.db.name == database
            and not link.closed
            and link.durable >= position
            for link in list(self.leader_side.links)
        )

    def _follow(self, database: str, url: str) -> None:
        self.following.follow(url, [database], discovered=True)

    async def stop(self) -> None:
        """Give up every leadership at once (revoke the lease: followers take over
        without waiting for it to expire)."""
        self._stopping = True
        self._lost("the server is stopping")
        with contextlib.suppress(KilnError):
            await self.coordinator.revoke(self.lease)
        await self.coordinator.close()

    def status(self) -> dict[str, Any]:
        """Per database: leader, epoch, this node's role and — where it leads — the
        in-sync set and each follower's lag; and the last elections with their
        durations."""
        now = time.monotonic()
        followers: dict[str, list[dict[str, Any]]] = {}
        for link in self.leader_side.status():
            followers.setdefault(link["database"], []).append(link)
        databases = {}
        for name, record in sorted(self.leaders.items()):
            entry: dict[str, Any] = {"leader": None, "epoch": None, "role": "follower"}
            if record is not None:
                entry.update(leader=record.node, url=record.url, epoch=record.epoch)
            if name in self.led:
                entry["role"] = "leader"
                entry["in_sync"] = sorted(self.leader_side.isr.get(name, frozenset()))
                entry["followers"] = followers.get(name, [])
            databases[name] = entry
        return {
            "node": self.node,
            "lease_valid_for": round(max(0.0, self.valid_until - now), 3),
            "databases": databases,
            "leaders": {
                name: None if r is None else {"node": r.node, "url": r.url, "epoch": r.epoch}
                for name, r in sorted(self.leaders.items())
            },
            "led": dict(sorted(self.led.items())),
            "elections": [
                {"database": e.database, "node": e.node, "epoch": e.epoch, "seconds": e.seconds}
                for e in self.elections
            ],
        }

    def gauges(self) -> dict[str, float]:
        """Gauges for the server's metrics."""
        return {
            "coordinator_databases_led": len(self.led),
            "coordinator_lease_valid_seconds": round(
                max(0.0, self.valid_until - time.monotonic()), 3
            ),
            "coordinator_elections_seen": len(self.elections),
        }

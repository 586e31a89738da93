"""A server as a cluster member: what it publishes through gossip, and what it reads back.

With ``gossip_port`` set, the server runs a gossip node (:mod:`kilndb.cluster`) on its
own event loop — UDP on ``gossip_port``, TCP on ``gossip_tcp_port`` (by default the
same port), gossiping every ``gossip_interval``, a ``seed`` or a ``peer`` by
``gossip_role`` — records the node's ``start`` and ``shutdown`` in the recent-events
ring (``cluster_start``, ``cluster_shutdown``), and publishes, as that node's metadata:

``kiln``
    ``{"tcp": URL, "http": URL | None}`` — where clients and followers reach it.
``db/NAME`` (one key per database it holds)
    ``{"role": "leader", "epoch": E}`` for a database it leads, or
    ``{"role": "follower", "leader": URL, "epoch": E, "lag": RECORDS, "state": S}`` for
    one it follows.

Values change only when what they describe changes (a promotion, a new database, a
follower's lag), so steady state costs no gossip. From everyone's metadata a member
knows the leader of each database: the live member that publishes ``role: leader`` with
the highest epoch. With ``follow``, the server follows every database from that leader,
re-pointing a follower when a different member takes over with a higher epoch (after
someone ran ``kiln promote`` there). Gossip never promotes anyone: a database whose
leader is dead stays without one until an operator promotes a follower.

Gossip does fence. Every epoch any member publishes as led — live or not: an epoch
once started stays known — goes into the server's epoch fence
(:meth:`~kilndb.server.following.Following.fence`): a member that leads a database at
an older epoch than one published elsewhere stops accepting writes for it as soon as the
news arrives (a key event, or the next round at the latest), names the new leader when
that member is live, and with ``follow`` follows it. A member whose own epoch is higher
ignores the stale claimant. Epochs are compared by number only: two members promoted to
the same epoch number (from one old epoch, by hand) do not fence each other.

A member started with ``join`` holds the databases it would lead (writes get
``unavailable``) until it has heard the cluster — its first full state exchange with a
member, or :data:`SETTLE_PROBES` probe intervals if no member answers — and then leads
them again or is fenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from kilndb.cluster import AsyncGossip, ClusterConfig, KeyEvent, Member, MemberState
from kilndb.errors import InvalidArgumentError, KilnError
from kilndb.server.services import Services

__all__ = ["ClusterAgent", "Leader"]

log = logging.getLogger("kilndb.cluster")

#: Prefix of the per-database metadata keys.
DB_PREFIX = "db/"
#: Shortest time between two rounds of publishing (and of following leaders).
PUBLISH_SECONDS = 1.0
#: How many probe intervals a restarted member waits to hear the cluster before it
#: leads the databases it holds without having heard anyone.
SETTLE_PROBES = 5


@dataclass(frozen=True, slots=True)
class Leader:
    """The member that leads a database, as the cluster metadata says."""

    node: str
    url: str
    epoch: int


class ClusterAgent:
    """The gossip node of one server, and the follow-the-leader loop of ``--follow``."""

    def __init__(self, services: Services, addresses: list[str]) -> None:
        """``addresses``: where the server listens (``tcp://…`` first, then the rest),
        read each time they are published."""
        config = services.config
        if config.gossip_port is None or not config.host:
            raise InvalidArgumentError("a cluster member needs a host and a gossip port")
        self.services = services
        self.addresses = addresses
        url = self._url()
        self.name = config.node_name or f"{config.host}:{url.rsplit(':', 1)[1]}"
        self.gossip = AsyncGossip(
            name=self.name,
            bind=f"{config.host}:{config.gossip_port}",
            seeds=list(config.join),
            config=ClusterConfig(
                probe_interval=config.probe_interval, gossip_interval=config.gossip_interval
            ),
            cluster_key=None if config.cluster_key is None else config.cluster_key.encode(),
            tcp_port=config.gossip_tcp_port,
            role=config.gossip_role,
        )
        self._published: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._reconciling = False
        #: Whether the databases held at start were settled (led again or fenced).
        self.settled = not services.following.settling

    @property
    def address(self) -> str:
        """The gossip address (``HOST:PORT``) other members join through: its TCP one."""
        return self.gossip.tcp_address or ""

    async def start(self) -> None:
        # A leader's news (a new database, a promotion) is acted on when it arrives,
        # not at the next round: a stale leader fences itself at once.
        for event in ("new_key", "key_changed"):
            self.gossip.on(event, self._on_key)
        metrics = self.services.metrics
        self.gossip.on("start", lambda e: metrics.event("cluster_start", **e.to_json()))
        self.gossip.on("shutdown", lambda e: metrics.event("cluster_shutdown", **e.to_json()))
        loop = asyncio.get_running_loop()
        if not self.settled:
            self.gossip.after("sync", lambda event: self._settle(f"state of {event.peer}"))
            grace = SETTLE_PROBES * self.services.config.probe_interval
            loop.call_later(grace, self._settle, f"nobody answered in {grace:g} s")
        await self.gossip.start()
        self._publish()
        self._task = loop.create_task(self._every_interval())

    def _on_key(self, event: KeyEvent) -> None:
        value = event.value if isinstance(event.value, dict) else {}
        if event.key.startswith(DB_PREFIX) and value.get("role") == "leader":
            self._fence_stale()
            if self.services.config.follow:
                self._follow_leaders()

    def _fence_stale(self) -> None:
        """Teach the epoch fence every epoch published as led elsewhere (on the loop);
        a database led here at an older one is fenced at once."""
        following = self.services.following
        for name, (epoch, url) in sorted(self.claims().items()):
            try:
                following.fence(name, epoch, url)
            except KilnError as exc:  # a name this server cannot hold
                log.debug("ignoring the cluster's claim on %r: %s", name, exc)

    def _settle(self, why: str) -> None:
        """The cluster is heard (or the grace period is over): fence what another member
        leads at a newer epoch, lead the rest again (on the loop; releasing takes the
        following lock, so on a worker)."""
        if self.settled:
            return
        self.settled = True
        self._fence_stale()
        log.info("heard the cluster (%s): settling the databases held at start", why)
        following = self.services.following
        for name in sorted(following.settling):
            self.services.executor.submit(following.release, name)

    def changed(self) -> None:
        """What this server leads or follows changed (a promotion, a re-pointing):
        publish now rather than at the next round. Safe from any thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to tell
            self.services.loop.call_soon_threadsafe(self._publish)

    async def stop(self) -> None:
        """Say goodbye (other members mark this one ``left`` at once) and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.gossip.leave()
        except Exception:  # stopping goes on: the others will find out by probing
            log.exception("saying goodbye to the cluster failed")
        finally:
            await self.gossip.stop()

    async def _every_interval(self) -> None:
        # Publishing lists the data directory: at most once a second.
        interval = max(PUBLISH_SECONDS, self.services.config.probe_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                self._publish()
                self._fence_stale()
                if self.services.config.follow:
                    self._follow_leaders()
            except Exception:  # one bad round must not end publishing
                log.exception("cluster metadata round failed")

    def _follow_leaders(self) -> None:
        """Start a ``--follow`` round on a worker unless one is running (on the loop)."""
        if self._reconciling:
            return
        leaders = self.leaders()  # read on the loop, which owns the gossip state
        self._reconciling = True
        try:
            self.services.loop.run_in_executor(self.services.executor, self._reconcile, leaders)
        except RuntimeError:  # the executor is shutting down
            self._reconciling = False

    # -- what this node publishes ----------------------------------------------------

    def _url(self) -> str:
        return next(a for a in self.addresses if not a.startswith("http"))

    def _metadata(self) -> dict[str, Any]:
        services = self.services
        http = next((a for a in self.addresses if a.startswith("http")), None)
        values: dict[str, Any] = {"kiln": {"tcp": self._url(), "http": http}}
        # The directory first: following a database marks it read-only before its copy
        # is created, so every copy listed here is in the snapshots taken after — never
        # published as led here for a moment.
        held = services.databases.on_disk()
        following = {f.name: f for f in list(services.following.followers)}
        read_only = dict(services.dispatcher.read_only)
        for name in held:
            # Read without opening or touching: gossip must not keep databases open.
            epoch = services.databases.leader_epoch(name)
            follower = following.get(name)
            if follower is not None:
                values[DB_PREFIX + name] = {
                    "role": "follower",
                    "leader": follower.leader.url,
                    "epoch": epoch,
                    "lag": max(0, follower.leader_position - follower.position),
                    "state": follower.state,
                }
            elif name in services.following.fenced:  # led here once, superseded since
                values[DB_PREFIX + name] = {
                    "role": "follower",
                    "leader": read_only.get(name) or None,
                    "epoch": epoch,
                    "fenced": True,
                }
            elif name in read_only:  # a copy whose leader is not known yet
                values[DB_PREFIX + name] = {"role": "follower", "leader": None, "epoch": epoch}
            else:
                values[DB_PREFIX + name] = {"role": "leader", "epoch": epoch}
        return values

    def _publish(self) -> None:
        values = self._metadata()
        for key, value in values.items():
            if self._published.get(key) != value:
                self.gossip.set(key, value)
                self._published[key] = value
        for key in [k for k in self._published if k not in values]:
            self.gossip.delete(key)
            del self._published[key]

    # -- what the cluster says ------------------------------------------------------

    def members(self) -> list[Member]:
        return self.gossip.members()

    def leaders(self) -> dict[str, Leader]:
        """Each database's leader: the member publishing ``role: leader`` at the highest
        epoch (ties: the first name, so that every member picks the same). A suspect
        member still counts — suspicion is not death, and a leader briefly unreachable
        must not make another member look like the place to create the database."""
        found: dict[str, Leader] = {}
        for member in sorted(self.members(), key=lambda m: m.name):
            if member.state not in (MemberState.ALIVE, MemberState.SUSPECT):
                continue
            url = (member.metadata.get("kiln") or {}).get("tcp")
            if not url:
                continue
            for key, value in member.metadata.items():
                if not key.startswith(DB_PREFIX) or value.get("role") != "leader":
                    continue
                name, epoch = key[len(DB_PREFIX) :], int(value.get("epoch", 0))
                known = found.get(name)
                if known is None or epoch > known.epoch:
                    found[name] = Leader(member.name, url, epoch)
        return found

    def claims(self) -> dict[str, tuple[int, str | None]]:
        """The newest epoch each database is published as led at by another member —
        live, suspect or dead: an epoch once started stays known — with that member's
        URL when it is live (``None`` otherwise)."""
        found: dict[str, tuple[int, str | None]] = {}
        for member in sorted(self.members(), key=lambda m: m.name):
            if member.name == self.name:
                continue
            live = member.state in (MemberState.ALIVE, MemberState.SUSPECT)
            url = (member.metadata.get("kiln") or {}).get("tcp") if live else None
            for key, value in member.metadata.items():
                if not key.startswith(DB_PREFIX) or not isinstance(value, dict):
                    continue
                if value.get("role") != "leader":
                    continue
                name, epoch = key[len(DB_PREFIX) :], int(value.get("epoch", 0))
                known = found.get(name)
                if known is None or epoch > known[0] or (epoch == known[0] and not known[1]):
                    found[name] = (epoch, url or None)
        return found

    def elsewhere(self, name: str) -> Leader | None:
        """The member leading database ``name`` when this server does not hold it."""
        try:
            if self.services.databases.exists(name):
                return None
        except KilnError:
            return None  # not a valid name: the request itself will say so
        leader = self.leaders().get(name)
        return None if leader is None or leader.node == self.name else leader

    def _reconcile(self, leaders: dict[str, Leader]) -> None:
        """``--follow``: follow each database from its leader (a worker thread: starting
        and stopping followers waits for their threads)."""
        services = self.services
        following = services.following
        try:
            for name, leader in sorted(leaders.items()):
                if leader.node == self.name:
                    continue
                with following.lock:  # no promotion in between
                    if services.state() != "ready":
                        return
                    current = {f.name: f.leader.url for f in following.followers}.get(name)
                    if current == leader.url:
                        continue
                    held = services.databases.exists(name)
                    if held and name not in services.dispatcher.read_only:
                        # A database this node leads: followed only once fenced (a newer
                        # epoch elsewhere), which the fence does itself.
                        continue
                    if held and leader.epoch < services.databases.leader_epoch(name):
                        # Stale metadata of an older leader: never follow backwards.
                        continue
                    log.info("following %s from %s (%s)", name, leader.node, leader.url)
                    following.follow(leader.url, [name], discovered=True)
        except Exception:
            log.exception("following the cluster's leaders failed")
        finally:
            self._reconciling = False

    def metrics(self) -> dict[str, int]:
        """Gauges and counters for ``/metrics``: members by state, gossip traffic."""
        states = [m.state.value for m in self.members()]
        counters = self.gossip.counters()
        found = {f"cluster_members_{s.value}": states.count(s.value) for s in MemberState}
        found["gossip_packets_dropped_total"] = sum(
            v for k, v in counters.items() if k.startswith("dropped_")
        )
        for name in ("packets_in", "packets_out"):
            found[f"gossip_{name}_total"] = sum(
                counters.get(f"{name}_{channel}", 0) for channel in ("udp", "tcp")
            )
        return found

    def status(self) -> dict[str, Any]:
        """``GET /v1/cluster`` and ``kiln cluster status``: members, their addresses and
        databases, each database's leader, and the gossip counters."""
        members = []
        for member in self.members():
            meta = member.metadata
            members.append(
                {
                    "name": member.name,
                    "gossip": member.address,
                    "gossip_tcp": member.tcp_address,
                    "role": member.role,
                    "state": member.state.value,
                    "incarnation": member.incarnation,
                    "tcp": (meta.get("kiln") or {}).get("tcp"),
                    "http": (meta.get("kiln") or {}).get("http"),
                    "databases": {
                        k[len(DB_PREFIX) :]: v for k, v in meta.items() if k.startswith(DB_PREFIX)
                    },
                }
            )
        return {
            "node": self.name,
            "gossip": self.gossip.address,
            "gossip_tcp": self.gossip.tcp_address,
            "role": self.gossip.role,
            "members": sorted(members, key=lambda m: m["name"]),
            "leaders": {
                name: {"node": leader.node, "url": leader.url, "epoch": leader.epoch}
                for name, leader in sorted(self.leaders().items())
            },
            "incarnation": self.gossip.incarnation,
            "authenticated": self.services.config.cluster_key is not None,
            "probe_interval": self.gossip.config.probe_interval,
            "gossip_interval": self.gossip.gossip_interval,
            "counters": self.gossip.counters(),
        }

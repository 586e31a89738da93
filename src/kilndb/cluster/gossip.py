"""The asyncio gossip node: UDP and TCP sockets, timers and callbacks around the core.

:class:`AsyncGossip` runs inside the caller's event loop (``await g.start()``); the
threaded :class:`~kilndb.cluster.threaded.Gossip` runs one in a thread of its own.
UDP carries probes, acks and gossip rounds, TCP join (``Hello``), push-pull and
``Goodbye``; both use the port of ``bind`` unless ``tcp_port`` names another (Pokan's
``udp_port`` and ``tcp_port``), and the node advertises both. Every TCP message is its
own connection carrying one frame ``[u32 big-endian length][packet]``.

The node fires ``start`` (a :class:`~kilndb.cluster.messages.StartEvent`) once bound,
just before it says hello to its seeds, and ``shutdown`` (a
:class:`~kilndb.cluster.messages.ShutdownEvent`) when it stops — after its goodbyes
when it leaves.

Everything the core emits is sealed by the :class:`~kilndb.cluster.wire.Codec` and sent;
everything received is opened by it first. A packet that fails (garbage, wrong key,
oversize, unknown version, replay) is counted under ``dropped_<reason>`` and dropped;
the node carries on. Callbacks (``on``/``before``/``after``/``every``) run in the
loop; an exception in one is logged and counted, never raised into the protocol, and a
callback that returns an awaitable has it awaited in a task the node owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import ipaddress
import logging
import math
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from kilndb.cluster.config import ClusterConfig
from kilndb.cluster.core import SwimCore
from kilndb.cluster.hooks import Callback, Hooks
from kilndb.cluster.messages import (
    PEER,
    ROLES,
    SEED,
    Member,
    Outgoing,
    Rumors,
    ShutdownEvent,
    StartEvent,
    SyncEvent,
    parse_address,
    tcp_address,
)
from kilndb.cluster.transport import COUNTERS, bind, close_writer, read_frames, send_frame
from kilndb.cluster.wire import Codec, WireError, check_value
from kilndb.errors import InvalidArgumentError

__all__ = ["AsyncGossip"]

log = logging.getLogger("kilndb.cluster")

#: A write's timestamp: epoch seconds, or a ``datetime``.
Timestamp = float | datetime.datetime


class AsyncGossip:
    """A gossip node in the running event loop (Pokan's server API, asyncio flavour).

    Metadata keys belong to the node that sets them: ``set``/``delete`` write this
    node's keys; ``get``/``items`` read this node's unless ``node=`` names another.

    ``role`` is ``"seed"`` or ``"peer"``; by default a node with no seed to join
    through (other than itself) is a seed and any other a peer, as in Pokan. The role
    travels with the node's membership and is reported, never acted upon.
    Methods other than ``start``/``stop``/``leave`` are plain calls, to be made from the
    loop's thread.
    """

    def __init__(
        self,
        name: str,
        bind: str = "127.0.0.1:7946",
        *,
        seeds: Sequence[str] = (),
        advertise: str | None = None,
        cluster_key: bytes | None = None,
        probe_interval: float | None = None,
        config: ClusterConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        tcp_port: int | None = None,
        role: str | None = None,
    ) -> None:
        """``bind`` is the UDP ``host:port``; TCP is bound on the same host at
        ``tcp_port`` (None: the UDP port; 0: any free port other than the UDP one).
        Seeds are the TCP ``host:port`` of members to join through.

        Raises:
            InvalidArgumentError: an empty name, or ``bind``/``advertise``/a seed that is
                not ``host:port``, a TCP port out of 0..65535, a role other than
                ``"seed"``/``"peer"``, or a bad configuration."""
        if not name:
            raise InvalidArgumentError("a gossip node needs a name")
        if tcp_port is not None and not 0 <= tcp_port <= 65535:
            raise InvalidArgumentError(f"tcp_port must be in 0..65535, not {tcp_port}")
        if role is not None and role not in ROLES:
            raise InvalidArgumentError(f"role must be one of {list(ROLES)}, not {role!r}")
        try:
            for address in (bind, *seeds, *([advertise] if advertise else [])):
                parse_address(address)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from exc
        if advertise is None and parse_address(bind)[0] in ("0.0.0.0", "::", ""):
            raise InvalidArgumentError(
                f"bound to the wildcard {bind}: say which address the others reach this"
                " node at (advertise=)"
            )
        config = config or ClusterConfig()
        if probe_interval is not None:
            config = dataclasses.replace(config, probe_interval=probe_interval)
        self.name = name
        self.config = config
        self._bind, self._seeds, self._advertise = bind, tuple(seeds), advertise
        self._tcp_port, self._role = tcp_port, role
        self._key = cluster_key
        self._clock = clock
        self._rng = rng or random.Random()
        self._core: SwimCore | None = None
        self._codec: Codec | None = None
        self._pending: dict[str, Any] = {}  # writes made before start
        #: This node's own keys, published again by a restart of the node.
        self._own: dict[str, Any] = {}
        #: The timestamp of this node's latest write of each of its keys.
        self._stamps: dict[str, float] = {}
        self._stopping = False
        self._last_boot = 0
        #: Resolved UDP addresses of members that advertise a host name.
        self._resolved: dict[str, tuple[str, int]] = {}
        #: Tasks of async callbacks and of sends, outside the timers' task group (a
        #: callback may stop the node, which must not wait for that callback).
        self._side_tasks: set[asyncio.Task[Any]] = set()
        #: Server-side TCP connections being read (closed by stop()).
        self._readers: set[asyncio.StreamWriter] = set()
        self._counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self.hooks = Hooks(name, self._counters)
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._runner: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP on ``bind`` and TCP on ``tcp_port`` (by default the same port; port
        0: any free port, the same for both), start the timers, fire ``start`` and say
        hello to the seeds.

        Raises:
            OSError: an address cannot be bound.
        """
        self._wake = asyncio.Event()
        self._stopping = False
        host, port = parse_address(self._bind)
        self._udp, self._server, actual, actual_tcp = await bind(
            host,
            port,
            lambda data, source: self._received(data, "udp", source),
            self._on_connection,
            self._tcp_port,
        )
        # Microseconds of wall clock, never repeating within this process (a restarted
        # node must have a later generation than its previous run).
        boot = self._last_boot = max(time.time_ns() // 1000, self._last_boot + 1)
        address = self._advertise or f"{host}:{actual}"
        # Advertised: the TCP port bound, when it differs from the UDP one (0: the same).
        own_tcp = 0 if self._tcp_port is None else actual_tcp
        tcp = tcp_address(address, own_tcp)
        seeds = [s for s in self._seeds if s not in (address, tcp)]
        role = self._role or (PEER if seeds else SEED)
        self._codec = Codec(
            self._key,
            boot,
            max_udp_bytes=self.config.max_udp_bytes,
            max_tcp_bytes=self.config.max_tcp_bytes,
        )
        core = SwimCore(
            self.name,
            address,
            rng=self._rng,
            now=self._clock(),
            generation=boot,
            config=self.config,
            tcp_port=own_tcp,
            role=role,
        )
        self._core = core
        for key, value in {**self._own, **self._pending}.items():  # stamped when written
            core.set_key(key, value) if value is not _DELETED else core.delete_key(key)
        self._pending.clear()
        if self._key is None:
            log.warning(
                "gossip node %s has no cluster key: packets are not authenticated", self.name
            )
        ready = asyncio.Event()
        self._runner = asyncio.create_task(self._run(ready), name=f"gossip-{self.name}")
        await ready.wait()
        started = StartEvent(
            self.name,
            address,
            core.tcp_address,
            actual,
            actual_tcp,
            role,
            self.config.gossip_every,
            self.config.probe_interval,
            tuple(seeds),
        )
        self._hook("start", started)
        self._send(core.join(self._seeds, self._clock()))
        log.info(
            "gossip node %s (%s) at %s (TCP %s), seeds %s",
            self.name,
            role,
            address,
            core.tcp_address,
            seeds,
        )

    async def stop(self) -> None:
        """Stop at once, without a goodbye (the others will find this node dead); fires
        ``shutdown`` first if it was running. Safe to await from one of the node's own
        async callbacks."""
        await self._halt(graceful=False)

    async def _halt(self, graceful: bool) -> None:
        await self._fire_shutdown(graceful)
        current = asyncio.current_task()
        for task in list(self._side_tasks):
            if task is not current:
                task.cancel()
        try:
            if self._runner is not None:
                runner, self._runner = self._runner, None
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
        finally:
            if self._udp is not None:
                self._udp.close()
                self._udp = None
            if self._server is not None:
                server, self._server = self._server, None
                server.close()
                for writer in list(self._readers):  # wait_closed waits for them (3.12+)
                    writer.close()
                await server.wait_closed()
            self._stopping = False

    async def _fire_shutdown(self, graceful: bool) -> None:
        """Fire ``shutdown`` once per run, awaiting what its callbacks return before the
        node's tasks are cancelled (a callback that stops the node again is a no-op)."""
        core = self._core
        if core is None or self._runner is None or self._stopping:
            return
        self._stopping = True
        pending: list[Any] = []
        self.hooks.fire(
            "shutdown", ShutdownEvent(self.name, core.address, graceful), spawn=pending.append
        )
        for awaitable in pending:
            await self.hooks.guard(awaitable)

    async def leave(self, timeout: float = 2.0) -> None:
        """Say ``Goodbye`` to every live member (they mark this node ``left`` at once),
        wait up to ``timeout`` seconds for the messages to go out, then stop (firing
        ``shutdown`` with ``graceful=True``)."""
        if self._core is not None and self._runner is not None and not self._stopping:
            out = self._core.leave(self._clock())
            sends = [self._send_tcp(o.address, self._seal(o)) for o in out]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*sends)
        await self._halt(graceful=True)

    async def _run(self, ready: asyncio.Event) -> None:
        ready.set()
        await self._timers()

    def _own_task(self, coro: Any) -> None:
        """Run ``coro`` as a task this node owns (cancelled by stop())."""
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _timers(self) -> None:
        core = self._core
        assert core is not None
        while True:
            try:
                now = self._clock()
                self._send(core.tick(now))
                self._dispatch()
                due = min(core.next_deadline(), self.hooks.run_due(now, self._spawn))
            except Exception:  # a bug must not end failure detection silently
                self._counters["timer_errors"] += 1
                log.exception("gossip %s: timer round failed", self.name)
                due = self._clock() + self.config.gossip_every
            self._wake.clear()
            wait = due - self._clock()
            if wait == float("inf"):
                await self._wake.wait()  # nothing scheduled (leaving): until woken
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wait)):
                    await self._wake.wait()

    # -- packets ---------------------------------------------------------------------

    def _received(self, data: bytes, channel: str, source: str) -> None:
        core, codec = self._core, self._codec
        if core is None or codec is None:
            return
        self._counters[f"packets_in_{channel}"] += 1
        self._counters["bytes_in"] += len(data)
        try:
            packet = codec.open(data, "udp" if channel == "udp" else "tcp")
        except WireError as exc:
            self._counters[f"dropped_{exc.reason}"] += 1
            log.debug("gossip %s dropped a packet from %s: %s", self.name, source, exc)
            return
        self._send(core.step(packet, source, self._clock()))
        self._dispatch()
        self._wake.set()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        source = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._readers.add(writer)
        try:
            failed = await read_frames(
                reader,
                self.config.max_tcp_bytes,
                lambda data: self._received(data, "tcp", source),
            )
            if failed:
                self._counters[f"dropped_{failed}"] += 1
        finally:
            self._readers.discard(writer)
            await close_writer(writer)

    def _seal(self, out: Outgoing) -> bytes | None:
        assert self._codec is not None
        try:
            return self._codec.seal(out.packet, out.channel)
        except WireError as exc:
            self._counters["send_errors"] += 1
            log.warning("gossip %s cannot send to %s: %s", self.name, out.address, exc)
            return None

    def _send(self, outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            data = self._seal(out)
            if data is None:
                continue
            if out.channel == "udp":
                rumors = isinstance(out.packet.body, Rumors)
                if rumors:
                    host, port = parse_address(out.address)
                    self._hook("before_gossip", host, port, len(data))
                self._send_udp(out.address, data)
                if rumors:
                    self._hook("after_gossip", host, port)
            elif self._runner is not None:
                self._own_task(self._send_tcp(out.address, data))

    def _send_udp(self, address: str, data: bytes) -> None:
        target = self._resolved.get(address)
        if target is None:
            try:
                host, port = parse_address(address)
                target = (str(ipaddress.ip_address(host)), port)
            except ValueError:
                # A host name: resolved in a task (never a blocking DNS lookup on the
                # loop), and anything unusable fails this send only.
                if self._runner is not None:
                    self._own_task(self._resolve_and_send(address, data))
                return
        self._sendto(address, target, data)

    def _sendto(self, address: str, target: tuple[str, int], data: bytes) -> None:
        udp = self._udp
        if udp is None or udp.is_closing():
            return
        try:
            udp.sendto(data, target)
        except Exception as exc:
            self._counters["send_errors"] += 1
            log.debug("gossip %s: UDP to %s failed: %s", self.name, address, exc)
            return
        self._counters["packets_out_udp"] += 1
        self._counters["bytes_out"] += len(data)

    async def _resolve_and_send(self, address: str, data: bytes) -> None:
        try:
            host, port = parse_address(address)
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            target = (str(infos[0][4][0]), int(infos[0][4][1]))
        except (OSError, ValueError, UnicodeError, IndexError) as exc:
            self._counters["send_errors"] += 1
            log.debug("gossip %s: cannot resolve %s: %s", self.name, address, exc)
            return
        if len(self._resolved) > 4096:
            self._resolved.clear()
        self._resolved[address] = target
        self._sendto(address, target, data)

    async def _send_tcp(self, address: str, data: bytes | None) -> None:
        if data is None:
            return
        try:
            await send_frame(address, data, max(1.0, self.config.probe_interval * 5))
        except (OSError, ValueError, UnicodeError, TimeoutError) as exc:
            self._counters["send_errors"] += 1
            log.debug("gossip %s: TCP to %s failed: %s", self.name, address, exc)
            return
        self._counters["packets_out_tcp"] += 1
        self._counters["bytes_out"] += len(data)

    # -- callbacks -------------------------------------------------------------------

    def _dispatch(self) -> None:
        assert self._core is not None
        for event in self._core.pop_events():
            if isinstance(event, SyncEvent):
                self._hook("after_sync", event)
            else:
                self._hook(event.kind, event)

    def _hook(self, name: str, *args: Any) -> None:
        self.hooks.fire(name, *args, spawn=self._spawn)

    def _spawn(self, awaitable: Any) -> None:
        if self._runner is not None:
            self._own_task(self.hooks.guard(awaitable))

    def on(self, event: str, fn: Callback) -> None:
        """Call ``fn(event_object)`` on each ``event`` (see :data:`EVENTS`).

        Raises:
            InvalidArgumentError: an unknown event name.
        """
        self.hooks.on(event, fn)

    def before(self, event: str, fn: Callback) -> None:
        """Call ``fn(host, port, size)`` before each gossip packet is sent to the member
        at ``host``:``port`` (UDP), ``size`` its bytes, as Pokan's ``before(:gossip)``
        (``event`` must be ``"gossip"``).

        Raises:
            InvalidArgumentError: another event name.
        """
        self.hooks.before(event, fn)

    def after(self, event: str, fn: Callback) -> None:
        """Call ``fn(host, port)`` after each gossip packet (``"gossip"``), or
        ``fn(SyncEvent)`` after each push-pull completes (``"sync"``).

        Raises:
            InvalidArgumentError: another event name.
        """
        self.hooks.after(event, fn)

    def every(self, seconds: float, fn: Callback) -> None:
        """Call ``fn()`` every ``seconds`` while the node runs.

        Raises:
            InvalidArgumentError: ``seconds`` <= 0.
        """
        self.hooks.every(seconds, fn, self._clock())
        self._wake.set()

    # -- metadata and views ----------------------------------------------------------

    def set(self, key: str, value: Any, timestamp: Timestamp | None = None) -> bool:
        """Publish ``key = value`` (any JSON value) as this node's metadata, as Pokan's
        ``store(key, value, timestamp = Time.now)``: the newer timestamp wins.

        A write with a ``timestamp`` (epoch seconds, or a ``datetime``) older than that
        of this node's latest write of ``key`` is ignored (False, counted as
        ``stale_writes``); an equal or newer one is applied (between equal timestamps
        the later call wins). Without one, the write is applied and stamped with the
        wall clock, or with the key's timestamp if that is later (a clock stepped back
        never loses a write). Every member converges on the write applied last: each
        applied write takes this node's next version number, and the other members
        order a node's keys by those versions, never by clocks.

        Raises:
            TypeError: ``value`` is not JSON that travels safely: something orjson cannot
                encode, integers beyond +-(2**53 - 1), or nesting deeper than
                :data:`~kilndb.cluster.wire.MAX_VALUE_DEPTH`.
            InvalidArgumentError: a timestamp that is not a finite number.
        """
        check_value(value)
        if not self._stamp(key, timestamp):
            return False
        self._own[key] = value
        if self._core is None:
            self._pending[key] = value
        else:
            self._core.set_key(key, value)
            self._dispatch()
        return True

    def delete(self, key: str, timestamp: Timestamp | None = None) -> bool:
        """Delete one of this node's keys (the deletion replicates as a tombstone); the
        ``timestamp`` orders it against the key's writes as in :meth:`set`.

        Raises:
            InvalidArgumentError: a timestamp that is not a finite number.
        """
        if not self._stamp(key, timestamp):
            return False
        self._own.pop(key, None)
        if self._core is None:
            self._pending[key] = _DELETED
        else:
            self._core.delete_key(key)
            self._dispatch()
        return True

    def store(self, key: str, value: Any, timestamp: Timestamp | None = None) -> bool:
        """Pokan's name for :meth:`set`."""
        return self.set(key, value, timestamp)

    def timestamp(self, key: str) -> float | None:
        """The timestamp of this node's latest applied write (or delete) of ``key``, or
        None if it never wrote it."""
        return self._stamps.get(key)

    def _stamp(self, key: str, timestamp: Timestamp | None) -> bool:
        """Record the timestamp of a write of ``key``; False if it is older than the
        key's (the write is then ignored)."""
        known = self._stamps.get(key)
        if timestamp is None:
            now = time.time()
            self._stamps[key] = now if known is None else max(now, known)
            return True
        if isinstance(timestamp, datetime.datetime):
            timestamp = timestamp.timestamp()
        if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
            raise InvalidArgumentError(f"a timestamp is epoch seconds, not {timestamp!r}")
        if not math.isfinite(timestamp):
            raise InvalidArgumentError(f"a timestamp must be finite, not {timestamp!r}")
        if known is not None and timestamp < known:
            self._counters["stale_writes"] += 1
            return False
        self._stamps[key] = float(timestamp)
        return True

    def gossip_every(self, seconds: float) -> None:
        """Gossip every ``seconds`` (Pokan's ``gossip_every``; :class:`ClusterConfig`'s
        ``gossip_interval``), from the next round on if the node is running.

        Raises:
            InvalidArgumentError: ``seconds`` is not a number > 0.
        """
        self.config = dataclasses.replace(self.config, gossip_interval=seconds)
        if self._core is not None:
            self._core.reconfigure(self.config, self._clock())
        self._wake.set()

    @property
    def gossip_interval(self) -> float:
        """Seconds between two gossip rounds."""
        return self.config.gossip_every

    def get(self, key: str, default: Any = None, *, node: str | None = None) -> Any:
        """``node``'s (default: this node's) value of ``key``, or ``default``."""
        return self.items(node).get(key, default)

    def items(self, node: str | None = None) -> dict[str, Any]:
        """``node``'s (default: this node's) live keys and values."""
        if self._core is None:
            mine = {k: v for k, v in self._pending.items() if v is not _DELETED}
            return mine if node in (None, self.name) else {}
        return self._core.metadata.items(node or self.name)

    def find(self, key: str) -> dict[str, Any]:
        """``node → value`` for every node that publishes ``key``."""
        if self._core is None:
            return {self.name: self._pending[key]} if key in self.items() else {}
        return {
            owner: value
            for owner in self._core.metadata.owners()
            if (value := self._core.metadata.get(owner, key, _DELETED)) is not _DELETED
        }

    def members(self, role: str | None = None) -> list[Member]:
        """Every member known, this node included, with its state and metadata; only
        those of ``role`` (``"seed"`` or ``"peer"``) if given.

        Raises:
            InvalidArgumentError: an unknown role.
        """
        if role is not None and role not in ROLES:
            raise InvalidArgumentError(f"role must be one of {list(ROLES)}, not {role!r}")
        found = [] if self._core is None else self._core.members()
        return found if role is None else [m for m in found if m.role == role]

    def member(self, name: str) -> Member | None:
        """One member by name, or None."""
        return None if self._core is None else self._core.member(name)

    @property
    def incarnation(self) -> int:
        """This node's incarnation (raised each time it refutes a suspicion)."""
        return 0 if self._core is None else self._core.incarnation

    @property
    def address(self) -> str | None:
        """The advertised UDP ``host:port`` (None before start)."""
        return None if self._core is None else self._core.address

    @property
    def tcp_address(self) -> str | None:
        """The advertised TCP ``host:port``, which others join through (None before
        start)."""
        return None if self._core is None else self._core.tcp_address

    @property
    def role(self) -> str | None:
        """``"seed"`` or ``"peer"`` (None before start, unless it was given)."""
        return self._role if self._core is None else self._core.role

    def counters(self) -> dict[str, int]:
        """Packets in/out, drops by reason, probes, suspicions, push-pulls…"""
        merged = Counter(self._counters)
        if self._core is not None:
            merged.update(self._core.counters)
        return dict(sorted(merged.items()))

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot: this node, its members and counters (``/v1/cluster``)."""
        core = self._core
        return {
            "name": self.name,
            "address": self.address,
            "tcp_address": self.tcp_address,
            "role": self.role,
            "running": self._runner is not None,
            "incarnation": self.incarnation,
            "authenticated": self._key is not None,
            "live_members": 1 if core is None else core.live_count(),
            "config": {
                "probe_interval": self.config.probe_interval,
                "gossip_interval": self.config.gossip_every,
                "suspicion_mult": self.config.suspicion_mult,
                "push_pull_interval": self.config.push_pull_every,
                "max_udp_bytes": self.config.max_udp_bytes,
            },
            "members": [m.to_json() for m in self.members()],
            "counters": self.counters(),
        }


_DELETED: Any = object()  # marks a pending delete

"""The asyncio gossip node: UDP and TCP sockets, timers and callbacks around the core.

:class:`AsyncGossip` runs inside the caller's event loop (``await g.start()``); the
threaded :class:`~kilndb.cluster.threaded.Gossip` runs one in a thread of its own.
One port number serves both channels: UDP for probes, acks and gossip rounds, TCP for
join (``Hello``), push-pull and ``Goodbye``. Every TCP message is its own connection
carrying one frame ``[u32 big-endian length][packet]``.

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
import inspect
import logging
import random
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from kilndb.cluster.config import ClusterConfig
from kilndb.cluster.core import SwimCore
from kilndb.cluster.messages import Member, Outgoing, Rumors, SyncEvent, parse_address
from kilndb.cluster.wire import REASONS, Codec, WireError, check_value
from kilndb.errors import InvalidArgumentError

__all__ = ["EVENTS", "AsyncGossip", "Callback"]

log = logging.getLogger("kilndb.cluster")

#: Names accepted by :meth:`AsyncGossip.on`.
EVENTS = frozenset(
    {
        "new_key",
        "key_changed",
        "key_removed",
        "member_joined",
        "member_alive",
        "member_suspect",
        "member_dead",
        "member_left",
    }
)
Callback = Callable[..., Any]
_FRAME = struct.Struct(">I")
_COUNTERS = (
    "packets_in_udp",
    "packets_in_tcp",
    "packets_out_udp",
    "packets_out_tcp",
    "bytes_in",
    "bytes_out",
    "send_errors",
    "callback_errors",
    "probes",
    "indirect_probes",
    "probe_failures",
    "suspicions",
    "declared_dead",
    "refutations",
    "gossip_rounds",
    "push_pulls",
    *(f"dropped_{reason}" for reason in REASONS),
)


class AsyncGossip:
    """A gossip node in the running event loop (Pokan's server API, asyncio flavour).

    Metadata keys belong to the node that sets them: ``set``/``delete`` write this
    node's keys; ``get``/``items`` read this node's unless ``node=`` names another.
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
    ) -> None:
        """Raises:
        InvalidArgumentError: an empty name, or ``bind``/``advertise``/a seed that is
            not ``host:port``, or a bad configuration."""
        if not name:
            raise InvalidArgumentError("a gossip node needs a name")
        try:
            for address in (bind, *seeds, *([advertise] if advertise else [])):
                parse_address(address)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from exc
        config = config or ClusterConfig()
        if probe_interval is not None:
            config = dataclasses.replace(config, probe_interval=probe_interval)
        self.name = name
        self.config = config
        self._bind, self._seeds, self._advertise = bind, tuple(seeds), advertise
        self._key = cluster_key
        self._clock = clock
        self._rng = rng or random.Random()
        self._core: SwimCore | None = None
        self._codec: Codec | None = None
        self._pending: dict[str, Any] = {}  # writes made before start
        self._hooks: dict[str, list[Callback]] = {}
        self._periodics: list[list[Any]] = []  # [due, seconds, fn]
        self._counters: Counter[str] = Counter(dict.fromkeys(_COUNTERS, 0))
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._wake = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP and TCP on ``bind`` (port 0: any free port, the same for both), start
        the timers and say hello to the seeds.

        Raises:
            OSError: the address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        host, port = parse_address(self._bind)
        for _ in range(20):
            udp, _proto = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), local_addr=(host, port)
            )
            actual = udp.get_extra_info("sockname")[1]
            try:
                self._server = await asyncio.start_server(self._on_connection, host, actual)
            except OSError:
                udp.close()
                if port:
                    raise
                continue
            self._udp = udp
            break
        else:
            raise OSError(f"no port free for both UDP and TCP on {host}")
        boot = time.time_ns() // 1000
        address = self._advertise or f"{host}:{actual}"
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
        )
        self._core = core
        for key, value in self._pending.items():
            core.set_key(key, value) if value is not _DELETED else core.delete_key(key)
        self._pending.clear()
        if self._key is None:
            log.warning(
                "gossip node %s has no cluster key: packets are not authenticated", self.name
            )
        ready = asyncio.Event()
        self._runner = asyncio.create_task(self._run(ready), name=f"gossip-{self.name}")
        await ready.wait()
        self._send(core.join(self._seeds, self._clock()))
        log.info("gossip node %s at %s, seeds %s", self.name, address, list(self._seeds))

    async def stop(self) -> None:
        """Stop at once, without a goodbye (the others will find this node dead)."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def leave(self, timeout: float = 2.0) -> None:
        """Say ``Goodbye`` to every live member (they mark this node ``left`` at once),
        wait up to ``timeout`` seconds for the messages to go out, then stop."""
        if self._core is not None and self._runner is not None:
            out = self._core.leave(self._clock())
            sends = [self._send_tcp(o.address, self._seal(o)) for o in out]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*sends)
        await self.stop()

    async def _run(self, ready: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            ready.set()
            try:
                await self._timers()
            finally:
                self._tasks = None

    async def _timers(self) -> None:
        core = self._core
        assert core is not None
        while True:
            now = self._clock()
            if core.gossip_due(now):
                self._hook("before_gossip")
            self._send(core.tick(now))
            self._dispatch()
            due = core.next_deadline()
            for periodic in self._periodics:
                if now >= periodic[0]:
                    periodic[0] = now + periodic[1]
                    self._call(periodic[2])
                due = min(due, periodic[0])
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - self._clock())):
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
        try:
            async with asyncio.timeout(10):
                while head := await reader.read(_FRAME.size):
                    if len(head) < _FRAME.size:
                        head += await reader.readexactly(_FRAME.size - len(head))
                    (length,) = _FRAME.unpack(head)
                    if length > self.config.max_tcp_bytes:
                        self._counters["dropped_oversize"] += 1
                        break
                    self._received(await reader.readexactly(length), "tcp", source)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            self._counters["dropped_malformed"] += 1
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

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
                self._send_udp(out.address, data)
                if isinstance(out.packet.body, Rumors):
                    self._hook("after_gossip", out.address)
            elif self._tasks is not None:
                self._tasks.create_task(self._send_tcp(out.address, data))

    def _send_udp(self, address: str, data: bytes) -> None:
        if self._udp is None:
            return
        try:
            self._udp.sendto(data, parse_address(address))
        except (OSError, ValueError) as exc:
            self._counters["send_errors"] += 1
            log.debug("gossip %s: UDP to %s failed: %s", self.name, address, exc)
            return
        self._counters["packets_out_udp"] += 1
        self._counters["bytes_out"] += len(data)

    async def _send_tcp(self, address: str, data: bytes | None) -> None:
        if data is None:
            return
        try:
            host, port = parse_address(address)
            async with asyncio.timeout(max(1.0, self.config.probe_interval * 5)):
                _, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(_FRAME.pack(len(data)) + data)
                    await writer.drain()
                finally:
                    writer.close()
                    with contextlib.suppress(ConnectionError):
                        await writer.wait_closed()
        except (OSError, ValueError, TimeoutError) as exc:
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
        for fn in self._hooks.get(name, ()):
            self._call(fn, *args)

    def _call(self, fn: Callback, *args: Any) -> None:
        try:
            result = fn(*args)
            if inspect.isawaitable(result) and self._tasks is not None:
                self._tasks.create_task(self._guard(result))
        except Exception:
            self._counters["callback_errors"] += 1
            log.exception("gossip %s: callback %r failed", self.name, fn)

    async def _guard(self, awaitable: Any) -> None:
        try:
            await awaitable
        except Exception:
            self._counters["callback_errors"] += 1
            log.exception("gossip %s: async callback failed", self.name)

    def on(self, event: str, fn: Callback) -> None:
        """Call ``fn(event_object)`` on each ``event`` (see :data:`EVENTS`): a
        :class:`KeyEvent` for key events, a :class:`MemberEvent` for member ones.

        Raises:
            InvalidArgumentError: an unknown event name.
        """
        if event not in EVENTS:
            raise InvalidArgumentError(f"unknown event {event!r}; one of {sorted(EVENTS)}")
        self._hooks.setdefault(event, []).append(fn)

    def before(self, event: str, fn: Callback) -> None:
        """Call ``fn()`` before each gossip round (``event`` must be ``"gossip"``).

        Raises:
            InvalidArgumentError: another event name.
        """
        if event != "gossip":
            raise InvalidArgumentError("before() supports only 'gossip'")
        self._hooks.setdefault("before_gossip", []).append(fn)

    def after(self, event: str, fn: Callback) -> None:
        """Call ``fn(address)`` after each gossip packet (``"gossip"``), or
        ``fn(SyncEvent)`` after each push-pull completes (``"sync"``).

        Raises:
            InvalidArgumentError: another event name.
        """
        if event not in ("gossip", "sync"):
            raise InvalidArgumentError("after() supports 'gossip' and 'sync'")
        self._hooks.setdefault(f"after_{event}", []).append(fn)

    def every(self, seconds: float, fn: Callback) -> None:
        """Call ``fn()`` every ``seconds`` while the node runs.

        Raises:
            InvalidArgumentError: ``seconds`` <= 0.
        """
        if seconds <= 0:
            raise InvalidArgumentError("every() needs seconds > 0")
        self._periodics.append([self._clock() + seconds, seconds, fn])
        self._wake.set()

    # -- metadata and views ----------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        """Publish ``key = value`` (any JSON value) as this node's metadata.

        Raises:
            TypeError: ``value`` is not JSON that orjson can encode.
        """
        check_value(value)
        if self._core is None:
            self._pending[key] = value
        else:
            self._core.set_key(key, value)
            self._dispatch()

    def delete(self, key: str) -> None:
        """Delete one of this node's keys (the deletion replicates as a tombstone)."""
        if self._core is None:
            self._pending[key] = _DELETED
        else:
            self._core.delete_key(key)
            self._dispatch()

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

    def members(self) -> list[Member]:
        """Every member known, this node included, with its state and metadata."""
        return [] if self._core is None else self._core.members()

    def member(self, name: str) -> Member | None:
        """One member by name, or None."""
        return None if self._core is None else self._core.member(name)

    @property
    def address(self) -> str | None:
        """The advertised ``host:port`` (None before start)."""
        return None if self._core is None else self._core.address

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
            "running": self._runner is not None,
            "incarnation": 0 if core is None else core.incarnation,
            "authenticated": self._key is not None,
            "live_members": 1 if core is None else core.live_count(),
            "config": {
                "probe_interval": self.config.probe_interval,
                "suspicion_mult": self.config.suspicion_mult,
                "push_pull_interval": self.config.push_pull_every,
                "max_udp_bytes": self.config.max_udp_bytes,
            },
            "members": [m.to_json() for m in self.members()],
            "counters": self.counters(),
        }


class _Deleted:
    def __repr__(self) -> str:
        return "<deleted>"


_DELETED: Any = _Deleted()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, node: AsyncGossip) -> None:
        self._node = node

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._node._received(data, "udp", f"{addr[0]}:{addr[1]}")

    def error_received(self, exc: Exception) -> None:
        log.debug("gossip %s: UDP error %s", self._node.name, exc)

"""The blocking gossip node: an :class:`AsyncGossip` in a thread with its own loop.

For scripts and programs without an event loop, in Pokan's style::

    g = Gossip(name="n1", bind="127.0.0.1:7946", seeds=["10.0.0.2:7946"])
    g.on("new_key", lambda e: print(e.node, e.key, e.value))
    g.start()
    g.set("role", "leader")
    ...
    g.leave()            # or g.stop() to vanish without a goodbye

Every call is forwarded to the loop's thread and waits for its result, so the node's
state is only ever touched by one thread. Callbacks run in the gossip thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from kilndb.cluster.config import ClusterConfig
from kilndb.cluster.gossip import AsyncGossip, Timestamp
from kilndb.cluster.hooks import Callback
from kilndb.cluster.messages import Member
from kilndb.errors import ClosedError

__all__ = ["Gossip"]

T = TypeVar("T")


class Gossip:
    """A gossip node running in a background thread; the same methods as
    :class:`AsyncGossip`, all blocking."""

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
        timeout: float = 10.0,
        tcp_port: int | None = None,
        role: str | None = None,
    ) -> None:
        """Raises:
        InvalidArgumentError: as :class:`AsyncGossip`."""
        self.node = AsyncGossip(
            name,
            bind,
            seeds=seeds,
            advertise=advertise,
            cluster_key=cluster_key,
            probe_interval=probe_interval,
            config=config,
            tcp_port=tcp_port,
            role=role,
        )
        self.name = name
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Gossip:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the thread and the node; returns once it is bound and has said hello.

        Raises:
            OSError: the address cannot be bound.
            ClosedError: already started.
        """
        if self._thread is not None:
            raise ClosedError(f"gossip node {self.name} is already running")
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"gossip-{self.name}", daemon=True)
        self._thread.start()
        started.wait()
        self._loop = loop
        try:
            self._wait(self.node.start())
        except BaseException:
            self._halt()
            raise

    def stop(self) -> None:
        """Stop without a goodbye and end the thread (no-op if not running). From one of
        the node's own callbacks it returns at once and the node stops right after."""
        self._end(self.node.stop())

    def leave(self, timeout: float = 2.0) -> None:
        """Say goodbye to every live member, then stop (no-op if not running)."""
        self._end(self.node.leave(timeout))

    def _end(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        if loop is None:
            coro.close()
            return
        if self._on_node_thread():  # a callback: the loop cannot wait for itself
            self._loop = self._thread = None

            async def end() -> None:
                await coro
                loop.stop()

            loop.create_task(end())
            return
        try:
            self._wait(coro)
        finally:
            self._halt()

    def _on_node_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def _halt(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(self.timeout)

    def _wait(self, coro: Awaitable[T]) -> T:
        assert self._loop is not None

        async def run() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(self.timeout)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._loop is None or self._on_node_thread():  # not running, or a callback
            return fn(*args, **kwargs)

        async def run() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(self.timeout)

    # -- the AsyncGossip surface, blocking -------------------------------------------

    def set(self, key: str, value: Any, timestamp: Timestamp | None = None) -> bool:
        """See :meth:`AsyncGossip.set`: False if ``timestamp`` is older than the key's
        (raises TypeError if not JSON, InvalidArgumentError for a bad timestamp)."""
        return self._call(self.node.set, key, value, timestamp)

    def store(self, key: str, value: Any, timestamp: Timestamp | None = None) -> bool:
        """Pokan's name for :meth:`set`."""
        return self.set(key, value, timestamp)

    def delete(self, key: str, timestamp: Timestamp | None = None) -> bool:
        """Delete one of this node's keys (see :meth:`AsyncGossip.delete`)."""
        return self._call(self.node.delete, key, timestamp)

    def timestamp(self, key: str) -> float | None:
        """See :meth:`AsyncGossip.timestamp`."""
        return self._call(self.node.timestamp, key)

    def gossip_every(self, seconds: float) -> None:
        """See :meth:`AsyncGossip.gossip_every` (raises InvalidArgumentError)."""
        self._call(self.node.gossip_every, seconds)

    @property
    def gossip_interval(self) -> float:
        """Seconds between two gossip rounds."""
        return self._call(lambda: self.node.gossip_interval)

    def get(self, key: str, default: Any = None, *, node: str | None = None) -> Any:
        """``node``'s (default: this node's) value of ``key``, or ``default``."""
        return self._call(self.node.get, key, default, node=node)

    def items(self, node: str | None = None) -> dict[str, Any]:
        """``node``'s (default: this node's) keys and values."""
        return self._call(self.node.items, node)

    def find(self, key: str) -> dict[str, Any]:
        """``node → value`` for every node that publishes ``key``."""
        return self._call(self.node.find, key)

    def members(self, role: str | None = None) -> list[Member]:
        """Every member known, this node included; only those of ``role`` if given
        (raises InvalidArgumentError for an unknown role)."""
        return self._call(self.node.members, role)

    def member(self, name: str) -> Member | None:
        """One member by name, or None."""
        return self._call(self.node.member, name)

    def on(self, event: str, fn: Callback) -> None:
        """See :meth:`AsyncGossip.on` (raises InvalidArgumentError)."""
        self._call(self.node.on, event, fn)

    def before(self, event: str, fn: Callback) -> None:
        """See :meth:`AsyncGossip.before` (raises InvalidArgumentError)."""
        self._call(self.node.before, event, fn)

    def after(self, event: str, fn: Callback) -> None:
        """See :meth:`AsyncGossip.after` (raises InvalidArgumentError)."""
        self._call(self.node.after, event, fn)

    def every(self, seconds: float, fn: Callback) -> None:
        """See :meth:`AsyncGossip.every` (raises InvalidArgumentError)."""
        self._call(self.node.every, seconds, fn)

    @property
    def address(self) -> str | None:
        """The advertised UDP ``host:port`` (None before start)."""
        return self._call(lambda: self.node.address)

    @property
    def tcp_address(self) -> str | None:
        """The advertised TCP ``host:port``, which others join through."""
        return self._call(lambda: self.node.tcp_address)

    @property
    def role(self) -> str | None:
        """``"seed"`` or ``"peer"``."""
        return self._call(lambda: self.node.role)

    def counters(self) -> dict[str, int]:
        """See :meth:`AsyncGossip.counters`."""
        return self._call(self.node.counters)

    def status(self) -> dict[str, Any]:
        """See :meth:`AsyncGossip.status`."""
        return self._call(self.node.status)

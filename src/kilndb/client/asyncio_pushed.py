"""A stream of messages a server pushes on a connection of its own, for asyncio code.

The twin of :mod:`kilndb.client.pushed` (same feeds, same reconnect rules), read by one
task that the stream owns and cancels on close. A stream is opened by awaiting it
(``sub = await db.subscribe(...)``) or entering it (``async with db.subscribe(...) as
sub``); a server error at that point (a cursor compacted away, say) is raised there.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, Generic, Self, TypeVar

from kilndb.client.asyncio_link import next_body
from kilndb.client.core import Request, message_of, reply_of
from kilndb.client.endpoint import Endpoint
from kilndb.client.feeds import FactFeed, Feed, StatusFeed
from kilndb.client.pushed import stream_hosts, unreached
from kilndb.codec import DEFAULT_MAX_FRAME_BYTES, FrameDecoder
from kilndb.engine.changefeed import CallbackHandle
from kilndb.errors import (
    ConnectionLostError,
    InvalidArgumentError,
    KilnError,
    UnavailableError,
    error_from_wire,
)
from kilndb.model import Fact

__all__ = [
    "AsyncCallbackSubscription",
    "AsyncPushedStream",
    "AsyncRemoteSubscription",
    "AsyncStatusSubscription",
]

T = TypeVar("T")


class AsyncPushedStream(Generic[T]):
    """Messages a server pushes on a connection of their own, read by a task.

    If the connection breaks, the stream reconnects by itself (backoff from
    ``RECONNECT_MIN`` to ``RECONNECT_MAX`` seconds) and subscribes again with what its
    feed asks for then. A server error ends it; iteration then stops and :attr:`error`
    says why.
    """

    RECONNECT_MIN = 0.05
    RECONNECT_MAX = 5.0

    def __init__(
        self, feed: Feed[T], endpoint: Endpoint, database: str, timeout: float | None
    ) -> None:
        self._feed = feed
        self.endpoint = endpoint
        self.url = endpoint.url
        self._database = database
        self._timeout = timeout
        self._buffer: deque[T] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._closed = False
        self.error: KilnError | None = None
        #: How many times the stream had to reconnect.
        self.reconnects = 0
        self._hosts = stream_hosts(endpoint, database)

    async def _connect(self) -> tuple[asyncio.StreamReader, FrameDecoder]:
        """Connect, say hello and subscribe: one round over the hosts."""
        hosts = self._hosts
        hosts.begin()
        while (url := hosts.next()) is not None:
            try:
                connected = await self._subscribe_at(url)
            except (ConnectionLostError, UnavailableError) as exc:
                hosts.failed(url, exc)
                continue
            if connected is not None:
                self.url = url
                return connected
        raise unreached(hosts)

    async def _subscribe_at(self, url: str) -> tuple[asyncio.StreamReader, FrameDecoder] | None:
        """Subscribe on server ``url``; None if its hello says it will not do."""
        endpoint = self.endpoint.at(url)
        reader, writer = await endpoint.open_stream(self._timeout)
        decoder = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)

        async def ask(message: dict[str, Any]) -> dict[str, Any]:
            writer.write(Request.make(message.pop("op"), message, dict).frame)
            return reply_of(await asyncio.wait_for(next_body(reader, decoder), self._timeout))

        try:
            if not self._hosts.answered(url, await ask(endpoint.hello(self._database))):
                writer.close()
                return None
            self._feed.subscribed(await ask(self._feed.request()))
        except TimeoutError as exc:
            writer.close()
            raise ConnectionLostError(f"no reply from {url} within {self._timeout}") from exc
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        return reader, decoder

    async def start(self) -> Self:
        """Connect and subscribe, unless done already; raises what the server refuses."""
        if self._task is None and not self._closed:
            reader, decoder = await self._connect()
            self._task = asyncio.get_running_loop().create_task(self._run(reader, decoder))
        return self

    def __await__(self) -> Generator[Any, None, Self]:
        return self.start().__await__()

    async def _run(self, reader: asyncio.StreamReader, decoder: FrameDecoder) -> None:
        delay = self.RECONNECT_MIN
        try:
            while not self._closed:
                try:
                    await self._pump(reader, decoder)
                except ConnectionLostError:
                    if self._writer is not None:
                        self._writer.close()
                    while not self._closed:
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, self.RECONNECT_MAX)
                        try:
                            reader, decoder = await self._connect()
                        except ConnectionLostError:
                            continue
                        self.reconnects += 1
                        delay = self.RECONNECT_MIN
                        break
        except KilnError as exc:
            self.error = exc
        finally:
            self._arrived.set()

    async def _pump(self, reader: asyncio.StreamReader, decoder: FrameDecoder) -> None:
        while True:
            message = message_of(await next_body(reader, decoder))
            if "event" in message:
                item = self._feed.accept(message)
                if item is not None:
                    self._buffer.append(item)
                    self._arrived.set()
            elif message.get("ok") is False:
                raise error_from_wire(message)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def channel_id(self) -> str | None:
        """As :attr:`kilndb.client.pushed.PushedStream.channel_id`."""
        return self._feed.channel

    async def get(self, timeout: float | None = None) -> T | None:
        """The next item, or None if none arrived within ``timeout`` or it ended."""
        batch = await self.get_batch(1, timeout)
        return batch[0] if batch else None

    async def get_batch(self, limit: int = 1024, timeout: float | None = None) -> list[T]:
        """The next items, at most ``limit``: as many as are ready once one is; empty if
        none arrived within ``timeout`` seconds or the stream ended."""
        if type(limit) is not int or limit < 1:
            raise InvalidArgumentError("limit must be a positive integer")
        await self.start()
        if not self._buffer and not self._closed and self.error is None:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
        if self._closed:
            return []
        buffer = self._buffer
        batch = [buffer.popleft() for _ in range(min(limit, len(buffer)))]
        for item in batch:
            self._feed.delivered(item)
        return batch

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            item = await self.get(timeout=1.0)
            if item is not None:
                return item
            if self._closed or self.error is not None:
                raise StopAsyncIteration

    async def close(self) -> None:
        """End the stream and its connection. Idempotent."""
        self._closed = True
        self._arrived.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncRemoteSubscription(AsyncPushedStream[Fact]):
    """A changefeed on its own connection, for asyncio code: the methods of
    :class:`kilndb.client.RemoteSubscription` as coroutines (``get``, ``get_batch``,
    ``close``; ``async for``), resuming after the last fact received after a reconnect."""

    def __init__(
        self,
        endpoint: Endpoint,
        database: str,
        stores: list[str] | None,
        after: int,
        timeout: float | None,
        channel: str | None = None,
    ) -> None:
        self._facts = FactFeed(stores, after, channel)
        super().__init__(self._facts, endpoint, database, timeout)

    @property
    def position(self) -> int:
        """Position of the last fact handed out; resume from here with ``after=``."""
        return self._facts.position

    @property
    def covered(self) -> int:
        """See :meth:`kilndb.client.feeds.FactFeed.covered`."""
        return self._facts.covered(bool(self._buffer))


class AsyncStatusSubscription(AsyncPushedStream[dict[str, Any]]):
    """Segment-status messages on a connection of their own, for asyncio code (see
    :class:`kilndb.client.streams.RemoteStatusSubscription`)."""

    def __init__(
        self,
        endpoint: Endpoint,
        database: str,
        space: str,
        segment: str,
        heartbeat: float,
        timeout: float | None,
        channel: str | None = None,
    ) -> None:
        self.space = space
        self.segment = segment
        self.heartbeat = heartbeat
        feed = StatusFeed(space, segment, heartbeat, channel)
        super().__init__(feed, endpoint, database, timeout)


class AsyncCallbackSubscription(CallbackHandle):
    """A changefeed that calls ``callback(fact)`` for each fact, for asyncio code: what
    ``adb.subscribe(stores, callback=f)`` returns, to be awaited or entered like every
    stream. The callback runs in a task the handle owns, on the event loop, in position
    order: a coroutine function (or any callback returning an awaitable) is awaited
    before the next fact, a plain function is called — so it must not block the loop.

    As the blocking :class:`~kilndb.engine.changefeed.CallbackSubscription`: an
    exception the callback raises is logged (``kilndb.subscription``) and counted in
    :attr:`failures`, and the next fact follows; it reconnects as the iterator form
    does; ``await close()`` unsubscribes and waits for a running callback to return.
    """

    def __init__(
        self, subscription: AsyncRemoteSubscription, callback: Callable[[Fact], object]
    ) -> None:
        super().__init__(subscription, callback)
        self.subscription: AsyncRemoteSubscription = subscription
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def error(self) -> KilnError | None:
        """The server error that ended the subscription (None otherwise)."""
        return self.subscription.error

    @property
    def closed(self) -> bool:
        """Closed, or ended by itself (a server error)."""
        return self._closed or (self._task is not None and self._task.done())

    async def start(self) -> Self:
        """Subscribe and start calling back, unless done already; raises what the server
        refuses."""
        if self._task is None and not self._closed:
            await self.subscription.start()
            name = f"kilndb-subscriber-{self.channel_id}"
            self._task = asyncio.get_running_loop().create_task(self._run(), name=name)
        return self

    def __await__(self) -> Generator[Any, None, Self]:
        return self.start().__await__()

    async def _run(self) -> None:
        source = self.subscription
        while not self._closed:
            batch = await source.get_batch(1024, None)
            if not batch:
                if source.closed or source.error is not None:
                    return
                continue
            for fact in batch:
                if self._closed:
                    return
                try:
                    result = self.callback(fact)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self._failed(fact)

    async def close(self) -> None:
        """Unsubscribe and wait for the task to end (a callback running now returns
        first). Idempotent; a callback may call it."""
        self._closed = True
        await self.subscription.close()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

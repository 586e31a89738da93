"""An asyncio link to one database that survives its server restarting or being replaced.

A :class:`_Channel` is one pipelined connection: each request is written at once and
replies are matched to requests in order (the server answers a connection's requests
in request order), so concurrent callers share one round trip. An :class:`AsyncLink`
owns the current channel and replaces a broken one — on the
:class:`~kilndb.client.core.Reconnect` schedule, saying ``hello`` again — when a call
finds it broken; the client core decides what becomes of requests in flight
(:func:`~kilndb.client.core.lost_reply`). A failed channel is never used again. Which
server a new channel goes to is the link's :class:`~kilndb.client.hosts.Hosts`' choice,
as for the sync :class:`~kilndb.client.link.Link`.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from kilndb.client import calls
from kilndb.client.core import Attempts, Reconnect, Request, gave_up, lost_reply
from kilndb.client.endpoint import Endpoint
from kilndb.client.hosts import Hosts
from kilndb.codec import DEFAULT_MAX_FRAME_BYTES, FrameDecoder
from kilndb.errors import ConnectionLostError, KilnError, ReadOnlyReplicaError, UnavailableError

__all__ = ["AsyncLink", "next_body"]

T = TypeVar("T")


async def next_body(reader: asyncio.StreamReader, decoder: FrameDecoder) -> bytes:
    """The body of the next frame from the server; ConnectionLostError once it is gone."""
    while (body := decoder.next_frame()) is None:
        try:
            data = await reader.read(256 * 1024)
        except OSError as exc:
            raise ConnectionLostError(f"lost the connection: {exc}") from exc
        if not data:
            raise ConnectionLostError("the server closed the connection")
        decoder.feed(data)
    return body


def _hello(endpoint: Endpoint, database: str) -> Request[dict[str, Any]]:
    message = endpoint.hello(database)
    return calls.reply(message.pop("op"), **message)


class _Channel:
    """One pipelined connection: requests go out at once, replies come back in order."""

    def __init__(self, url: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.url = url
        self._reader = reader
        self._writer = writer
        self._waiting: deque[asyncio.Future[bytes]] = deque()
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)
        self._failure: KilnError | None = None
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                body = await next_body(self._reader, self._decoder)
                if self._waiting:
                    future = self._waiting.popleft()
                    if not future.done():
                        future.set_result(body)
        except KilnError as exc:
            self._fail(exc)

    def _fail(self, failure: KilnError) -> None:
        if self._failure is None:
            self._failure = failure
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(failure)
        self._writer.transport.abort()

    def idle_and_broken(self) -> bool:
        """Whether a request sent now could never be answered: the channel failed, or,
        waiting for no reply, its server closed it (or sent something unasked)."""
        if self._failure is not None:
            return True
        if self._waiting:
            return False
        sock = self._writer.get_extra_info("socket")
        try:
            readable = sock is not None and bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            readable = True
        if readable or self._decoder.buffered:
            self._fail(ConnectionLostError(f"the server at {self.url} closed the connection"))
            return True
        return False

    async def exchange(self, frame: bytes, timeout: float | None) -> bytes:
        """Send one request frame and return its reply's body. A reply that takes longer
        than ``timeout`` fails the channel (later replies could no longer be matched)."""
        if self._failure is not None:
            raise self._failure
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._writer.write(frame)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            lost = ConnectionLostError(f"no reply from {self.url} within {timeout:g} s")
            self._fail(lost)
            raise lost from exc

    async def close(self) -> None:
        if self._failure is None:
            with contextlib.suppress(KilnError):
                await self.exchange(calls.reply("close").frame, 5.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class AsyncLink:
    """A channel to ``database`` on ``endpoint`` that is replaced when it breaks.

    ``hosts`` chooses the server (default: ``endpoint.url``, whatever it says). Raises
    the server's errors as they come; ConnectionLostError once no server will do for
    the reconnect budget; WriteOutcomeUnknownError for a write that was sent but never
    answered and cannot safely be sent again.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        database: str,
        timeout: float | None,
        reconnect: Reconnect,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        hosts: Hosts | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.hosts = hosts or Hosts((endpoint.url,), database, "any")
        #: The server the link talks to now.
        self.url = self.hosts.current or self.hosts.hosts[0]
        self.database = database
        self.timeout = timeout
        self.reconnect = reconnect
        #: How many times the link connected again after losing its connection.
        self.reconnects = 0
        self._clock = clock
        self._sleep = sleep
        self._channel: _Channel | None = None
        self._replacing = asyncio.Lock()

    async def _open_channel(self, url: str) -> tuple[_Channel, dict[str, Any]]:
        endpoint = self.endpoint.at(url)
        reader, writer = await endpoint.open_stream(self.timeout)
        channel = _Channel(url, reader, writer)
        try:
            hello = _hello(endpoint, self.database)
            return channel, hello.decode(await channel.exchange(hello.frame, self.timeout))
        except BaseException:
            await channel.close()
            raise

    async def _round(self) -> tuple[_Channel, dict[str, Any]]:
        """Ask the hosts in turn until one will do (see :mod:`kilndb.client.hosts`).
        Raises the round's error if none will."""
        hosts = self.hosts
        hosts.begin()
        while (url := hosts.next()) is not None:
            try:
                channel, hello = await self._open_channel(url)
            except (ConnectionLostError, UnavailableError) as exc:
                hosts.failed(url, exc)
                continue
            if hosts.answered(url, hello):
                self.url = url
                return channel, hello
            await channel.close()
        raise hosts.unfound()

    async def open(self) -> dict[str, Any]:
        """Connect and say hello: one round over the hosts, each asked once (no
        waiting: the first connection's errors are the caller's); return the ``hello``
        reply of the server chosen."""
        self._channel, hello = await self._round()
        return hello

    async def call(self, request: Request[T]) -> T:
        """Send ``request`` and decode its reply, reconnecting as the core says; a
        link that needs the leader follows a refusal (ReadOnlyReplicaError) to it."""
        attempts = Attempts(self.reconnect, self._clock)
        while True:
            channel = self._channel
            if channel is None or channel.idle_and_broken():
                channel = await self._replace(channel, attempts.waits())
            try:
                body = await channel.exchange(request.frame, self.timeout)
            except ConnectionLostError as lost:
                error = lost_reply(request, channel.url, lost)
                if error is not None:
                    raise error from lost
                continue
            try:
                return request.decode(body)
            except ReadOnlyReplicaError as refused:
                if not await self._moved(channel, refused):
                    raise

    async def _moved(self, refusing: _Channel, refused: ReadOnlyReplicaError) -> bool:
        """``refusing``'s server refused a write as a replica: leave it if the hosts
        say the leader is to be found again (the next call looks for it). Requests
        still in flight on it get their replies before it closes."""
        async with self._replacing:
            if self._channel is not refusing:  # another caller left it already
                return self.hosts.want == "leader"
            if not self.hosts.refused(refused.leader):
                return False
            self._channel = None
        await refusing.close()
        return True

    async def _replace(self, broken: _Channel | None, waits: Iterator[float]) -> _Channel:
        async with self._replacing:
            current = self._channel
            if current is not None and current is not broken and not current.idle_and_broken():
                return current  # another caller replaced it meanwhile
            if broken is not None:
                await broken.close()
            self._channel = None
            last: KilnError | None = None
            for wait in waits:
                if wait:
                    await self._sleep(wait)
                try:
                    channel, _ = await self._round()
                except (ConnectionLostError, UnavailableError) as exc:
                    last = exc
                    continue
                self._channel = channel
                self.reconnects += 1
                return channel
            self._channel = None
            raise gave_up(self.url, self.reconnect, last)

    async def close(self) -> None:
        """Say ``close`` and end the connection (FIN). Idempotent."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

"""Pushing to subscribers without letting any of them stall the server.

Theory of operation
-------------------
A subscriber's events are made on other threads — the fan-out hub of its database
(:mod:`kilndb.server.fanout`) encodes each fact's frame once for every subscriber — or
by a task of its own (segment-status streams). They reach the subscriber through an
:class:`Outbox`: :meth:`Outbox.offer` never blocks, and the subscriber's *pusher*, an
asyncio task, takes what is there and writes it in the form its transport speaks (frames
on a socket, text messages on a WebSocket, events on an SSE stream).

Back-pressure is the same on every transport: the bytes offered and not taken yet, plus
what the transport holds unsent, may not pass ``max_subscriber_buffer``. An offer that
would take them past it — unless nothing is outstanding, so a first batch always goes —
*overflows* the outbox instead: it takes nothing more and its pusher, once it has
written what was taken before, ends the stream with ``subscriber_overflow`` and the
position the subscriber reached, from where it resumes. A subscriber that reads slowly
or not at all costs its own buffer and nothing else: never a thread, never a writer's
time, never another subscriber's events.

An idle subscriber is one pusher waiting on an :class:`asyncio.Event`: a crowd of them
holds no thread and no worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

import orjson

from kilndb.codec import FrameDecoder, encode_frame
from kilndb.engine import Database, StatusSubscription
from kilndb.errors import KilnError, SubscriberOverflowError, UnavailableError
from kilndb.server.fanout import Feed

__all__ = [
    "Outbox",
    "changefeed",
    "changefeed_start",
    "event_bodies",
    "gone_error",
    "pump_status",
    "status_frame",
    "status_messages",
]


class Outbox:
    """Bytes offered from any thread, taken by one task on ``loop``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, limit: int, held: Callable[[], int] = lambda: 0
    ) -> None:
        """``held()``: bytes the subscriber's transport holds unsent (any thread)."""
        self._loop = loop
        self._limit = limit
        self._held = held
        self._chunks: deque[bytes] = deque()
        self._pending = 0
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._ended = False
        #: Why the stream ended early (overflow, the database closed); None: it did not.
        self.error: KilnError | None = None
        #: Position of the last fact offered (changefeeds).
        self.position = 0

    def offer(self, data: bytes, position: int = 0) -> bool:
        """Queue ``data`` (events up to ``position``); False once the outbox has ended or
        overflowed: the offering side stops."""
        with self._lock:
            if self._ended:
                return False
            outstanding = self._pending + self._held()
            if outstanding and outstanding + len(data) > self._limit:
                self._ended = True
                self.error = SubscriberOverflowError(self.position)
            else:
                self._chunks.append(data)
                self._pending += len(data)
                if position:
                    self.position = position
        self._poke()
        return self.error is None

    def end(self, error: KilnError | None = None) -> None:
        """End the stream once what was offered is taken (any thread)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self.error = error
        self._poke()

    def backlog(self) -> int:
        """Bytes offered and not written out yet (any thread)."""
        with self._lock:
            return self._pending + self._held()

    @property
    def ended(self) -> bool:
        return self._ended

    def _poke(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: so is the stream
            self._loop.call_soon_threadsafe(self._wake.set)

    async def take(self, timeout: float | None = None) -> bytes | None:
        """Everything offered so far in one piece; ``b""`` if nothing came in
        ``timeout`` seconds; None once the outbox has ended and is empty."""
        while True:
            with self._lock:
                if self._chunks:
                    data = b"".join(self._chunks)
                    self._chunks.clear()
                    self._pending -= len(data)
                    return data
                if self._ended:
                    return None
                self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return b""


def changefeed_start(db: Database, stores: list[str] | None, after: int | None) -> int:
    """The position a changefeed of ``db`` starts after: ``after``, or the durable end of
    the log for a live-only one (Igniter's form). Raises CursorTooOldError or a store
    name's error, as subscribing would."""
    if after is None:
        after = int(db.stats()["durable_position"])
    db.subscribe(stores, after).close()
    return after


def changefeed(outbox: Outbox, stores: list[str] | None, after: int) -> Feed:
    """The hub feed that offers its frames to ``outbox``."""
    outbox.position = after
    chosen = None if stores is None else frozenset(stores)
    return Feed(
        chosen, after, outbox.offer, lambda feed: outbox.end(gone_error(feed.position)), outbox
    )


def gone_error(position: int) -> UnavailableError:
    """What a subscriber is told when its database closes under its changefeed."""
    return UnavailableError(
        "the database of this subscription was closed under it (removed, or its replica"
        f" copy cut back or recopied); subscribe again after position {position} once it"
        " is back"
    )


def event_bodies(decoder: FrameDecoder, data: bytes) -> list[bytes]:
    """The JSON bodies (``{"event": …, …}``) of the event frames in ``data``."""
    decoder.feed(data)
    return list(decoder.frames())


async def status_messages(
    status: StatusSubscription, executor: Executor
) -> AsyncIterator[dict[str, Any]]:
    """The messages of a segment-status stream, as a task: the first (a read of every
    segment) on the worker pool, then changes as the log announces them and heartbeats
    when nothing happens; waiting holds no thread."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    status.watch(lambda: loop.call_soon_threadsafe(wake.set))
    try:
        first = await loop.run_in_executor(executor, status.poll)
        if first is not None:
            yield first
        while not status.closed:
            wake.clear()
            message = status.poll()
            if message is not None:
                yield message
                continue
            due = status.heartbeat_due()  # None: heartbeats are off
            with contextlib.suppress(TimeoutError):
                # Heartbeats are at least a second apart (the engine clamps them).
                await asyncio.wait_for(wake.wait(), None if due is None else max(due, 0.05))
    finally:
        status.close()


def status_frame(message: dict[str, Any]) -> bytes:
    """A segment-status message as an event frame."""
    return encode_frame(orjson.dumps({"event": "segment_status", **message}))


async def pump_status(status: StatusSubscription, outbox: Outbox, executor: Executor) -> None:
    """Offer a segment-status stream's event frames to ``outbox`` until either ends."""
    try:
        async for message in status_messages(status, executor):
            if not outbox.offer(status_frame(message)):
                break
    finally:
        outbox.end(outbox.error)

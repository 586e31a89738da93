"""The streams view for asyncio code: the Space and Segment API, as coroutines.

The twin of :mod:`kilndb.client.streams`: each call is built and decoded by
:mod:`kilndb.client.calls` and sent through the space's database.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kilndb.client import calls
from kilndb.client.asyncio_pushed import AsyncStatusSubscription
from kilndb.model import validate_key, validate_store_name
from kilndb.streams import Entry, check_channel, clamp_heartbeat

if TYPE_CHECKING:
    from kilndb.client.asyncio_client import AsyncRemoteDatabase

__all__ = ["AsyncRemoteSegment", "AsyncRemoteSpace"]


class AsyncRemoteSegment:
    """A segment of a remote space; the methods of :class:`kilndb.engine.Segment` as
    coroutines."""

    __slots__ = ("_db", "name", "space")

    def __init__(self, db: AsyncRemoteDatabase, space: str, name: str) -> None:
        self._db = db
        self.space = space
        self.name = validate_key(name)

    def __repr__(self) -> str:
        return f"<AsyncRemoteSegment {self.name!r} of space {self.space!r}>"

    async def produce(
        self, records: Iterable[Any], expected_seq: int | None = None, *, fence: Any = None
    ) -> list[Entry]:
        """As :meth:`kilndb.client.streams.RemoteSegment.produce`."""
        request = calls.produce(self.space, self.name, records, expected_seq, fence)
        return await self._db._send(request)

    async def consume(
        self,
        min_seq: int = 1,
        max_seq: int | None = None,
        min_ts: float | None = None,
        max_ts: float | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """As :meth:`Segment.consume`."""
        request = calls.consume(self.space, self.name, min_seq, max_seq, min_ts, max_ts, limit)
        return await self._db._send(request)

    async def peek(self) -> Entry | None:
        """As :meth:`Segment.peek`."""
        return await self._db._send(calls.peek(self.space, self.name))

    async def status(self) -> dict[str, Any]:
        """As :meth:`Segment.status`."""
        request = calls.simple("segment_status", "status", space=self.space, segment=self.name)
        status: dict[str, Any] = await self._db._send(request)
        return status


class AsyncRemoteSpace:
    """A space of a remote database; the methods of :class:`kilndb.engine.Space` as
    coroutines."""

    __slots__ = ("_db", "name")

    def __init__(self, db: AsyncRemoteDatabase, name: str) -> None:
        self._db = db
        self.name = validate_store_name(name)

    def __repr__(self) -> str:
        return f"<AsyncRemoteSpace {self.name!r} of {self._db!r}>"

    def segment(self, name: str) -> AsyncRemoteSegment:
        """As :meth:`Space.segment`."""
        return AsyncRemoteSegment(self._db, self.name, name)

    async def segments(self) -> list[str]:
        """As :meth:`Space.segments`."""
        request = calls.simple("segments", "segments", space=self.name)
        segments: list[str] = await self._db._send(request)
        return segments

    async def consume(
        self,
        after: int = 0,
        min_ts: float | None = None,
        max_ts: float | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """As :meth:`Space.consume`."""
        return await self._db._send(calls.space_consume(self.name, after, min_ts, max_ts, limit))

    def subscribe_status(
        self, segment: str = "*", heartbeat: float = 30, *, channel: str | None = None
    ) -> AsyncStatusSubscription:
        """As :meth:`Space.subscribe_status`, on a connection of its own: ``await`` it or
        ``async with`` it."""
        if segment != "*":
            validate_key(segment)
        beat, named = clamp_heartbeat(heartbeat), check_channel(channel)
        return self._db._status_subscription(self.name, segment, beat, named)

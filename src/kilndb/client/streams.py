"""The streams view over the network: the same Space and Segment API as embedded.

Each call is built and decoded by :mod:`kilndb.client.calls`; a space or segment only
names where it is and sends through its database (and so reconnects as it does).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kilndb.client import calls
from kilndb.client.endpoint import Endpoint
from kilndb.client.feeds import StatusFeed
from kilndb.client.pushed import PushedStream
from kilndb.model import validate_key, validate_store_name
from kilndb.streams import Entry, check_channel, clamp_heartbeat

if TYPE_CHECKING:
    from kilndb.client.remote import RemoteDatabase

__all__ = ["RemoteSegment", "RemoteSpace", "RemoteStatusSubscription"]


class RemoteSegment:
    """A segment of a remote space; the same methods as :class:`kilndb.engine.Segment`."""

    __slots__ = ("_db", "name", "space")

    def __init__(self, db: RemoteDatabase, space: str, name: str) -> None:
        self._db = db
        self.space = space
        self.name = validate_key(name)

    def __repr__(self) -> str:
        return f"<RemoteSegment {self.name!r} of space {self.space!r}>"

    def produce(
        self, records: Iterable[Any], expected_seq: int | None = None, *, fence: Any = None
    ) -> list[Entry]:
        """As :meth:`Segment.produce`. A produce whose reply a broken connection lost
        raises WriteOutcomeUnknownError (records carry no id to send them again by)."""
        return self._db._send(calls.produce(self.space, self.name, records, expected_seq, fence))

    def consume(
        self,
        min_seq: int = 1,
        max_seq: int | None = None,
        min_ts: float | None = None,
        max_ts: float | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """As :meth:`Segment.consume`."""
        request = calls.consume(self.space, self.name, min_seq, max_seq, min_ts, max_ts, limit)
        return self._db._send(request)

    def peek(self) -> Entry | None:
        """As :meth:`Segment.peek`."""
        return self._db._send(calls.peek(self.space, self.name))

    def status(self) -> dict[str, Any]:
        """As :meth:`Segment.status`."""
        request = calls.simple("segment_status", "status", space=self.space, segment=self.name)
        status: dict[str, Any] = self._db._send(request)
        return status


class RemoteSpace:
    """A space of a remote database; the same methods as :class:`kilndb.engine.Space`."""

    __slots__ = ("_db", "name")

    def __init__(self, db: RemoteDatabase, name: str) -> None:
        self._db = db
        self.name = validate_store_name(name)

    def __repr__(self) -> str:
        return f"<RemoteSpace {self.name!r} of {self._db!r}>"

    def segment(self, name: str) -> RemoteSegment:
        """As :meth:`Space.segment`."""
        return RemoteSegment(self._db, self.name, name)

    def segments(self) -> list[str]:
        """As :meth:`Space.segments`."""
        segments: list[str] = self._db._send(calls.simple("segments", "segments", space=self.name))
        return segments

    def consume(
        self,
        after: int = 0,
        min_ts: float | None = None,
        max_ts: float | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """As :meth:`Space.consume`."""
        return self._db._send(calls.space_consume(self.name, after, min_ts, max_ts, limit))

    def subscribe_status(
        self, segment: str = "*", heartbeat: float = 30, *, channel: str | None = None
    ) -> RemoteStatusSubscription:
        """As :meth:`Space.subscribe_status`, on a connection of its own."""
        if segment != "*":
            validate_key(segment)
        beat, named = clamp_heartbeat(heartbeat), check_channel(channel)
        return self._db._status_subscription(self.name, segment, beat, named)


class RemoteStatusSubscription(PushedStream[dict[str, Any]]):
    """Segment-status messages on a connection of their own (see the embedded
    :class:`~kilndb.engine.StatusSubscription`). After a lost connection it reconnects
    and starts again with a fresh ``status`` snapshot."""

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

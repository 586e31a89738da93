"""What a pushed stream asks a server for and keeps of what it pushes, without I/O.

A subscription runs on a connection of its own; the sync client reads it with a thread
(:mod:`~kilndb.client.pushed`), the asyncio client with a task
(:mod:`~kilndb.client.asyncio_pushed`). Both hand each pushed message to a feed, which
says what it yields and what to ask for after a reconnect: a :class:`FactFeed` resumes
after the last fact it received, so that across reconnects no fact is missed and none
is delivered twice; a :class:`StatusFeed` starts again with a fresh snapshot.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from kilndb.model import Fact, fact_from_dict

__all__ = ["FactFeed", "Feed", "StatusFeed"]

T = TypeVar("T")


class Feed(Generic[T]):
    """The part of a pushed stream that is the same on every transport."""

    #: The stream's channel id: the one asked for, else the one the server assigned on
    #: subscribing; asked for again after a reconnect, so it names the stream throughout.
    channel: str | None = None

    def subscribed(self, reply: dict[str, Any]) -> None:
        """The server's reply to the subscribing request."""
        self.channel = reply.get("channel_id", self.channel)

    def request(self) -> dict[str, Any]:
        """The subscribing request, for a fresh connection."""
        raise NotImplementedError

    def accept(self, message: dict[str, Any]) -> T | None:
        """The item a pushed message carries, or None to skip it."""
        raise NotImplementedError

    def delivered(self, item: T) -> None:
        """``item`` was handed out."""


class FactFeed(Feed[Fact]):
    """A changefeed: the facts of ``stores`` (None: all) after position ``after``."""

    def __init__(self, stores: list[str] | None, after: int, channel: str | None = None) -> None:
        self.channel = channel
        self.stores = stores
        #: Position of the last fact handed out.
        self.position = after
        #: Position of the last fact received (handed out or still buffered).
        self.received = after

    def request(self) -> dict[str, Any]:
        return {
            "op": "subscribe",
            "stores": self.stores,
            "after": self.received,
            "channel": self.channel,
        }

    def accept(self, message: dict[str, Any]) -> Fact | None:
        if message.get("event") != "fact_written":
            return None
        fact = fact_from_dict(message["fact"])
        if fact.position <= self.received:
            return None  # already had it before a reconnect
        self.received = fact.position
        return fact

    def delivered(self, item: Fact) -> None:
        self.position = item.position

    def covered(self, waiting: bool) -> int:
        """The position up to which the subscriber has seen the log: the last fact
        handed out, or with nothing ``waiting``, the last one received. (A server pushes
        only the facts of the stores followed, so facts of other stores after the last
        one received are not counted, unlike an embedded subscription's ``covered``.)"""
        return self.position if waiting else self.received


class StatusFeed(Feed[dict[str, Any]]):
    """Segment-status messages of ``segment`` (``"*"``: all) of ``space``."""

    def __init__(
        self, space: str, segment: str, heartbeat: float, channel: str | None = None
    ) -> None:
        self.channel = channel
        self.space = space
        self.segment = segment
        self.heartbeat = heartbeat

    def request(self) -> dict[str, Any]:
        return {
            "op": "subscribe_status",
            "space": self.space,
            "segment": self.segment,
            "heartbeat": self.heartbeat,
            "channel": self.channel,
        }

    def accept(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if message.pop("event") != "segment_status":
            return None
        return message

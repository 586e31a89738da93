"""A stream of messages a server pushes on a connection of its own."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator
from typing import Generic, Self, TypeVar

from kilndb.client.endpoint import Endpoint
from kilndb.client.feeds import Feed
from kilndb.client.hosts import Hosts
from kilndb.client.link import connect_first
from kilndb.client.transport import Connection
from kilndb.errors import (
    ConnectionLostError,
    InvalidArgumentError,
    KilnError,
    UnavailableError,
    error_from_wire,
)

__all__ = ["PushedStream", "stream_hosts", "unreached"]

T = TypeVar("T")


def stream_hosts(endpoint: Endpoint, database: str) -> Hosts:
    """Where a pushed stream connects: its one server, or any server of the list that
    holds the database (leader or follower)."""
    return Hosts(endpoint.hosts, database, "holder" if endpoint.several else "any")


def unreached(hosts: Hosts) -> KilnError:
    """The error of a round of a stream's hosts that found none: with a list, a lost
    connection even when servers answered (none holds the database while a cluster
    changes its mind, say), so that the stream tries again rather than ending."""
    error = hosts.unfound()
    if len(hosts.hosts) > 1 and isinstance(error, UnavailableError):
        return ConnectionLostError(error.message)
    return error


class PushedStream(Generic[T]):
    """Messages a server pushes on a connection of their own, read by a thread.

    If the connection breaks, the stream reconnects by itself (backoff from
    ``RECONNECT_MIN`` to ``RECONNECT_MAX`` seconds) and subscribes again with what its
    ``feed`` asks for then — with a list of servers, on the first that holds the
    database (the one it was on, then the list in order: a follower's changefeed has the
    leader's positions, so it resumes where it was). A server error ends it; iteration
    then stops and :attr:`error` says why. The feed says what a pushed message yields.
    """

    RECONNECT_MIN = 0.05
    RECONNECT_MAX = 5.0

    def __init__(
        self, feed: Feed[T], endpoint: Endpoint | str, database: str, timeout: float | None
    ) -> None:
        self._feed = feed
        self.endpoint = Endpoint.make(endpoint)
        self.url = self.endpoint.url
        self._database = database
        self._timeout = timeout
        self._buffer: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.error: KilnError | None = None
        #: How many times the stream had to reconnect.
        self.reconnects = 0
        self._hosts = stream_hosts(self.endpoint, database)
        self._conn: Connection | None = self._connect()  # errors here are the caller's
        self._thread = threading.Thread(target=self._run, name="kilndb-pushed", daemon=True)
        self._thread.start()

    def _connect(self) -> Connection:
        """Connect, say hello and subscribe: one round over the hosts."""

        def subscribe(conn: Connection) -> None:
            request = self._feed.request()
            self._feed.subscribed(conn.call(request.pop("op"), **request))

        hosts = self._hosts
        try:
            conn, _ = connect_first(self.endpoint, self._database, hosts, self._timeout, subscribe)
        except UnavailableError:
            raise unreached(hosts) from None
        conn.set_timeout(None)  # pushes may be far apart: wait for them indefinitely
        self.url = conn.url
        return conn

    def _run(self) -> None:
        delay = self.RECONNECT_MIN
        while not self._closed:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                    self.reconnects += 1
                    delay = self.RECONNECT_MIN
                if self._pump(self._conn):
                    return  # our close was answered
            except ConnectionLostError:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.abandon()
                with self._cond:
                    if self._closed:
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, self.RECONNECT_MAX)
            except KilnError as exc:
                with self._cond:
                    if not self._closed:
                        self.error = exc
                    self._cond.notify_all()
                return

    def _pump(self, conn: Connection) -> bool:
        """Read pushed messages until the connection breaks (raises) or close is answered."""
        while True:
            message = conn.receive()
            if "event" in message:
                with self._cond:  # what is received and what is buffered change together
                    item = self._feed.accept(message)
                    if item is not None:
                        self._buffer.append(item)
                        self._cond.notify_all()
            elif message.get("ok") is False:
                raise error_from_wire(message)
            elif message.get("ok"):
                return True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def channel_id(self) -> str | None:
        """The stream's channel id (given, or assigned by the server; None from a server
        that assigns none)."""
        return self._feed.channel

    def get(self, timeout: float | None = None) -> T | None:
        """The next item, or None if none arrived within ``timeout`` or it ended."""
        batch = self.get_batch(1, timeout)
        return batch[0] if batch else None

    def get_batch(self, limit: int = 1024, timeout: float | None = None) -> list[T]:
        """The next items, at most ``limit``: as many as are ready once one is; empty if
        none arrived within ``timeout`` seconds or the stream ended."""
        if type(limit) is not int or limit < 1:
            raise InvalidArgumentError("limit must be a positive integer")
        with self._cond:
            if not self._buffer and not self._closed and self.error is None:
                self._cond.wait(timeout)
            if self._closed:
                return []
            buffer = self._buffer
            batch = [buffer.popleft() for _ in range(min(limit, len(buffer)))]
            for item in batch:
                self._feed.delivered(item)
            return batch

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        while True:
            item = self.get(timeout=1.0)
            if item is not None:
                return item
            if self._closed or self.error is not None:
                raise StopIteration

    def close(self) -> None:
        """End the stream and its connection (FIN, after the server's ``ok``)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(ConnectionLostError):
                conn.send({"op": "close"})
        self._thread.join(5)
        if conn is not None:
            conn.abandon()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

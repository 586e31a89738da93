"""A blocking link to one database on one server that survives the server restarting.

A :class:`Link` owns a :class:`~kilndb.client.transport.Connection` that has said
``hello`` for its database. When that connection turns out to be broken, the next call
reconnects (on the :class:`~kilndb.client.core.Reconnect` schedule, saying ``hello``
again) and the client core decides what becomes of the request in flight
(:func:`~kilndb.client.core.lost_reply`). Thread-safe: one request at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, TypeVar

from kilndb.client.core import Reconnect, Request, gave_up, lost_reply
from kilndb.client.endpoint import Endpoint
from kilndb.client.transport import PIPELINE_WINDOW, Connection
from kilndb.errors import ConnectionLostError, KilnError
from kilndb.model import Fact

__all__ = ["Link"]

T = TypeVar("T")
#: A ``write_each`` write's result: its fact, or the error that refused it.
Outcome = Fact | KilnError


class Link:
    """A connection to ``database`` on ``endpoint`` that comes back after it breaks.

    Raises the server's errors as they come; ConnectionLostError once the server stays
    unreachable for the reconnect budget; WriteOutcomeUnknownError for a write that
    was sent but never answered and cannot safely be sent again.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        database: str,
        timeout: float | None,
        reconnect: Reconnect,
        clock: Any = time.monotonic,
        sleep: Any = time.sleep,
    ) -> None:
        self.endpoint = endpoint
        self.url = endpoint.url
        self.database = database
        self.timeout = timeout
        self.reconnect = reconnect
        #: How many times the link connected again after losing its connection.
        self.reconnects = 0
        self._clock = clock
        self._sleep = sleep
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> dict[str, Any]:
        """Connect and say hello (no retry: the first connection's errors are the
        caller's); return the ``hello`` reply."""
        with self._lock:
            conn = Connection(self.endpoint, self.timeout)
            try:
                hello = conn.hello(self.database)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return hello

    def call(self, request: Request[T]) -> T:
        """Send ``request`` and decode its reply, reconnecting as the core says."""
        with self._lock:
            body = self._exchange(request)
        return request.decode(body)

    def _exchange(self, request: Request[Any]) -> bytes:
        waits: Iterator[float] | None = None
        while True:
            conn = self._conn
            if conn is None or conn.idle_and_broken():
                waits = waits or self.reconnect.waits(self._clock)
                conn = self._reconnect(waits)
            try:
                conn.send_frames(request.frame)
            except ConnectionLostError:
                continue  # not (all) sent: nothing reached the server; send it again
            try:
                return conn.receive_body()
            except ConnectionLostError as lost:
                conn.abandon()
                error = lost_reply(request, self.url, lost)
                if error is not None:
                    raise error from lost

    def pipeline(self, requests: list[Request[Outcome]]) -> list[Outcome]:
        """Send ``requests`` back to back (a window at a time) and decode their replies
        in order; a request the core will not repeat after a lost reply gets its error
        in the list instead of raising it."""
        with self._lock:
            results: dict[int, bytes | KilnError] = {}
            pending = list(range(len(requests)))
            waits: Iterator[float] | None = None
            while pending:
                conn = self._conn
                if conn is None or conn.idle_and_broken():
                    waits = waits or self.reconnect.waits(self._clock)
                    conn = self._reconnect(waits)
                window, rest = pending[:PIPELINE_WINDOW], pending[PIPELINE_WINDOW:]
                try:
                    conn.send_frames(b"".join(requests[i].frame for i in window))
                except ConnectionLostError:
                    continue
                for done, index in enumerate(window):
                    try:
                        results[index] = conn.receive_body()
                    except ConnectionLostError as lost:
                        conn.abandon()
                        again = self._settle(requests, window[done:], lost, results)
                        pending = again + rest
                        break
                else:
                    pending = rest
        return [
            result if isinstance(result, KilnError) else requests[i].decode(result)
            for i, result in sorted(results.items())
        ]

    def _settle(
        self,
        requests: list[Request[Outcome]],
        unanswered: list[int],
        lost: ConnectionLostError,
        results: dict[int, bytes | KilnError],
    ) -> list[int]:
        """After a lost connection: the errors of the unanswered requests the core will
        not repeat go into ``results``; the others are returned, to be sent again."""
        again = []
        for index in unanswered:
            error = lost_reply(requests[index], self.url, lost)
            if error is None:
                again.append(index)
            else:
                results[index] = error
        return again

    def _reconnect(self, waits: Iterator[float]) -> Connection:
        last: KilnError | None = None
        for wait in waits:
            if wait:
                self._sleep(wait)
            conn = None
            try:
                conn = Connection(self.endpoint, self.timeout)
                conn.hello(self.database)
            except ConnectionLostError as exc:
                if conn is not None:
                    conn.abandon()
                last = exc
                continue
            self._conn = conn
            self.reconnects += 1
            return conn
        self._conn = None
        raise gave_up(self.url, self.reconnect, last)

    def close(self) -> None:
        """Say ``close`` and end the connection (FIN). Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

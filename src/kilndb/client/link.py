"""A blocking link to one database that survives its server restarting or being replaced.

A :class:`Link` owns a :class:`~kilndb.client.transport.Connection` that has said
``hello`` for its database. When that connection turns out to be broken, the next call
reconnects (on the :class:`~kilndb.client.core.Reconnect` schedule, saying ``hello``
again) and the client core decides what becomes of the request in flight
(:func:`~kilndb.client.core.lost_reply`). Which server it reconnects to is the link's
:class:`~kilndb.client.hosts.Hosts`' choice: the one server of a single URL, or, for a
list, the first that will do — and a link that needs the leader looks for it again when
its server refuses a write because it no longer leads. Thread-safe: one request at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from kilndb.client.core import Attempts, Reconnect, Request, gave_up, lost_reply
from kilndb.client.endpoint import Endpoint
from kilndb.client.hosts import Hosts
from kilndb.client.transport import PIPELINE_WINDOW, Connection
from kilndb.errors import ConnectionLostError, KilnError, ReadOnlyReplicaError, UnavailableError
from kilndb.model import Fact

__all__ = ["Link", "connect_first"]

T = TypeVar("T")
#: A ``write_each`` write's result: its fact, or the error that refused it.
Outcome = Fact | KilnError


def connect_first(
    endpoint: Endpoint,
    database: str,
    hosts: Hosts,
    timeout: float | None,
    then: Callable[[Connection], object] | None = None,
) -> tuple[Connection, dict[str, Any]]:
    """One round over ``hosts`` (see :mod:`kilndb.client.hosts`): the connection to the
    first server that will do, having said ``hello`` (and done ``then``), and its hello
    reply. Raises the round's error if none will; a server's other errors (a refused
    token, say) at once."""
    hosts.begin()
    while (url := hosts.next()) is not None:
        conn = None
        try:
            conn = Connection(endpoint.at(url), timeout)
            hello = conn.hello(database)
            if not hosts.answered(url, hello):
                conn.close()
                continue
            if then is not None:
                then(conn)
        except (ConnectionLostError, UnavailableError) as exc:
            if conn is not None:
                conn.abandon()
            hosts.failed(url, exc)
            continue
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return conn, hello
    raise hosts.unfound()


class Link:
    """A connection to ``database`` on ``endpoint`` that comes back after it breaks.

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
        clock: Any = time.monotonic,
        sleep: Any = time.sleep,
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
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> dict[str, Any]:
        """Connect and say hello: one round over the hosts, each asked once (no
        waiting: the first connection's errors are the caller's); return the ``hello``
        reply of the server chosen."""
        with self._lock:
            return self._round()

    def _round(self) -> dict[str, Any]:
        """One round over the hosts; the connection found becomes the link's."""
        self._conn, hello = connect_first(self.endpoint, self.database, self.hosts, self.timeout)
        self.url = self._conn.url
        return hello

    def call(self, request: Request[T]) -> T:
        """Send ``request`` and decode its reply, reconnecting as the core says; a
        link that needs the leader follows a refusal (ReadOnlyReplicaError) to it."""
        attempts = Attempts(self.reconnect, self._clock)
        while True:
            with self._lock:
                body = self._exchange(request, attempts)
            try:
                return request.decode(body)
            except ReadOnlyReplicaError as refused:
                if not self._moved(refused):
                    raise

    def _moved(self, refused: ReadOnlyReplicaError) -> bool:
        """The server refused a write as a replica: leave it if the hosts say the
        leader is to be found again (the next exchange looks for it)."""
        with self._lock:
            if not self.hosts.refused(refused.leader):
                return False
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        return True

    def _exchange(self, request: Request[Any], attempts: Attempts) -> bytes:
        while True:
            conn = self._conn
            if conn is None or conn.idle_and_broken():
                conn = self._reconnect(attempts.waits())
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
            attempts = Attempts(self.reconnect, self._clock)
            while pending:
                conn = self._conn
                if conn is None or conn.idle_and_broken():
                    conn = self._reconnect(attempts.waits())
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
        self._conn = None
        for wait in waits:
            if wait:
                self._sleep(wait)
            try:
                self._round()
            except (ConnectionLostError, UnavailableError) as exc:
                last = exc
                continue
            assert self._conn is not None  # a round that returns has connected
            self.reconnects += 1
            return self._conn
        raise gave_up(self.url, self.reconnect, last)

    def close(self) -> None:
        """Say ``close`` and end the connection (FIN). Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

"""The embedded changefeed: catch-up from the log, then live, with no gap and no duplicate.

Theory of operation
-------------------
A :class:`Subscription` keeps no queue of its own that writers fill. It remembers the
last position it has read from the log (``_fetched``) and, when its small read-ahead
buffer is empty, reads the next facts straight from the log up to the *visible*
position: the last durable position under ``sync="always"``, the last written one
otherwise. When nothing new is visible it waits on the log's condition, which writers
notify after their facts become visible. Catch-up and live are therefore the same code
path, reading the same log in position order, so there is no switch-over at which a fact
could be missed or delivered twice — and a slow subscriber costs writers nothing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from types import TracebackType
from typing import TYPE_CHECKING

from kilndb.errors import ClosedError, InvalidArgumentError
from kilndb.model import Fact

if TYPE_CHECKING:
    from kilndb.storage.log import Log

__all__ = ["Subscription"]

READ_AHEAD = 1024


class Subscription:
    """An iterator of facts in position order: everything after ``after``, then live.

    Iterating blocks until the next fact arrives and ends when the subscription or its
    database is closed. :meth:`get` waits at most ``timeout`` seconds. Safe to close from
    any thread; safe to share between threads (each fact goes to one caller).
    """

    def __init__(self, log: Log, stores: frozenset[str] | None, after: int) -> None:
        self._log = log
        self._stores = stores
        self._fetched = after
        self._buffer: deque[Fact] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._watchers: list[Callable[[], object]] = []
        #: Position of the last fact handed out; resume from here with ``after=``.
        self.position = after
        with log.visible_cond:
            log.subscribers += 1

    @property
    def covered(self) -> int:
        """The position up to which every fact has been handed out or did not match the
        stores followed: what a subscriber has seen of the log, filtered facts included."""
        with self._lock:
            return self._fetched if not self._buffer else self.position

    @property
    def closed(self) -> bool:
        return self._closed or self._log.closed

    def get(self, timeout: float | None = None) -> Fact | None:
        """The next fact, or ``None`` if none arrived in ``timeout`` seconds or closed."""
        batch = self.get_batch(1, timeout)
        return batch[0] if batch else None

    def get_batch(self, limit: int = READ_AHEAD, timeout: float | None = None) -> list[Fact]:
        """The next facts, at most ``limit``: as many as are ready once one is.

        Empty if none arrived in ``timeout`` seconds or the subscription is closed.
        """
        if type(limit) is not int or limit < 1:
            raise InvalidArgumentError("limit must be a positive integer")
        deadline = None if timeout is None else time.monotonic() + timeout
        log = self._log
        with self._lock:
            while True:
                if self.closed:
                    return []
                buffer = self._buffer
                if buffer:
                    if len(buffer) <= limit:
                        batch = list(buffer)
                        buffer.clear()
                    else:
                        batch = [buffer.popleft() for _ in range(limit)]
                    self.position = batch[-1].position
                    return batch
                visible = log.visible
                if visible > self._fetched:
                    try:
                        self._read_ahead(visible)
                    except ClosedError:
                        return []  # the database closed under us
                    continue
                with log.visible_cond:
                    while log.visible <= self._fetched and not self.closed:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            return []
                        log.visible_cond.wait(remaining)

    def _read_ahead(self, visible: int) -> None:
        facts = self._log.iter_facts(self._fetched, visible, self._stores)
        try:
            batch = list(islice(facts, READ_AHEAD))
        finally:
            facts.close()  # type: ignore[attr-defined]
        self._buffer.extend(batch)
        self._fetched = batch[-1].position if len(batch) == READ_AHEAD else visible

    def __iter__(self) -> Iterator[Fact]:
        return self

    def __next__(self) -> Fact:
        fact = self.get()
        if fact is None:
            raise StopIteration
        return fact

    def watch(self, wake: Callable[[], object]) -> None:
        """Call ``wake`` (from a writing thread) whenever new facts may be ready or the
        subscription or its database closes: for a caller that waits on something else
        than a thread (an event loop) and then takes them with ``get_batch(timeout=0)``.
        ``wake`` must be quick and must not block."""
        self._log.watchers.add(wake)
        self._watchers.append(wake)

    def close(self) -> None:
        """Stop the subscription; a blocked iteration ends."""
        log = self._log
        with log.visible_cond:
            if not self._closed:
                self._closed = True
                log.subscribers -= 1
            log.visible_cond.notify_all()
        for wake in self._watchers:
            log.watchers.discard(wake)
            wake()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

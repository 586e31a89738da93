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

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from kilndb.errors import ClosedError, InvalidArgumentError, KilnError
from kilndb.model import Fact
from kilndb.streams import new_channel

if TYPE_CHECKING:
    from kilndb.storage.log import Log

__all__ = ["CallbackHandle", "CallbackSubscription", "FactSource", "Subscription"]

READ_AHEAD = 1024

log = logging.getLogger("kilndb.subscription")


class Subscription:
    """An iterator of facts in position order: everything after ``after``, then live.

    Iterating blocks until the next fact arrives and ends when the subscription or its
    database is closed. :meth:`get` waits at most ``timeout`` seconds. Safe to close from
    any thread; safe to share between threads (each fact goes to one caller).
    """

    def __init__(
        self, log: Log, stores: frozenset[str] | None, after: int, channel: str | None = None
    ) -> None:
        #: The stream's channel id, for tracing: the one given, or a fresh UUID.
        self.channel_id = new_channel(channel)
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


class FactSource(Protocol):
    """What a :class:`CallbackSubscription` reads: an embedded or a network changefeed."""

    @property
    def channel_id(self) -> str | None: ...

    @property
    def position(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    def get_batch(self, limit: int = ..., timeout: float | None = None) -> list[Fact]: ...

    def close(self) -> None: ...


class CallbackHandle:
    """What the blocking and the asyncio callback subscriptions share: the subscription
    read, the callback, and how a failed call is reported."""

    def __init__(self, subscription: Any, callback: Callable[[Fact], object]) -> None:
        self.subscription = subscription
        self.callback = callback
        #: How many calls of the callback raised.
        self.failures = 0

    @property
    def channel_id(self) -> str | None:
        channel: str | None = self.subscription.channel_id
        return channel

    @property
    def position(self) -> int:
        """Position of the last fact handed to the callback."""
        position: int = self.subscription.position
        return position

    def _failed(self, fact: Fact) -> None:
        """The callback raised on ``fact`` (called from its ``except`` block)."""
        self.failures += 1
        log.exception(
            "subscription callback failed on the fact at position %d",
            fact.position,
            extra={"channel_id": self.channel_id, "position": fact.position},
        )


class CallbackSubscription(CallbackHandle):
    """A changefeed that calls ``callback(fact)`` for each fact, on a thread of its own
    (a daemon named ``kilndb-subscriber-<channel>``), in position order — what
    ``db.subscribe(stores, callback=f)`` returns on the embedded database and the
    blocking client (Igniter's ``nb.subscribe(stores:) { |fact| … }``).

    An exception the callback raises is logged (logger ``kilndb.subscription``, with the
    fact's position and the channel id) and counted in :attr:`failures`; the
    subscription goes on with the next fact, as Igniter's does. A network subscription
    reconnects and resumes after the last fact received, as the iterator form does. It
    ends with :meth:`close`, with its database, or with a server error (then
    :attr:`error` says why). :meth:`close` unsubscribes and waits for a running callback
    to return; it is idempotent, and the handle is a context manager.
    """

    def __init__(self, subscription: FactSource, callback: Callable[[Fact], object]) -> None:
        super().__init__(subscription, callback)
        self.subscription: FactSource = subscription
        self._closed = False
        name = f"kilndb-subscriber-{subscription.channel_id}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def error(self) -> KilnError | None:
        """The server error that ended a network subscription (None otherwise)."""
        error: KilnError | None = getattr(self.subscription, "error", None)
        return error

    @property
    def closed(self) -> bool:
        """Closed, or ended by itself (its database closed, a server error)."""
        return self._closed or not self._thread.is_alive()

    def _run(self) -> None:
        source = self.subscription
        while not self._closed:
            batch = source.get_batch(READ_AHEAD, None)
            if not batch:
                if source.closed or self.error is not None:
                    return
                continue
            for fact in batch:
                if self._closed:
                    return
                try:
                    self.callback(fact)
                except Exception:
                    self._failed(fact)

    def close(self) -> None:
        """Unsubscribe and wait for the thread to end (a callback running now returns
        first). Idempotent; a callback may call it."""
        self._closed = True
        self.subscription.close()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

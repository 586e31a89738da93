"""Changefeed fan-out: one reader of a database's log for all of its TCP, Unix-socket and
SSE subscribers.

Theory of operation
-------------------
Each subscriber of a database would otherwise read and decode the log and encode every
event frame on its own, so that 50 subscribers cost 50 times the work of one. Instead a
:class:`Hub` per database runs one :class:`~kilndb.engine.Subscription` from the live
end of the log, encodes each fact's ``fact_written`` frame once and hands every batch to
the :class:`Feed` of each subscriber, which keeps the frames of the stores it follows
and queues them for its subscriber in one write.

A subscriber whose cursor is behind the hub first *catches up* on a subscription of its
own (a task that reads a batch at a time on the server's worker pool), and joins the hub
once it has reached the hub's position ``P``: the hub delivers nothing at or below ``P``
to a feed that joins at ``P``, and the feed skips what it already has, so the switch has
no gap and no duplicate. A feed whose cursor is at or past the hub's position joins at
once.

Feeds never block the hub: a feed whose subscriber has ``max_subscriber_buffer`` bytes
unsent is dropped from the hub and its subscriber told ``subscriber_overflow`` with the
position it reached (:mod:`kilndb.server.push`). A hub without feeds for
:data:`IDLE_SECONDS` stops; the hubs are threads of the server's :class:`TaskOwner`,
one per database with subscribers, and end when the server stops.

The fan-out also knows every feed attached and not yet detached, which is what the
server reports of its changefeed (:meth:`Fanout.snapshot`): subscribers per database
and store, how far each is behind (``subscriber_lag``: positions of the log not yet
handed to it; ``subscriber_backlog_bytes``: handed and not read), and the subscribers
cut off for overflow, each a delivery alert (:mod:`kilndb.server.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Executor
from typing import Any, Protocol

from kilndb.engine import Database, Subscription
from kilndb.errors import KilnError, SubscriberOverflowError
from kilndb.protocol import ServerConnection
from kilndb.server.metrics import Metrics
from kilndb.server.tasks import TaskOwner

__all__ = ["Fanout", "Feed", "Hub"]

log = logging.getLogger("kilndb.server")

#: A hub with no feeds for this long stops (and a new one starts on the next subscribe).
IDLE_SECONDS = 5.0
#: Facts read from the log per batch.
BATCH = 1024

#: (store, position, encoded event frame) of one fact.
Frame = tuple[str, int, bytes]

#: The key of :meth:`Fanout.snapshot`'s per-store counts for subscribers of every store.
EVERY_STORE = "*"


class Backlog(Protocol):
    """What the fan-out reads of a subscriber's outbox (:class:`~kilndb.server.push.Outbox`)."""

    error: KilnError | None

    def backlog(self) -> int: ...


class Feed:
    """One subscriber's side of the fan-out: what it follows and where it is.

    ``send(data, position)`` queues encoded frames for the subscriber and returns False
    when it must be dropped (overflow or gone); it is called by one side at a time (the
    catch-up task, then the hub's thread).
    """

    def __init__(
        self,
        stores: frozenset[str] | None,
        after: int,
        send: Callable[[bytes, int], bool],
        gone: Callable[[Feed], None] | None = None,
        outbox: Backlog | None = None,
    ) -> None:
        self.stores = stores
        #: Position of the last fact queued to the subscriber.
        self.position = after
        #: How far the log has been handed to the feed, facts of other stores included.
        self.seen = after
        #: The subscriber's outbox, read for its backlog and why it ended.
        self.outbox = outbox
        #: Named in status and alerts; set when the fan-out takes the feed.
        self.number = 0
        self.database = ""
        self.closed = False
        self._send = send
        #: Told (once) when the database closes under the feed: removed, or a replica
        #: copy being cut back or recopied. The subscriber must hear of it, not hang.
        self._gone = gone
        #: Set while catching up on a subscription of its own.
        self.catch_up: Subscription | None = None

    def deliver(self, frames: list[Frame]) -> bool:
        """Queue the frames past ``position`` of the followed stores; False: drop me."""
        if self.closed:
            return False
        stores, after = self.stores, self.position
        if frames and frames[-1][1] > self.seen:
            self.seen = frames[-1][1]
        chosen = []
        last = after
        for store, position, frame in frames:
            if position > after and (stores is None or store in stores):
                chosen.append(frame)
                last = position
        if not chosen:
            return True
        if not self._send(b"".join(chosen), last):
            return False
        self.position = last
        return True

    def close(self) -> None:
        self.closed = True
        if self.catch_up is not None:
            self.catch_up.close()

    def end(self) -> None:
        """The database closed under this feed: close it and tell its subscriber."""
        if self.closed:
            return
        self.close()
        if self._gone is not None:
            self._gone(self)


def encode(facts: list[Any]) -> list[Frame]:
    """The event frames of ``facts`` (kilndb.Fact), each encoded once."""
    return [(f.store, f.position, ServerConnection.fact_event(f.to_dict())) for f in facts]


class Hub:
    """Reads one database's log from its live end and feeds every joined subscriber."""

    def __init__(self, fanout: Fanout, db: Database) -> None:
        self.fanout = fanout
        self.db = db
        start = db.stats()["durable_position"]
        self.subscription = db.subscribe(None, start)
        #: Everything up to here has been handed to the feeds joined at the time.
        self.position = start
        self.feeds: set[Feed] = set()
        self.stopped = False
        self.lock = threading.Lock()

    def start(self) -> Hub:
        self.fanout.tasks.thread(self._run, f"kilndb-fanout-{self.db.name}")
        return self

    def stop(self) -> None:
        """End the hub's thread (the server is stopping)."""
        self.subscription.close()

    def try_join(self, feed: Feed, covered: int) -> bool:
        """Join ``feed`` if it has seen the log up to the hub's position, ``covered``
        being how far it has (else it goes on catching up)."""
        with self.lock:
            if self.stopped or covered < self.position:
                return False
            self.feeds.add(feed)
            feed.seen = max(feed.seen, covered)
            return True

    def leave(self, feed: Feed) -> None:
        with self.lock:
            self.feeds.discard(feed)

    def _run(self) -> None:
        subscription = self.subscription
        idle_since = time.monotonic()
        try:
            while True:
                facts = subscription.get_batch(BATCH, timeout=0.5)
                if not facts and subscription.closed:
                    return
                frames = encode(facts) if facts else []
                with self.lock:
                    if frames:
                        self.position = frames[-1][1]
                    feeds = list(self.feeds)
                if feeds:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > IDLE_SECONDS and self.fanout.retire(self):
                    return
                if frames:
                    for feed in feeds:
                        if not feed.deliver(frames):
                            self.leave(feed)
                            self.fanout.dropped(feed)
        except Exception:
            log.exception("changefeed fan-out of %s failed", self.db.name)
        finally:
            subscription.close()
            with self.lock:
                self.stopped = True
                orphans, self.feeds = list(self.feeds), set()
            self.fanout.retire(self, force=True)
            for feed in orphans:  # resubscribed on a fresh hub, from where they are
                self.fanout.attach(self.db, feed)  # (or told, if the database closed)


class Fanout:
    """The hubs of a server, one per database with subscribers."""

    def __init__(
        self,
        tasks: TaskOwner,
        executor: Executor,
        metrics: Metrics | None = None,
        max_subscriber_buffer: int = 0,
    ) -> None:
        self.tasks = tasks
        self._executor = executor
        self._metrics = metrics or Metrics()
        self._limit = max_subscriber_buffer
        self._hubs: dict[int, Hub] = {}
        #: Every feed attached and not detached, with its database.
        self._feeds: dict[Feed, Database] = {}
        self._numbers = itertools.count(1)
        self._overflows = 0
        self._lock = threading.Lock()

    def attach(self, db: Database, feed: Feed) -> None:
        """Start delivering to ``feed`` from its position: join the hub, or catch up first.

        The caller has checked the cursor (``db.subscribe`` raises CursorTooOldError).
        Any thread.
        """
        if feed.closed:
            return
        if db.closed:
            feed.end()
            return
        with self._lock:
            if not feed.number:
                feed.number = next(self._numbers)
            feed.database = db.name
            self._feeds[feed] = db
        if self._join(db, feed, feed.position):
            return
        feed.catch_up = db.subscribe(feed.stores, feed.position)
        self.tasks.spawn_threadsafe(self._catch_up(db, feed), "kilndb-catch-up")

    def close(self) -> None:
        """Stop every hub (the server is stopping)."""
        with self._lock:
            hubs = list(self._hubs.values())
        for hub in hubs:
            hub.stop()

    def detach(self, feed: Feed) -> None:
        feed.close()
        with self._lock:
            self._feeds.pop(feed, None)
            hubs = list(self._hubs.values())
        for hub in hubs:
            hub.leave(feed)

    def dropped(self, feed: Feed) -> None:
        """``feed`` refused a delivery: its subscriber closed it, or overflowed (a
        delivery alert), or went away."""
        with self._lock:
            if self._feeds.pop(feed, None) is None or feed.closed:
                return  # detached by its subscriber: not a drop
            outbox = feed.outbox
            overflowed = outbox is not None and isinstance(outbox.error, SubscriberOverflowError)
            if overflowed:
                self._overflows += 1
        if overflowed:
            assert outbox is not None
            self._metrics.delivery_alert(
                {
                    "type": "subscriber_overflow",
                    "metric": "subscriber_backlog_bytes",
                    "value": outbox.backlog(),
                    "threshold": self._limit,
                    "database": feed.database,
                    "subscriber": feed.number,
                    "position": feed.position,
                }
            )

    def subscription_count(self, store: str, database: str = "default") -> int:
        """Changefeed subscribers of ``database`` that receive the facts of ``store``
        (those following it and those following every store)."""
        with self._lock:
            return sum(
                1
                for feed, db in self._feeds.items()
                if not feed.closed
                and db.name == database
                and (feed.stores is None or store in feed.stores)
            )

    def snapshot(self, thresholds: Mapping[str, float]) -> dict[str, Any]:
        """The changefeed's section of the server's status: subscribers per database and
        per store (``*``: of every store), the subscribers cut off for overflow, and the
        alerts — each subscriber over a ``subscriber_lag`` or ``subscriber_backlog_bytes``
        threshold, and the recent overflows."""
        lag_limit = thresholds.get("subscriber_lag")
        backlog_limit = thresholds.get("subscriber_backlog_bytes")
        by_database: dict[str, dict[str, Any]] = {}
        firing: dict[Hashable, dict[str, Any]] = {}
        with self._lock:
            for feed in [f for f, db in self._feeds.items() if f.closed or db.closed]:
                del self._feeds[feed]
            feeds = list(self._feeds.items())
            overflows = self._overflows
        for feed, db in feeds:
            entry = by_database.setdefault(db.name, {"subscribers": 0, "stores": {}})
            entry["subscribers"] += 1
            counts = entry["stores"]
            for store in sorted(feed.stores) if feed.stores is not None else [EVERY_STORE]:
                counts[store] = counts.get(store, 0) + 1
            measured: list[tuple[str, str, float, float]] = []  # type, metric, value, limit
            if lag_limit is not None:
                catch_up = feed.catch_up
                covered = feed.seen if catch_up is None else max(feed.seen, catch_up.covered)
                lag = max(0, db.durable_position - covered)
                measured.append(("subscriber_lag", "subscriber_lag", lag, lag_limit))
            if backlog_limit is not None and feed.outbox is not None:
                backlog = feed.outbox.backlog()
                measured.append(
                    ("subscriber_backlog", "subscriber_backlog_bytes", backlog, backlog_limit)
                )
            for kind, metric, value, limit in measured:
                if value > limit:
                    firing[(kind, feed.number)] = {
                        "type": kind,
                        "metric": metric,
                        "value": value,
                        "threshold": limit,
                        "database": db.name,
                        "subscriber": feed.number,
                    }
        alerts = self._metrics.firing("changefeed", firing)
        return {
            "subscribers": len(feeds),
            "by_database": dict(sorted(by_database.items())),
            "overflows_total": overflows,
            "alerts": alerts + self._metrics.delivery_alerts(),
        }

    def retire(self, hub: Hub, force: bool = False) -> bool:
        """Remove an idle hub (unless a feed joined meanwhile); True if removed."""
        with self._lock, hub.lock:
            if hub.feeds and not force:
                return False
            hub.stopped = True
            if self._hubs.get(id(hub.db)) is hub:
                del self._hubs[id(hub.db)]
            return True

    def _join(self, db: Database, feed: Feed, covered: int) -> bool:
        with self._lock:
            hub = self._hubs.get(id(db))
            if hub is None or hub.stopped:
                hub = self._hubs[id(db)] = Hub(self, db).start()
            return hub.try_join(feed, covered)

    async def _catch_up(self, db: Database, feed: Feed) -> None:
        """Deliver from the feed's own subscription until it can join the hub: a batch
        at a time on the worker pool, waiting for the log in between without a thread."""
        subscription = feed.catch_up
        assert subscription is not None
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        subscription.watch(lambda: loop.call_soon_threadsafe(wake.set))
        try:
            while not feed.closed and not subscription.closed:
                wake.clear()
                facts = await loop.run_in_executor(self._executor, subscription.get_batch, BATCH, 0)
                if facts and not feed.deliver(encode(facts)):
                    self.dropped(feed)
                    return
                if self._join(db, feed, subscription.covered):
                    return
                if not facts:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), 0.5)
        except Exception:
            log.exception("changefeed catch-up on %s failed", db.name)
        finally:
            subscription.close()
            feed.catch_up = None
            if db.closed:
                feed.end()

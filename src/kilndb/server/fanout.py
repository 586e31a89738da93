"""Changefeed fan-out: one reader of a database's log for all of its TCP, Unix-socket and
SSE subscribers.

Theory of operation
-------------------
Each subscriber of a database would otherwise read and decode the log and encode every
event frame on its own, so that 50 subscribers cost 50 times the work of one. Instead a
:class:`Hub` per database runs one :class:`~kilndb.engine.Subscription` from the live
end of the log, encodes each fact's ``fact_written`` frame once and hands every batch to
the :class:`Feed` of each subscriber, which keeps the frames of the stores it follows
and queues them on its connection in one write.

A subscriber whose cursor is behind the hub first *catches up* on a subscription of its
own (its own thread), and joins the hub once it has reached the hub's position ``P``:
the hub delivers nothing at or below ``P`` to a feed that joins at ``P``, and the feed
skips what it already has, so the switch has no gap and no duplicate. A feed whose
cursor is at or past the hub's position joins at once.

Feeds never block the hub: a feed whose connection has ``max_subscriber_buffer`` bytes
unsent is dropped from the hub and its connection told ``subscriber_overflow`` with the
position it reached. A hub without feeds for :data:`IDLE_SECONDS` stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kilndb.engine import Database, Subscription
from kilndb.protocol import ServerConnection

__all__ = ["Fanout", "Feed", "Hub"]

log = logging.getLogger("kilndb.server")

#: A hub with no feeds for this long stops (and a new one starts on the next subscribe).
IDLE_SECONDS = 5.0
#: Facts read from the log per batch.
BATCH = 1024

#: (store, position, encoded event frame) of one fact.
Frame = tuple[str, int, bytes]


class Feed:
    """One subscriber's side of the fan-out: what it follows and where it is.

    ``send(data, position)`` queues encoded frames on the subscriber's connection and
    returns False when the subscriber must be dropped (overflow or gone); it is called
    from one thread at a time (the catch-up thread, then the hub's).
    """

    def __init__(
        self,
        stores: frozenset[str] | None,
        after: int,
        send: Callable[[bytes, int], bool],
        gone: Callable[[Feed], None] | None = None,
    ) -> None:
        self.stores = stores
        #: Position of the last fact queued to the subscriber.
        self.position = after
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
        self._thread = threading.Thread(
            target=self._run, name=f"kilndb-fanout-{db.name}", daemon=True
        )

    def start(self) -> Hub:
        self._thread.start()
        return self

    def try_join(self, feed: Feed, covered: int) -> bool:
        """Join ``feed`` if it has seen the log up to the hub's position, ``covered``
        being how far it has (else it goes on catching up)."""
        with self.lock:
            if self.stopped or covered < self.position:
                return False
            self.feeds.add(feed)
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

    def __init__(self) -> None:
        self._hubs: dict[int, Hub] = {}
        self._lock = threading.Lock()

    def attach(self, db: Database, feed: Feed) -> None:
        """Start delivering to ``feed`` from its position: join the hub, or catch up first.

        The caller has checked the cursor (``db.subscribe`` raises CursorTooOldError).
        """
        if feed.closed:
            return
        if db.closed:
            feed.end()
            return
        if self._join(db, feed, feed.position):
            return
        feed.catch_up = db.subscribe(feed.stores, feed.position)
        threading.Thread(
            target=self._catch_up, args=(db, feed), name="kilndb-catch-up", daemon=True
        ).start()

    def detach(self, feed: Feed) -> None:
        feed.close()
        with self._lock:
            hubs = list(self._hubs.values())
        for hub in hubs:
            hub.leave(feed)

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

    def _catch_up(self, db: Database, feed: Feed) -> None:
        subscription = feed.catch_up
        assert subscription is not None
        try:
            while not feed.closed and not subscription.closed:
                facts = subscription.get_batch(BATCH, timeout=0.5)
                if facts and not feed.deliver(encode(facts)):
                    return
                if self._join(db, feed, subscription.covered):
                    return
        except Exception:
            log.exception("changefeed catch-up on %s failed", db.name)
        finally:
            subscription.close()
            feed.catch_up = None
            if db.closed:
                feed.end()

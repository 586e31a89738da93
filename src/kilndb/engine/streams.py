"""Spaces and segments: the streams view of a :class:`~kilndb.engine.Database`.

``db.space("orders").segment("o-1")`` reads and writes the facts of key ``o-1`` in store
``orders`` as an ordered segment of entries (see :mod:`kilndb.streams`). Producing is an
atomic ``write_many`` (one transaction time for the batch), so the entries of a batch
get consecutive sequences, and ``expected_seq`` is the segment's last sequence before the
batch (0: the segment must be empty), checked under the database's write lock — of two
producers racing for the same sequence exactly one wins.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson

from kilndb import _core
from kilndb.errors import ConflictError, InvalidArgumentError
from kilndb.leases import check_fence
from kilndb.model import Fact, validate_key, validate_store_name
from kilndb.storage.facts import check_limit, check_position
from kilndb.streams import (
    Entry,
    check_channel,
    check_time,
    clamp_heartbeat,
    clamp_limit,
    entry_from_fact,
    fact_to_entry_wire,
    produced_to_wire,
    record_from_wire,
    record_write,
    status_of,
)

if TYPE_CHECKING:
    from kilndb.engine.changefeed import Subscription
    from kilndb.engine.database import Database

__all__ = ["Segment", "Space", "StatusSubscription"]


def _in_window(
    facts: Iterable[Fact], min_ts: float | None, max_ts: float | None, limit: int
) -> list[Fact]:
    """The first ``limit`` facts with a transaction time in ``[min_ts, max_ts]``."""
    chosen = (
        fact
        for fact in facts
        if (min_ts is None or fact.transaction_time >= min_ts)
        and (max_ts is None or fact.transaction_time <= max_ts)
    )
    return [fact for fact, _ in zip(chosen, range(limit), strict=False)]


class Segment:
    """An ordered segment (a key) of a space. Get one with ``space.segment(name)``."""

    __slots__ = ("_db", "name", "space")

    def __init__(self, db: Database, space: str, name: str) -> None:
        self._db = db
        self.space = space
        self.name = validate_key(name)

    def __repr__(self) -> str:
        return f"<Segment {self.space!r}/{self.name!r}>"

    def produce(
        self, records: Iterable[Any], expected_seq: int | None = None, *, fence: Any = None
    ) -> list[Entry]:
        """Append records atomically; return their entries.

        ``expected_seq``: the segment's last sequence before this batch must be this (0:
        the segment must be empty), else ConflictError saying expected and actual.
        ``fence=lease``: refused with LeaseLostError once a newer lease exists for its key.
        """
        writes = [record_write(self.space, self.name, record) for record in records]
        if not writes:
            return []
        if expected_seq is not None:
            if type(expected_seq) is not int or expected_seq < 0:
                raise InvalidArgumentError("expected_seq must be a non-negative integer or None")
            writes[0] = writes[0]._replace(expected_seq=expected_seq)
        try:
            facts = self._db.write_many(writes, fence=fence)
        except ConflictError as exc:
            raise self._conflict(exc) from None
        return [entry_from_fact(fact) for fact in facts]

    def produce_wire(
        self, records: list[Any], expected_seq: int | None = None, *, fence: Any = None
    ) -> bytes:
        """:meth:`produce` for transports: the records in their wire form (a ``produce``
        request's checked ``records``), the result the JSON of the reply's ``produced``
        array (``produced_to_wire`` of each entry). The same checks, errors and
        atomicity as :meth:`produce`; the common batch goes through the core in one call
        each way, without building a Record, a Fact or an Entry."""
        writes = _core.produce_writes(self.space, self.name, records, expected_seq)
        if writes is None or (
            expected_seq is not None and (type(expected_seq) is not int or expected_seq < 0)
        ):
            # Anything unusual: the general path decides, and raises its precise errors.
            entries = self.produce(
                [record_from_wire(record) for record in records], expected_seq, fence=fence
            )
            return orjson.dumps([produced_to_wire(entry) for entry in entries])
        if not writes:
            return b"[]"
        fenced = check_fence(fence)
        try:
            bodies = self._db._log.commit(writes, atomic=True, wire=True, raw=True, fence=fenced)
        except ConflictError as exc:
            raise self._conflict(exc) from None
        produced = _core.produced_wire(bodies)
        if produced is None:  # a record the core does not read: read it in Python
            produced = orjson.dumps([_produced_of(_core.loads(body)) for body in bodies])
        return produced

    def _conflict(self, exc: ConflictError) -> ConflictError:
        return ConflictError(
            self.space,
            self.name,
            exc.expected,
            exc.actual,
            f"segment {self.space}/{self.name}: expected sequence {exc.expected},"
            f" actual sequence {exc.actual}",
        )

    def consume(
        self,
        min_seq: int = 1,
        max_seq: int | None = None,
        min_ts: float | None = None,
        max_ts: float | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """Entries with ``min_seq <= sequence <= max_seq`` and timestamps in
        ``[min_ts, max_ts]``, in sequence order; at most ``limit`` (clamped to 10,000,000)."""
        facts = self.consume_facts(min_seq, max_seq, min_ts, max_ts, limit)
        return [entry_from_fact(fact) for fact in facts]

    def consume_facts(
        self,
        min_seq: int = 1,
        max_seq: int | None = None,
        min_ts: float | None = None,
        max_ts: float | None = None,
        limit: int | None = None,
    ) -> list[Fact]:
        """:meth:`consume` as the facts the entries are (for transports)."""
        low, high = check_time("min_ts", min_ts), check_time("max_ts", max_ts)
        wanted = clamp_limit(limit)
        history = self._db._log.history
        # Like the changefeed, the streams view shows durable entries only: a consumer's
        # cursor never moves past an entry a crash could still take back.
        if low is None and high is None:
            return history(self.space, self.name, min_seq, max_seq, wanted, visible_only=True)
        facts = history(self.space, self.name, min_seq, max_seq, None, visible_only=True)
        return _in_window(facts, low, high, wanted)

    def consume_wire(
        self,
        min_seq: int = 1,
        max_seq: int | None = None,
        min_ts: float | None = None,
        max_ts: float | None = None,
        limit: int | None = None,
    ) -> bytes:
        """:meth:`consume` for transports: the JSON of the reply's ``entries`` array
        (``fact_to_entry_wire`` of each fact), written by the core from the stored
        records without building a fact; the same checks and errors."""
        low, high = check_time("min_ts", min_ts), check_time("max_ts", max_ts)
        if low is not None or high is not None:
            facts = self.consume_facts(min_seq, max_seq, low, high, limit)
            return orjson.dumps([fact_to_entry_wire(fact) for fact in facts])
        wanted = clamp_limit(limit)
        log = self._db._log
        # FactLog.history's checks, in its order, then the records rather than facts.
        log.check_open()
        validate_key(self.name)
        since = check_position("since_seq", min_seq)
        until = None if max_seq is None else check_position("until_seq", max_seq)
        chosen = log.keydir.history(
            self.space, self.name, since, until, check_limit(wanted), log.visible
        )
        return _core.entries_wire(log.read_bodies(chosen), _entry_wire_of)

    def peek(self) -> Entry | None:
        """The last entry, or None for an empty segment."""
        _, last = self._db._log.segment_bounds(self.space, self.name)
        return None if last is None else entry_from_fact(last)

    def status(self) -> dict[str, Any]:
        """``space, segment, first_sequence, first_timestamp, last_sequence,
        last_timestamp`` (None for an empty segment)."""
        first, last = self._db._log.segment_bounds(self.space, self.name)
        return status_of(self.space, self.name, first, last)


def _produced_of(record: dict[str, Any]) -> dict[str, Any]:
    """What a ``produce`` reply says of the fact stored as ``record`` (its JSON object)."""
    return {
        "sequence": record["seq"],
        "timestamp": record["transaction_time"],
        "position": record["position"],
        "id": record["id"],
    }


def _entry_wire_of(body: bytes) -> bytes:
    """The entry JSON of the fact stored as ``body`` (a bytes payload shown as such)."""
    fact: Fact = _core.facts_from_dicts([_core.loads(body)], Fact)[0]
    return orjson.dumps(fact_to_entry_wire(fact))


class Space:
    """A space (a store) seen as a set of ordered segments. Get one with ``db.space()``."""

    __slots__ = ("_db", "name")

    def __init__(self, db: Database, name: str) -> None:
        self._db = db
        self.name = validate_store_name(name)

    def __repr__(self) -> str:
        return f"<Space {self.name!r}>"

    def segment(self, name: str) -> Segment:
        return Segment(self._db, self.name, name)

    def segments(self) -> list[str]:
        """The segments that hold entries, sorted."""
        return self._db.store(self.name).keys()

    def consume(
        self,
        after: int = 0,
        min_ts: float | None = None,
        max_ts: float | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """Every entry of the space with position > ``after``, in commit order."""
        return [entry_from_fact(fact) for fact in self.consume_facts(after, min_ts, max_ts, limit)]

    def consume_facts(
        self,
        after: int = 0,
        min_ts: float | None = None,
        max_ts: float | None = None,
        limit: int | None = None,
    ) -> list[Fact]:
        """:meth:`consume` as the facts the entries are (for transports)."""
        low, high = check_time("min_ts", min_ts), check_time("max_ts", max_ts)
        wanted = clamp_limit(limit)
        return _in_window(self._db.replay(after, stores=[self.name]), low, high, wanted)

    def subscribe_status(
        self, segment: str = "*", heartbeat: float = 30, *, channel: str | None = None
    ) -> StatusSubscription:
        """The status of ``segment`` (``"*"``: every segment) now, then one notification
        per change and a heartbeat after ``heartbeat`` quiet seconds (streamkit's rule:
        non-zero values are clamped to 1 to 300, 0 turns heartbeats off; a negative one
        raises InvalidArgumentError). ``channel``: the stream's channel id for tracing
        (a UUID is assigned without one)."""
        named = check_channel(channel)
        return StatusSubscription(self._db, self.name, segment, clamp_heartbeat(heartbeat), named)


class StatusSubscription:
    """Messages about a space's segments: ``{"type": "status", **status}`` for each
    segment at the start, ``{"type": "change", **status}`` after each produce, and
    ``{"type": "heartbeat", "at": t}`` when nothing happened for ``heartbeat`` seconds
    (never with ``heartbeat`` 0).

    An iterator (blocking) and a context manager; :meth:`get` waits at most ``timeout``.
    """

    def __init__(
        self, db: Database, space: str, segment: str, heartbeat: float, channel: str | None = None
    ) -> None:
        if segment != "*":
            validate_key(segment)
        self._db = db
        self.space = space
        self.segment = segment
        self.heartbeat = heartbeat
        # Follow first, then take the snapshot: no change can fall between the two. The
        # snapshot (a read per segment) is taken by the first get(), on the caller's
        # thread, so opening a subscription is cheap whatever the size of the space.
        self._changes: Subscription = db.subscribe([space], after=db._log.visible, channel=channel)
        #: The stream's channel id, for tracing: the one given, or a fresh UUID.
        self.channel_id = self._changes.channel_id
        self._pending: deque[dict[str, Any]] | None = None
        self._quiet_since = time.monotonic()

    def _snapshot(self) -> deque[dict[str, Any]]:
        db, space = self._db, self.space
        names = db.store(space).keys() if self.segment == "*" else [self.segment]
        return deque({"type": "status", **Segment(db, space, name).status()} for name in names)

    @property
    def closed(self) -> bool:
        return self._changes.closed

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message; None if ``timeout`` passed first or the subscription closed."""
        if self._pending is None:
            self._pending = self._snapshot()
        if self._pending:
            return self._pending.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.closed:
            beat_at = self._quiet_since + self.heartbeat if self.heartbeat else math.inf
            now = time.monotonic()
            if now >= beat_at:
                self._quiet_since = now
                return {"type": "heartbeat", "at": time.time()}
            until = beat_at if deadline is None else min(beat_at, deadline)
            if until - now <= 0:
                return None
            fact = self._changes.get(timeout=None if until == math.inf else until - now)
            if fact is not None and (self.segment in ("*", fact.key)):
                self._quiet_since = time.monotonic()
                return {"type": "change", **self._status(fact)}
        return None

    def poll(self) -> dict[str, Any] | None:
        """The next message if one is ready now, without waiting: the first call reads
        the status of every segment; then changes, then a heartbeat once one is due."""
        if self._pending is None:
            self._pending = self._snapshot()
        if self._pending:
            return self._pending.popleft()
        while not self.closed:
            fact = self._changes.get(timeout=0)
            if fact is None:
                break
            if self.segment in ("*", fact.key):
                self._quiet_since = time.monotonic()
                return {"type": "change", **self._status(fact)}
        now = time.monotonic()
        if not self.closed and self.heartbeat and now >= self._quiet_since + self.heartbeat:
            self._quiet_since = now
            return {"type": "heartbeat", "at": time.time()}
        return None

    def heartbeat_due(self) -> float | None:
        """Seconds until the next heartbeat is due (if nothing happens meanwhile); None
        with heartbeats off."""
        if not self.heartbeat:
            return None
        return max(0.0, self._quiet_since + self.heartbeat - time.monotonic())

    def watch(self, wake: Callable[[], object]) -> None:
        r"""Call ``wake`` (from a writing thread) when a change may be ready or the stream
        closes, for a caller that waits on an event loop and then :meth:`poll`\ s."""
        self._changes.watch(wake)

    def _status(self, fact: Fact) -> dict[str, Any]:
        first, _ = self._db._log.segment_bounds(self.space, fact.key)
        return status_of(self.space, fact.key, first, fact)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        message = self.get()
        if message is None:
            raise StopIteration
        return message

    def close(self) -> None:
        self._changes.close()

    def __enter__(self) -> StatusSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""The embedded database: facts, history, time travel, atomic batches, replay, changefeed.

:func:`kilndb.open` returns a :class:`Database`; ``db.store(name)`` returns a
:class:`Store`. Both are safe to use from many threads at once. The network client
offers the same interface, so code written against one runs against the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import replace
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, overload

import orjson

from kilndb.config import DatabaseConfig
from kilndb.engine.changefeed import CallbackSubscription, Subscription
from kilndb.engine.lease_book import LeaseBook
from kilndb.engine.streams import Space
from kilndb.engine.writes import PreparedWrite, fact_write, prepare_write, snapshot_facts
from kilndb.errors import (
    CursorTooOldError,
    InvalidArgumentError,
    KilnError,
)
from kilndb.leases import Lease, LeaseKeeper, check_fence
from kilndb.model import (
    Fact,
    Write,
    validate_database_name,
    validate_store_name,
)
from kilndb.storage.facts import FactLog, check_limit, check_position
from kilndb.storage.memory import MemoryDirectory, is_memory
from kilndb.storage.meta import BY_STORE, watermark_covering
from kilndb.storage.retention import Retention
from kilndb.storage.shipping import LogReader
from kilndb.streams import check_channel

__all__ = ["Database", "Store"]

_loads = orjson.loads
_dumps = orjson.dumps
#: The fields after ``value`` of a Write that sets nothing but store, key and value.
_PLAIN_WRITE = Write("", "")[3:]


def _prepare(write: Write | dict[str, Any], trusted: bool = False) -> PreparedWrite:
    """Check and serialise one write in Python: what the native core leaves to it
    (exotic values, and every write it would refuse, for the precise error)."""
    if type(write) is dict:  # a write request's params, as write_each_wire takes them
        write = Write(**{name: write[name] for name in Write._fields if name in write})
    if type(write) is not Write:
        raise InvalidArgumentError(f"expected a kilndb.Write, not {type(write).__name__}")
    return prepare_write(
        write.store,
        write.key,
        write.value,
        expected_seq=write.expected_seq,
        id=write.id,
        causation=write.causation,
        valid_time=write.valid_time,
        schema_version=write.schema_version,
        producer=write.producer,
        derivation=write.derivation,
        metadata=write.metadata,
        deleted=write.deleted,
        store_checked=trusted,
    )


def _check_stores(stores: object) -> frozenset[str] | None:
    if stores is None:
        return None
    if isinstance(stores, str) or not isinstance(stores, Iterable):
        raise InvalidArgumentError("stores must be a list of store names or None")
    return frozenset(validate_store_name(s) for s in stores)


class Store:
    """A named collection of keys inside a database. Get one with ``db.store(name)``."""

    __slots__ = ("_db", "name")

    def __init__(self, db: Database, name: str) -> None:
        self._db = db
        self.name = name

    def __repr__(self) -> str:
        return f"<Store {self.name!r} of {self._db!r}>"

    def write(
        self,
        key: str,
        value: Any,
        *,
        expected_seq: int | None = None,
        id: str | None = None,
        causation: str | None = None,
        valid_time: float | None = None,
        schema_version: int = 1,
        producer: Any = None,
        derivation: Any = None,
        metadata: dict[str, str] | None = None,
        fence: Any = None,
    ) -> Fact:
        """Append a fact for ``key``; return it once it is durable.

        Raises ConflictError if ``expected_seq`` does not match (0 = the key must not
        exist), InvalidArgumentError for a bad argument (nothing is written). Writing an
        ``id`` the database already holds returns the stored fact. With ``fence=lease``
        the write is refused (LeaseLostError) once a newer lease exists for its key.
        """
        write = Write(
            self.name,
            key,
            value,
            expected_seq,
            id,
            causation,
            valid_time,
            schema_version,
            producer,
            derivation,
            metadata,
        )
        fenced = check_fence(fence)
        return self._db._log.commit([write], atomic=True, trusted=True, fence=fenced)[0]  # type: ignore[no-any-return]

    def delete(
        self,
        key: str,
        *,
        expected_seq: int | None = None,
        id: str | None = None,
        causation: str | None = None,
        metadata: dict[str, str] | None = None,
        fence: Any = None,
    ) -> Fact:
        """Write a tombstone for ``key``; raises NotFoundError if it has no live value."""
        write = Write(
            self.name,
            key,
            None,
            expected_seq,
            id,
            causation,
            metadata=metadata,
            deleted=True,
        )
        fenced = check_fence(fence)
        return self._db._log.commit([write], atomic=True, trusted=True, fence=fenced)[0]  # type: ignore[no-any-return]

    def read(self, key: str, *, as_of: float | None = None) -> Fact | None:
        """The latest fact of ``key`` (as of a transaction time), or None if absent/deleted."""
        return self._db._log.read(self.name, key, as_of)

    def history(
        self,
        key: str,
        *,
        since_seq: int = 1,
        until_seq: int | None = None,
        limit: int | None = None,
    ) -> list[Fact]:
        """Retained facts of ``key`` with ``since_seq <= seq <= until_seq``, by seq."""
        return self._db._log.history(self.name, key, since_seq, until_seq, limit)

    def keys(
        self, prefix: str = "", limit: int | None = None, after: str | None = None
    ) -> list[str]:
        """Keys with a live (not deleted) value, sorted, optionally by prefix; with
        ``after``, only those sorting after it (pass the last key of a page to get the
        next page)."""
        return self._db._log.keys(self.name, prefix, limit, after)


class Database:
    """An open database: one directory, one ordered log. Use :func:`kilndb.open`."""

    def __init__(
        self,
        path: str | Path,
        database: str = "default",
        config: DatabaseConfig | None = None,
        *,
        database_id: str | None = None,
    ) -> None:
        """``path`` is the data directory, or ``":memory:"`` for a new private database
        in RAM (see :func:`kilndb.open`). ``database_id``: for a replica, its leader's
        id (a new database takes it; an existing one must have it)."""
        self.name = validate_database_name(database)
        self.config = config or DatabaseConfig()
        #: With ``path=":memory:"``: the private directory in RAM that holds it.
        self._memory = MemoryDirectory() if is_memory(path) else None
        if self._memory is not None:
            path = self._memory.path
            self.config = replace(self.config, sync="none")  # nothing outlives close
        self.data_dir = Path(path)
        self.path = self.data_dir / self.name
        try:
            self._log = FactLog(self.path, self.config, database_id, prepare=_prepare)
        except BaseException:
            self._forget_memory()
            raise
        self._stores: dict[str, Store] = {}
        self._leases = LeaseBook(self._log)

    def __repr__(self) -> str:
        where = "in memory" if self.in_memory else f"at {str(self.data_dir)!r}"
        return f"<kilndb.Database {self.name!r} {where}>"

    @property
    def in_memory(self) -> bool:
        """Whether it was opened with ``":memory:"``: private, gone once closed."""
        return self._memory is not None

    def _forget_memory(self) -> None:
        if self._memory is not None:
            self._memory.remove()

    # -- stores ----------------------------------------------------------------------

    def store(self, name: str) -> Store:
        """The store called ``name`` (created by its first write)."""
        found = self._stores.get(name) if type(name) is str else None
        if found is None:
            found = self._stores.setdefault(name, Store(self, validate_store_name(name)))
        return found

    # -- leases ----------------------------------------------------------------------

    def acquire_lease(self, key: str, holder: str, ttl: float) -> Lease:
        """Take the lease ``key`` for ``holder`` for ``ttl`` seconds (capped at 24 h).

        A free, expired or released lease gets the key's next fencing token; the holder
        of a valid lease acquiring it again extends it (same token). Raises
        LeaseHeldError (who holds it, until when) if someone else holds it.
        """
        return self._leases.acquire(key, holder, ttl)

    def renew_lease(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend a held lease to ``ttl`` seconds (capped at 24 h) from now; without
        ``ttl``, by the time to live it was last acquired or renewed with (60 s for a
        lease taken by a version that did not record it).

        Raises LeaseLostError if it expired, was released or was taken over.
        """
        return self._leases.renew(lease, ttl)

    def release_lease(self, lease: Lease) -> bool:
        """Give a held lease up; False if it was not held any more (nothing to do)."""
        return self._leases.release(lease)

    def leases(self) -> list[Lease]:
        """The leases held now (not expired, not released), by key."""
        return self._leases.held()

    def lease(self, key: str, holder: str, ttl: float) -> LeaseKeeper:
        """``with db.lease(key, holder=…, ttl=…) as lease:`` — held, renewed at ttl/2,
        released on exit; ``lease.lost`` tells a loss, and fenced calls then refuse."""
        return LeaseKeeper(self, key, holder, ttl)

    # -- spaces ----------------------------------------------------------------------

    def space(self, name: str) -> Space:
        """The streams view of store ``name``: ordered segments (keys) of entries (facts)."""
        return Space(self, name)

    def spaces(self) -> list[str]:
        """The spaces (stores) that hold entries, sorted."""
        return self.stores()

    # -- replication -----------------------------------------------------------------

    @property
    def database_id(self) -> str:
        return self._log.database_id

    def log_reader(self, after: int, holds_through: int = 0) -> LogReader:
        """For a leader: ships this database's durable records after ``after`` (to a
        follower whose copy reflects compaction through ``holds_through``)."""
        self._log.check_open()
        return LogReader(self._log, after, holds_through)

    def append_shipment(self, frames: bytes) -> int:
        """For a follower: append a leader's shipment verbatim; its last position once it
        is durable under this database's sync mode."""
        last = self._log.append_shipment(frames)
        self._log.wait_durable(last)
        return last

    def wait_visible(self, after: int, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for a position beyond ``after`` to become
        visible (durable, with ``sync="always"``); return the visible position."""
        log = self._log
        with log.visible_cond:
            log.subscribers += 1  # writers notify only while someone waits
            try:
                if log.visible <= after and not log.closed:
                    log.visible_cond.wait(timeout)
                return log.visible
            finally:
                log.subscribers -= 1

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """The leader epoch history: ``{"epoch", "start_position", "id"}`` each (META;
        epoch 0, the database's creation, has no id)."""
        return [
            dict(e) for e in self._log.meta.get("epochs") or [{"epoch": 0, "start_position": 1}]
        ]

    def promote(self, epoch: int | None = None, above: int = 0) -> int:
        """Make this copy a leader's: start a new leader epoch at the next position —
        ``epoch`` if given (a coordinator's fencing token, above the current epoch),
        else one greater than the current epoch and than ``above`` (an epoch known to
        be led elsewhere)."""
        self._log.check_open()
        return self._log.start_epoch(epoch, above)

    def adopt_epochs(self, epochs: list[dict[str, Any]]) -> None:
        """For a follower: record its leader's epoch history."""
        self._log.adopt_epochs(epochs)

    def retention_policies(self) -> dict[str, dict[str, Any]]:
        """Every store's retention policy that is not the default, reserved stores
        included: ``{store: {"keep", "max_age"}}``."""
        with self._log.lock:  # set_retention changes the map under this lock
            return {store: policy.to_dict() for store, policy in self._log.retention.items()}

    def adopt_retention(self, policies: dict[str, dict[str, Any]]) -> None:
        """For a follower: take its leader's retention policies (so it drops, and shows,
        the same facts); stores absent from ``policies`` go back to keeping all."""
        current = self._log.retention
        for store in sorted(set(current) | set(policies)):
            policy = Retention.from_dict(policies.get(store, {}))
            if current.get(store, Retention()) != policy:
                self._log.set_retention(store, policy)

    def adopt_compacted(self, position: int, by_store: dict[str, int] | None = None) -> None:
        """For a follower: its leader's compaction removed records up to ``position``,
        and from each store up to its value in ``by_store``, so changefeed cursors below
        them are too old here as well. Without ``by_store`` (a leader that does not send
        it) ``position`` applies to every store this copy holds."""
        self._log.record_compacted(position, by_store)

    @property
    def compacted_through(self) -> int:
        """The highest position compaction has removed (0 if none), whatever its store:
        replication positions below it cannot be served from this log."""
        return int(self._log.meta.get("compacted_through", 0))

    @property
    def compacted_through_by_store(self) -> dict[str, int]:
        """``{store: the highest position compaction has removed from it}``, for the
        stores that lost facts: a changefeed cursor on a store below its watermark is
        too old."""
        return dict(self._log.meta.get(BY_STORE, {}))

    @property
    def durable_position(self) -> int:
        """The last position known to be on stable storage."""
        return self._log.group_commit.durable

    @property
    def last_position(self) -> int:
        """The last position written (durable or not), as ``stats()["last_position"]``
        without the rest of the counters."""
        return self._log.next_position - 1

    @property
    def leader_epoch(self) -> int:
        """The leader epoch this database's log is in (META)."""
        epochs = self._log.meta.get("epochs") or [{"epoch": 0}]
        return int(epochs[-1]["epoch"])

    def stores(self) -> list[str]:
        """Names of the stores that hold retained facts, sorted."""
        return self._log.stores()

    # -- writing ---------------------------------------------------------------------

    def write_many(self, writes: Iterable[Write], *, fence: Any = None) -> list[Fact]:
        """Write a batch atomically: every fact is committed, or none (also across a crash).

        Raises ConflictError (nothing written) if any ``expected_seq`` does not match; the
        writes of a batch see each other, so a key may appear more than once. The facts
        of a batch share one transaction time: they commit together.
        """
        fenced = check_fence(fence)
        batch = writes if type(writes) is list else list(writes)
        if not batch:
            return []
        return self._log.commit(batch, atomic=True, fence=fenced)

    def write_fact(self, fact: Fact | Mapping[str, Any]) -> Fact:
        """Store a whole fact (one read from another database, or Igniter's fact hash)
        and return it as stored here: what is kept and what this database assigns is
        :func:`~kilndb.engine.writes.fact_write`'s (its own transaction time goes to
        ``metadata["kiln.origin_transaction_time"]``; a ``value_hash`` that does not
        match the value raises InvalidArgumentError). A fact whose ``id`` is stored
        already is returned as it is."""
        return self._log.commit([Write(**fact_write(fact))], atomic=True)[0]  # type: ignore[no-any-return]

    def write_snapshot(self, facts: Iterable[Fact | Mapping[str, Any]]) -> dict[str, int]:
        """Igniter's checkpoint: store whole facts (as :meth:`write_fact`) in one atomic
        batch; facts whose ids the database holds already are skipped, nothing is
        removed. Returns ``{"written": n, "skipped": m}``."""
        batch = [Write(**fact_write(fact)) for fact in snapshot_facts(facts)]
        if not batch:
            return {"written": 0, "skipped": 0}
        before = self.last_position
        stored = self._log.commit(batch, atomic=True)
        written = len({fact.position for fact in stored if fact.position > before})
        return {"written": written, "skipped": len(batch) - written}

    def write_each(self, writes: Iterable[Write]) -> list[Fact | KilnError]:
        """Commit independent writes together; each succeeds or fails on its own.

        Unlike :meth:`write_many` this is not atomic: the result for each write is its
        fact, or the error that refused it (ConflictError, NotFoundError,
        InvalidArgumentError …) while the others go ahead. The writes are applied in
        order — a later write to a key sees an earlier one — under one lock and with one
        append, and share an fsync. It is how a server applies a pipeline of requests.
        """
        return self._write_each(writes, wire=False)  # type: ignore[return-value]

    def write_each_wire(
        self, writes: Iterable[Write | dict[str, Any]], *, as_bytes: bool = False
    ) -> list[dict[str, Any] | orjson.Fragment | bytes | KilnError]:
        """:meth:`write_each` for transports: each written fact as its stored JSON (an
        ``orjson.Fragment``, embedded as it is; with ``as_bytes``, the bytes), a retried
        one as its ``to_dict()``.

        A write may also be given as a write request's checked params (a dict with the
        fields of :class:`Write` by name; absent options take their defaults, other keys
        are ignored), which saves building a Write per request."""
        return self._write_each(writes, wire=True, raw=as_bytes)  # type: ignore[return-value]

    def _write_each(
        self, writes: Iterable[Write | dict[str, Any]], wire: bool, raw: bool = False
    ) -> list[Fact | dict[str, Any] | KilnError]:
        batch = writes if type(writes) is list else list(writes)
        return self._log.commit(batch, atomic=False, wire=wire, raw=raw) if batch else []

    # -- reading ---------------------------------------------------------------------

    def replay(
        self, after: int = 0, stores: Iterable[str] | None = None, limit: int | None = None
    ) -> Iterator[Fact]:
        """Retained facts with position > ``after``, in position (commit) order."""
        start = check_position("after", after)
        wanted = check_limit(limit)
        chosen = _check_stores(stores)
        log = self._log
        log.check_open()
        facts = log.iter_facts(start, log.visible, chosen)
        return facts if wanted is None else islice(facts, wanted)

    def replay_wire(
        self, after: int = 0, stores: Iterable[str] | None = None, limit: int | None = None
    ) -> Iterator[tuple[int, bytes]]:
        """:meth:`replay` for transports: ``(position, json)`` of each fact, the JSON
        being exactly what ``orjson.dumps(fact.to_dict())`` would produce."""
        start = check_position("after", after)
        wanted = check_limit(limit)
        chosen = _check_stores(stores)
        log = self._log
        log.check_open()
        records = log.iter_records(start, log.visible, chosen)
        return records if wanted is None else islice(records, wanted)

    @overload
    def subscribe(
        self,
        stores: Iterable[str] | None = None,
        after: int = 0,
        *,
        callback: None = None,
        channel: str | None = None,
    ) -> Subscription: ...

    @overload
    def subscribe(
        self,
        stores: Iterable[str] | None = None,
        after: int = 0,
        *,
        callback: Callable[[Fact], object],
        channel: str | None = None,
    ) -> CallbackSubscription: ...

    def subscribe(
        self,
        stores: Iterable[str] | None = None,
        after: int = 0,
        *,
        callback: Callable[[Fact], object] | None = None,
        channel: str | None = None,
    ) -> Subscription | CallbackSubscription:
        """Facts after ``after`` (catch-up), then live ones as they commit.

        Without ``callback``, an iterator of the facts. With it, a handle: a background
        thread calls ``callback(fact)`` for each fact until ``handle.close()`` (see
        :class:`~kilndb.engine.changefeed.CallbackSubscription`). ``channel``: the
        stream's channel id, for tracing (a UUID is assigned without one).

        Raises CursorTooOldError if facts after ``after`` of a store it follows (any
        store without ``stores``) were compacted away, naming the store with the highest
        watermark (``after=0`` always means "from the oldest retained fact"); compaction
        of other stores does not matter.
        """
        start = check_position("after", after)
        chosen = _check_stores(stores)
        named = check_channel(channel)
        if callback is not None and not callable(callback):
            raise InvalidArgumentError("callback must be callable")
        log = self._log
        log.check_open()
        if (covering := watermark_covering(log.meta, start, chosen)) is not None:
            store, compacted = covering
            raise CursorTooOldError(start, compacted, store=store)
        subscription = Subscription(log, chosen, start, named)
        return subscription if callback is None else CallbackSubscription(subscription, callback)

    # -- maintenance -----------------------------------------------------------------

    def set_retention(self, store: str, keep: str = "all", max_age: float | None = None) -> None:
        """Set what compaction keeps of ``store``: ``keep="all"|"latest"``, ``max_age`` s."""
        self._log.set_retention(validate_store_name(store), Retention(keep=keep, max_age=max_age))

    def retention(self, store: str) -> dict[str, Any]:
        """The retention policy of ``store``."""
        return self._log.retention.get(validate_store_name(store), Retention()).to_dict()

    def compact(self) -> dict[str, int]:
        """Apply retention and reclaim the space of dropped facts now."""
        return self._log.compact()

    def sync(self) -> None:
        """Fsync everything written so far (useful with ``sync="none"|"interval"``)."""
        self._log.sync()

    def defer_durability(self) -> AbstractContextManager[list[int]]:
        """For transports: writes on this thread return before their fsync.

        Yields the list the positions to make durable are collected in; nothing may be
        acknowledged before :meth:`wait_durable` of the largest of them has returned.
        """
        return self._log.deferring_durability()

    def wait_durable(self, position: int) -> None:
        """Block until ``position`` is durable under the database's sync mode."""
        self._log.wait_durable(position)

    def stats(self) -> dict[str, Any]:
        """Counters and sizes of the database."""
        stats = self._log.stats()
        return {
            "database": self.name,
            "database_id": stats.pop("database_id"),
            "path": str(self.path),
            **stats,
        }

    def close(self) -> None:
        """Flush, write hint files and release the database (one in memory is deleted).
        Idempotent."""
        try:
            self._log.close()
        finally:
            self._forget_memory()

    @property
    def closed(self) -> bool:
        return self._log.closed

    @property
    def subscriber_count(self) -> int:
        """Open subscriptions (changefeeds) following this database."""
        return self._log.subscribers

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""The log's one door for facts: staging, committing and reading them under its lock.

Theory of operation
-------------------
:class:`FactLog` is the :class:`~kilndb.storage.log.Log` as the engine sees it. Every
operation that needs the log's lock, keydir or id index is a method here, so the engine
never reaches into them:

* :meth:`FactLog.commit` stages a whole batch of validated writes (expected-seq checks,
  idempotent ids, a lease fence), appends it with one write and waits for one fsync;
  :meth:`FactLog.commit_one` is the same for a single write.
* :meth:`FactLog.commit_imported` is :meth:`FactLog.commit` for a batch of an import:
  each fact keeps its own transaction time where the log's order allows it.
  :meth:`FactLog.commit_lines` does the same for a batch the native core read from the
  import's lines itself, and hands back any batch it refuses.
* :meth:`FactLog.read`, :meth:`FactLog.history`, :meth:`FactLog.keys` and
  :meth:`FactLog.stores` look keys up and read the facts' records.

The lock is taken once per call, not once per fact, which is what lets the hot path
cross into the native core once per batch.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from math import isfinite
from pathlib import Path
from typing import Any

import orjson

from kilndb import _core
from kilndb.config import DatabaseConfig
from kilndb.errors import (
    InvalidArgumentError,
    LeaseLostError,
    NotFoundError,
)
from kilndb.leases import LEASE_STORE
from kilndb.model import ORIGIN_TIME_KEY, RESERVED_STORE_PREFIX, Fact, Write, validate_key
from kilndb.storage.log import Log
from kilndb.storage.meta import BY_STORE
from kilndb.storage.records import PreparedWrite

__all__ = ["FactLog", "check_limit", "check_position"]

_loads = orjson.loads
_dumps = orjson.dumps


def check_limit(limit: object) -> int | None:
    if limit is not None and (type(limit) is not int or limit < 0):
        raise InvalidArgumentError("limit must be a non-negative integer or None")
    return limit


def check_position(name: str, value: object) -> int:
    if type(value) is not int or value < 0:
        raise InvalidArgumentError(f"{name} must be a non-negative integer")
    return value


class FactLog(Log):
    """A database's log with the fact-level operations the engine uses."""

    def __init__(
        self,
        directory: Path,
        config: DatabaseConfig,
        database_id: str | None = None,
        *,
        prepare: Callable[[Write, bool], PreparedWrite],
    ) -> None:
        """``prepare(write, trusted)``: checks and serialises a write the native core
        leaves to Python (exotic values, and every write it would refuse, so that the
        error is Python's precise one); ``trusted`` skips the reserved-store check."""
        super().__init__(directory, config, database_id)
        self._stager = _core.Stager(Write, Fact, prepare, self.ids_codec.prefix)

    def commit(
        self,
        writes: list[Write] | list[Write | dict[str, Any]],
        *,
        atomic: bool,
        trusted: bool = False,
        wire: bool = False,
        raw: bool = False,
        fence: tuple[str, int] | None = None,
    ) -> list[Any]:
        """Stage and append ``writes`` under one lock; one fsync wait for all of them.

        Each result is the write's Fact, the fact already stored under its id (an
        idempotent retry, acknowledged no sooner than the original) or, unless
        ``atomic``, the KilnError that refused it. ``atomic``: the first refused write
        raises, nothing is written, and the facts are framed as one batch. ``trusted``:
        the writes come from KilnDB itself and may use reserved stores. ``wire``:
        written facts are returned as their JSON (``orjson.Fragment``; with ``raw``, bytes),
        stored ones as ``to_dict()``, ready for a transport to encode.
        """
        with self.lock:
            self.check_open()
            if fence is not None:
                self._check_fence_locked(*fence)
            ttime = self.next_ttime()
            staged = self._stager.stage(
                writes,
                self,
                self.keydir,
                self.next_position,
                ttime,
                atomic,
                trusted,
                self.config.max_record_bytes,
                wire,
                raw,
            )
            if staged.count:
                self.append_staged(staged)
        if staged.must_be_durable:
            self.wait_durable(staged.must_be_durable)
        return staged.results

    def commit_imported(
        self,
        writes: Sequence[Write],
        own_times: Sequence[float | None],
        hashes: Sequence[str | None],
    ) -> tuple[int, int, int]:
        """Commit one atomic batch of an import; durable when this returns.

        ``own_times``: each write's own transaction time (a whole fact's), or None (a
        plain write). A fact keeps its own time when it is neither earlier than the
        log's last transaction time (then than the time of the fact before it) nor later
        than now; otherwise it gets the database's time, and its own goes to
        ``metadata["kiln.origin_transaction_time"]`` (unless it carries one there). A
        plain write gets the database's time. ``hashes``: each write's claimed value hash
        or None; a write whose value hashes otherwise refuses the batch
        (InvalidArgumentError). Writes whose id is stored, or repeats one earlier in the
        batch, are skipped. Raises as an atomic :meth:`commit` does, nothing written.

        Returns how many facts were written and skipped, and the last position written
        (0 if none).
        """
        with self.lock:
            self.check_open()
            floor = self.last_ttime
            now = max(time.time(), floor)

            def stage(plan: tuple[list[Write], list[float]]) -> _core.Staged:
                return self._stager.stage(
                    plan[0],
                    self,
                    self.keydir,
                    self.next_position,
                    now,
                    True,
                    False,
                    self.config.max_record_bytes,
                    True,
                    True,
                    ttimes=plan[1],
                    hashes=list(hashes),
                    outcomes=False,
                )

            plan = _import_times(writes, own_times, None, floor, now)
            staged = stage(plan)
            if 0 < staged.count < len(writes):
                # Skipped writes set no floor for the facts after them: plan again.
                written = frozenset(staged.written)
                replanned = _import_times(writes, own_times, written, floor, now)
                if replanned != plan:
                    staged = stage(replanned)
                    plan = replanned
            if staged.count:
                self.append_staged(staged)
                # Every time written is at most the last one: the plan never decreases.
                self.last_ttime = max(self.last_ttime, plan[1][staged.written[-1]])
        if staged.must_be_durable:
            self.wait_durable(staged.must_be_durable)
        return staged.count, len(writes) - staged.count, staged.last

    def commit_lines(self, lines: _core.ImportLines) -> tuple[int, int, int] | None:
        """:meth:`commit_imported` for a batch of an import read natively
        (``_core.read_import_lines``), which it consumes: the same transaction times,
        the same records, the same facts skipped. None if the batch is refused, with
        nothing written: the caller then commits the lines through
        :meth:`commit_imported`, which raises the precise error.
        """
        with self.lock:
            self.check_open()
            floor = self.last_ttime
            staged = self._stager.stage_import(
                lines,
                self,
                self.keydir,
                self.next_position,
                floor,
                max(time.time(), floor),
                self.config.max_record_bytes,
            )
            if staged is None:
                return None
            last_ttime = staged.last_ttime
            if last_ttime is not None:
                self.append_staged(staged)
                self.last_ttime = max(self.last_ttime, last_ttime)
        if staged.must_be_durable:
            self.wait_durable(staged.must_be_durable)
        return staged.count, lines.count - staged.count, staged.last

    def _stored_position(self, fact_id: str) -> int | None:
        """Position of the fact already stored under ``fact_id`` (hold the log lock)."""
        log = self
        position = log.ids.get(fact_id)
        if position is not None:
            # A fact that retention has dropped no longer exists: its id is free again.
            return position if log.keydir.is_retained(position) else None
        generated = log.ids_codec.position_of(fact_id)
        if generated is None:
            return None
        if generated >= log.next_position:
            raise InvalidArgumentError(
                f"id {fact_id!r} has the form of an id this database generates"
                " and does not name a stored fact"
            )
        return generated if log.keydir.is_retained(generated) else None

    def _stored_fact(self, position: int) -> Fact:
        """The retained fact at ``position`` (hold the log lock)."""
        fact = self.read_fact_locked(position)
        if fact is None:
            raise NotFoundError(f"no retained fact at position {position}")
        return fact

    def read(self, store: str, key: str, as_of: float | None) -> Fact | None:
        """The latest fact of a key (as of a transaction time), None if absent/deleted."""
        log = self
        if type(key) is not str:
            validate_key(key)
        if as_of is not None and (
            isinstance(as_of, bool) or not isinstance(as_of, int | float) or not isfinite(as_of)
        ):
            raise InvalidArgumentError("as_of must be a finite transaction time (epoch seconds)")
        with log.lock:
            log.check_open()
            found = log.keydir.locate(store, key, as_of)
            if found is None:
                return None
            _, file_id, offset, size = found
            datafile = log.files[file_id]
        # ``datafile`` is held until the core has read: its descriptor stays open.
        fact: Fact = _core.read_fact(datafile.fd, datafile.name, offset, size, Fact)
        return None if fact.deleted else fact

    def history(
        self,
        store: str,
        key: str,
        since_seq: object,
        until_seq: object,
        limit: object,
        visible_only: bool = False,
    ) -> list[Fact]:
        """``visible_only``: stop at the visible position (the durable one with
        ``sync="always"``), as the changefeed and replay do — the streams view's rule."""
        log = self
        log.check_open()
        validate_key(key)
        since = check_position("since_seq", since_seq)
        until = None if until_seq is None else check_position("until_seq", until_seq)
        wanted = check_limit(limit)
        visible = log.visible if visible_only else None
        chosen = log.keydir.history(store, key, since, until, wanted, visible)
        return log.read_facts(chosen)

    def keys(self, store: str, prefix: object, limit: object, after: object = None) -> list[str]:
        if not isinstance(prefix, str):
            raise InvalidArgumentError("prefix must be a string")
        if after is not None and not isinstance(after, str):
            raise InvalidArgumentError("after must be a string or None")
        wanted = check_limit(limit)
        self.check_open()
        return self.keydir.keys(store, prefix, wanted, after=after)

    def _check_fence_locked(self, key: str, token: int) -> None:
        """Refuse a fenced write unless ``token`` is the lease's newest (hold the lock)."""
        log = self
        position = log.keydir.latest(LEASE_STORE, key)
        body = None if position is None else log.read_body_locked(position)
        current = None if body is None else _loads(body)["value"]["token"]
        if current != token:
            reason = "no such lease" if current is None else "a newer lease exists"
            if current is not None and current < token:
                reason = "no lease with this token was ever granted"
            raise LeaseLostError(key, token, current, reason)

    def latest_seq(self, store: str, key: str) -> int:
        state = self.keydir.latest_state(store, key)
        return 0 if state is None else state[1]

    def segment_bounds(self, store: str, key: str) -> tuple[Fact | None, Fact | None]:
        """The first and the last visible retained fact of a key (None, None if none)."""
        log = self
        log.check_open()
        positions = log.keydir.positions(store, key)
        stop = bisect.bisect_right(positions, log.visible)  # durable entries only
        if not stop:
            return None, None
        ends = [positions[0]] if stop == 1 else [positions[0], positions[stop - 1]]
        facts = log.read_facts(ends)
        return (facts[0], facts[-1]) if facts else (None, None)

    def stats(self) -> dict[str, Any]:
        """Counters and sizes of the log (``Database.stats`` adds its name and path)."""
        log = self
        with log.lock:
            log.check_open()
            keydir = log.keydir
            files = list(log.files.values())
            stats: dict[str, Any] = {
                "database_id": log.database_id,
                "sync": self.config.sync,
                "last_position": log.next_position - 1,
                "durable_position": log.group_commit.durable,
                "facts": keydir.facts,
                "keys": keydir.key_count,
                "stores": keydir.store_count,
                "files": len(files),
                "active_file": log.active.file_id,
                "data_bytes": sum(f.size for f in files),
                "dead_bytes": sum(f.dead_bytes for f in files),
                "fsyncs": log.group_commit.fsyncs,
                "subscribers": log.subscribers,
                "compacted_through": log.meta.get("compacted_through", 0),
                "compacted_through_by_store": dict(log.meta.get(BY_STORE, {})),
                "torn_tails_cut": len(log.torn_tails),
                **log.stats_counters,
            }
        return stats

    def stores(self) -> list[str]:
        """Names of the stores that hold retained facts, sorted."""
        log = self
        with log.lock:
            log.check_open()
            return [s for s in log.keydir.stores() if not s.startswith(RESERVED_STORE_PREFIX)]


def _import_times(
    writes: Sequence[Write],
    own_times: Sequence[float | None],
    written: frozenset[int] | None,
    floor: float,
    now: float,
) -> tuple[list[Write], list[float]]:
    """The writes of an import batch as they are staged, and each one's transaction time
    (see :meth:`FactLog.commit_imported`). ``written``: the writes that are written, if
    known (the others set no floor); ``floor``: the log's last transaction time."""
    batch = list(writes)
    times = [t for t in own_times if t is not None]
    if (
        len(times) == len(own_times)
        and times
        and floor <= times[0]
        and times[-1] <= now
        and sorted(times) == times
    ):
        # The common batch of an export: every fact keeps its own time.
        return batch, times
    ttimes: list[float] = []
    for i, own in enumerate(own_times):
        if own is None:
            ttime = now
        elif floor <= own <= now:
            ttime = own
        else:
            ttime = max(now, floor)
            metadata = batch[i].metadata
            # Metadata of another type is left for staging to refuse.
            if metadata is None or type(metadata) is dict:
                kept = dict(metadata or {})
                kept.setdefault(ORIGIN_TIME_KEY, repr(own))
                batch[i] = batch[i]._replace(metadata=kept)
        ttimes.append(ttime)
        if written is None or i in written:
            floor = ttime
    return batch, ttimes

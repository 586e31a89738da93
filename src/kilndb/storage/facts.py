"""The log's one door for facts: staging, committing and reading them under its lock.

Theory of operation
-------------------
:class:`FactLog` is the :class:`~kilndb.storage.log.Log` as the engine sees it. Every
operation that needs the log's lock, keydir or id index is a method here, so the engine
never reaches into them:

* :meth:`FactLog.commit` stages a whole batch of validated writes (expected-seq checks,
  idempotent ids, a lease fence), appends it with one write and waits for one fsync;
  :meth:`FactLog.commit_one` is the same for a single write.
* :meth:`FactLog.read`, :meth:`FactLog.history`, :meth:`FactLog.keys` and
  :meth:`FactLog.stores` look keys up and read the facts' records.

The lock is taken once per call, not once per fact, which is what lets the hot path
cross into the native core once per batch.
"""

from __future__ import annotations

import bisect
from math import isfinite
from typing import Any

import orjson

from kilndb.errors import (
    ConflictError,
    InvalidArgumentError,
    KilnError,
    LeaseLostError,
    NotFoundError,
)
from kilndb.leases import LEASE_STORE
from kilndb.model import RESERVED_STORE_PREFIX, Fact, fact_from_dict, validate_key
from kilndb.storage.keydir import TOMBSTONE
from kilndb.storage.log import Log, PendingFact
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

    def commit_one(self, w: PreparedWrite, fence: tuple[str, int] | None = None) -> Fact:
        log = self
        keydir = log.keydir
        stored: Fact | None = None
        with log.lock:
            log.check_open()
            if fence is not None:
                self._check_fence_locked(*fence)
            existing = None if w.id is None else self._stored_position(w.id)
            if existing is not None:
                stored = self._stored_fact(existing)
            else:
                latest = keydir.latest(w.store, w.key)
                current, is_deleted = (0, False) if latest is None else keydir.seq_of(latest)
                record, pending = self._stage(
                    w, log.next_position, current, is_deleted, log.next_ttime()
                )
                last = log.append_locked([pending], batch=False)
        if stored is not None:
            # A retry may arrive while the original is still waiting for its fsync: it
            # is acknowledged no sooner than the original.
            log.wait_durable(stored.position)
            return stored
        log.wait_durable(last)
        record["value"] = w.stored_value()
        return fact_from_dict(record)

    def commit(
        self,
        writes: list[PreparedWrite],
        atomic: bool,
        wire: bool = False,
        fence: tuple[str, int] | None = None,
    ) -> list[Fact | dict[str, Any] | KilnError]:
        """Stage and append ``writes`` under one lock; one fsync wait for all of them.

        ``atomic``: the first refused write raises and nothing is written, and the facts
        are framed as one batch. Otherwise a refused write's result is its error.
        ``wire``: facts are returned as wire dicts (see :meth:`write_each_wire`).
        """
        log = self
        keydir = log.keydir
        stage = self._stage
        # Each result is a fact already stored (an idempotent retry), the error that
        # refused the write, or the index of a record this call writes.
        results: list[Fact | KilnError | int] = []
        records: list[tuple[dict[str, Any], PreparedWrite]] = []
        pending: list[PendingFact] = []
        must_be_durable = 0
        with log.lock:
            log.check_open()
            if fence is not None:
                self._check_fence_locked(*fence)
            ttime = log.next_ttime()
            # (seq, deleted) of keys written so far by this call.
            written_state: dict[tuple[str, str], tuple[int, bool]] = {}
            # id -> index in ``records`` of the ids this call writes.
            written_ids: dict[str, int] = {}
            position = log.next_position
            for w in writes:
                if w.id is not None:
                    index = written_ids.get(w.id)
                    if index is not None:
                        results.append(index)
                        continue
                    existing = self._stored_position(w.id)
                    if existing is not None:
                        results.append(self._stored_fact(existing))
                        must_be_durable = max(must_be_durable, existing)
                        continue
                slot = (w.store, w.key)
                state = written_state.get(slot)
                if state is None:
                    latest = keydir.latest(w.store, w.key)
                    state = (0, False) if latest is None else keydir.seq_of(latest)
                try:
                    record, staged = stage(w, position, state[0], state[1], ttime)
                    if not atomic and len(staged[6]) + 8 > log.config.max_record_bytes:
                        raise InvalidArgumentError(
                            f"record of {len(staged[6]) + 8} bytes exceeds max_record_bytes"
                            f" ({log.config.max_record_bytes})"
                        )
                except KilnError as exc:
                    if atomic:
                        raise
                    results.append(exc)
                    continue
                if w.id is not None:
                    written_ids[w.id] = len(records)
                written_state[slot] = (staged[2], w.deleted)
                pending.append(staged)
                results.append(len(records))
                records.append((record, w))
                position += 1
            if pending:
                must_be_durable = log.append_locked(pending, batch=atomic and len(pending) > 1)
        if must_be_durable:
            log.wait_durable(must_be_durable)
        written: list[Fact | dict[str, Any]]
        if wire:
            written = [record for record, _ in records]
            return [
                written[item]  # type: ignore[misc]
                if type(item) is int
                else item.to_dict()
                if type(item) is Fact
                else item
                for item in results
            ]
        written = []
        for record, prepared in records:
            record["value"] = prepared.stored_value()
            written.append(fact_from_dict(record))
        return [written[item] if type(item) is int else item for item in results]  # type: ignore[misc]

    def _stage(
        self, w: PreparedWrite, position: int, current: int, is_deleted: bool, ttime: float
    ) -> tuple[dict[str, Any], PendingFact]:
        """Check a write against its key's state and build its record (hold the lock)."""
        if w.expected_seq is not None and w.expected_seq != current:
            raise ConflictError(w.store, w.key, w.expected_seq, current)
        if w.deleted and (current == 0 or is_deleted):
            raise NotFoundError(f"{w.store}/{w.key} has no value to delete")
        seq = current + 1
        record = w.record(w.id or self.ids_codec.generate(position), seq, position, ttime)
        return record, (w.store, w.key, seq, w.deleted, ttime, w.id, _dumps(record))

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
        body = self.read_body_locked(position)
        if body is None:
            raise NotFoundError(f"no retained fact at position {position}")
        return fact_from_dict(_loads(body))

    def read(self, store: str, key: str, as_of: float | None) -> Fact | None:
        log = self
        log.check_open()
        if type(key) is not str:
            validate_key(key)
        if as_of is not None and (
            isinstance(as_of, bool) or not isinstance(as_of, int | float) or not isfinite(as_of)
        ):
            raise InvalidArgumentError("as_of must be a finite transaction time (epoch seconds)")
        keydir = log.keydir
        while True:
            if as_of is None:
                position = keydir.latest(store, key)
            else:
                positions = keydir.positions(store, key)
                limit = keydir.position_at_time(as_of)
                index = bisect.bisect_right(positions, limit)
                position = positions[index - 1] if index else None
            if position is None:
                return None
            body = log.read_body(position)
            if body is not None:  # else retention dropped it just now: look again
                break
        record = _loads(body)
        if record["deleted"]:
            return None
        return fact_from_dict(record)

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
        keydir = log.keydir
        seqs, base = keydir.seq, keydir.base
        positions = keydir.positions(store, key)

        # A key's seqs grow with its positions: find the first one wanted by bisection.
        def seq_of(position: int) -> int:
            return seqs[position - base] & ~TOMBSTONE

        stop = bisect.bisect_right(positions, log.visible) if visible_only else len(positions)
        start = bisect.bisect_left(positions, since, key=seq_of, hi=stop)
        end = stop if wanted is None else min(stop, start + wanted)
        if until is not None:  # and the last one, by bisection too
            end = min(end, bisect.bisect_right(positions, until, key=seq_of, lo=start, hi=stop))
        chosen = positions[start:end]
        return [fact_from_dict(_loads(body)) for body in log.read_bodies(chosen)]

    def keys(self, store: str, prefix: object, limit: object) -> list[str]:
        if not isinstance(prefix, str):
            raise InvalidArgumentError("prefix must be a string")
        wanted = check_limit(limit)
        log = self
        keydir = log.keydir
        seq, base = keydir.seq, keydir.base
        with log.lock:
            log.check_open()
            found = [
                key
                for key, position in keydir.iter_keys(store)
                if key.startswith(prefix) and not seq[position - base] & TOMBSTONE
            ]
        found.sort()
        return found if wanted is None else found[:wanted]

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
        latest = self.keydir.latest(store, key)
        return 0 if latest is None else self.keydir.seq_of(latest)[0]

    def segment_bounds(self, store: str, key: str) -> tuple[Fact | None, Fact | None]:
        """The first and the last visible retained fact of a key (None, None if none)."""
        log = self
        log.check_open()
        positions = log.keydir.positions(store, key)
        stop = bisect.bisect_right(positions, log.visible)  # durable entries only
        if not stop:
            return None, None
        ends = [positions[0]] if stop == 1 else [positions[0], positions[stop - 1]]
        facts = [fact_from_dict(_loads(body)) for body in log.read_bodies(ends)]
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
                "keys": sum(len(keys) for keys in keydir.stores.values()),
                "stores": len(keydir.stores),
                "files": len(files),
                "active_file": log.active.file_id,
                "data_bytes": sum(f.size for f in files),
                "dead_bytes": sum(f.dead_bytes for f in files),
                "fsyncs": log.group_commit.fsyncs,
                "subscribers": log.subscribers,
                "compacted_through": log.meta.get("compacted_through", 0),
                "torn_tails_cut": len(log.torn_tails),
                **log.stats_counters,
            }
        return stats

    def stores(self) -> list[str]:
        """Names of the stores that hold retained facts, sorted."""
        log = self
        with log.lock:
            log.check_open()
            return sorted(s for s in log.keydir.stores if not s.startswith(RESERVED_STORE_PREFIX))

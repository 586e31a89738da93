"""The log: a database directory's data files, keydir and durability, behind one lock.

Theory of operation
-------------------
:class:`Log` owns everything under ``DATA_DIR/<database>/``. One ``threading.Lock``
(``log.lock``) orders appends: a caller computes a fact's seq, position and transaction
time *and* appends its frame while holding it, so commit order, position order and file
order are the same thing. Reads take the lock only to look a position up; the ``pread``
happens outside it, on a :class:`DataFile` reference that stays valid even if compaction
swaps the file meanwhile.

Durability is applied after the lock is released (:meth:`Log.wait_durable`), so that
concurrent writers can share an fsync: the core's ``GroupCommit`` elects one of them to
sync for all (see ``rust/src/disk.rs``), and the core makes every system call that
changes a data file, with the GIL released.

Background work — hint files for sealed data files and automatic compaction — runs on
one maintenance thread, serialised with on-demand compaction by ``_maintenance``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kilndb import _core
from kilndb.config import DatabaseConfig
from kilndb.errors import (
    ClosedError,
    CorruptRecordError,
    InvalidArgumentError,
    ProtocolError,
    StorageError,
)
from kilndb.model import Fact
from kilndb.storage.datafile import DataFile, fsync_directory, hint_path
from kilndb.storage.hint import Hint, write_hint
from kilndb.storage.ids import IdCodec
from kilndb.storage.lockfile import DatabaseLock
from kilndb.storage.meta import (
    attribute_compacted,
    load_or_create_meta,
    raise_watermarks,
    write_meta,
)
from kilndb.storage.recovery import recover, write_header
from kilndb.storage.retention import Retention
from kilndb.storage.shipping import parse_shipment

__all__ = ["Log"]

log = logging.getLogger("kilndb.storage")

#: Compactions :meth:`Log.set_retention` runs at most to clear what a stricter policy
#: dropped while writers keep dropping more under it.
LOOSEN_ATTEMPTS = 5


def _read_located(
    files: list[DataFile], reads: list[tuple[int, int, int]], fact_type: type[Fact] | None
) -> list[Any]:
    # ``files`` is held until the core has read: their descriptors stay open meanwhile.
    return _core.read_records([(f.fd, f.name) for f in files], reads, fact_type)


def _check_follows(first: int, last_here: int) -> None:
    """Refuse a shipment whose first fact does not come after this log's end."""
    if first <= last_here:
        raise ProtocolError(f"shipment starts at position {first}, this log is at {last_here}")


class Log:
    def __init__(
        self, directory: Path, config: DatabaseConfig, database_id: str | None = None
    ) -> None:
        """Open (or create) the log in ``directory``. ``database_id``: the id a new
        database gets (a follower takes its leader's), and the one an existing must have."""
        self.directory = directory
        self.config = config
        directory.mkdir(parents=True, exist_ok=True)
        self._dir_lock = DatabaseLock(directory)
        try:
            self.meta = load_or_create_meta(directory, database_id)
            self.database_id: str = self.meta["database_id"]
            self.ids_codec = IdCodec(self.database_id)
            recovered = recover(directory, self.database_id, self.ids_codec)
            if attribute_compacted(self.meta, recovered.keydir.stores()):
                write_meta(directory, self.meta)
        except BaseException:
            self._dir_lock.release()
            raise
        self.keydir: _core.KeyDir = recovered.keydir
        # A repair may have dropped acknowledged facts at the end of the log; their
        # positions are never reused.
        self.keydir.pad_to(int(self.meta.get("position_floor", 0)))
        #: Client-supplied fact id -> position (generated ids encode their position).
        self.ids: _core.IdIndex = recovered.ids
        self.files: dict[int, DataFile] = recovered.files
        self.first_positions: dict[int, int] = recovered.first_positions
        self.torn_tails = recovered.torn
        self.active: DataFile = self.files[max(self.files)]
        #: Files whose hint counted dead bytes: facts dropped before this open, whose
        #: stores the keydir does not know (compaction reads them from the file).
        self.dead_before_open = {i for i, f in self.files.items() if f.dead_bytes}
        self.retention: dict[str, Retention] = {
            store: Retention.from_dict(policy) for store, policy in self.meta["retention"].items()
        }
        self.lock = threading.Lock()
        self._deferred = threading.local()
        self.closed = False
        self.last_ttime = recovered.last_ttime
        self.next_position = self.keydir.last_position + 1
        #: Highest position written to the active file (visible to readers).
        self.written = self.next_position - 1
        self.group_commit = _core.GroupCommit(self.written)
        self.group_commit.set_file(self.active.fd, self.active.name)
        #: Notified whenever new facts become visible to changefeed subscribers.
        self.visible_cond = threading.Condition(threading.Lock())
        self.visible = self.written
        self.subscribers = 0
        #: Called (from the writing thread) whenever facts become visible or the log
        #: closes: see :meth:`wake_subscribers`.
        self.watchers: set[Callable[[], object]] = set()
        self.stats_counters = {"writes": 0, "facts_written": 0, "compactions": 0, "rotations": 0}
        self._maintenance = threading.Lock()
        self._meta_lock = threading.Lock()
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._worker = threading.Thread(
            target=self._run_tasks, name=f"kilndb-maintenance-{directory.name}", daemon=True
        )
        self._worker.start()
        self._stop_interval = threading.Event()
        self._interval_thread: threading.Thread | None = None
        if config.sync == "interval":
            self._interval_thread = threading.Thread(
                target=self._run_interval_sync, name=f"kilndb-sync-{directory.name}", daemon=True
            )
            self._interval_thread.start()
        # Retention is re-applied at open: hints and scans bring back facts that were
        # dropped but not compacted away yet.
        for store, policy in self.retention.items():
            if policy.keep == "latest":
                self._drop_superseded(store)
            if policy.max_age is not None:
                self._drop_aged(store, policy.max_age)

    # -- appending -------------------------------------------------------------------

    def check_open(self) -> None:
        """Raise ClosedError, or the fsync failure that poisoned the log."""
        if self.closed:
            raise ClosedError(f"database {self.directory} is closed")
        failure = self.group_commit.failure
        if failure is not None:
            # A fresh error each time: re-raising the stored one would grow its traceback
            # with every call, from every thread, for as long as the log stays poisoned.
            raise StorageError(str(failure)) from failure

    def next_ttime(self) -> float:
        """A transaction time that never decreases within the database (hold the lock)."""
        now = time.time()
        now = max(now, self.last_ttime)
        self.last_ttime = now
        return now

    def append_staged(self, staged: _core.Staged) -> int:
        """Append a staged batch and index it, each fact with the transaction time it was
        staged with; return its last position (hold the lock).

        Nothing is indexed unless the whole batch reached the file.
        """
        data = staged.data
        active = self._active_for(len(data))
        offset = active.append(data)
        latest_only = {store for store, p in self.retention.items() if p.keep == "latest"}
        self._mark_dead(staged.apply(self.keydir, self.ids, active.file_id, offset, latest_only))
        self.next_position = staged.last + 1
        written = self.written = staged.last
        self.group_commit.note_written(written)
        counters = self.stats_counters
        counters["writes"] += 1
        counters["facts_written"] += staged.count
        if self.config.sync != "always":
            # Appends are serialised by the log lock, so visibility can move without
            # the condition's lock; waiters re-check it under that lock.
            self.visible = written
            if self.subscribers:
                self.wake_subscribers()
        return written

    def append_shipment(self, frames: bytes, after: int | None = None) -> int:
        """Append a replication shipment as it is (a follower); return its last position.

        ``frames`` are a leader's records after ``after`` (default: this log's end),
        checked by :func:`~kilndb.storage.shipping.parse_shipment`; they are written
        verbatim and indexed like local writes, at the leader's positions. Raises
        ProtocolError (nothing written) if they do not continue this log.
        """
        with self.lock:
            self.check_open()
            last_here = self.next_position - 1
            start = last_here if after is None else after
            # The native core checks and indexes the shipment in one pass; a store that
            # keeps only each key's latest fact, or a record in a layout of its own,
            # takes the path below, fact by fact.
            latest_only = any(policy.keep == "latest" for policy in self.retention.values())
            indexed = None if latest_only else _core.parse_shipment(frames, start)
            if indexed is not None:
                return self._append_indexed(frames, indexed, last_here)
            parsed = parse_shipment(frames, start)
            if not parsed:
                return last_here
            first = next(fact[0] for _, fact in parsed if fact is not None)
            _check_follows(first, last_here)
            data = b"".join(frame for frame, _ in parsed)
            active = self._active_for(len(data))
            offset = active.append(data)
            file_id = active.file_id
            keydir = self.keydir
            retention = self.retention
            codec = self.ids_codec
            facts = 0
            position = last_here
            for frame, fact in parsed:
                if fact is None:
                    offset += len(frame)
                    continue
                position, store, key, seq, deleted, ttime, fact_id, _ = fact
                previous = keydir.latest(store, key) if store in retention else None
                # add() leaves the leader's holes (compacted positions) as holes here too.
                keydir.add(store, key, position, file_id, offset, len(frame), seq, deleted, ttime)
                if codec.position_of(fact_id) != position:
                    self.ids[fact_id] = position
                if previous is not None and retention[store].keep == "latest":
                    self._mark_dead(keydir.drop(store, key, (previous,)))
                self.last_ttime = max(self.last_ttime, ttime)
                offset += len(frame)
                facts += 1
            self._shipped(position, facts)
            return position

    def _append_indexed(self, frames: bytes, indexed: _core.IndexedFile, last_here: int) -> int:
        """Append a shipment the native core checked and indexed (hold the lock)."""
        if not len(indexed):
            return last_here
        _check_follows(indexed.first_position, last_here)
        active = self._active_for(len(frames))
        offset = active.append(frames)
        ttime = indexed.load_into(
            self.keydir, active.file_id, self.ids_codec.prefix, self.ids, offset
        )
        if ttime is not None:
            self.last_ttime = max(self.last_ttime, ttime)
        position = indexed.last_position
        self._shipped(position, len(indexed))
        return position

    def _active_for(self, size: int) -> DataFile:
        """The active file, rotated first if ``size`` more bytes would overfill it."""
        active = self.active
        if active.size + size > self.config.max_file_size and self._has_facts(active):
            self._rotate_locked()
            active = self.active
        return active

    def _shipped(self, position: int, facts: int) -> None:
        """Account for a shipment appended through ``position`` (hold the lock)."""
        self.next_position = position + 1
        self.written = position
        self.group_commit.note_written(position)
        counters = self.stats_counters
        counters["writes"] += 1
        counters["facts_written"] += facts
        if self.config.sync != "always":
            self.visible = position
            if self.subscribers:
                self.wake_subscribers()

    def wait_durable(self, position: int) -> None:
        """Apply the sync policy to a write that ended at ``position`` (lock released).

        Inside :meth:`deferring_durability` on this thread, only note the position.
        """
        if self.config.sync == "always":
            deferred: list[int] | None = getattr(self._deferred, "positions", None)
            if deferred is not None:
                deferred.append(position)
                return
            self.group_commit.wait_durable(position)
            self.publish(position)

    @contextmanager
    def deferring_durability(self) -> Iterator[list[int]]:
        """Let writes on this thread return before their fsync; collect their positions.

        The caller must :meth:`wait_durable` for the largest one before acknowledging
        anything: this lets a server apply one connection's pipeline in order while the
        fsyncs of all its writes are shared.
        """
        positions: list[int] = []
        self._deferred.positions = positions
        try:
            yield positions
        finally:
            self._deferred.positions = None

    def publish(self, position: int) -> None:
        """Make durable facts up to ``position`` visible to subscribers (``sync="always"``)."""
        if position > self.visible:
            with self.visible_cond:
                if position <= self.visible:
                    return
                self.visible = position
            if self.subscribers:
                self.wake_subscribers()

    def wake_subscribers(self) -> None:
        """Wake the changefeed: threads blocked in a subscription, and the ``watchers``
        (callbacks of subscribers that wait without a thread, such as an event loop's)."""
        with self.visible_cond:
            self.visible_cond.notify_all()
        for watcher in list(self.watchers):
            watcher()

    def _has_facts(self, datafile: DataFile) -> bool:
        first = self.first_positions[datafile.file_id]
        return self.next_position > first

    def _rotate_locked(self) -> None:
        sealed = self.active
        try:
            sealed.seal()
        except StorageError as exc:
            # Writers waiting on this file must not be acknowledged by a later fsync
            # that may succeed after the kernel dropped the pages.
            self.group_commit.poison(str(exc))
            raise
        self.group_commit.mark_durable(self.written)
        if self.config.sync == "always":
            self.publish(self.written)
        file_id = sealed.file_id + 1
        datafile = DataFile.create(self.directory, file_id)
        write_header(datafile, self.next_position, self.database_id)
        self.files[file_id] = datafile
        self.first_positions[file_id] = self.next_position
        self.active = datafile
        self.group_commit.set_file(datafile.fd, datafile.name)
        self.stats_counters["rotations"] += 1
        self._tasks.put(lambda: self._write_hint_for(sealed.file_id))
        if self.config.auto_compact:
            self._tasks.put(self._auto_compact)

    # -- reading ---------------------------------------------------------------------

    def read_body(self, position: int) -> bytes | None:
        """The body of a retained fact, or ``None``; raises CorruptRecordError on damage."""
        bodies = self.read_bodies([position])
        return bodies[0] if bodies else None

    def read_body_locked(self, position: int) -> bytes | None:
        """:meth:`read_body` for a caller that holds the lock."""
        bodies: list[bytes] = _read_located(*self._locate_locked([position]), None)
        return bodies[0] if bodies else None

    def read_bodies(self, positions: list[int]) -> list[bytes]:
        """Bodies of the retained facts among ``positions`` (ascending), in that order.

        Looks every position up under one lock acquisition and reads frames that sit
        back to back in a file with one ``pread`` per run (up to 1 MiB), which is what
        makes a long history cheap to read. Raises CorruptRecordError on damage.
        """
        with self.lock:
            self.check_open()
            located = self._locate_locked(positions)
        return _read_located(*located, None)

    def read_facts(self, positions: list[int]) -> list[Fact]:
        """:meth:`read_bodies` decoded into facts: the keydir plans the reads under the
        lock, the core reads and decodes them after it, all in one call each."""
        with self.lock:
            self.check_open()
            file_ids, plan = self.keydir.plan(positions)
            files = [self.files[file_id] for file_id in file_ids]
        # ``files`` is held until the core has read: their descriptors stay open.
        return _core.read_planned([(f.fd, f.name) for f in files], plan, Fact)

    def read_fact_locked(self, position: int) -> Fact | None:
        """The retained fact at ``position`` or None, for a caller holding the lock."""
        facts: list[Fact] = _read_located(*self._locate_locked([position]), Fact)
        return facts[0] if facts else None

    def _locate_locked(
        self, positions: list[int]
    ) -> tuple[list[DataFile], list[tuple[int, int, int]]]:
        """Where the retained facts among ``positions`` are: their data files and
        ``(file index, offset, size)`` of each (hold the lock). A file that compaction
        replaces meanwhile stays readable while the caller holds its DataFile."""
        files: list[DataFile] = []
        index: dict[int, int] = {}
        reads = []
        location_of = self.keydir.location
        for position in positions:
            location = location_of(position)
            if location is None:
                continue
            file_id, offset, size = location
            slot = index.get(file_id)
            if slot is None:
                slot = index[file_id] = len(files)
                files.append(self.files[file_id])
            reads.append((slot, offset, size))
        return files, reads

    def iter_facts(
        self, after: int, until: int, stores: frozenset[str] | None = None
    ) -> Iterator[Fact]:
        """Retained facts with ``after < position <= until``, in position order."""
        return self._scan(after, until, stores, raw=False)

    def iter_records(
        self, after: int, until: int, stores: frozenset[str] | None = None
    ) -> Iterator[tuple[int, bytes]]:
        """:meth:`iter_facts` as ``(position, body)``: each fact's stored JSON, which is
        its wire form (``Fact.to_dict()``), for a transport to send without re-encoding."""
        return self._scan(after, until, stores, raw=True)

    def _scan(
        self, after: int, until: int, stores: frozenset[str] | None, raw: bool
    ) -> Iterator[Any]:
        # Reads the data files sequentially, a read chunk of facts per call into the
        # core: the replay and changefeed hot path.
        keydir = self.keydir
        chosen = None if stores is None else list(stores)
        last = after
        while last < until:
            with self.lock:
                self.check_open()
                start = keydir.first_retained_at_or_after(last + 1)
                if start is None or start > until:
                    return
                file_id, offset, _ = keydir.location(start)  # type: ignore[misc]
                # Held for the whole scan: a file compaction replaces stays readable.
                datafile = self.files[file_id]
                end = datafile.size
            scanner = _core.FactScanner(
                datafile.fd, datafile.name, offset, end, last, until, chosen, raw, Fact
            )
            while (batch := scanner.next_batch(keydir)) is not None:
                yield from batch
            last = scanner.last
            if scanner.reached_until:
                return
            if scanner.stop_reason not in (None, "end-marker"):
                raise CorruptRecordError(datafile.name, scanner.stop_offset)
            with self.lock:
                self.check_open()
                later = [f for f in self.files if f > file_id]
                if not later:
                    return
                # Skip to the first position of the next file.
                last = max(last, self.first_positions[min(later)] - 1)

    # -- retention -------------------------------------------------------------------

    def set_retention(self, store: str, policy: Retention) -> None:
        """Change a store's retention; facts it drops disappear from reads at once.

        Loosening a policy never brings dropped facts back: the facts the old policy
        dropped are compacted away before the new policy applies, so what a reader sees
        is the same before and after a restart.
        """
        with self.lock:
            self.check_open()
            old = self.retention.get(store, Retention())
        loosening = (old.keep == "latest" and policy.keep == "all") or (
            old.max_age is not None and (policy.max_age is None or policy.max_age > old.max_age)
        )
        attempts = LOOSEN_ATTEMPTS if loosening else 0
        while True:
            if attempts:
                self.compact()
                attempts -= 1
            with self.lock:
                self.check_open()
                # Writes since the compaction may have dropped more facts under the old
                # policy: compact again, so that none is left on disk at the switch.
                if attempts and any(f.dead_bytes for f in self.files.values()):
                    continue
                if policy.is_default:
                    self.retention.pop(store, None)
                else:
                    self.retention[store] = policy
                self.meta["retention"] = {s: p.to_dict() for s, p in self.retention.items()}
                self.save_meta()
                if policy.keep == "latest":
                    self._drop_superseded(store)
                return

    def _drop_superseded(self, store: str) -> None:
        self._mark_dead(self.keydir.drop_superseded(store))

    def _drop_aged(self, store: str, max_age: float) -> None:
        self._mark_dead(self.keydir.drop_older_than(store, time.time() - max_age))

    def _mark_dead(self, freed: list[tuple[int, int]]) -> None:
        for file_id, size in freed:
            datafile = self.files.get(file_id)
            if datafile is not None:
                datafile.dead_bytes += size

    # -- maintenance -----------------------------------------------------------------

    def _run_tasks(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            except ClosedError:
                pass
            except Exception:
                log.exception("background maintenance of %s failed", self.directory)

    def _run_interval_sync(self) -> None:
        interval = self.config.sync_interval_ms / 1000
        while not self._stop_interval.wait(interval):
            if self.written > self.group_commit.durable:
                try:
                    self.group_commit.sync_now()
                except ClosedError:
                    return
                except StorageError:
                    log.exception("interval fsync of %s failed", self.directory)
                    return

    @contextmanager
    def maintenance_held(self) -> Iterator[None]:
        """Hold off compaction and hint writing for the block (a backup copying the
        data files); waits for maintenance already running to finish first."""
        with self._maintenance:
            yield

    def wait_for_maintenance(self, timeout: float | None = None) -> bool:
        """Wait until the background work queued so far (hints of sealed files, automatic
        compaction) is done; False if ``timeout`` seconds passed first."""
        done = threading.Event()
        self._tasks.put(done.set)
        return done.wait(timeout)

    def build_hint(self, datafile: DataFile) -> Hint:
        """A hint for the retained facts of ``datafile`` (scans the file in the core).

        Raises CorruptRecordError rather than describe part of a damaged file: a hint
        is trusted for the whole file it names.
        """
        start = self.header_end(datafile)
        indexed = _core.index_file(datafile.fd, datafile.name, start, datafile.size, 0)
        if indexed.bad_offset is not None or indexed.stop_reason not in (None, "end-marker"):
            raise CorruptRecordError(datafile.name, indexed.damage)
        columns, stores, keys, ids, dead_bytes = indexed.hint_columns(
            self.keydir, datafile.file_id, self.ids_codec.prefix
        )
        hint = Hint.from_columns(datafile.file_id, datafile.size, columns, stores, keys, ids)
        hint.dead_bytes = dead_bytes
        return hint

    def header_end(self, datafile: DataFile) -> int:
        """Where the records of ``datafile`` begin: right after its header frame (whose
        integrity recovery checked when it opened the file)."""
        head = datafile.pread(0, 4)
        length = int.from_bytes(head, "big") if len(head) == 4 else 0
        if not 0 < length < datafile.size:
            raise CorruptRecordError(datafile.name, 0, f"{datafile.path}: bad file header")
        return length + 8

    def _write_hint_for(self, file_id: int) -> None:
        # Also while closing (close() runs the queued tasks before it lets the files go):
        # a sealed file's hint is what lets the next open skip reading it.
        with self._maintenance:
            if self.group_commit.failure is not None:
                return
            datafile = self.files.get(file_id)
            if datafile is None or datafile is self.active:
                return
            write_hint(hint_path(self.directory, file_id), self.build_hint(datafile))

    def _auto_compact(self) -> None:
        from kilndb.storage.compaction import compact_sealed

        self.apply_age_retention()
        with self.lock:
            sealed = [f for f in self.files.values() if f is not self.active]
        total = sum(f.size for f in sealed)
        dead = sum(f.dead_bytes for f in sealed)
        if total and dead / total >= self.config.compaction_threshold:
            with self._maintenance:
                self.check_open()
                compact_sealed(self)

    def apply_age_retention(self) -> None:
        with self.lock:
            self.check_open()
            for store, policy in self.retention.items():
                if policy.max_age is not None:
                    self._drop_aged(store, policy.max_age)

    def compact(self) -> dict[str, int]:
        """Apply retention and rewrite the files with dead bytes, sealing the active file
        first if it has any (so that a compaction with nothing to reclaim changes nothing)."""
        from kilndb.storage.compaction import compact_sealed

        self.apply_age_retention()
        with self.lock:
            self.check_open()
            if self.active.dead_bytes and self._has_facts(self.active):
                self._rotate_locked()
        with self._maintenance:
            self.check_open()  # close() may have run while we waited
            return compact_sealed(self)

    # -- lifecycle -------------------------------------------------------------------

    def sync(self) -> None:
        self.check_open()
        self.group_commit.sync_now()
        if self.config.sync == "always":
            self.publish(self.group_commit.durable)

    def close(self) -> None:
        """Make everything durable, write the active file's hint, release the database.

        Descriptors are not closed here but when the last reader lets go of its file (an
        iterator may be mid-read): closing them under a reader would let the number be
        reused by another file.
        """
        with self.lock:
            if self.closed:
                return
            self.closed = True
            # Writers still waiting for their fsync are served by this one.
            try:
                if self.group_commit.failure is None:
                    self.active.seal()
                    self.group_commit.mark_durable(self.written)
            finally:
                self.group_commit.close(f"database {self.directory} is closed")
        self._stop_interval.set()
        if self._interval_thread is not None:
            self._interval_thread.join()
        self._tasks.put(None)
        self._worker.join()
        self.wake_subscribers()
        try:
            with self._maintenance, self.lock:
                active = self.active
                if self.group_commit.failure is None and self._has_facts(active):
                    write_hint(hint_path(self.directory, active.file_id), self.build_hint(active))
                self.files = {active.file_id: active}
        finally:
            self._dir_lock.release()

    def record_compacted(self, position: int, by_store: dict[str, int] | None = None) -> None:
        """Raise the compaction watermarks: the log's to ``position``, each store's to its
        value in ``by_store``; ``None`` (nothing tells which stores lost facts) raises
        every store this log holds to ``position``."""
        if by_store is None:
            with self.lock:
                by_store = dict.fromkeys(self.keydir.stores(), position) if position else {}
        with self._meta_lock:
            if raise_watermarks(self.meta, position, by_store):
                write_meta(self.directory, self.meta)

    def start_epoch(self, epoch: int | None = None, above: int = 0) -> int:
        """Begin a new leader epoch at the next position (a promotion); return it.

        ``epoch``: the number a coordinator granted (it must be above the current one);
        by default one greater than both the current one and ``above``."""
        with self.lock, self._meta_lock:
            epochs = self.meta.setdefault("epochs", [{"epoch": 0, "start_position": 1}])
            current = int(epochs[-1]["epoch"])
            if epoch is None:
                epoch = max(current, above) + 1
            elif epoch <= current:
                raise InvalidArgumentError(
                    f"a new leader epoch must be above the current one ({epoch} <= {current})"
                )
            # The id tells two promotions to the same epoch number apart (two followers
            # of one leader both promoted): their histories differ although the numbers
            # match.
            epochs.append(
                {"epoch": epoch, "start_position": self.next_position, "id": uuid.uuid4().hex}
            )
            write_meta(self.directory, self.meta)
            return epoch

    def adopt_epochs(self, epochs: list[dict[str, Any]]) -> None:
        """Take a leader's epoch history (a follower in step with it)."""
        with self._meta_lock:
            if self.meta.get("epochs") != epochs:
                self.meta["epochs"] = [dict(e) for e in epochs]
                write_meta(self.directory, self.meta)

    def save_meta(self) -> None:
        """Write ``META`` durably; callers change ``self.meta`` first."""
        with self._meta_lock:
            write_meta(self.directory, self.meta)

    def fsync_directory(self) -> None:
        fsync_directory(self.directory)

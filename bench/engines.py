"""The engines the embedded benchmark compares, behind one small interface.

:class:`Engine` is what a benchmark row needs: single puts, atomic batches, a key's
history, reads of the latest value, a full scan, and close/reopen. Each adapter does
these the way an application would with that engine, encoding values with orjson on
write and decoding them on read:

- :class:`Kiln` — KilnDB through its public API only.
- :class:`Sqlite` — SQLite in WAL mode, table ``facts(store, key, seq, value)`` with
  ``PRIMARY KEY (store, key, seq)``; autocommit, so a lone INSERT is one commit.
- :class:`Lmdb` — one write transaction per put (or per batch), one read transaction
  per get; a key's history is the keys ``"<key>:<seq:010d>"``, read by a range scan.
- :class:`Rocks` — RocksDB through rocksdict in raw mode, history as for LMDB.

lmdb and rocksdict are optional (the ``bench`` extra): :data:`lmdb` / :data:`rocksdict`
are ``None`` when they are not installed. The timing helpers at the end turn an engine
and a workload into a rate.
"""

from __future__ import annotations

import errno
import gc
import importlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

import kilndb

__all__ = [
    "BATCH",
    "PREALLOCATE_STEP",
    "RAW_RECORD",
    "STORE",
    "Engine",
    "Item",
    "Kiln",
    "Lmdb",
    "Rocks",
    "Sqlite",
    "items",
    "key_of",
    "lmdb",
    "rate",
    "rocksdict",
    "time_batches",
    "time_call",
    "time_raw_appends",
    "time_reads",
    "time_reopen",
    "time_writes",
    "value_of",
]


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:  # the bench extra is not installed: that engine's rows are skipped
        return None


lmdb: Any = _optional("lmdb")
rocksdict: Any = _optional("rocksdict")

STORE = "bench"
BATCH = 1000
#: Bytes per write of the raw fdatasync row: about one KilnDB record of a bench value.
RAW_RECORD = 200
#: How far ahead KilnDB preallocates its active data file (``posix_fallocate``).
PREALLOCATE_STEP = 4 * 1024 * 1024
_dumps = orjson.dumps
_loads = orjson.loads

Item = tuple[str, Any]

# -- workload ------------------------------------------------------------------------


_KEY_MULT = 0x9E3779B97F4A7C15  # odd, so i -> key is a bijection of 64-bit integers
_MASK64 = (1 << 64) - 1


def key_of(i: int, salt: int = 0) -> str:
    """The i-th key: 16 hex characters, scattered so inserts hit random places."""
    return f"{((i + (salt << 40)) * _KEY_MULT) & _MASK64:016x}"


def value_of(i: int) -> dict[str, Any]:
    """A ~100-byte JSON object (as compact JSON: 98-101 bytes for i below 10**8)."""
    return {
        "id": i,
        "user": f"user-{i:08d}",
        "email": f"user{i:08d}@example.com",
        "score": (i * 7919) % 100_000,
        "active": i % 2 == 0,
    }


def items(start: int, count: int, salt: int = 0) -> list[Item]:
    return [(key_of(i, salt), value_of(i)) for i in range(start, start + count)]


# -- engines -------------------------------------------------------------------------


class Engine(Protocol):
    """What the benchmark needs of an engine, each op the way an application does it."""

    def put(self, key: str, value: Any) -> None:
        """Store one value durably per the engine's mode, as one transaction."""

    def put_batch(self, batch: Sequence[Item]) -> None:
        """Store a batch as one atomic transaction."""

    def append_history(self, key: str, values: Sequence[Any]) -> None:
        """Append ``values`` as the next facts of ``key`` (seq 1, 2, ...)."""

    def get(self, key: str) -> Any:
        """The latest value of ``key``, decoded."""

    def history(self, key: str) -> int:
        """Read (and decode) every fact of ``key`` in seq order; return how many."""

    def scan(self) -> int:
        """Read (and decode) every fact; return how many."""

    def for_thread(self) -> Engine:
        """A handle another thread may use (the same one if the engine is thread-safe)."""

    def close(self) -> None: ...

    def reopen(self) -> None:
        """Open again after :meth:`close` (timed together with a first read)."""


class Kiln:
    """KilnDB, through its public API only."""

    def __init__(self, path: Path, sync: kilndb.SyncMode) -> None:
        self.path = path
        self.sync: kilndb.SyncMode = sync
        self.db = kilndb.open(path, sync=sync)
        self.store = self.db.store(STORE)

    def put(self, key: str, value: Any) -> None:
        self.store.write(key, value)

    def put_batch(self, batch: Sequence[Item]) -> None:
        self.db.write_many([kilndb.Write(STORE, k, v) for k, v in batch])

    def append_history(self, key: str, values: Sequence[Any]) -> None:
        self.db.write_many([kilndb.Write(STORE, key, v) for v in values])

    def get(self, key: str) -> Any:
        fact = self.store.read(key)
        return None if fact is None else fact.value

    def history(self, key: str) -> int:
        return len(self.store.history(key))

    def scan(self) -> int:
        count = 0
        for _ in self.db.replay():
            count += 1
        return count

    def for_thread(self) -> Engine:
        return self

    def fsyncs(self) -> int:
        return int(self.db.stats()["fsyncs"])

    def close(self) -> None:
        self.db.close()

    def reopen(self) -> None:
        self.db = kilndb.open(self.path, sync=self.sync)
        self.store = self.db.store(STORE)


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (
    store TEXT NOT NULL,
    key   TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (store, key, seq)
)
"""
_SQLITE_INSERT = "INSERT INTO facts (store, key, seq, value) VALUES (?, ?, ?, ?)"
_SQLITE_LATEST = "SELECT value FROM facts WHERE store = ? AND key = ? ORDER BY seq DESC LIMIT 1"
_SQLITE_HISTORY = "SELECT seq, value FROM facts WHERE store = ? AND key = ? ORDER BY seq"
_SQLITE_SCAN = "SELECT store, key, seq, value FROM facts ORDER BY rowid"


class Sqlite:
    """SQLite in WAL mode; autocommit, so a lone INSERT is one commit."""

    def __init__(self, path: Path, synchronous: str, *, create: bool = True) -> None:
        self.path = path
        self.synchronous = synchronous
        self.conn = self._connect()
        if create:
            self.conn.execute(_SQLITE_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=60.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    def put(self, key: str, value: Any) -> None:
        self.conn.execute(_SQLITE_INSERT, (STORE, key, 1, _dumps(value)))

    def put_batch(self, batch: Sequence[Item]) -> None:
        conn = self.conn
        conn.execute("BEGIN")
        conn.executemany(_SQLITE_INSERT, [(STORE, k, 1, _dumps(v)) for k, v in batch])
        conn.execute("COMMIT")

    def append_history(self, key: str, values: Sequence[Any]) -> None:
        conn = self.conn
        row = conn.execute("SELECT max(seq) FROM facts WHERE store = ? AND key = ?", (STORE, key))
        first = (row.fetchone()[0] or 0) + 1
        conn.execute("BEGIN")
        conn.executemany(
            _SQLITE_INSERT, [(STORE, key, first + i, _dumps(v)) for i, v in enumerate(values)]
        )
        conn.execute("COMMIT")

    def get(self, key: str) -> Any:
        row = self.conn.execute(_SQLITE_LATEST, (STORE, key)).fetchone()
        return None if row is None else _loads(row[0])

    def history(self, key: str) -> int:
        count = 0
        for _, value in self.conn.execute(_SQLITE_HISTORY, (STORE, key)):
            _loads(value)
            count += 1
        return count

    def scan(self) -> int:
        count = 0
        for _, _, _, value in self.conn.execute(_SQLITE_SCAN):
            _loads(value)
            count += 1
        return count

    def for_thread(self) -> Engine:
        return Sqlite(self.path, self.synchronous, create=False)

    def close(self) -> None:
        self.conn.close()

    def reopen(self) -> None:
        self.conn = self._connect()


def _history_key(key: str, seq: int) -> bytes:
    return f"{key}:{seq:010d}".encode()


class Lmdb:
    """LMDB: one write transaction per put (or per batch); a read transaction per get."""

    def __init__(self, path: Path, sync: bool, map_size: int) -> None:
        self.path = path
        self.sync = sync
        self.map_size = map_size
        self.env = self._open()

    def _open(self) -> Any:
        assert lmdb is not None
        return lmdb.open(str(self.path), map_size=self.map_size, sync=self.sync, metasync=self.sync)

    def put(self, key: str, value: Any) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key.encode(), _dumps(value))

    def put_batch(self, batch: Sequence[Item]) -> None:
        with self.env.begin(write=True) as txn:
            put = txn.put
            for k, v in batch:
                put(k.encode(), _dumps(v))

    def append_history(self, key: str, values: Sequence[Any]) -> None:
        first = self._history_len(key) + 1
        with self.env.begin(write=True) as txn:
            for i, v in enumerate(values):
                txn.put(_history_key(key, first + i), _dumps(v))

    def _history_len(self, key: str) -> int:
        return sum(1 for _ in self._history_values(key))

    def _history_values(self, key: str) -> Iterator[bytes]:
        prefix = f"{key}:".encode()
        with self.env.begin() as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for k, v in cursor:
                    if not k.startswith(prefix):
                        break
                    yield v

    def get(self, key: str) -> Any:
        with self.env.begin() as txn:
            raw = txn.get(key.encode())
        return None if raw is None else _loads(raw)

    def history(self, key: str) -> int:
        count = 0
        for value in self._history_values(key):
            _loads(value)
            count += 1
        return count

    def scan(self) -> int:
        count = 0
        with self.env.begin() as txn:
            for _, value in txn.cursor():
                _loads(value)
                count += 1
        return count

    def for_thread(self) -> Engine:
        return self

    def close(self) -> None:
        self.env.close()

    def reopen(self) -> None:
        self.env = self._open()


class Rocks:
    """RocksDB through rocksdict, raw bytes mode; ``sync`` sets WriteOptions.sync."""

    def __init__(self, path: Path, sync: bool) -> None:
        self.path = path
        self.sync = sync
        self.db = self._open()

    def _open(self) -> Any:
        assert rocksdict is not None
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        db = rocksdict.Rdict(str(self.path), options)
        write_options = rocksdict.WriteOptions()
        write_options.sync = self.sync
        db.set_write_options(write_options)
        return db

    def put(self, key: str, value: Any) -> None:
        self.db.put(key.encode(), _dumps(value))

    def put_batch(self, batch: Sequence[Item]) -> None:
        assert rocksdict is not None
        wb = rocksdict.WriteBatch(raw_mode=True)
        for k, v in batch:
            wb.put(k.encode(), _dumps(v))
        self.db.write(wb)

    def append_history(self, key: str, values: Sequence[Any]) -> None:
        assert rocksdict is not None
        first = sum(1 for _ in self._history_values(key)) + 1
        wb = rocksdict.WriteBatch(raw_mode=True)
        for i, v in enumerate(values):
            wb.put(_history_key(key, first + i), _dumps(v))
        self.db.write(wb)

    def _history_values(self, key: str) -> Iterator[bytes]:
        prefix = f"{key}:".encode()
        it = self.db.iter()
        it.seek(prefix)
        while it.valid():
            if not it.key().startswith(prefix):
                break
            yield it.value()
            it.next()

    def get(self, key: str) -> Any:
        raw = self.db.get(key.encode())
        return None if raw is None else _loads(raw)

    def history(self, key: str) -> int:
        count = 0
        for value in self._history_values(key):
            _loads(value)
            count += 1
        return count

    def scan(self) -> int:
        count = 0
        for value in self.db.values():
            _loads(value)
            count += 1
        return count

    def for_thread(self) -> Engine:
        return self

    def close(self) -> None:
        self.db.close()

    def reopen(self) -> None:
        self.db = self._open()


# -- measuring -----------------------------------------------------------------------


def _collect() -> None:
    gc.collect()


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def time_writes(engine: Engine, work: Sequence[Item], threads: int = 1) -> float:
    """Ops/s of single puts of ``work``, split over ``threads`` threads."""
    _collect()
    if threads == 1:
        put = engine.put
        start = time.perf_counter()
        for k, v in work:
            put(k, v)
        return rate(len(work), time.perf_counter() - start)
    handles = [engine.for_thread() for _ in range(threads)]
    chunks = [work[i::threads] for i in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run(handle: Engine, chunk: Sequence[Item]) -> None:
        barrier.wait()
        try:
            for k, v in chunk:
                handle.put(k, v)
        except BaseException as exc:
            errors.append(exc)

    workers = [
        threading.Thread(target=run, args=(h, c), name=f"bench-writer-{i}")
        for i, (h, c) in enumerate(zip(handles, chunks, strict=True))
    ]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    for handle in handles:
        if handle is not engine:
            handle.close()
    if errors:
        raise errors[0]
    return rate(len(work), elapsed)


def time_batches(engine: Engine, batches: Sequence[Sequence[Item]]) -> float:
    """Facts/s of writing ``batches``, one transaction each."""
    _collect()
    start = time.perf_counter()
    for batch in batches:
        engine.put_batch(batch)
    return rate(sum(len(b) for b in batches), time.perf_counter() - start)


def time_reads(engine: Engine, keys: Sequence[str], expected: Sequence[int]) -> float:
    _collect()
    get = engine.get
    start = time.perf_counter()
    for key in keys:
        get(key)
    elapsed = time.perf_counter() - start
    for key, i in list(zip(keys, expected, strict=True))[:100]:
        found = engine.get(key)
        if found != value_of(i):
            raise RuntimeError(f"{type(engine).__name__} read {found!r} for {key}, not #{i}")
    return rate(len(keys), elapsed)


def time_call(fn: Callable[[], int], expected: int, repeats: int = 1) -> float:
    """Items/s of calling ``fn`` ``repeats`` times; each call must yield ``expected``."""
    _collect()
    start = time.perf_counter()
    for _ in range(repeats):
        got = fn()
        if got != expected:
            raise RuntimeError(f"expected {expected} items, got {got}")
    return rate(expected * repeats, time.perf_counter() - start)


def time_reopen(engine: Engine, key: str) -> float:
    """Seconds to open a closed engine and read ``key``."""
    _collect()
    start = time.perf_counter()
    engine.reopen()
    found = engine.get(key)
    elapsed = time.perf_counter() - start
    if found is None:
        raise RuntimeError(f"{type(engine).__name__}: {key} missing after reopen")
    return elapsed


def time_raw_appends(path: Path, count: int, *, preallocate: bool) -> float | None:
    """Ops/s of ``count`` writes of :data:`RAW_RECORD` bytes, each followed by fdatasync.

    The physical limit of a durable single write on this disk, without any engine:
    ``preallocate=False`` appends to a new file opened ``O_WRONLY|O_CREAT|O_APPEND``;
    ``preallocate=True`` does what KilnDB does with its active data file, growing it
    with ``posix_fallocate`` in steps of :data:`PREALLOCATE_STEP` and overwriting the
    allocated blocks with ``pwrite`` at increasing offsets. ``None`` when the filesystem
    cannot preallocate.
    """
    record = bytes(i % 251 for i in range(RAW_RECORD))
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    fd = os.open(path, flags if preallocate else flags | os.O_APPEND, 0o644)
    try:
        _collect()
        start = time.perf_counter()
        if preallocate:
            allocated = offset = 0
            for _ in range(count):
                end = offset + RAW_RECORD
                if end > allocated:
                    target = end + PREALLOCATE_STEP - end % PREALLOCATE_STEP
                    try:
                        os.posix_fallocate(fd, allocated, target - allocated)
                    except OSError as exc:
                        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                            return None
                        raise
                    allocated = target
                if os.pwrite(fd, record, offset) != RAW_RECORD:
                    raise RuntimeError(f"short write to {path}")
                os.fdatasync(fd)
                offset = end
        else:
            for _ in range(count):
                if os.write(fd, record) != RAW_RECORD:
                    raise RuntimeError(f"short write to {path}")
                os.fdatasync(fd)
        return rate(count, time.perf_counter() - start)
    finally:
        os.close(fd)

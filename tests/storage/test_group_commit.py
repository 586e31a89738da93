"""Durability modes: group commit under ``sync="always"``, ``"interval"``, ``"none"``.

``os.pwrite`` and ``os.fdatasync`` are wrapped to stamp every call with a tick of one
global counter, so the tests can prove orderings ("this write's frame was written before
that fdatasync began") instead of guessing from timings.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

import kilndb

THREADS = 8
WRITES_PER_THREAD = 1000
#: The least an fdatasync takes in these tests, as on an SSD (about 200 µs on the
#: development machine), so that whether writers share fsyncs does not depend on where
#: tmp_path lives (on tmpfs an fdatasync costs nothing and nobody needs to share).
MIN_SYNC_SECONDS = 0.0002


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.001)


class Recorder:
    """Wraps ``os.pwrite``/``os.fdatasync``/``os.fsync``; ticks order every event."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tick = itertools.count(1).__next__  # atomic under the GIL
        self.real_pwrite = os.pwrite
        self.real_fdatasync = os.fdatasync
        self.real_fsync = os.fsync
        self.local = threading.local()
        #: (start tick, end tick, inode, thread name) of every completed fdatasync.
        self.syncs: list[tuple[int, int, int, str]] = []
        #: (inode, thread name) of every fsync.
        self.fsyncs: list[tuple[int, str]] = []
        monkeypatch.setattr(os, "pwrite", self.pwrite)
        monkeypatch.setattr(os, "fdatasync", self.fdatasync)
        monkeypatch.setattr(os, "fsync", self.fsync)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        written = self.real_pwrite(fd, data, offset)
        self.local.last_write = (self.tick(), os.fstat(fd).st_ino)
        return written

    def fdatasync(self, fd: int) -> None:
        start = self.tick()
        began = time.perf_counter()
        self.real_fdatasync(fd)
        time.sleep(max(0.0, MIN_SYNC_SECONDS - (time.perf_counter() - began)))
        self.syncs.append((start, self.tick(), os.fstat(fd).st_ino, _thread_name()))

    def fsync(self, fd: int) -> None:
        self.real_fsync(fd)
        self.fsyncs.append((os.fstat(fd).st_ino, _thread_name()))

    def last_write(self) -> tuple[int, int]:
        """(tick, inode) of this thread's last completed pwrite."""
        result: tuple[int, int] = self.local.last_write
        return result


def _thread_name() -> str:
    return threading.current_thread().name


@pytest.mark.usefixtures("os_io")
def test_concurrent_writers_share_fsyncs_and_each_returns_only_once_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kilndb.open(tmp_path, sync="always") as db:
        store = db.store("s")
        recorder = Recorder(monkeypatch)
        fsyncs_before = db.stats()["fsyncs"]
        #: (tick after the write's frame was written, its inode, tick when write returned)
        writes: list[tuple[int, int, int]] = []
        barrier = threading.Barrier(THREADS)

        def writer(n: int) -> None:
            barrier.wait()
            for i in range(WRITES_PER_THREAD):
                store.write(f"t{n}-{i % 16}", {"thread": n, "i": i})
                tick = recorder.tick()
                writes.append((*recorder.last_write(), tick))

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        stats = db.stats()

    total = THREADS * WRITES_PER_THREAD
    assert len(writes) == stats["writes"] == total
    syncs = sorted(recorder.syncs)
    assert len(syncs) == stats["fsyncs"] - fsyncs_before
    assert len(syncs) < total / 2, f"{len(syncs)} fsyncs for {total} writes"
    assert {inode for *_, inode, _ in syncs} == {inode for _, inode, _ in writes}
    # Every write returned only after an fdatasync that began after its frame was
    # written: for the syncs starting after tick t, the earliest end must precede the
    # write's return.
    starts = [start for start, *_ in syncs]
    earliest_end = list(itertools.accumulate((end for _, end, *_ in reversed(syncs)), min))
    earliest_end.reverse()
    for written_at, _, returned_at in writes:
        first = bisect.bisect_right(starts, written_at)
        assert first < len(syncs) and earliest_end[first] < returned_at, (
            f"write at tick {written_at} returned at tick {returned_at} before it was synced"
        )


@pytest.mark.usefixtures("os_io")
def test_interval_mode_acknowledges_without_waiting_and_catches_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fdatasync = os.fdatasync
    entered, release = threading.Event(), threading.Event()
    callers: list[str] = []

    def held_fdatasync(fd: int) -> None:
        callers.append(_thread_name())
        entered.set()
        assert release.wait(timeout=30)
        real_fdatasync(fd)

    with kilndb.open(tmp_path, sync="interval", sync_interval_ms=5) as db:
        store = db.store("s")
        monkeypatch.setattr(os, "fdatasync", held_fdatasync)
        store.write("k", 0)
        assert entered.wait(timeout=10)  # the interval sync is under way, and held

        facts = [store.write("k", i) for i in range(1, 101)]  # acknowledged regardless

        stats = db.stats()
        assert stats["last_position"] == facts[-1].position == 101
        assert stats["durable_position"] <= 1
        release.set()
        wait_for(lambda: db.stats()["durable_position"] == 101)
        assert callers and all(name.startswith("kilndb-sync-") for name in callers)


@pytest.mark.usefixtures("os_io")
def test_none_mode_never_syncs_on_the_write_path_and_close_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = kilndb.open(tmp_path, sync="none")
    store = db.store("s")
    recorder = Recorder(monkeypatch)
    for i in range(200):
        store.write(f"k{i % 10}", i)
    data_inode = (db.path / "00000001.log").stat().st_ino
    assert recorder.syncs == [] and recorder.fsyncs == []
    assert db.stats()["durable_position"] == 0
    assert db.stats()["fsyncs"] == 0

    db.close()

    assert (data_inode, "MainThread") in recorder.fsyncs
    with kilndb.open(tmp_path) as reopened:
        assert [f.value for f in reopened.replay()] == list(range(200))


@pytest.mark.usefixtures("os_io")
def test_a_failed_fsync_fails_the_waiting_writers_and_poisons_until_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers = 4
    db = kilndb.open(tmp_path, sync="always")
    store = db.store("s")
    acknowledged = [store.write(f"k{i}", i) for i in range(10)]
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync
    appended = threading.Semaphore(0)

    def counted_pwrite(fd: int, data: bytes, offset: int) -> int:
        written = real_pwrite(fd, data, offset)
        appended.release()
        return written

    def failing_fdatasync(fd: int) -> None:
        # Fail only once every writer has appended, so that the others are waiting on
        # this very fsync (or arrive after it failed).
        for _ in range(writers):
            assert appended.acquire(timeout=30)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", counted_pwrite)
    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    outcomes: list[BaseException | None] = []

    def writer(n: int) -> None:
        try:
            store.write(f"w{n}", n)
        except BaseException as exc:
            outcomes.append(exc)
        else:
            outcomes.append(None)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert len(outcomes) == writers
    assert all(type(exc) is kilndb.StorageError for exc in outcomes), outcomes

    monkeypatch.setattr(os, "fdatasync", real_fdatasync)  # the disk is fine again, but
    depths = []  # the kernel may have dropped the pages: the log stays poisoned
    for _ in range(3):
        with pytest.raises(kilndb.StorageError) as raised:
            store.write("after", 1)
        depths.append(len(traceback.extract_tb(raised.value.__traceback__)))
    assert depths[0] == depths[-1], "re-raising one stored error grows its traceback"
    with pytest.raises(kilndb.StorageError):
        db.sync()
    db.close()

    with kilndb.open(tmp_path) as reopened:
        facts = {fact.position: fact for fact in reopened.replay()}
        assert [facts[f.position] for f in acknowledged] == acknowledged
        assert sorted(facts) == list(range(1, len(facts) + 1))
        assert reopened.store("s").write("after", 1).position == len(facts) + 1

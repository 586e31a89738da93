"""The core's disk calls: appends, syncs and group commit, against the real kernel.

The fault-injection suites (test_group_commit, test_corruption, engine/test_edges) drive
the same calls through the ``os_io`` hook; these tests use no hook, so they check the
native system calls themselves, including a disk that really fills up.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kilndb
from kilndb import _core
from kilndb.errors import ClosedError, DiskFullError, StorageError
from tests.conftest import ThroughOs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a filesystem that really runs out of space."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_refuses_the_write_and_keeps_every_acknowledged_fact(
    small_disk: Path,
) -> None:
    data = small_disk / "data"
    filler = small_disk / "filler"
    acknowledged: list[kilndb.Fact] = []
    with kilndb.open(data) as db:  # preallocates the first 4 MiB of its data file
        store = db.store("s")
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler.write_bytes(b"f" * (free - 1024 * 1024))  # leave 1 MiB: less than a step
        with pytest.raises(DiskFullError, match="disk full while trying to allocate"):
            for i in range(100_000):
                acknowledged.append(store.write(f"k{i % 50}", {"i": i, "pad": "x" * 200}))
        assert len(acknowledged) > 5000  # the preallocated space was used up first
        assert db.stats()["last_position"] == acknowledged[-1].position
        assert store.read(acknowledged[-1].key) == acknowledged[-1]
        with pytest.raises(DiskFullError):
            # Still full: refused again (as big as the refused one), nothing half-written.
            store.write("k0", {"i": -1, "pad": "x" * 200})
        filler.unlink()  # space again: the database goes on where it stopped
        acknowledged.append(store.write("after", "space"))
        assert acknowledged[-1].position == acknowledged[-2].position + 1
    with kilndb.open(data) as db:
        assert list(db.replay()) == acknowledged


def test_append_writes_preallocates_and_reports_the_physical_length(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        allocated = _core.append(fd, str(path), b"hello", 0, 0)
        assert allocated == _core.PREALLOCATE_STEP == os.fstat(fd).st_size
        assert _core.append(fd, str(path), b" world", 5, allocated) == allocated
        _core.sync_file(fd, str(path))
        _core.sync_file(fd, str(path), metadata=True)
        _core.truncate_file(fd, str(path), 11)
        assert path.read_bytes() == b"hello world"
    finally:
        os.close(fd)


def test_bad_descriptors_are_storage_errors_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(StorageError, match=r"f\.log"):
            _core.append(fd, str(path), b"x", 0, 1 << 30)  # a read-only descriptor
    finally:
        os.close(fd)
    with pytest.raises(StorageError, match="could not fsync nowhere"):
        _core.sync_file(-1, "nowhere")
    with pytest.raises(StorageError, match="could not truncate nowhere"):
        _core.truncate_file(-1, "nowhere", 0)
    with pytest.raises(StorageError):
        _core.GroupCommit(0).set_file(-1, "nowhere")


class _NoFallocate(ThroughOs):
    """A filesystem without preallocation (as some network filesystems are)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        self.calls.append("pwrite")
        return os.pwrite(fd, data, offset)

    def posix_fallocate(self, fd: int, offset: int, length: int) -> None:
        self.calls.append("posix_fallocate")
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")


def test_without_preallocation_plain_appends_grow_the_file(tmp_path: Path) -> None:
    hook = _NoFallocate()
    _core.set_io_hook(hook)
    try:
        with kilndb.open(tmp_path / "data") as db:
            facts = [db.store("s").write("k", i) for i in range(20)]
    finally:
        _core.set_io_hook(None)
    assert "posix_fallocate" in hook.calls and "pwrite" in hook.calls
    with kilndb.open(tmp_path / "data") as db:
        assert list(db.replay()) == facts


def _file(tmp_path: Path) -> int:
    fd = os.open(tmp_path / "g.log", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"data")
    return fd


def test_group_commit_syncs_and_publishes_what_was_written(tmp_path: Path) -> None:
    fd = _file(tmp_path)
    commit = _core.GroupCommit(0)
    commit.set_file(fd, "g.log")
    os.close(fd)  # the group committer keeps its own descriptor
    commit.note_written(7)
    commit.wait_durable(5)
    assert (commit.durable, commit.fsyncs) == (7, 1)
    commit.wait_durable(7)  # already durable: no second sync
    assert commit.fsyncs == 1
    commit.mark_durable(9)
    commit.sync_now()
    assert (commit.durable, commit.fsyncs, commit.failure) == (9, 2, None)


def test_a_closed_group_commit_refuses_new_rounds_but_not_covered_writes(
    tmp_path: Path,
) -> None:
    commit = _core.GroupCommit(0)
    with pytest.raises(ClosedError, match="no active file"):
        commit.wait_durable(1)
    fd = _file(tmp_path)
    commit.set_file(fd, "g.log")
    os.close(fd)
    commit.note_written(3)
    commit.mark_durable(2)
    commit.close("database x is closed")
    commit.wait_durable(2)  # the closing sync covered it
    with pytest.raises(ClosedError, match="database x is closed"):
        commit.wait_durable(3)
    with pytest.raises(ClosedError):
        commit.sync_now()


def test_a_poisoned_group_commit_fails_waiters_until_reopened(tmp_path: Path) -> None:
    fd = _file(tmp_path)
    commit = _core.GroupCommit(0)
    commit.set_file(fd, "g.log")
    os.close(fd)
    commit.note_written(1)
    commit.poison("could not fsync g.log: injected")
    failure = commit.failure
    assert isinstance(failure, StorageError) and "injected" in str(failure)
    with pytest.raises(StorageError, match="injected"):
        commit.wait_durable(1)
    with pytest.raises(StorageError):
        commit.sync_now()
    commit.poison("a second cause")  # the first cause is kept
    assert "injected" in str(commit.failure)


class _SlowSync:
    """fdatasync that takes a while, counting the calls and how many overlap."""

    def __init__(self) -> None:
        self.calls = 0
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def fdatasync(self, fd: int) -> None:
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.01)
        os.fdatasync(fd)
        with self.lock:
            self.running -= 1


def test_waiters_share_rounds_and_never_sync_concurrently(tmp_path: Path) -> None:
    fd = _file(tmp_path)
    commit = _core.GroupCommit(0)
    commit.set_file(fd, "g.log")
    os.close(fd)
    hook = _SlowSync()
    _core.set_io_hook(hook)
    try:
        positions = iter(range(1, 1000))
        lock = threading.Lock()

        def writer() -> None:
            for _ in range(10):
                with lock:  # as the log lock orders appends
                    position = next(positions)
                    commit.note_written(position)
                commit.wait_durable(position)
                assert commit.durable >= position

        threads = [threading.Thread(target=writer) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        _core.set_io_hook(None)
    assert commit.durable == 80
    assert hook.most == 1
    assert hook.calls == commit.fsyncs < 80

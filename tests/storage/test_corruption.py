"""Damage on disk: what the database reports, what survives, and what repair saves.

Files are scribbled over while the database is closed. A *crash image* (the directory
copied while the database is open) stands for what a killed process leaves behind: with
``sync="always"`` every acknowledged write is in the page cache, which a copy reads.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

import kilndb
import kilndb.storage.log
from kilndb.storage.check import check_database
from tests.storage.damage import flip, frames

SMALL_FILES = 64 * 1024


def populate(data_dir: Path, count: int = 600) -> dict[int, dict[str, Any]]:
    """Write ``count`` facts over several data files, close; return {position: fact}."""
    written: dict[int, dict[str, Any]] = {}
    with kilndb.open(data_dir, max_file_size=SMALL_FILES, sync="none") as db:
        store = db.store("s")
        for i in range(count):
            fact = store.write(f"k{i % 40}", {"i": i, "pad": "x" * 120})
            written[fact.position] = fact.to_dict()
    return written


def everything(data_dir: Path) -> dict[int, dict[str, Any]]:
    with kilndb.open(data_dir, max_file_size=SMALL_FILES) as db:
        return {fact.position: fact.to_dict() for fact in db.replay()}


def crash_image(data_dir: Path, target: Path) -> Path:
    """Copy a database directory as a killed process would leave it."""
    shutil.copytree(data_dir, target)
    return target


# -- a flipped byte in a sealed file -------------------------------------------------


#: (data directory, damaged sealed file, offset of the damaged fact, its record, all facts)
Damaged = tuple[Path, Path, int, dict[str, Any], dict[int, dict[str, Any]]]


@pytest.fixture
def damaged(tmp_path: Path) -> Damaged:
    """A database whose second (sealed) data file has one fact with a flipped byte."""
    data_dir = tmp_path / "data"
    written = populate(data_dir)
    sealed = data_dir / "default" / "00000002.log"
    assert (data_dir / "default" / "00000003.log").exists()
    found = frames(sealed)
    offset, size, record = found[len(found) // 2]
    flip(sealed, offset + size // 2)
    return data_dir, sealed, offset, record, written


def assert_points_at(error: kilndb.CorruptRecordError, path: Path, offset: int) -> None:
    assert (error.path, error.offset) == (str(path), offset)
    assert error.error_code == "corrupt_record"


@pytest.mark.parametrize("how", ["read", "history", "replay"])
def test_reading_the_damaged_fact_raises_with_file_and_offset(damaged: Damaged, how: str) -> None:
    data_dir, sealed, offset, record, _ = damaged
    readers: dict[str, Callable[[kilndb.Database], object]] = {
        "read": lambda db: db.store("s").read(record["key"], as_of=record["transaction_time"]),
        "history": lambda db: db.store("s").history(record["key"]),
        "replay": lambda db: list(db.replay()),
    }
    with kilndb.open(data_dir, max_file_size=SMALL_FILES) as db:  # the hint spares a scan
        with pytest.raises(kilndb.CorruptRecordError) as raised:
            readers[how](db)
        assert_points_at(raised.value, sealed, offset)
        # Everything else stays readable.
        other = "k0" if record["key"] != "k0" else "k1"
        assert len(db.store("s").history(other)) == 15
        assert list(db.replay(limit=10))[-1].position == 10


def test_opening_without_the_hint_raises_with_file_and_offset(damaged: Damaged) -> None:
    data_dir, sealed, offset, _, _ = damaged
    sealed.with_suffix(".hint").unlink()

    with pytest.raises(kilndb.CorruptRecordError) as raised:
        kilndb.open(data_dir, max_file_size=SMALL_FILES)

    assert_points_at(raised.value, sealed, offset)
    with pytest.raises(kilndb.CorruptRecordError):  # refused again: nothing was "repaired"
        kilndb.open(data_dir, max_file_size=SMALL_FILES)


@pytest.mark.parametrize("hint", ["with-hint", "without-hint"])
def test_check_fix_recovers_every_record_but_the_damaged_one(damaged: Damaged, hint: str) -> None:
    data_dir, sealed, offset, record, written = damaged
    if hint == "without-hint":
        sealed.with_suffix(".hint").unlink()

    report = check_database(data_dir / "default", fix=True)

    assert [(p.path, p.offset) for p in report.problems] == [(str(sealed), offset)]
    assert report.fixed
    del written[record["position"]]
    assert everything(data_dir) == written
    with kilndb.open(data_dir, max_file_size=SMALL_FILES) as db:
        fact = db.store("s").write("after-repair", 1)
        assert fact.position == max(written) + 1


# -- the newest file -----------------------------------------------------------------


def test_a_torn_tail_is_cut_and_kept_aside(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    written = populate(data_dir, 100)
    newest = data_dir / "default" / "00000001.log"
    offset, size, last = frames(newest)[-1]
    cut = newest.read_bytes()[offset : offset + size - 5]
    with newest.open("r+b") as handle:
        handle.truncate(offset + size - 5)

    with kilndb.open(data_dir) as db:
        assert db.stats()["torn_tails_cut"] == 1
        assert db.store("s").write("next", 1).position == last["position"]

    assert (data_dir / "default" / f"00000001.log.torn-{offset}").read_bytes() == cut
    del written[last["position"]]
    survivors = everything(data_dir)
    assert {p: survivors[p] for p in written} == written


def test_garbage_after_the_last_record_is_cut_and_kept_aside(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    written = populate(data_dir, 100)
    newest = data_dir / "default" / "00000001.log"
    end = newest.stat().st_size
    garbage = b"\x00\x00\x01\x00" + os.urandom(300) + b"\xff"  # zeros at the end are not kept
    with newest.open("ab") as handle:
        handle.write(garbage)

    assert everything(data_dir) == written
    assert (data_dir / "default" / f"00000001.log.torn-{end}").read_bytes() == garbage


def test_a_damaged_header_of_the_newest_file_is_corruption_that_check_repairs(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    written = populate(data_dir)
    newest = sorted((data_dir / "default").glob("*.log"))[-1]
    flip(newest, 6)

    # Intact facts follow the damaged header: not a torn write, so nothing is cut.
    with pytest.raises(kilndb.CorruptRecordError) as info:
        kilndb.open(data_dir, max_file_size=SMALL_FILES)
    assert (info.value.path, info.value.offset) == (str(newest), 0)
    assert not list(newest.parent.glob("*.torn-*"))

    report = check_database(data_dir / "default", fix=True)
    assert report.fixed
    assert everything(data_dir) == written
    with kilndb.open(data_dir, max_file_size=SMALL_FILES) as db:
        assert db.store("s").write("new", 1).position == max(written) + 1


def test_an_incomplete_batch_at_the_tail_is_dropped_entirely(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    written = populate(data_dir, 50)
    with kilndb.open(data_dir) as db:
        batch = db.write_many([kilndb.Write("b", f"k{i}", i) for i in range(5)])
    newest = data_dir / "default" / "00000001.log"
    found = frames(newest)
    header_offset = found[-6][0]
    assert found[-6][2] == {"batch": 5, "first": batch[0].position}
    third_end = found[-3][0] + found[-3][1]
    with newest.open("r+b") as handle:  # the header and three facts made it to disk
        handle.truncate(third_end + 10)

    with kilndb.open(data_dir) as db:
        assert db.store("b").keys() == []
        assert db.store("s").write("next", 1).position == batch[0].position

    assert (newest.parent / f"00000001.log.torn-{header_offset}").stat().st_size == (
        third_end + 10 - header_offset
    )
    survivors = everything(data_dir)
    assert {p: survivors[p] for p in written} == written
    assert sorted(survivors) == list(range(1, len(written) + 2))


# -- the lock ------------------------------------------------------------------------


def test_a_second_process_gets_database_locked_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    script = textwrap.dedent(
        """
        import sys, kilndb
        try:
            kilndb.open(sys.argv[1]).close()
        except kilndb.DatabaseLockedError as exc:
            print("locked:", exc)
        else:
            print("opened")
        """
    )

    def other_process() -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    with kilndb.open(data_dir):
        answer = other_process()
        assert answer.startswith("locked:")
        assert f"pid {os.getpid()}" in answer
    assert other_process() == "opened"


# -- a full disk ---------------------------------------------------------------------


class ShortThenFull:
    """``os.pwrite`` that writes part of the next record, then fails with ENOSPC."""

    def __init__(self, keep: Callable[[bytes], int]) -> None:
        self.real = os.pwrite
        self.keep = keep
        self.failed: bytes | None = None
        self.calls = 0

    def __call__(self, fd: int, data: bytes, offset: int) -> int:
        self.calls += 1
        if self.calls == 1:
            self.failed = bytes(data)
            return self.real(fd, data[: self.keep(data)], offset)
        if self.calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real(fd, data, offset)


@pytest.mark.usefixtures("os_io")
def test_disk_full_during_a_write_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    with kilndb.open(data_dir) as db:
        store = db.store("s")
        acked = [store.write("k", {"i": i}) for i in range(20)]
        path = db.path / "00000001.log"
        size = db.stats()["data_bytes"]
        on_disk = path.read_bytes()[:size]
        full = ShortThenFull(lambda data: len(data) // 2)
        monkeypatch.setattr(os, "pwrite", full)

        with pytest.raises(kilndb.DiskFullError):
            store.write("k", {"i": "lost"})

        assert full.calls == 2
        assert db.stats()["last_position"] == 20
        assert db.stats()["data_bytes"] == size
        assert path.read_bytes()[:size] == on_disk
        assert store.read("k") == acked[-1]
        assert store.write("k", {"i": 20}).position == 21  # the database keeps working
        assert [f.value for f in store.history("k")] == [{"i": i} for i in range(21)]

    assert [f["value"] for f in everything(data_dir).values()] == [{"i": i} for i in range(21)]


@pytest.mark.usefixtures("os_io")
def test_disk_full_while_preallocating_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    with kilndb.open(data_dir) as db:
        db.store("s").write("k", 0)
    with kilndb.open(data_dir) as db:  # reopened: the file is exactly its data, so the
        real = os.posix_fallocate  # next write must allocate space first

        def full(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "posix_fallocate", full)
        with pytest.raises(kilndb.DiskFullError):
            db.write_many([kilndb.Write("s", "k", 1), kilndb.Write("s", "j", 1)])
        assert db.stats()["last_position"] == 1
        monkeypatch.setattr(os, "posix_fallocate", real)
        db.write_many([kilndb.Write("s", "k", 2), kilndb.Write("s", "j", 2)])

    assert [(f["key"], f["value"]) for f in everything(data_dir).values()] == [
        ("k", 0),
        ("k", 2),
        ("j", 2),
    ]


@pytest.mark.usefixtures("os_io")
def test_a_batch_that_failed_on_a_full_disk_never_resurfaces_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frames of a half-written batch must not be found again by recovery.

    The next write is made exactly as long as the failed batch's header plus first fact,
    so that, were the failed bytes left in the file, the batch's second fact would start
    right where recovery looks for the next record.
    """
    data_dir = tmp_path / "data"
    monkeypatch.setattr(kilndb.storage.log, "time", SimpleNamespace(time=lambda: 1.7e9 + 0.25))
    with kilndb.open(data_dir) as db:
        store = db.store("s")
        store.write("k", "before")

        def header_and_two_facts(data: bytes) -> int:
            sizes = [f[1] for f in _frames_of(data)]
            return sum(sizes[:3]) + sizes[3] // 2

        full = ShortThenFull(header_and_two_facts)
        monkeypatch.setattr(os, "pwrite", full)
        with pytest.raises(kilndb.DiskFullError):
            db.write_many([kilndb.Write("s", "k", "a" * 50 + str(i)) for i in range(3)])
        assert full.failed is not None
        header_size, first_size = (f[1] for f in _frames_of(full.failed)[:2])

        fact = store.write("k", "a" * (51 + header_size))

        assert len(orjson.dumps(fact.to_dict())) + 8 == header_size + first_size
        image = crash_image(data_dir, tmp_path / "crash")

    facts = everything(image)
    assert [(f["seq"], f["value"]) for f in facts.values()] == [(1, "before"), (2, fact.value)]


def _frames_of(data: bytes) -> list[tuple[int, int]]:
    """``(offset, size)`` of the frames in a byte string (a record about to be written)."""
    found, offset = [], 0
    while offset + 4 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big") + 8
        found.append((offset, size))
        offset += size
    return found

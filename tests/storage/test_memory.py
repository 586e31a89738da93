"""A million writes grow nothing but the keydir: no Python objects and no native memory
are left behind per write (tracemalloc, the interpreter's block count and RSS)."""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import tracemalloc
from pathlib import Path

import pytest

import kilndb
from kilndb import Write

pytestmark = pytest.mark.slow

BATCH = 1000
VALUE = {"title": "hello", "n": 42, "tags": ["a", "b"]}


def rss() -> int:
    """Resident bytes of live allocations: free heap memory is handed back first, so
    that what the allocator keeps for reuse is not mistaken for growth."""
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def allocated() -> int:
    """Bytes of native allocations in use, over every malloc arena (glibc's mallinfo2):
    unlike RSS, free memory a thread's arena keeps mapped does not count."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def write(db: kilndb.Database, first: int, count: int) -> None:
    for start in range(first, first + count, BATCH):
        facts = db.write_many(
            [Write("s", f"key-{i:08d}", VALUE) for i in range(start, start + BATCH)]
        )
        assert facts[-1].position == start + BATCH
        del facts


def test_a_million_writes_grow_nothing_but_the_keydir(tmp_path: Path) -> None:
    start = allocated()
    with kilndb.open(tmp_path, sync="none") as db:
        keydir = db._log.keydir
        write(db, 0, 100_000)  # warm up: caches, the first data files, arenas
        assert db._log.wait_for_maintenance(60)  # no hint is being built while measuring
        gc.collect()
        blocks, resident, indexed = sys.getallocatedblocks(), rss(), keydir.memory_bytes()

        tracemalloc.start()
        try:
            traced_before = tracemalloc.get_traced_memory()[0]
            write(db, 100_000, 100_000)
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] - traced_before
        finally:
            tracemalloc.stop()
        write(db, 200_000, 800_000)
        assert db._log.wait_for_maintenance(60)
        gc.collect()

        assert db.stats()["facts"] == 1_000_000
        # Python objects: nothing per write survives (a few KiB of caches at most).
        assert traced < 256 * 1024, traced
        assert sys.getallocatedblocks() - blocks < 5_000
        # Native memory: what the process grew by is the keydir's growth, give or take
        # the allocator's slack (the data files are in the page cache, not in RSS).
        grown = rss() - resident
        keydir_grown = keydir.memory_bytes() - indexed
        assert keydir_grown <= 100 * 900_000
        assert grown - keydir_grown < 24 * 1024 * 1024, (grown, keydir_grown)
    # And a closed database, once dropped, frees it all. (Counted as allocations in use:
    # the arenas of the threads that wrote may stay mapped, free, at the allocator's will.)
    del keydir, db
    gc.collect()
    assert allocated() - start < 4 * 1024 * 1024

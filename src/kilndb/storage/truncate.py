"""Cutting a log back to a position: how a former leader drops its divergent tail.

A leader that accepted writes no follower received, and was then replaced by a promoted
follower, holds records after the point where the new leader's history starts. Before it
can follow the new leader it must drop them: :func:`truncate_after` cuts every record
with a position above ``position`` from the data files of a database that no process has
open. Nothing is destroyed silently: the bytes cut are kept beside their file as
``NNNNNNNN.log.divergent-OFFSET`` (whole later files are renamed so), hint files of the
files touched are removed (recovery rebuilds them), and the positions dropped are
returned and logged. :func:`discard_copy` empties a follower's copy when nothing short
of a full copy can bring it back in step with its leader.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson

from kilndb.storage.datafile import (
    FrameReader,
    data_path,
    free_name,
    fsync_directory,
    hint_path,
    list_data_files,
    write_durably,
)
from kilndb.storage.lockfile import DatabaseLock
from kilndb.storage.meta import BY_STORE, finish_discard, write_meta
from kilndb.storage.records import BATCH_PREFIX, FACT_PREFIX, FILE_PREFIX

__all__ = ["discard_copy", "truncate_after"]

log = logging.getLogger("kilndb.storage")


def truncate_after(directory: Path, position: int) -> list[int]:
    """Drop every record after ``position``; return the fact positions dropped."""
    lock = DatabaseLock(directory)  # DatabaseLockedError while the database is open
    try:
        dropped: list[int] = []
        paths = [data_path(directory, file_id) for file_id in list_data_files(directory)]
        cutting = False
        for path in paths:
            if cutting:
                dropped += _fact_positions(path, 0)
                _keep_aside(path, path.with_name(f"{path.name}.divergent-0"))
                continue
            cut = _first_offset_after(path, position)
            if cut is None:
                continue
            cutting = True
            dropped += _fact_positions(path, cut)
            _cut(path, cut)
        if dropped:
            fsync_directory(directory)
            log.warning(
                "divergent tail dropped from %s: %d facts, positions %d..%d",
                directory,
                len(dropped),
                dropped[0],
                dropped[-1],
                extra={"path": str(directory), "positions": dropped},
            )
        return dropped
    finally:
        lock.release()


def discard_copy(directory: Path) -> int:
    """Empty a follower's copy for a full resync; return how many facts it held.

    Used only when its leader can no longer ship what the copy lacks (compaction
    removed those records): every data and hint file goes, ``META`` keeps the database
    id and loses what described the old files (``compacted_through`` and
    ``compacted_through_by_store``, ``position_floor``), and the copy is refilled from position 0.
    """
    lock = DatabaseLock(directory)  # DatabaseLockedError while the database is open
    try:
        facts = sum(
            len(_fact_positions(data_path(directory, file_id), 0))
            for file_id in list_data_files(directory)
        )
        meta = orjson.loads((directory / "META").read_bytes())
        meta.pop("position_floor", None)
        meta["compacted_through"] = 0
        meta[BY_STORE] = {}
        # First the intent, durably: a crash from here on leaves a copy that the next
        # open finishes emptying (never a copy with files missing in the middle).
        meta["discarding"] = True
        write_meta(directory, meta)
        finish_discard(directory, meta)
        log.warning(
            "replica copy in %s discarded for a full resync: %d facts",
            directory,
            facts,
            extra={"path": str(directory), "facts": facts},
        )
        return facts
    finally:
        lock.release()


def _records(path: Path, start: int) -> list[tuple[int, bytes]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(FrameReader(fd, start, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def _first_offset_after(path: Path, position: int) -> int | None:
    for offset, body in _records(path, 0):
        if body.startswith(FILE_PREFIX):
            continue
        record = orjson.loads(body)
        first = record["first"] if body.startswith(BATCH_PREFIX) else record["position"]
        if first > position:
            return int(offset)
    return None


def _fact_positions(path: Path, start: int) -> list[int]:
    return [
        int(orjson.loads(body)["position"])
        for _, body in _records(path, start)
        if body.startswith(FACT_PREFIX)
    ]


def _cut(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        tail = handle.read().rstrip(b"\0")
        if tail:
            write_durably(free_name(path.with_name(f"{path.name}.divergent-{offset}")), [tail])
        handle.truncate(offset)
        handle.flush()
        os.fsync(handle.fileno())
    _drop_hint(path)


def _drop_hint(path: Path) -> None:
    hint_path(path.parent, int(path.name.split(".")[0])).unlink(missing_ok=True)


def _keep_aside(path: Path, target: Path) -> None:
    os.replace(path, free_name(target))
    _drop_hint(path)

"""Compaction: rewrite sealed data files without the facts retention dropped.

Theory of operation
-------------------
For each sealed file holding dead bytes, the retained frames are copied verbatim (each
CRC checked on the way) behind a fresh copy of the file header into
``NNNNNNNN.log.compact``, which is fsynced. Then, holding the log lock only for the
swap, the keydir entries are pointed at their new offsets, the old hint is removed, the
new file is renamed over the old one (atomic) and the directory fsynced. A new hint is
written afterwards; a crash before it exists only costs a scan at the next open. A file
left with no retained fact is deleted outright (its header's only job, keeping positions
from being reused, is done by the next file's header).

Readers that looked a fact up before the swap keep reading the old file through their
open descriptor. Facts that retention drops while the copy runs are carried over as dead
bytes and reclaimed by the next compaction.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import orjson

from kilndb.codec import encode_frame
from kilndb.errors import CorruptRecordError
from kilndb.storage.datafile import DataFile, data_path, hint_path
from kilndb.storage.hint import TOMBSTONE, Hint, write_hint
from kilndb.storage.records import file_header

if TYPE_CHECKING:
    from kilndb.storage.log import Log

__all__ = ["compact_sealed"]


def compact_sealed(log: Log) -> dict[str, int]:
    """Compact every sealed file with dead bytes; return what was done."""
    done = {"files_compacted": 0, "files_removed": 0, "bytes_reclaimed": 0}
    with log.lock:
        candidates = [
            f.file_id for f in log.files.values() if f is not log.active and f.dead_bytes > 0
        ]
    for file_id in candidates:
        before, after = _compact_file(log, file_id)
        done["files_compacted" if after else "files_removed"] += 1
        done["bytes_reclaimed"] += before - after
    if candidates:
        log.stats_counters["compactions"] += 1
    return done


def _compact_file(log: Log, file_id: int) -> tuple[int, int]:
    keydir = log.keydir
    with log.lock:
        old = log.files[file_id]
        first = log.first_positions[file_id]
        later = [f for f in log.files if f > file_id]
        end = log.first_positions[min(later)] if later else log.next_position
        live = []
        dropped_max = 0
        for position, location in enumerate(keydir.locations(range(first, end)), first):
            if location is None:
                dropped_max = position
            elif location[0] == file_id:
                live.append((position, location[1], location[2]))
    directory = log.directory
    before = old.size
    if not live:
        with log.lock:
            del log.files[file_id]
            del log.first_positions[file_id]
            hint_path(directory, file_id).unlink(missing_ok=True)
            old.path.unlink()
            log.fsync_directory()
        log.record_compacted(dropped_max)
        return before, 0

    temporary = data_path(directory, file_id).with_name(f"{file_id:08d}.log.compact")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    new = DataFile(temporary, file_id, fd, 0, 0)
    # (position, new offset, hint columns) of every fact copied.
    moved: list[tuple[int, int, int, tuple[int, float, str, str, str | None]]] = []
    try:
        new.append(encode_frame(file_header(file_id, first, log.database_id)))
        for position, offset, size in live:
            frame = old.pread(offset, size)
            body = frame[4:-4]
            if len(frame) != size or encode_frame(body) != frame:
                raise CorruptRecordError(str(old.path), offset)
            new_offset = new.append(frame)
            record = orjson.loads(body)
            fact_id = record["id"]
            columns = (
                record["seq"] | (TOMBSTONE if record["deleted"] else 0),
                record["transaction_time"],
                record["store"],
                record["key"],
                None if log.ids_codec.position_of(fact_id) == position else fact_id,
            )
            moved.append((position, new_offset, size, columns))
        new.seal()
    except BaseException:
        new.close()
        temporary.unlink(missing_ok=True)
        raise
    final = data_path(directory, file_id)
    hint = Hint(file_id, new.size)
    with log.lock:
        for position, new_offset, size, (seq, ttime, store, key, fact_id) in moved:
            location = keydir.location(position)
            if location is not None and location[0] == file_id:
                keydir.relocate(position, file_id, new_offset)
                hint.add(position, new_offset, size, seq, ttime, store, key, fact_id)
            else:  # dropped while we copied: dead in the new file too, and not in its hint
                new.dead_bytes += size
        hint_path(directory, file_id).unlink(missing_ok=True)
        os.replace(temporary, final)
        new.path = final
        log.fsync_directory()
        log.files[file_id] = new
    hint.dead_bytes = new.dead_bytes
    write_hint(hint_path(directory, file_id), hint)
    log.record_compacted(dropped_max)
    return before, new.size

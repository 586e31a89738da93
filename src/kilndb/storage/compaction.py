"""Compaction: rewrite sealed data files without the facts retention dropped.

Theory of operation
-------------------
For each sealed file holding dead bytes, the retained frames are copied verbatim by the
core, a chunk at a time and each CRC checked on the way, behind a fresh copy of the file
header into ``NNNNNNNN.log.compact``, which is fsynced. Then, holding the log lock only for the
swap, the keydir entries are pointed at their new offsets, the old hint is removed, the
new file is renamed over the old one (atomic) and the directory fsynced. A new hint is
written afterwards; a crash before it exists only costs a scan at the next open. A file
left with no retained fact is deleted outright (its header's only job, keeping positions
from being reused, is done by the next file's header).

Each compaction raises the watermarks in ``META``: ``compacted_through`` to the highest
position of the compacted files that is no longer retained, and, for each store that
retention dropped facts of in those files, its ``compacted_through_by_store`` entry to the
highest such position. The keydir keeps, per file and store, the highest position freed
since the file's last compaction (:meth:`KeyDir.take_dropped`), since a freed position no
longer records its store. That record lives in memory: for a file whose hint counted dead
bytes when the log was opened (facts dropped by an earlier process), compaction also
reads the file once to learn the stores of the facts the keydir no longer retains.

Readers that looked a fact up before the swap keep reading the old file through their
open descriptor. Facts that retention drops while the copy runs are carried over as dead
bytes and reclaimed by the next compaction.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from kilndb import _core
from kilndb.codec import encode_frame
from kilndb.storage.datafile import DataFile, data_path, hint_path
from kilndb.storage.hint import write_hint
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


def _add_dropped_on_disk(log: Log, datafile: DataFile, dropped: dict[str, int]) -> None:
    """Add to ``dropped`` the stores of the facts of ``datafile`` that the keydir no
    longer retains, read from the file (for facts dropped before the log was opened)."""
    start = log.header_end(datafile)
    indexed = _core.index_file(datafile.fd, datafile.name, start, datafile.size, 0)
    for store, position in indexed.dropped_by_store(log.keydir, datafile.file_id).items():
        dropped[store] = max(position, dropped.get(store, 0))


def _compact_file(log: Log, file_id: int) -> tuple[int, int]:
    keydir = log.keydir
    with log.lock:
        old = log.files[file_id]
        first = log.first_positions[file_id]
        later = [f for f in log.files if f > file_id]
        end = log.first_positions[min(later)] if later else log.next_position
        positions, offsets, sizes, dropped_max = keydir.live_in_file(file_id, first, end)
        # What retention freed in this file, store by store: the keydir no longer knows
        # the store of a freed position. Drops made while the copy runs stay dead bytes
        # of the new file and are counted by its next compaction.
        dropped = keydir.take_dropped(file_id)
        dropped_earlier = file_id in log.dead_before_open
        log.dead_before_open.discard(file_id)
    if dropped_earlier:
        _add_dropped_on_disk(log, old, dropped)
    directory = log.directory
    before = old.size
    if not positions:
        with log.lock:
            del log.files[file_id]
            del log.first_positions[file_id]
            hint_path(directory, file_id).unlink(missing_ok=True)
            old.path.unlink()
            log.fsync_directory()
        log.record_compacted(dropped_max, dropped)
        return before, 0

    temporary = data_path(directory, file_id).with_name(f"{file_id:08d}.log.compact")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    new = DataFile(temporary, file_id, fd, 0, 0)
    try:
        new.append(encode_frame(file_header(file_id, first, log.database_id)))
        # The core copies the frames a chunk at a time, checking each one's CRC.
        moved, new.size, new.allocated = _core.copy_frames(
            old.fd, old.name, offsets, sizes, new.fd, new.name, new.size, new.allocated
        )
        new.seal()
    except BaseException:
        new.close()
        temporary.unlink(missing_ok=True)
        raise
    final = data_path(directory, file_id)
    with log.lock:
        # Facts dropped while the copy ran are dead in the new file too.
        new.dead_bytes = keydir.relocate_many(file_id, positions, moved, sizes)
        hint_path(directory, file_id).unlink(missing_ok=True)
        os.replace(temporary, final)
        new.path, new.name = final, str(final)
        log.fsync_directory()
        log.files[file_id] = new
    # The hint describes what the keydir retains of the new file when it is written.
    write_hint(hint_path(directory, file_id), log.build_hint(new))
    log.record_compacted(dropped_max, dropped)
    return before, new.size

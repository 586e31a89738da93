"""Opening a database directory: rebuild the keydir from hints and data files.

Theory of operation
-------------------
Data files are loaded in id order. A sealed file is loaded from its hint when the hint
matches, else by scanning its frames; any damage in a sealed file is corruption and
raises :class:`CorruptRecordError` with the file and offset (``kiln check --fix``
repairs it). The newest file is the one a crash can leave torn: it is scanned (unless a
clean close left a matching hint) and cut at the first frame that is short, fails its
CRC or belongs to a batch whose frames did not all arrive — provided no intact record
follows (:mod:`kilndb.storage.resync`): damage with intact records after it is not a
torn write but corruption, and raises :class:`CorruptRecordError` like damage in a
sealed file, so that nothing acknowledged is dropped. The bytes cut off are kept
beside the file as ``NNNNNNNN.log.torn-OFFSET`` (never silently destroyed), and a
warning names the file, the offset and how much was dropped. Nothing acknowledged can be
in a torn tail: an acknowledgement follows the write (and, with ``sync="always"``, the
fsync) of the whole frame.
"""

from __future__ import annotations

import logging
import mmap
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from kilndb import _core
from kilndb.codec import encode_frame
from kilndb.errors import CorruptRecordError
from kilndb.storage.datafile import (
    LEFTOVER_SUFFIXES,
    DataFile,
    data_path,
    free_name,
    fsync_directory,
    hint_path,
    list_data_files,
    write_durably,
)
from kilndb.storage.hint import column_bytes, read_hint
from kilndb.storage.ids import IdCodec
from kilndb.storage.records import FILE_PREFIX, file_header
from kilndb.storage.resync import resync

__all__ = ["Recovered", "recover", "write_header"]

log = logging.getLogger("kilndb.storage")


@dataclass
class Recovered:
    keydir: _core.KeyDir
    ids: _core.IdIndex
    files: dict[int, DataFile]
    first_positions: dict[int, int]
    last_ttime: float = 0.0
    torn: list[tuple[str, int, int]] = field(default_factory=list)


def _header_of(datafile: DataFile) -> tuple[int, int] | None:
    """``(first_position, end_offset)`` of a data file's header frame, if intact."""
    reader = datafile.frames(0, datafile.size)
    for offset, body in reader:
        if not body.startswith(FILE_PREFIX):
            return None
        try:
            header = orjson.loads(body)
            return int(header["first_position"]), offset + 8 + len(body)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
    return None


class _Scan:
    """Index the frames of one data file; remembers where a clean prefix ends."""

    def __init__(self, result: Recovered, codec: IdCodec, datafile: DataFile) -> None:
        self.result = result
        self.codec = codec
        self.datafile = datafile
        self.good_end = 0
        #: Where to cut if this is a torn tail (a torn batch is cut at its header).
        self.bad_offset: int | None = None
        #: Where the unreadable bytes begin.
        self.damage = 0

    def run(self, start: int, end: int) -> None:
        datafile, keydir, ids, codec = (
            self.datafile,
            self.result.keydir,
            self.result.ids,
            self.codec,
        )
        file_id = datafile.file_id
        indexed = _core.index_file(datafile.fd, datafile.name, start, end, keydir.last_position)
        last_ttime = indexed.load_into(keydir, file_id, codec.prefix, ids)
        if last_ttime is not None:
            self.result.last_ttime = last_ttime
        self.good_end = indexed.good_end
        self.damage = indexed.damage
        self.bad_offset = indexed.bad_offset
        if (
            self.bad_offset is None
            and indexed.stop_reason == "end-marker"
            and _has_data_after(datafile, self.good_end, end)
        ):
            self.bad_offset = self.damage = self.good_end


def _has_data_after(datafile: DataFile, offset: int, end: int) -> bool:
    while offset < end:
        chunk = datafile.pread(offset, min(1 << 20, end - offset))
        if not chunk:
            return False
        if chunk.strip(b"\0"):
            return True
        offset += len(chunk)
    return False


def _check_torn(datafile: DataFile, damage: int) -> None:
    """Raise CorruptRecordError unless nothing intact follows ``damage`` (a torn tail)."""
    if datafile.allocated <= damage:
        return
    with mmap.mmap(datafile.fd, datafile.allocated, access=mmap.ACCESS_READ) as buf:
        follows = resync(buf, damage, datafile.allocated)
    if follows is not None:
        raise CorruptRecordError(
            datafile.name,
            damage,
            f"corrupt record in {datafile.path} at offset {damage}, with intact records"
            f" after it (from offset {follows}): run `kiln check --fix` to recover them",
        )


def _cut_torn_tail(datafile: DataFile, offset: int, result: Recovered) -> None:
    tail = datafile.pread(offset, datafile.allocated - offset).rstrip(b"\0")
    keep = free_name(datafile.path.with_name(f"{datafile.path.name}.torn-{offset}"))
    if tail:
        write_durably(keep, [tail])
    _core.truncate_file(datafile.fd, datafile.name, offset)
    _core.sync_file(datafile.fd, datafile.name, metadata=True)
    fsync_directory(datafile.path.parent)
    datafile.size = datafile.allocated = offset
    result.torn.append((datafile.name, offset, len(tail)))
    log.warning(
        "torn tail cut from %s at offset %d (%d bytes of unacknowledged data dropped%s)",
        datafile.path,
        offset,
        len(tail),
        f", kept in {keep.name}" if tail else "",
        extra={"path": datafile.name, "offset": offset, "dropped_bytes": len(tail)},
    )


def write_header(datafile: DataFile, first_position: int, database_id: str) -> int:
    """Write the header frame of an empty data file and make it durable."""
    datafile.size = 0
    datafile.append(encode_frame(file_header(datafile.file_id, first_position, database_id)))
    datafile.sync()
    return datafile.size


def recover(directory: Path, database_id: str, codec: IdCodec) -> Recovered:
    """Load every data file of ``directory``; the newest one is left open for appends."""
    for entry in directory.iterdir():
        if entry.name.endswith(LEFTOVER_SUFFIXES):
            entry.unlink()
    file_ids = list_data_files(directory)
    if not file_ids:
        datafile = DataFile.create(directory, 1)
        write_header(datafile, 1, database_id)
        return Recovered(_core.KeyDir(1), _core.IdIndex(), {1: datafile}, {1: 1})
    result: Recovered | None = None
    for index, file_id in enumerate(file_ids):
        is_last = index == len(file_ids) - 1
        datafile = DataFile.open(data_path(directory, file_id), file_id, writable=is_last)
        header = _header_of(datafile)
        if header is None:
            if not is_last:
                raise CorruptRecordError(datafile.name, 0, f"{datafile.path}: bad file header")
            # The header is made durable before anything is appended, so a newest file
            # with a torn header holds nothing acknowledged: keep its bytes aside and
            # start it anew. Intact records after a damaged header are corruption.
            _check_torn(datafile, 0)
            first = 1 if result is None else result.keydir.last_position + 1
            if result is None:
                result = Recovered(_core.KeyDir(first), _core.IdIndex(), {}, {})
            _cut_torn_tail(datafile, 0, result)
            header = (first, write_header(datafile, first, database_id))
        first_position, start = header
        if result is None:
            result = Recovered(_core.KeyDir(first_position), _core.IdIndex(), {}, {})
        result.keydir.pad_to(first_position - 1)
        result.files[file_id] = datafile
        result.first_positions[file_id] = first_position
        hint = read_hint(hint_path(directory, file_id), file_id, datafile.size)
        if hint is not None:
            result.keydir.load_columns(file_id, *column_bytes(hint), hint.stores, hint.keys)
            datafile.dead_bytes = hint.dead_bytes
            if len(hint):
                result.last_ttime = max(result.last_ttime, hint.ttime[-1])
            result.ids.load_hint(hint.ids)
            if is_last:
                hint_path(directory, file_id).unlink()
            continue
        scan = _Scan(result, codec, datafile)
        scan.run(start, datafile.size)
        if scan.bad_offset is not None:
            if not is_last:
                raise CorruptRecordError(datafile.name, scan.damage)
            _check_torn(datafile, scan.damage)
            _cut_torn_tail(datafile, scan.bad_offset, result)
        elif is_last:
            datafile.size = scan.good_end
    assert result is not None
    return result

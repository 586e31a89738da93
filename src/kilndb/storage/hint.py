"""Hint files: a columnar keydir snapshot of one data file, for a fast restart.

Theory of operation
-------------------
``NNNNNNNN.hint`` describes the retained facts of ``NNNNNNNN.log`` so that opening a
database does not parse every record. It is written when a data file is sealed, when
compaction rewrites one and for the active file on a clean close. Layout::

    offset  size  field
    0       8     magic  b"KILNHNT1"
    8       ...   nine frames (kilndb.codec framing, CRC-32 each), in this order:
                  1 header    JSON {"version", "file_id", "data_size", "count", "stores",
                              "dead_bytes"}
                  2 position  count x u64 little-endian
                  3 offset    count x u64 LE   byte offset of the fact's frame
                  4 size      count x u32 LE   frame length
                  5 seq       count x u32 LE   seq, bit 31 set for a tombstone
                  6 ttime     count x f64 LE   transaction time
                  7 store     count x u32 LE   index into header["stores"]
                  8 keys      JSON list of count key strings
                  9 ids       JSON {position: id} for client-supplied ids only

A hint is used only if its magic, every CRC, its ``file_id`` and its ``data_size`` (the
data file's exact length) match; otherwise the data file is scanned instead, so a stale
or damaged hint costs time, never correctness. Hints are written to a temporary name,
fsynced and renamed into place.
"""

from __future__ import annotations

import os
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from kilndb.codec import encode_frame
from kilndb.storage.datafile import FrameReader, fsync_directory, write_durably

__all__ = ["TOMBSTONE", "Hint", "column_bytes", "read_hint", "write_hint"]

MAGIC = b"KILNHNT1"
VERSION = 1
#: Bit 31 of a seq column entry: the fact is a tombstone.
TOMBSTONE = 1 << 31
_LITTLE = sys.byteorder == "little"


@dataclass
class Hint:
    """Columns of one data file's retained facts, in position order."""

    file_id: int
    data_size: int
    #: Bytes of fact frames in the data file that are no longer retained.
    dead_bytes: int = 0
    position: array[int] = field(default_factory=lambda: array("Q"))
    offset: array[int] = field(default_factory=lambda: array("Q"))
    size: array[int] = field(default_factory=lambda: array("I"))
    seq: array[int] = field(default_factory=lambda: array("I"))
    ttime: array[float] = field(default_factory=lambda: array("d"))
    store: array[int] = field(default_factory=lambda: array("I"))
    stores: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    ids: dict[int, str] = field(default_factory=dict)
    _store_index: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.position)

    @classmethod
    def from_columns(
        cls,
        file_id: int,
        data_size: int,
        columns: tuple[bytes, ...],
        stores: list[str],
        keys: list[str],
        ids: dict[int, str],
    ) -> Hint:
        """A hint from its numeric columns as little-endian bytes (position, offset,
        size, seq, ttime, store), as the core builds them."""
        position, offset, size, seq, ttime, store = columns
        hint = cls(file_id, data_size)
        hint.position = _column("Q", position)
        hint.offset = _column("Q", offset)
        hint.size = _column("I", size)
        hint.seq = _column("I", seq)
        hint.ttime = _column("d", ttime)
        hint.store = _column("I", store)
        hint.stores = stores
        hint.keys = keys
        hint.ids = ids
        return hint

    def add(
        self,
        position: int,
        offset: int,
        size: int,
        seq: int,
        ttime: float,
        store: str,
        key: str,
        explicit_id: str | None,
    ) -> None:
        index = self._store_index.get(store)
        if index is None:
            index = self._store_index[store] = len(self.stores)
            self.stores.append(store)
        self.position.append(position)
        self.offset.append(offset)
        self.size.append(size)
        self.seq.append(seq)
        self.ttime.append(ttime)
        self.store.append(index)
        self.keys.append(key)
        if explicit_id is not None:
            self.ids[position] = explicit_id


def column_bytes(hint: Hint) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
    """The hint's numeric columns as little-endian bytes, as the keydir loads them:
    position, offset, size, seq, ttime, store."""
    return (
        _column_bytes(hint.position),
        _column_bytes(hint.offset),
        _column_bytes(hint.size),
        _column_bytes(hint.seq),
        _column_bytes(hint.ttime),
        _column_bytes(hint.store),
    )


def _column_bytes(column: array[int] | array[float]) -> bytes:
    if _LITTLE:
        return column.tobytes()
    swapped = array(column.typecode, column)
    swapped.byteswap()
    return swapped.tobytes()


def _column(typecode: str, data: bytes) -> array:  # type: ignore[type-arg]
    column = array(typecode)
    column.frombytes(data)
    if not _LITTLE:
        column.byteswap()
    return column


def write_hint(path: Path, hint: Hint) -> None:
    header = {
        "version": VERSION,
        "file_id": hint.file_id,
        "data_size": hint.data_size,
        "count": len(hint),
        "stores": hint.stores,
        "dead_bytes": hint.dead_bytes,
    }
    parts = [
        MAGIC,
        encode_frame(orjson.dumps(header)),
        *(
            encode_frame(_column_bytes(column))
            for column in (hint.position, hint.offset, hint.size, hint.seq, hint.ttime, hint.store)
        ),
        encode_frame(orjson.dumps(hint.keys)),
        encode_frame(orjson.dumps({str(k): v for k, v in hint.ids.items()})),
    ]
    temporary = path.with_name(path.name + ".tmp")
    write_durably(temporary, parts)
    os.replace(temporary, path)
    fsync_directory(path.parent)


def read_hint(path: Path, file_id: int, data_size: int) -> Hint | None:
    """Load a hint, or ``None`` if it is missing, damaged or does not match the data file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        length = os.fstat(fd).st_size
        if os.pread(fd, len(MAGIC), 0) != MAGIC:
            return None
        reader = FrameReader(fd, len(MAGIC), length)
        bodies = [body for _, body in reader]
    finally:
        os.close(fd)
    if len(bodies) != 9 or reader.stop_reason is not None:
        return None
    try:
        header = orjson.loads(bodies[0])
        if (
            header.get("version") != VERSION
            or header.get("file_id") != file_id
            or header.get("data_size") != data_size
        ):
            return None
        count = header["count"]
        hint = Hint(file_id, data_size, int(header.get("dead_bytes", 0)))
        hint.position = _column("Q", bodies[1])
        hint.offset = _column("Q", bodies[2])
        hint.size = _column("I", bodies[3])
        hint.seq = _column("I", bodies[4])
        hint.ttime = _column("d", bodies[5])
        hint.store = _column("I", bodies[6])
        hint.stores = list(header["stores"])
        hint.keys = orjson.loads(bodies[7])
        hint.ids = {int(k): v for k, v in orjson.loads(bodies[8]).items()}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    columns = (hint.position, hint.offset, hint.size, hint.seq, hint.ttime, hint.store, hint.keys)
    if any(len(column) != count for column in columns):
        return None
    return hint

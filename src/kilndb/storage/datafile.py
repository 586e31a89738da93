"""Data files: append-only, preallocated, CRC-framed logs of records.

Theory of operation
-------------------
A database's log is a sequence of data files ``00000001.log``, ``00000002.log`` … in
position order. Each holds frames (see :mod:`kilndb.codec`) back to back from offset 0.
Only the newest file is *active* (appended to); the others are *sealed*: truncated to
their exact length, fsynced and never written again except by compaction, which replaces
a sealed file as a whole by an atomic rename.

The active file is preallocated ahead of the write offset in steps of
``PREALLOCATE_STEP`` bytes. Overwriting already-allocated blocks lets ``fdatasync`` skip
the file-size metadata update, which cuts the cost of every durable write by about a
third. The price is a zero-filled tail, so a header whose ``body_len`` is 0 marks the
end of the data: no record body is ever empty, so a zero length is never a real frame.
On a clean close the active file is truncated back to its data.

Writes use ``pwrite`` at a tracked offset. A write that fails half way (disk full, I/O
error) is cut off again by truncating the file at the tracked end, so nothing
acknowledged is disturbed and no whole frame of the failed record is left where recovery
could find it after a crash (behind a later, shorter record).
"""

from __future__ import annotations

import errno
import os
import struct
import weakref
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kilndb.codec import FRAME_HEADER_SIZE, FRAME_OVERHEAD
from kilndb.errors import DiskFullError, StorageError

__all__ = [
    "DATA_SUFFIX",
    "HINT_SUFFIX",
    "LEFTOVER_SUFFIXES",
    "DataFile",
    "FrameReader",
    "data_path",
    "free_name",
    "fsync_directory",
    "hint_path",
    "list_data_files",
    "write_durably",
]

DATA_SUFFIX = ".log"
HINT_SUFFIX = ".hint"
#: Temporary files of interrupted writes (hints, META, compaction): safe to delete.
LEFTOVER_SUFFIXES = (".tmp", ".compact")
PREALLOCATE_STEP = 4 * 1024 * 1024
READ_CHUNK = 1024 * 1024

_U32 = struct.Struct(">I")
_unpack_u32 = _U32.unpack_from
_crc32 = zlib.crc32


def data_path(directory: Path, file_id: int) -> Path:
    return directory / f"{file_id:08d}{DATA_SUFFIX}"


def hint_path(directory: Path, file_id: int) -> Path:
    return directory / f"{file_id:08d}{HINT_SUFFIX}"


def list_data_files(directory: Path) -> list[int]:
    """Ids of the data files in ``directory``, ascending."""
    ids = []
    for entry in directory.iterdir():
        name = entry.name
        if name.endswith(DATA_SUFFIX) and name[: -len(DATA_SUFFIX)].isdigit():
            ids.append(int(name[: -len(DATA_SUFFIX)]))
    return sorted(ids)


def fsync_directory(directory: Path) -> None:
    """Make a create, rename or unlink inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, chunks: list[bytes]) -> None:
    """Write ``chunks`` to a new file at ``path`` and fsync it (not its directory)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def free_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2`` … whichever does not exist yet."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _storage_error(action: str, path: Path, exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"disk full while trying to {action} {path}")
    return StorageError(f"could not {action} {path}: {exc.strerror or exc}")


class DataFile:
    """One data file and its open descriptor.

    The descriptor is closed by :meth:`close` or, for a file that compaction replaced,
    when the last reader drops its reference: a reader that looked a record up just
    before the swap still reads the old, consistent bytes.
    """

    __slots__ = (
        "__weakref__",
        "_finalizer",
        "allocated",
        "dead_bytes",
        "fd",
        "file_id",
        "path",
        "size",
    )

    def __init__(self, path: Path, file_id: int, fd: int, size: int, allocated: int) -> None:
        self.path = path
        self.file_id = file_id
        self.fd = fd
        #: End of the data: the offset the next record is written at.
        self.size = size
        #: Physical length of the file (>= size while preallocated).
        self.allocated = allocated
        #: Bytes of records that retention has dropped and compaction may reclaim.
        self.dead_bytes = 0
        self._finalizer = weakref.finalize(self, os.close, fd)
        # At interpreter exit the OS closes descriptors; closing them earlier would pull
        # them from under a maintenance thread that is still finishing a hint.
        self._finalizer.atexit = False

    @classmethod
    def create(cls, directory: Path, file_id: int) -> DataFile:
        path = data_path(directory, file_id)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _storage_error("create", path, exc) from exc
        fsync_directory(directory)
        return cls(path, file_id, fd, 0, 0)

    @classmethod
    def open(cls, path: Path, file_id: int, writable: bool) -> DataFile:
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise _storage_error("open", path, exc) from exc
        length = os.fstat(fd).st_size
        return cls(path, file_id, fd, length, length)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        self._finalizer()

    def pread(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def append(self, data: bytes) -> int:
        """Write ``data`` at the end of the data; return the offset it starts at."""
        offset = self.size
        end = offset + len(data)
        if end > self.allocated:
            self._preallocate(end)
        try:
            written = os.pwrite(self.fd, data, offset)
            while written < len(data):
                written += os.pwrite(self.fd, data[written:], offset + written)
        except OSError as exc:
            self._discard_from(offset)
            raise _storage_error("write to", self.path, exc) from exc
        self.size = end
        return offset

    def _discard_from(self, offset: int) -> None:
        """Drop a failed write's bytes; truncating is the one write that needs no space."""
        try:
            os.ftruncate(self.fd, offset)
        except OSError:
            return  # best effort: the write has failed anyway
        self.allocated = offset

    def _preallocate(self, needed: int) -> None:
        target = needed + PREALLOCATE_STEP - needed % PREALLOCATE_STEP
        try:
            os.posix_fallocate(self.fd, self.allocated, target - self.allocated)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise _storage_error("allocate space in", self.path, exc) from exc
            target = needed  # no fallocate here: plain appends grow the file
        self.allocated = max(target, needed)

    def sync(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise _storage_error("fsync", self.path, exc) from exc

    def truncate_to_data(self) -> None:
        """Drop the preallocated tail so the file's length is exactly its data."""
        if self.allocated != self.size:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError as exc:
                raise _storage_error("truncate", self.path, exc) from exc
            self.allocated = self.size

    def seal(self) -> None:
        """Make the file exactly its data and durable; it is never appended to again."""
        self.truncate_to_data()
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise _storage_error("fsync", self.path, exc) from exc

    def frames(self, start: int = 0, end: int | None = None) -> FrameReader:
        return FrameReader(self.fd, start, self.size if end is None else end)


class FrameReader:
    """Sequential reader of the frames in ``[start, end)`` of a file.

    Iterating yields ``(offset, body)``. Iteration stops at ``end``, at a zero-length
    header (the end-of-data marker of a preallocated file) or at the first frame that is
    short, oversize or fails its CRC. Afterwards ``stop_offset`` is where reading stopped
    and ``stop_reason`` says why: ``None`` (clean end), ``"end-marker"``, ``"short"``,
    ``"length"`` or ``"crc"``.
    """

    __slots__ = ("_end", "_fd", "_start", "stop_offset", "stop_reason")

    def __init__(self, fd: int, start: int, end: int) -> None:
        self._fd = fd
        self._start = start
        self._end = end
        self.stop_offset = start
        self.stop_reason: str | None = None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for batch in self._batches(True):
            yield from batch  # type: ignore[misc]

    def body_batches(self) -> Iterator[list[bytes]]:
        """The bodies alone, a list per read chunk: the cheapest way through a file."""
        return self._batches(False)  # type: ignore[return-value]

    def _batches(self, with_offsets: bool) -> Iterator[list[tuple[int, bytes]] | list[bytes]]:
        # Frames are parsed a whole read chunk at a time, so that the per-frame cost is a
        # few operations on a local buffer, not a generator resumption.
        end = self._end
        unpack, crc32 = _unpack_u32, _crc32
        base = self._start  # file offset of buf[0]
        buf = b""
        p = 0
        while True:
            out: list[Any] = []
            append = out.append
            limit = len(buf)
            while True:
                offset = base + p
                if offset >= end:
                    self.stop_offset = end
                    if out:
                        yield out
                    return
                if limit - p < FRAME_HEADER_SIZE:
                    break
                (length,) = unpack(buf, p)
                if length == 0:
                    self._stop(offset, "end-marker")
                    if out:
                        yield out
                    return
                frame_end = p + FRAME_OVERHEAD + length
                if offset + FRAME_OVERHEAD + length > end:
                    self._stop(offset, "length")
                    if out:
                        yield out
                    return
                if frame_end > limit:
                    break
                body = buf[p + FRAME_HEADER_SIZE : frame_end - 4]
                if crc32(body) != unpack(buf, frame_end - 4)[0]:
                    self._stop(offset, "crc")
                    if out:
                        yield out
                    return
                append((offset, body) if with_offsets else body)
                p = frame_end
            self.stop_offset = base + p
            if out:
                yield out
            need = FRAME_HEADER_SIZE
            if limit - p >= FRAME_HEADER_SIZE:
                need = FRAME_OVERHEAD + unpack(buf, p)[0]
            buf, base, p = self._refill(buf, base, p, need)
            if len(buf) - p < need:
                self._stop(base + p, "short")
                return

    def _refill(self, buf: bytes, base: int, p: int, need: int) -> tuple[bytes, int, int]:
        base += p
        want = min(max(READ_CHUNK, need), self._end - base)
        rest = buf[p:]
        data = os.pread(self._fd, want - len(rest), base + len(rest)) if want > len(rest) else b""
        return rest + data, base, 0

    def _stop(self, offset: int, reason: str) -> None:
        self.stop_offset = offset
        self.stop_reason = reason

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

The core makes every system call that changes a data file (``pwrite``,
``posix_fallocate``, ``fdatasync``, ``ftruncate``) with the GIL released; see
``rust/src/disk.rs``. Writes use ``pwrite`` at a tracked offset. A write that fails half
way (disk full, I/O error) is cut off again by truncating the file at the tracked end, so nothing
acknowledged is disturbed and no whole frame of the failed record is left where recovery
could find it after a crash (behind a later, shorter record).
"""

from __future__ import annotations

import errno
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

from kilndb import _core
from kilndb.errors import DiskFullError, KilnError, StorageError

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
#: The active file grows in steps of this many bytes.
PREALLOCATE_STEP: int = _core.PREALLOCATE_STEP


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
        _core.sync_file(fd, str(directory), metadata=True)
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
        _core.sync_file(fd, str(path), metadata=True)
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
        "name",
        "path",
        "size",
    )

    def __init__(self, path: Path, file_id: int, fd: int, size: int, allocated: int) -> None:
        self.path = path
        #: ``path`` as text, for the core's error messages.
        self.name = str(path)
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
        """Write ``data`` at the end of the data; return the offset it starts at.

        The core preallocates the file ahead and writes with the GIL released; a write
        that fails half way is cut off again (DiskFullError or StorageError).
        """
        offset = self.size
        try:
            self.allocated = _core.append(self.fd, self.name, data, offset, self.allocated)
        except KilnError:
            # The failed bytes were cut off, or the file was never grown.
            self.allocated = min(self.allocated, offset)
            raise
        self.size = offset + len(data)
        return offset

    def sync(self) -> None:
        _core.sync_file(self.fd, self.name)

    def truncate_to_data(self) -> None:
        """Drop the preallocated tail so the file's length is exactly its data."""
        if self.allocated != self.size:
            _core.truncate_file(self.fd, self.name, self.size)
            self.allocated = self.size

    def seal(self) -> None:
        """Make the file exactly its data and durable; it is never appended to again."""
        self.truncate_to_data()
        _core.sync_file(self.fd, self.name, metadata=True)

    def frames(self, start: int = 0, end: int | None = None) -> FrameReader:
        return FrameReader(self.fd, start, self.size if end is None else end, self.name)


class FrameReader:
    """Sequential reader of the frames in ``[start, end)`` of a file (native, a read chunk
    at a time with the GIL released around each ``pread``).

    Iterating yields ``(offset, body)``. Iteration stops at ``end``, at a zero-length
    header (the end-of-data marker of a preallocated file) or at the first frame that is
    short, oversize or fails its CRC. Afterwards ``stop_offset`` is where reading stopped
    and ``stop_reason`` says why: ``None`` (clean end), ``"end-marker"``, ``"short"``,
    ``"length"`` or ``"crc"``.
    """

    __slots__ = ("_reader",)

    def __init__(self, fd: int, start: int, end: int, path: str = "") -> None:
        self._reader = _core.FrameReader(fd, start, end, path)

    @property
    def stop_offset(self) -> int:
        return self._reader.stop_offset

    @property
    def stop_reason(self) -> str | None:
        return self._reader.stop_reason

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        next_batch = self._reader.next_batch
        while (batch := next_batch(True)) is not None:
            yield from batch  # type: ignore[misc]

    def body_batches(self) -> Iterator[list[bytes]]:
        """The bodies alone, a list per read chunk: the cheapest way through a file."""
        next_batch = self._reader.next_batch
        while (batch := next_batch(False)) is not None:
            yield batch  # type: ignore[misc]

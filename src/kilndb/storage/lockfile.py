"""``LOCK``: one process at a time per database directory, and one server per data
directory.

A lock is an ``flock`` on a file, so the kernel releases it when the process dies,
however it dies; the file also records the holder's pid for the error message. A stale
lock file left by a killed process is therefore harmless.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from kilndb.errors import DatabaseLockedError, StorageError

__all__ = ["SERVER_LOCK", "DatabaseLock", "DirectoryLock", "ServerLock"]

#: The file in a data directory that ``kiln serve`` holds (not a valid database name
#: for a server to create).
SERVER_LOCK = "kiln-server.lock"


class DirectoryLock:
    """An exclusive ``flock`` on ``path``, holding this process's pid."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: Path, busy: str) -> None:
        """Raise DatabaseLockedError, ``busy`` followed by the holder, if it is held."""
        self.path = path
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"could not open {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            where = (
                "this process (close the other handle first)"
                if holder == str(os.getpid())
                else f"another process (pid {holder})"
            )
            raise DatabaseLockedError(f"{busy} {where}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class DatabaseLock(DirectoryLock):
    """``LOCK`` of a database directory: one process opens it at a time."""

    __slots__ = ()

    def __init__(self, directory: Path) -> None:
        super().__init__(directory / "LOCK", f"database {directory} is already open in")


class ServerLock(DirectoryLock):
    """``kiln-server.lock`` of a data directory: one server serves it at a time."""

    __slots__ = ()

    def __init__(self, data_dir: Path) -> None:
        super().__init__(
            data_dir / SERVER_LOCK, f"data directory {data_dir.resolve()} is already served by"
        )

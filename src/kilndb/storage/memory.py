"""``:memory:``: a private database directory in RAM that lives as long as it is open.

Theory of operation
-------------------
A database in memory is an ordinary database — the same log, data files, keydir and
engine, so it behaves exactly as one on disk — kept in a fresh directory of a RAM-backed
file system instead of under a data directory: ``/dev/shm`` where it exists and is
writable, else the system's temporary directory (``tempfile.gettempdir()``, which may be
on disk), or the directory ``KILN_MEMORY_DIR`` names. Each :class:`MemoryDirectory` is
named ``kilndb-memory-<pid>-<random>`` and is private to the process that made it.

It is removed by :meth:`MemoryDirectory.remove` (when the database or server closes), at
interpreter exit for one never closed, and — when its process was killed and could not
remove it — by the next :class:`MemoryDirectory` made by any process, which removes every
such directory whose pid is not alive (or is its own pid but not one of its own
directories: a leftover of an earlier process given the same pid). A directory whose pid
was reused by a live process stays until that process ends: a leftover is only ever
removed when no process can be using it.

Directories are not removed when a :class:`~kilndb.engine.Database` object is merely
garbage-collected: its log may outlive it through a subscription.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path, PurePath

from kilndb.errors import StorageError

__all__ = [
    "MEMORY",
    "MEMORY_DIR_ENV",
    "SHARED_MEMORY",
    "MemoryDirectory",
    "is_memory",
    "memory_root",
    "sweep_stale",
]

#: The path that opens a database in memory, as in SQLite.
MEMORY = ":memory:"
#: The environment variable naming the directory memory databases are made in.
MEMORY_DIR_ENV = "KILN_MEMORY_DIR"
#: Linux's RAM-backed file system for shared memory: where they are made by default.
SHARED_MEMORY = Path("/dev/shm")
_PREFIX = "kilndb-memory-"
_NAME = re.compile(re.escape(_PREFIX) + r"(\d+)-")

#: Directories made by this process and not removed yet: path -> the pid that made it (a
#: child forked meanwhile must not remove its parent's at its exit).
_live: dict[Path, int] = {}
_live_lock = threading.Lock()


def is_memory(path: object) -> bool:
    """Whether ``path`` asks for a database in memory (``":memory:"``, as a str or Path)."""
    return isinstance(path, str | PurePath) and str(path) == MEMORY


def memory_root() -> Path:
    """The directory memory databases are made in: ``KILN_MEMORY_DIR``, else ``/dev/shm``
    when it is a writable directory, else the system's temporary directory."""
    chosen = os.environ.get(MEMORY_DIR_ENV)
    if chosen:
        return Path(chosen).absolute()  # its directories stay the same if the cwd changes
    if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK | os.X_OK):
        return SHARED_MEMORY
    return Path(tempfile.gettempdir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def sweep_stale(root: Path) -> list[Path]:
    """Remove the memory directories under ``root`` that no live process can be using;
    return them."""
    own = os.getpid()
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _NAME.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        with _live_lock:
            ours = entry in _live
        stale = not ours if pid == own else not _alive(pid)
        if stale and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    with _live_lock:
        if _live.get(path) != os.getpid():
            return
        del _live[path]
    shutil.rmtree(path, ignore_errors=True)


@atexit.register
def _remove_all() -> None:
    for path in list(_live):
        _remove(path)


class MemoryDirectory:
    """A fresh directory in RAM, private to this process, removed by :meth:`remove`."""

    __slots__ = ("path",)

    def __init__(self) -> None:
        """Raise StorageError if the directory cannot be made."""
        root = memory_root()
        sweep_stale(root)
        # Made and registered under the lock: a sweep by another thread must not take
        # it for an earlier process's leftover of the same pid.
        with _live_lock:
            try:
                made = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root)
            except OSError as exc:
                raise StorageError(f"cannot make a memory database under {root}: {exc}") from exc
            self.path = Path(made)
            _live[self.path] = os.getpid()

    def remove(self) -> None:
        """Delete the directory and everything in it (close its databases first).
        Idempotent."""
        _remove(self.path)

    def __repr__(self) -> str:
        return f"<MemoryDirectory {str(self.path)!r}>"

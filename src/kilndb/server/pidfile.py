"""A server's pid file: written once it listens, removed when it stops.

A file naming another *running* process refuses the start (two servers given one pid
file); one naming a process that is gone — a server killed with SIGKILL — or holding no
pid is overwritten, so that a crash never blocks a restart. A pid that an unrelated
process took over after a crash does refuse the start: the message says to remove the
file. The data directory's lock, not this file, is what keeps a second server off the
same data.
"""

from __future__ import annotations

import os
from pathlib import Path

from kilndb.errors import InvalidArgumentError

__all__ = ["PidFile"]


class PidFile:
    """The pid file at ``path`` (None: no pid file; every method does nothing)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._written = False

    def check(self) -> None:
        """Raise InvalidArgumentError if the file names another running process."""
        path = self.path
        if path is None:
            return
        try:
            pid = int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return  # absent, or not a pid: overwritten
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read pid file {path}: {exc}") from exc
        if pid != os.getpid() and _running(pid):
            raise InvalidArgumentError(
                f"pid file {path} names process {pid}, which is running (another server?);"
                " remove the file if that process is not a server"
            )

    def write(self) -> None:
        """Write this process's pid, whole or not at all."""
        path = self.path
        if path is None:
            return
        partial = path.with_name(path.name + ".partial")
        partial.write_text(f"{os.getpid()}\n")
        partial.replace(path)
        self._written = True

    def remove(self) -> None:
        """Remove the file written by :meth:`write`, unless another process took it
        over meanwhile."""
        path = self.path
        if path is None or not self._written:
            return
        self._written = False
        try:
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()
        except (FileNotFoundError, ValueError):
            pass


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True

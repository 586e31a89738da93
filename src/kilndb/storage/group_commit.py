"""Group commit: many concurrent writers, one fsync.

Theory of operation
-------------------
A writer appends its record under the log lock, learns the position it wrote up to,
releases the lock and calls :meth:`GroupCommit.wait_durable`. The first waiter that
finds no fsync in flight becomes the *leader*: it takes a snapshot of the log end
(``snapshot()`` returns a duplicated descriptor of the active file and the last written
position), fsyncs outside every lock and publishes the new durable position. Writers
that arrive while an fsync is running wait for it and, if their record came too late
for it, one of them leads the next round, which covers everyone who queued meanwhile.
Under load, N writers cost about N / (writers per fsync) fsyncs instead of N.

The descriptor is duplicated so that a file rotation that closes the old descriptor
cannot pull it from under an fsync in flight; rotation fsyncs the file it seals itself.

A failed fsync poisons the log: the kernel may already have dropped the dirty pages, so
retrying could acknowledge data that is not on disk. Every waiter and every later write
gets :class:`StorageError` until the database is reopened and recovered from disk.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from kilndb.errors import ClosedError, StorageError

__all__ = ["GroupCommit"]


class GroupCommit:
    __slots__ = ("_cond", "_failure", "_snapshot", "_syncing", "durable", "fsyncs")

    def __init__(self, snapshot: Callable[[], tuple[int, int]], durable: int) -> None:
        self._snapshot = snapshot
        self._cond = threading.Condition(threading.Lock())
        self._syncing = False
        self._failure: StorageError | None = None
        #: Highest position known to be on stable storage.
        self.durable = durable
        #: fsync calls made by this group committer.
        self.fsyncs = 0

    @property
    def failure(self) -> StorageError | None:
        return self._failure

    def wait_durable(self, position: int) -> None:
        """Return once ``position`` is durable, fsyncing as the group's leader if needed."""
        cond = self._cond
        with cond:
            while True:
                if self._failure is not None:
                    raise self._failure
                if self.durable >= position:
                    return
                if not self._syncing:
                    break
                cond.wait()
            self._syncing = True
        try:
            self._lead_one_round()
        except ClosedError:
            # close() fsyncs what was written before it: the write may be durable.
            with cond:
                if self.durable >= position:
                    return
            raise

    def sync_now(self) -> None:
        """Fsync whatever has been written (used by interval mode and close)."""
        with self._cond:
            while self._syncing:
                self._cond.wait()
            if self._failure is not None:
                raise self._failure
            self._syncing = True
        self._lead_one_round()

    def mark_durable(self, position: int) -> None:
        """Record durability achieved by other means (a file seal)."""
        with self._cond:
            if position > self.durable:
                self.durable = position
                self._cond.notify_all()

    def poison(self, failure: StorageError) -> None:
        """Fail every waiter and every later write (an fsync failed elsewhere)."""
        with self._cond:
            if self._failure is None:
                self._failure = failure
            self._cond.notify_all()

    def _lead_one_round(self) -> None:
        failure: StorageError | None = None
        upto = -1
        done = False
        try:
            fd, upto = self._snapshot()
            try:
                os.fdatasync(fd)
            except OSError as exc:
                failure = StorageError(f"fsync failed; the database must be reopened: {exc}")
            finally:
                os.close(fd)
            done = failure is None
        finally:
            # Whatever happened (even an exception the leader's thread received while it
            # waited on the disk), the next waiter must be able to lead.
            with self._cond:
                self._syncing = False
                if failure is not None:
                    self._failure = failure
                elif done:
                    self.fsyncs += 1
                    self.durable = max(self.durable, upto)
                self._cond.notify_all()
        if failure is not None:
            raise failure

"""A lease kept alive by a task, for asyncio code: the twin of :class:`kilndb.LeaseKeeper`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator
from typing import Any, Protocol, Self

from kilndb.errors import KilnError
from kilndb.leases import Lease, check_ttl

__all__ = ["AsyncLeaseKeeper"]

log = logging.getLogger("kilndb.leases")


class _AsyncLeasing(Protocol):
    async def acquire_lease(self, key: str, holder: str, ttl: float) -> Lease: ...
    async def renew_lease(self, lease: Lease, ttl: float | None = None) -> Lease: ...
    async def release_lease(self, lease: Lease) -> bool: ...


class AsyncLeaseKeeper:
    """A lease held for the duration of an ``async with`` block, renewed at ``ttl / 2``
    by a task the keeper owns.

    ``keeper = await db.lease(...)`` or ``async with db.lease(...) as keeper`` acquires it
    (LeaseHeldError if someone else holds it). ``lost`` turns true (and ``lost_reason``
    says why) if a renewal fails; fenced calls given the keeper then raise
    LeaseLostError. Leaving the block (or ``await keeper.release()``) releases it.
    """

    def __init__(self, db: _AsyncLeasing, key: str, holder: str, ttl: float) -> None:
        self._db = db
        self._key = key
        self._holder = holder
        self.ttl = check_ttl(ttl)
        self._lease: Lease | None = None
        self.lost = False
        self.lost_reason: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def lease(self) -> Lease:
        """The lease as last acquired or renewed."""
        if self._lease is None:
            raise KilnError("the lease is not acquired yet: await the keeper first")
        return self._lease

    @property
    def key(self) -> str:
        return self._key

    @property
    def token(self) -> int:
        return self.lease.token

    @property
    def holder(self) -> str:
        return self._holder

    async def acquire(self) -> Self:
        """Acquire the lease and start renewing it (once)."""
        if self._lease is None:
            self._lease = await self._db.acquire_lease(self._key, self._holder, self.ttl)
            self._task = asyncio.get_running_loop().create_task(self._renew())
        return self

    def __await__(self) -> Generator[Any, None, Self]:
        return self.acquire().__await__()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 2)
            try:
                self._lease = await self._db.renew_lease(self.lease, self.ttl)
            except KilnError as exc:
                self.lost = True
                self.lost_reason = str(exc)
                log.warning("lease %s lost: %s", self._key, exc)
                return

    async def release(self) -> None:
        """Stop renewing and release the lease (if it is still ours)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self.lost and self._lease is not None:
            try:
                await self._db.release_lease(self._lease)
            except KilnError as exc:
                log.warning("releasing lease %s failed: %s", self._key, exc)

    async def __aenter__(self) -> Self:
        return await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

"""Leases with fencing tokens: named locks with a holder and a time to live.

A lease is stored as facts of the reserved store ``kiln.leases`` (key = the lease's
key, value = ``{"holder", "token", "expires_at", "released", "ttl"}``, ``ttl`` being the
seconds it was last taken or renewed for, which a renewal without a TTL keeps), so it is
as durable as any write, survives restarts and travels with replication. The store keeps only each
lease's latest fact. Acquiring a free (or expired, or released) lease gives it the next
*fencing token* of its key — one more than the last — so a token only ever grows.

A write or produce given ``fence=lease`` is refused with :class:`LeaseLostError` if a
newer token exists for the lease's key, checked under the database's write lock: a
holder that lost its lease to another (a pause, a partition) cannot overwrite the new
holder's work.

:class:`LeaseKeeper` (``with db.lease(key, holder=…, ttl=…) as lease:``) acquires, renews
at half the TTL in the background, makes a loss visible (``lease.lost``) and releases
on exit; it works the same on an embedded and a remote database.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from kilndb.errors import InvalidArgumentError, KilnError, LeaseLostError

__all__ = [
    "LEASE_STORE",
    "MAX_TTL",
    "Lease",
    "LeaseKeeper",
    "check_fence",
    "check_ttl",
    "lease_from_wire",
]

log = logging.getLogger("kilndb.leases")

#: The reserved store holding leases.
LEASE_STORE = "kiln.leases"
#: Longest time to live of a lease; longer requests are capped to it.
MAX_TTL = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease: ``token`` fences writes made on its behalf."""

    key: str
    holder: str
    token: int
    expires_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "holder": self.holder,
            "token": self.token,
            "expires_at": self.expires_at,
        }


def lease_from_wire(wire: dict[str, Any]) -> Lease:
    return Lease(wire["key"], wire["holder"], wire["token"], wire["expires_at"])


def check_ttl(ttl: object) -> float:
    """A lease TTL in seconds: positive, capped at :data:`MAX_TTL`."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
        raise InvalidArgumentError("ttl must be a positive number of seconds")
    return float(min(ttl, MAX_TTL))


def check_fence(fence: object) -> tuple[str, int] | None:
    """``(key, token)`` of a ``fence=`` argument: a Lease, a LeaseKeeper or a mapping."""
    if fence is None:
        return None
    if isinstance(fence, LeaseKeeper):
        if fence.lost:
            raise LeaseLostError(fence.key, fence.token, None, "its keeper lost it")
        return fence.key, fence.token
    if isinstance(fence, Lease):
        return fence.key, fence.token
    if isinstance(fence, dict):
        key, token = fence.get("key"), fence.get("token")
        if isinstance(key, str) and type(token) is int:
            return key, token
    raise InvalidArgumentError("fence must be a kilndb.Lease (or {'key': str, 'token': int})")


class _Leasing(Protocol):
    def acquire_lease(self, key: str, holder: str, ttl: float) -> Lease: ...
    def renew_lease(self, lease: Lease, ttl: float | None = None) -> Lease: ...
    def release_lease(self, lease: Lease) -> bool: ...


class LeaseKeeper:
    """A lease held for the duration of a ``with`` block, renewed at ``ttl / 2``.

    ``lost`` turns true (and ``lost_reason`` says why) if a renewal fails; fenced calls
    given the keeper then raise LeaseLostError. Leaving the block releases the lease.
    """

    def __init__(self, db: _Leasing, key: str, holder: str, ttl: float) -> None:
        self._db = db
        self.ttl = check_ttl(ttl)
        self.lease = db.acquire_lease(key, holder, self.ttl)
        self.lost = False
        self.lost_reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="kilndb-lease", daemon=True)
        self._thread.start()

    @property
    def key(self) -> str:
        return self.lease.key

    @property
    def token(self) -> int:
        return self.lease.token

    @property
    def holder(self) -> str:
        return self.lease.holder

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 2):
            try:
                self.lease = self._db.renew_lease(self.lease, self.ttl)
            except KilnError as exc:
                self.lost = True
                self.lost_reason = str(exc)
                log.warning("lease %s lost: %s", self.lease.key, exc)
                return

    def release(self) -> None:
        """Stop renewing and release the lease (if it is still ours)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        if not self.lost:
            try:
                self._db.release_lease(self.lease)
            except KilnError as exc:
                log.warning("releasing lease %s failed: %s", self.lease.key, exc)

    def __enter__(self) -> LeaseKeeper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

"""The leases of an embedded database, kept as facts of its reserved lease store.

Theory of operation
-------------------
:class:`LeaseBook` implements :meth:`Database.acquire_lease
<kilndb.engine.database.Database.acquire_lease>`, ``renew_lease``, ``release_lease`` and
``leases`` (the model is in :mod:`kilndb.leases`). A lease's state is the latest fact of
its key in ``kiln.leases``. Every change is a compare-and-set: it reads that state and
its seq, decides, and writes the new state with ``expected_seq`` set to that seq, so two
writers racing for one lease cannot both succeed; the loser reads again and decides
again (a conflict is a retry, never an error). The store keeps only each lease's latest
fact (retention ``keep="latest"``, set on the first write).
"""

from __future__ import annotations

import time
from typing import Any

from kilndb.errors import ConflictError, InvalidArgumentError, LeaseHeldError, LeaseLostError
from kilndb.leases import LEASE_STORE, Lease, check_ttl
from kilndb.model import MAX_ID_LENGTH, Write, validate_key
from kilndb.storage.facts import FactLog
from kilndb.storage.retention import Retention

__all__ = ["LeaseBook"]


def _check_holder(holder: object) -> str:
    if not isinstance(holder, str) or not holder or len(holder) > MAX_ID_LENGTH:
        raise InvalidArgumentError(f"holder must be a non-empty string of at most {MAX_ID_LENGTH}")
    return holder


class LeaseBook:
    """The leases of the database whose log is ``log`` (see the module docstring)."""

    def __init__(self, log: FactLog) -> None:
        self._log = log

    def acquire(self, key: str, holder: str, ttl: float) -> Lease:
        validate_key(key)
        who = _check_holder(holder)
        seconds = check_ttl(ttl)
        while True:
            current, seq = self._state(key)
            now = time.time()
            if current is not None and not current["released"] and current["expires_at"] > now:
                if current["holder"] != who:
                    raise LeaseHeldError(key, current["holder"], current["expires_at"])
                token = current["token"]
            else:
                token = (0 if current is None else current["token"]) + 1
            lease = Lease(key, who, token, now + seconds)
            if self._put(lease, seq, released=False, ttl=seconds):
                return lease

    def renew(self, lease: Lease, ttl: float | None) -> Lease:
        if not isinstance(lease, Lease):
            raise InvalidArgumentError("renew_lease takes a kilndb.Lease")
        asked = None if ttl is None else check_ttl(ttl)
        while True:
            current, seq = self._state(lease.key)
            self._check_held(lease, current)
            assert current is not None  # _check_held refuses a lease never taken
            seconds = asked if asked is not None else float(current.get("ttl", 60.0))
            renewed = Lease(lease.key, lease.holder, lease.token, time.time() + seconds)
            if self._put(renewed, seq, released=False, ttl=seconds):
                return renewed

    def release(self, lease: Lease) -> bool:
        if not isinstance(lease, Lease):
            raise InvalidArgumentError("release_lease takes a kilndb.Lease")
        while True:
            current, seq = self._state(lease.key)
            try:
                self._check_held(lease, current)
            except LeaseLostError:
                return False
            released = Lease(lease.key, lease.holder, lease.token, time.time())
            ttl = None if current is None else current.get("ttl")
            if self._put(released, seq, released=True, ttl=ttl):
                return True

    def held(self) -> list[Lease]:
        now = time.time()
        held = []
        for key in self._log.keys(LEASE_STORE, "", None):
            fact = self._log.read(LEASE_STORE, key, None)
            value = None if fact is None else fact.value
            if value is not None and not value["released"] and value["expires_at"] > now:
                held.append(Lease(key, value["holder"], value["token"], value["expires_at"]))
        return sorted(held, key=lambda lease: lease.key)

    def _state(self, key: str) -> tuple[dict[str, Any] | None, int]:
        """The lease's latest value (None if never taken) and its fact's seq."""
        fact = self._log.read(LEASE_STORE, key, None)
        if fact is None:
            return None, self._log.latest_seq(LEASE_STORE, key)
        return fact.value, fact.seq

    @staticmethod
    def _check_held(lease: Lease, current: dict[str, Any] | None) -> None:
        token = None if current is None else current["token"]
        if current is None or token != lease.token or current["holder"] != lease.holder:
            raise LeaseLostError(lease.key, lease.token, token, "a newer lease exists")
        if current["released"]:
            raise LeaseLostError(lease.key, lease.token, token, "it was released")
        if current["expires_at"] <= time.time():
            raise LeaseLostError(lease.key, lease.token, token, "it expired")

    def _put(self, lease: Lease, seq: int, released: bool, ttl: float | None) -> bool:
        """Write the lease's new state if nobody else did since ``seq``; False to retry.

        ``ttl`` (seconds) is recorded so that a renewal without one keeps it."""
        if LEASE_STORE not in self._log.retention:
            self._log.set_retention(LEASE_STORE, Retention(keep="latest"))
        value: dict[str, Any] = {
            "holder": lease.holder,
            "token": lease.token,
            "expires_at": lease.expires_at,
            "released": released,
        }
        if ttl is not None:
            value["ttl"] = ttl
        write = Write(LEASE_STORE, lease.key, value, expected_seq=seq)
        try:
            self._log.commit([write], atomic=True, trusted=True)
        except ConflictError:
            return False
        return True

"""A read-only view of a follower's copy: read it while the follower keeps it current.

:attr:`kilndb.replication.Follower.database` is a :class:`ReplicaView`. It reads the
copy as an embedded :class:`~kilndb.Database` would (``store(name).read``, ``history``,
``keys``, ``replay``, ``subscribe``, ``stats`` …) and refuses every write with
:class:`~kilndb.ReadOnlyReplicaError` naming the leader, as a following server does:
only the follower appends to its copy. Each call reads the copy the follower holds at
that moment (it reopens it after cutting a divergent tail or discarding it for a full
copy); before the follower has created it, calls raise :class:`~kilndb.UnavailableError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

from kilndb.engine import Database, Subscription
from kilndb.errors import ReadOnlyReplicaError
from kilndb.leases import Lease
from kilndb.model import Fact

__all__ = ["ReplicaStore", "ReplicaView"]


class ReplicaStore:
    """A store of a follower's copy: :class:`~kilndb.Store`'s reads; writes refused."""

    __slots__ = ("_view", "name")

    def __init__(self, view: ReplicaView, name: str) -> None:
        self._view = view
        self.name = name

    def __repr__(self) -> str:
        return f"<ReplicaStore {self.name!r} of {self._view!r}>"

    def read(self, key: str, *, as_of: float | None = None) -> Fact | None:
        """The latest fact of ``key`` (as of a transaction time), or None."""
        return self._view.current().store(self.name).read(key, as_of=as_of)

    def history(
        self,
        key: str,
        *,
        since_seq: int = 1,
        until_seq: int | None = None,
        limit: int | None = None,
    ) -> list[Fact]:
        """Retained facts of ``key`` with ``since_seq <= seq <= until_seq``, by seq."""
        store = self._view.current().store(self.name)
        return store.history(key, since_seq=since_seq, until_seq=until_seq, limit=limit)

    def keys(
        self, prefix: str = "", limit: int | None = None, after: str | None = None
    ) -> list[str]:
        """Keys with a live value, sorted (see :meth:`kilndb.Store.keys`)."""
        return self._view.current().store(self.name).keys(prefix, limit, after)

    def write(self, key: str, value: Any, **options: Any) -> NoReturn:
        """Refused: raises ReadOnlyReplicaError naming the leader."""
        raise self._view.refusal()

    def delete(self, key: str, **options: Any) -> NoReturn:
        """Refused: raises ReadOnlyReplicaError naming the leader."""
        raise self._view.refusal()


class ReplicaView:
    """The reads of a :class:`~kilndb.Database`, on a follower's copy; writes refused."""

    def __init__(self, current: Callable[[], Database], name: str, leader: str) -> None:
        #: The copy as it is now (raises UnavailableError while there is none).
        self.current = current
        self.name = name
        #: The leader's URL, named by the refusals.
        self.leader = leader

    def __repr__(self) -> str:
        return f"<kilndb.replication.ReplicaView {self.name!r} of {self.leader}>"

    def refusal(self) -> ReadOnlyReplicaError:
        return ReadOnlyReplicaError(
            self.leader,
            f"database {self.name} is a read-only copy that follows {self.leader}:"
            " write to the leader",
        )

    # -- reads -------------------------------------------------------------------------

    def store(self, name: str) -> ReplicaStore:
        """The store called ``name``."""
        self.current().store(name)  # checks the name
        return ReplicaStore(self, name)

    def stores(self) -> list[str]:
        return self.current().stores()

    def replay(
        self, after: int = 0, stores: Iterable[str] | None = None, limit: int | None = None
    ) -> Iterator[Fact]:
        """Retained facts with position > ``after``, in the leader's commit order."""
        return self.current().replay(after, stores, limit)

    def subscribe(self, stores: Iterable[str] | None = None, after: int = 0) -> Subscription:
        """Facts after ``after``, then each one as the follower applies it. It ends
        (ClosedError) when the follower stops or reopens its copy."""
        return self.current().subscribe(stores, after)

    def retention(self, store: str) -> dict[str, Any]:
        return self.current().retention(store)

    def leases(self) -> list[Lease]:
        return self.current().leases()

    def stats(self) -> dict[str, Any]:
        return self.current().stats()

    @property
    def database_id(self) -> str:
        return self.current().database_id

    @property
    def last_position(self) -> int:
        return self.current().last_position

    # -- writes, refused ---------------------------------------------------------------

    def write_many(self, writes: Iterable[Any], **options: Any) -> NoReturn:
        """Refused: raises ReadOnlyReplicaError naming the leader."""
        raise self.refusal()

    def write_each(self, writes: Iterable[Any]) -> NoReturn:
        raise self.refusal()

    def set_retention(
        self, store: str, keep: str = "all", max_age: float | None = None
    ) -> NoReturn:
        raise self.refusal()

    def compact(self) -> NoReturn:
        raise self.refusal()

    def acquire_lease(self, key: str, holder: str, ttl: float) -> NoReturn:
        raise self.refusal()

    def renew_lease(self, lease: Lease, ttl: float | None = None) -> NoReturn:
        raise self.refusal()

    def release_lease(self, lease: Lease) -> NoReturn:
        raise self.refusal()

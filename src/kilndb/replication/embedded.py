"""An embeddable follower: keep a local copy of a leader's database, without a server.

::

    from kilndb.replication import Follower

    with Follower("tcp://127.0.0.1:7400", "./replica", name="default") as follower:
        follower.wait_for(timeout=30)          # caught up with the leader
        follower.database.store("tasks").read("t1")
        follower.status()                      # position, reconnects, last_error …

:class:`Follower` streams database ``name`` of the leader into ``PATH/name`` (the layout
of :func:`kilndb.open`), exactly as a server started with ``--replica-of`` does: it
resumes from where the copy ends, reconnects with backoff, cuts a divergent tail and
makes a full copy when it must (see :mod:`kilndb.replication.follower`). While it runs
it holds the copy open (another process opening it gets DatabaseLockedError); read it
through :attr:`Follower.database`. After :meth:`Follower.stop` the copy is an ordinary
database: :func:`kilndb.open` opens it, and a new follower (or :meth:`Follower.start`)
resumes from its end.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from kilndb.client.endpoint import Endpoint
from kilndb.config import DatabaseConfig
from kilndb.engine import Database
from kilndb.errors import UnavailableError
from kilndb.model import validate_database_name
from kilndb.replication.follower import CONNECT_TIMEOUT, StreamFollower
from kilndb.replication.replica import ReplicaView
from kilndb.storage.truncate import discard_copy, truncate_after

__all__ = ["Follower"]


class Follower(StreamFollower):
    """Follows database ``name`` of the server at ``leader`` into the data directory
    ``path``, from a thread of its own once :meth:`start` is called.

    ``leader``: ``tcp://HOST:PORT``, ``tls://HOST:PORT``, ``unix:///path`` or
    ``HOST:PORT``; ``token``: the JWT a leader with authentication requires (read scope).
    ``backoff_min``/``backoff_max``: the first and the longest wait before reconnecting
    (1 s and 30 s, armdb's; doubled after each failure, with jitter).
    ``connect_timeout``: seconds a connection to the leader may take to open (5, as
    armdb's). ``config``: how the copy stores and syncs its log (sync ``"always"``: a
    position acknowledged to the leader is on disk). ``replica``: False for a copy the
    leader must never count toward a write's ``replicas=N`` (a backup, or a copy that
    may be thrown away); its acknowledgements still show in the leader's status, with
    the role ``backup``.

    Raises InvalidArgumentError for a bad argument and DatabaseLockedError when another
    process (or follower) has the copy open. Errors while following are not raised:
    they are in :attr:`last_error` and :meth:`status`, and the follower retries.
    """

    def __init__(
        self,
        leader: str,
        path: str | Path,
        *,
        name: str = "default",
        token: str | None = None,
        backoff_min: float = 1.0,
        backoff_max: float = 30.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        config: DatabaseConfig | None = None,
        replica: bool = True,
    ) -> None:
        url = leader if "://" in leader else f"tcp://{leader}"
        super().__init__(
            Endpoint.make(url, token=token),
            validate_database_name(name),
            self._open_local,
            self._truncate_local,
            self._discard_local,
            backoff_min=backoff_min,
            backoff_max=backoff_max,
            connect_timeout=connect_timeout,
            max_record_bytes=(config or DatabaseConfig()).max_record_bytes,
            replica=replica,
        )
        #: The data directory; the copy is ``path / name``.
        self.path = Path(path)
        self._config = config or DatabaseConfig()
        self._copy: Database | None = None
        self._copy_lock = threading.Lock()
        #: The copy, read-only (see :class:`~kilndb.replication.replica.ReplicaView`).
        self.database = ReplicaView(self._current, self.name, self.leader.url)
        self._open_local(None)  # an existing copy: readable now, and locked by us

    def __repr__(self) -> str:
        return f"<kilndb.replication.Follower {self.name!r} of {self.leader.url} ({self.state})>"

    def start(self) -> Follower:
        """Start following (again after :meth:`stop`: from where the copy ends)."""
        self._open_local(None)
        super().start()
        return self

    def stop(self) -> None:
        """Stop following and close the copy (:func:`kilndb.open` can open it then).
        Idempotent; safe from any thread — from the follower's own, the copy is closed
        as its thread ends."""
        super().stop()
        if not self.running:
            self._closed_copy()

    def _run(self) -> None:
        try:
            super()._run()
        finally:
            self._closed_copy()  # the thread ends only once stopped

    def status(self) -> dict[str, Any]:
        """``database``, ``leader``, ``state``, ``position``, ``leader_position``,
        ``lag_records``, ``max_position_seen``, ``reconnects``, ``last_error`` and the
        rest of a following server's per-database status, plus ``path``."""
        return {**super().status(), "path": str(self.path / self.name)}

    def __enter__(self) -> Follower:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the copy ----------------------------------------------------------------------

    def _current(self) -> Database:
        copy = self._copy
        if copy is None or copy.closed:
            raise UnavailableError(
                f"no copy of database {self.name} is open here: the follower has not"
                f" received it from {self.leader.url} yet, or it is stopped"
            )
        return copy

    def _open_local(self, database_id: str | None) -> Database | None:
        with self._copy_lock:
            copy = self._copy
            if copy is not None and not copy.closed:
                return copy
            if database_id is None and not (self.path / self.name / "META").is_file():
                return None
            copy = self._copy = Database(
                self.path, self.name, self._config, database_id=database_id
            )
            return copy

    def _closed_copy(self) -> Path:
        """Close the copy (the follower's thread is about to change its files)."""
        with self._copy_lock:
            copy, self._copy = self._copy, None
        if copy is not None:
            copy.close()
        return self.path / self.name

    def _truncate_local(self, position: int) -> list[int]:
        return truncate_after(self._closed_copy(), position)

    def _discard_local(self) -> int:
        return discard_copy(self._closed_copy())

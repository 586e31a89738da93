"""Backends the conformance suite runs against.

Every test in this package uses only the public Python API, through the ``db`` and
``backend`` fixtures, so that each implementation of that API (the embedded database
, the blocking network client ``kilndb.connect`` and the asyncio one
``kilndb.connect_async``, driven through :mod:`tests.conformance.synced`) and the
embedded database in memory (``kilndb.open(":memory:")``) — passes the very same tests.
To add an
implementation, add an entry to ``BACKENDS``: a callable that takes the data directory
and returns a ``Backend`` able to open (and reopen) one database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import kilndb
from kilndb.config import DatabaseConfig
from kilndb.server import Server
from tests.conformance.synced import Loop, synced_connect


@dataclass
class Backend:
    """Opens the database under test; ``reopen`` closes every handle and opens anew
    (for a server: restarts it, so that what survives is what is on disk)."""

    name: str
    opener: Callable[..., kilndb.Database]
    restart: Callable[[], None] = lambda: None
    stop: Callable[[], None] = lambda: None
    handles: list[kilndb.Database] = field(default_factory=list)
    #: In this process: one handle is what threads share (a client each, remotely).
    embedded: bool = False
    #: Whether what was written survives ``reopen`` (not in memory: tests of that skip).
    durable: bool = True

    def open(self, **options: Any) -> kilndb.Database:
        db = self.opener(**options)
        self.handles.append(db)
        return db

    def reopen(self, db: kilndb.Database, **options: Any) -> kilndb.Database:
        if not self.durable:
            pytest.skip(
                "nothing outlives closing a database in memory (tests/engine/test_memory.py)"
            )
        db.close()
        self.restart()
        return self.open(**options)

    def close_all(self) -> None:
        for db in self.handles:
            db.close()
        self.stop()


def _embedded(data_dir: Path) -> Backend:
    def opener(**options: Any) -> kilndb.Database:
        return kilndb.open(data_dir, **options)

    return Backend("embedded", opener, embedded=True)


def _memory(data_dir: Path) -> Backend:
    def opener(**options: Any) -> kilndb.Database:
        db = kilndb.open(":memory:", **options)
        assert db.in_memory and not data_dir.exists()
        return db

    return Backend("memory", opener, embedded=True, durable=False)


class _ServerHarness:
    """A server on loopback, restarted whenever the tests ask for other options."""

    def __init__(self, data_dir: Path, connect: Callable[..., Any] = kilndb.connect) -> None:
        self._connect = connect
        self.data_dir = data_dir
        self.server: Server | None = None
        self.options: dict[str, Any] = {}

    def connect(self, **options: Any) -> kilndb.Database:
        if self.server is None or options != self.options:
            self.stop()
            self.options = options
            config = DatabaseConfig(**options)
            self.server = Server(data=self.data_dir, port=0, database=config).start()
            # As kilndb.open creates the database it opens (reads never create one).
            self.server.databases.get("default")
        return self._connect(self.server.url)  # type: ignore[no-any-return]

    def restart(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def _tcp(data_dir: Path) -> Backend:
    harness = _ServerHarness(data_dir)
    return Backend("tcp", harness.connect, harness.restart, harness.stop)


def _async(data_dir: Path) -> Backend:
    loop = Loop()
    harness = _ServerHarness(data_dir, synced_connect(loop))

    def stop() -> None:
        harness.stop()
        loop.stop()

    return Backend("async", harness.connect, harness.restart, stop)


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "embedded": _embedded,
    "memory": _memory,
    "tcp": _tcp,
    "async": _async,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = BACKENDS[request.param](tmp_path / "data")
    yield made
    made.close_all()


@pytest.fixture
def db(backend: Backend) -> kilndb.Database:
    return backend.open()

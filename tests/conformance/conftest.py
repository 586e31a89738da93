"""Backends the conformance suite runs against.

Every test in this package uses only the public Python API, through the ``db`` and
``backend`` fixtures, so that each implementation of that API (the embedded database
today, the network client once a server runs) passes the very same tests. To add an
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


@dataclass
class Backend:
    """Opens the database under test; ``reopen`` closes every handle and opens anew."""

    name: str
    opener: Callable[..., kilndb.Database]
    handles: list[kilndb.Database] = field(default_factory=list)

    def open(self, **options: Any) -> kilndb.Database:
        db = self.opener(**options)
        self.handles.append(db)
        return db

    def reopen(self, db: kilndb.Database, **options: Any) -> kilndb.Database:
        db.close()
        return self.open(**options)

    def close_all(self) -> None:
        for db in self.handles:
            db.close()


def _embedded(data_dir: Path) -> Backend:
    def opener(**options: Any) -> kilndb.Database:
        return kilndb.open(data_dir, **options)

    return Backend("embedded", opener)


BACKENDS: dict[str, Callable[[Path], Backend]] = {"embedded": _embedded}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = BACKENDS[request.param](tmp_path / "data")
    yield made
    made.close_all()


@pytest.fixture
def db(backend: Backend) -> kilndb.Database:
    return backend.open()

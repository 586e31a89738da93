"""Fixtures of the abuse suite: a live server per module and short socket paths."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.abuse.live import LiveServer, cleanup


@pytest.fixture(scope="module")
def sock_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (a socket path is limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="kiln-abuse-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, sock_dir: Path) -> Iterator[LiveServer]:
    """One ``kiln serve`` (TCP, Unix socket, HTTP) shared by a module's tests."""
    server = LiveServer(tmp_path_factory.mktemp("live") / "data", unix=sock_dir / "kiln.sock")
    server.start()
    try:
        yield server
    finally:
        cleanup(server)

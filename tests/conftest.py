"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kilndb import _core

#: ``etcd``: a real etcd member for the test (tests/fixtures/etcd.py).
pytest_plugins = ["tests.fixtures.etcd"]


class ThroughOs:
    """The core's file-changing system calls, made by the ``os`` functions of the same
    names, looked up at each call: a test that monkeypatches ``os.fdatasync`` (or
    ``pwrite``, ``fsync``, ``posix_fallocate``, ``ftruncate``) sees, delays or fails
    every such call of the log."""

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def posix_fallocate(self, fd: int, offset: int, length: int) -> None:
        os.posix_fallocate(fd, offset, length)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)


@pytest.fixture
def os_io() -> Iterator[ThroughOs]:
    """Route the core's disk writes and syncs through ``os`` for this test."""
    hook = ThroughOs()
    _core.set_io_hook(hook)
    try:
        yield hook
    finally:
        _core.set_io_hook(None)

"""Fixtures shared by the server tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.test_cluster import Members


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Members]:
    """Cluster member processes, stopped at the end of the test."""
    group = Members(tmp_path)
    try:
        yield group
    finally:
        group.stop()

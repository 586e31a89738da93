"""Fixtures shared by the client tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kilndb
from tests.conformance.synced import Loop, synced_connect


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``kilndb.connect``, or the same calls made through ``kilndb.connect_async``."""
    if request.param == "sync":
        yield kilndb.connect
        return
    loop = Loop()
    yield synced_connect(loop)
    loop.stop()

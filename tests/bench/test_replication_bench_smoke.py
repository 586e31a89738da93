"""Smoke run of ``bench/replication.py``: every row is measured and the run is clean."""

from __future__ import annotations

import pytest

from tests.bench.smoke import run_bench

pytestmark = pytest.mark.integration

ROWS = (
    "catch-up of a follower 3,000 facts behind",
    "replication throughput",
    "follower lag p50 at 1,000 facts/s",
    "follower lag p99 at 1,000 facts/s",
    "one-at-a-time writes acknowledged with replicas=1",
)


def test_replication_bench_smoke_prints_every_row() -> None:
    table = run_bench("replication.py", ROWS)
    assert "delivered)" not in table  # every fact reached the follower's changefeed

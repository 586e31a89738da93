"""Smoke run of ``bench/replication.py``: every row is measured and the run is clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "replication.py"

ROWS = (
    "catch-up of a follower 3,000 facts behind",
    "replication throughput",
    "follower lag p50 at 1,000 facts/s",
    "follower lag p99 at 1,000 facts/s",
    "one-at-a-time writes acknowledged with replicas=1",
)


def test_replication_bench_smoke_prints_every_row() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    for row in ROWS:
        assert row in done.stdout, (row, done.stdout)
    assert "delivered)" not in done.stdout  # every fact reached the follower's changefeed
    assert "Traceback" not in done.stderr

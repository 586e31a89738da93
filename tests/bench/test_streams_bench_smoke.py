"""Smoke run of ``bench/streams.py``: every row is printed and the run is clean.

Not a timed test: tiny sizes (``--smoke``) in a child process; redis-server is optional
here (with ``--smoke`` the bench installs nothing and skips a missing peer).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "streams.py"

ROWS = (
    "segment produce, batches of 100",
    "segment consume, pages of 1,000",
    "20 tenants: first write to each (open + create)",
    "20 tenants: reopen of an evicted tenant",
    "20 tenants: server RSS empty / all touched / after eviction",
)


def test_streams_bench_smoke_prints_every_row() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    table = done.stdout
    for row in ROWS:
        assert row in table, (row, table)
    assert "Targets (issue 4)" in table
    assert "Traceback" not in done.stderr

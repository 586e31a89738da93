"""Smoke run of ``bench/streams.py``: every row is printed and the run is clean.

Not a timed test: tiny sizes (``--smoke``) in a child process; redis-server is optional
here (with ``--smoke`` the bench installs nothing and skips a missing peer).
"""

from __future__ import annotations

import pytest

from tests.bench.smoke import run_bench

pytestmark = pytest.mark.integration

ROWS = (
    "segment produce, batches of 100",
    "segment consume, pages of 1,000",
    "20 tenants: first write to each (open + create)",
    "20 tenants: reopen of an evicted tenant",
    "20 tenants: server RSS empty / all touched / after eviction",
)


def test_streams_bench_smoke_prints_every_row() -> None:
    assert "Targets (issue 13)" in run_bench("streams.py", ROWS)

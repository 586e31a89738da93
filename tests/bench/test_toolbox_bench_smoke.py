"""Smoke run of ``bench/toolbox.py``: every row is printed and the run is clean.

Not a timed test: 2,000 facts (``--smoke``) in a child process.
"""

from __future__ import annotations

import pytest

from tests.bench.smoke import run_bench

pytestmark = pytest.mark.integration

ROWS = (
    "backup of 2,000 facts (kiln backup --data)",
    "cp -r and sync of the data directory (no consistency)",
    "online backup of 2,000 facts (kiln backup --url)",
    "restore of 2,000 facts (kiln restore: check, install)",
    "export of 2,000 facts to JSON Lines (kiln export)",
    "import of 2,000 facts, 1,000 per durable batch (kiln import)",
    "sqlite3 executemany, 1,000 per transaction, synchronous=FULL",
)


def test_toolbox_bench_smoke_prints_every_row() -> None:
    run_bench("toolbox.py", ROWS)

"""Smoke run of ``bench/idle.py``: both requests are timed alone and with idle subscribers,
and each goal is judged."""

from __future__ import annotations

import pytest

from tests.bench.smoke import run_bench

pytestmark = pytest.mark.integration

ROWS = (
    "REST GET of a key",
    "durable TCP write",
    "4 SSE + 3 WebSocket + 3 TCP = 10 idle subscribers",
)


def test_idle_bench_smoke_prints_every_row_and_judges_each_goal() -> None:
    table = run_bench("idle.py", ROWS)
    verdicts = [line for line in table.splitlines() if line.strip().startswith(("PASS", "MISS"))]
    assert len(verdicts) == 2

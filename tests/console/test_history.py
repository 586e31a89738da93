"""The latency histogram and the metrics history sampler, on a clock the test turns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import kilndb
from kilndb.server import Server
from kilndb.server.history import History
from kilndb.server.metrics import Latencies, Metrics


def test_quantiles_are_read_within_one_bucket_above_the_truth() -> None:
    latencies = Latencies()
    for ms in [1.0] * 98 + [50.0, 400.0]:
        latencies.record(ms)
    counts = latencies.take()
    assert sum(counts) == 100
    p50, p99, top = (Latencies.quantile(counts, q) for q in (0.5, 0.99, 1.0))
    assert p50 is not None and 1.0 <= p50 < 1.0 * Latencies.GROWTH
    assert p99 is not None and 50.0 <= p99 < 50.0 * Latencies.GROWTH
    assert top is not None and 400.0 <= top < 400.0 * Latencies.GROWTH
    # Taken: the next interval starts empty.
    assert Latencies.quantile(latencies.take(), 0.5) is None


def test_extremes_land_in_the_first_and_last_buckets() -> None:
    latencies = Latencies()
    latencies.record(0.0)
    latencies.record(10**9)
    counts = latencies.take()
    assert counts[0] == 1 and counts[-1] == 1 and sum(counts) == 2


def test_timed_requests_feed_the_latencies() -> None:
    metrics = Metrics()
    metrics.timed("write", 0.0, 0.0)  # began long ago
    assert sum(metrics.latencies.take()) == 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_sample_holds_the_rates_of_its_interval(tmp_path: Path) -> None:
    lag = {"followers": [{"lag_records": 3}], "following": [{"lag_records": 7}]}
    clock = Clock()
    with Server(data=tmp_path / "data", port=0) as server:
        with kilndb.connect(server.url) as db:
            db.store("s").write("k", 0)  # opens the database before sampling starts
            history = History(server.metrics, server.databases, lambda: lag, size=3, clock=clock)
            db.write_many([kilndb.Write("s", f"k{i}", i) for i in range(10)])
            for i in range(4):
                db.store("s").write(f"single{i}", i)
        clock.now += 2.0
        sample = history.sample()
        assert sample["at"] == 1002.0
        assert sample["writes_per_second"] == 7.0  # 14 facts in 2 s
        assert sample["fsyncs_per_second"] == 2.5  # a batch and 4 writes: 5 fsyncs
        assert sample["requests_per_second"] > 0
        assert sample["latency_p50_ms"] is not None
        assert sample["replication_lag_records"] == 7
        # A quiet interval: no rate, no latency.
        clock.now += 1.0
        quiet = history.sample()
        assert quiet["writes_per_second"] == quiet["fsyncs_per_second"] == 0
        assert quiet["latency_p50_ms"] is None and quiet["latency_p99_ms"] is None
        # The ring keeps the last ``size`` samples.
        for _ in range(3):
            clock.now += 1.0
            history.sample()
        assert [s["at"] for s in history.samples()] == [1004.0, 1005.0, 1006.0]
        snapshot: dict[str, Any] = history.snapshot()
        assert snapshot["window_seconds"] == 3 and snapshot["epochs"] == {"default": 0}


@pytest.mark.parametrize("reopened", [False, True])
def test_fsyncs_of_a_database_closed_or_reopened_never_count_negative(
    tmp_path: Path, reopened: bool
) -> None:
    clock = Clock()
    with Server(data=tmp_path / "data", port=0) as server:
        with kilndb.connect(server.url) as db:
            for i in range(3):
                db.store("s").write(f"k{i}", i)
        history = History(
            server.metrics,
            server.databases,
            lambda: {"followers": [], "following": []},
            clock=clock,
        )
        server.databases.remove("default", delete=False)
        if reopened:
            with kilndb.connect(server.url) as db:
                db.store("s").write("again", 1)
        clock.now += 1.0
        sample = history.sample()
        assert sample["fsyncs_per_second"] == (1.0 if reopened else 0.0)

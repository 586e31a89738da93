"""The last minutes of a server's vital signs, sampled once a second, for the console's
charts (``GET /v1/metrics/history``).

Each sample is ``{"at", "writes_per_second", "fsyncs_per_second", "requests_per_second",
"latency_p50_ms", "latency_p99_ms", "replication_lag_records"}``:

- ``writes_per_second``: facts written in the interval (the ``facts_written`` counter);
- ``fsyncs_per_second``: fsyncs of the open databases in the interval (their ``stats()``;
  a database closed or evicted meanwhile adds none);
- ``requests_per_second``, ``latency_p50_ms``, ``latency_p99_ms``: the requests timed in
  the interval (:class:`~kilndb.server.metrics.Latencies`; null without any);
- ``replication_lag_records``: the furthest a database followed here, or a follower of a
  database led here, is behind, at the sampling moment.

The ring keeps :data:`HISTORY_SECONDS` samples; nothing is kept across a restart.
Sampling reads counters and the open databases' stats, no data file.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kilndb.errors import KilnError
from kilndb.server.metrics import Latencies, Metrics
from kilndb.server.nodes import NodeManager

__all__ = ["HISTORY_SECONDS", "SAMPLE_SECONDS", "History"]


#: Seconds between two samples.
SAMPLE_SECONDS = 1.0
#: Samples kept: ten minutes.
HISTORY_SECONDS = 600


class History:
    """A bounded ring of samples of a server's rates, latencies and lag."""

    def __init__(
        self,
        metrics: Metrics,
        databases: NodeManager,
        replication_status: Callable[[], dict[str, Any]],
        size: int = HISTORY_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.databases = databases
        self.replication_status = replication_status
        self.clock = clock
        self._samples: deque[dict[str, Any]] = deque(maxlen=size)
        self._written = metrics.counters()["facts_written"]
        self._fsyncs = self._fsync_counts()
        self._at = clock()

    def _fsync_counts(self) -> dict[str, int]:
        """Fsyncs so far per open database (a closed one is not opened to be counted)."""
        counts = {}
        for name in self.databases.names():
            db = self.databases.peek(name)
            if db is None:
                continue
            try:
                counts[name] = int(db.stats()["fsyncs"])
            except KilnError:  # closed meanwhile
                continue
        return counts

    def _lag(self) -> int:
        replication = self.replication_status()
        links = [*replication["followers"], *replication["following"]]
        return max((int(link["lag_records"]) for link in links), default=0)

    def sample(self) -> dict[str, Any]:
        """Take one sample of the interval since the last one, keep it and return it."""
        now = self.clock()
        seconds = max(now - self._at, 1e-3)
        written = self.metrics.counters()["facts_written"]
        fsyncs = self._fsync_counts()
        # A database opened in the interval counts its fsyncs from zero; one reopened
        # (counters restarted) counts from its new count.
        fsynced = sum(
            count - before if count >= (before := self._fsyncs.get(name, 0)) else count
            for name, count in fsyncs.items()
        )
        counts = self.metrics.latencies.take()
        requests = sum(counts)
        p50, p99 = Latencies.quantile(counts, 0.5), Latencies.quantile(counts, 0.99)
        sample = {
            "at": round(now, 3),
            "writes_per_second": round((written - self._written) / seconds, 2),
            "fsyncs_per_second": round(fsynced / seconds, 2),
            "requests_per_second": round(requests / seconds, 2),
            "latency_p50_ms": None if p50 is None else round(p50, 3),
            "latency_p99_ms": None if p99 is None else round(p99, 3),
            "replication_lag_records": self._lag(),
        }
        self._written, self._fsyncs, self._at = written, fsyncs, now
        self._samples.append(sample)
        return sample

    def samples(self) -> list[dict[str, Any]]:
        """The samples kept, oldest first."""
        return list(self._samples)

    def snapshot(self) -> dict[str, Any]:
        """What ``GET /v1/metrics/history`` answers: the sampling interval, the window,
        the samples, and each known database's leader epoch."""
        return {
            "interval_seconds": SAMPLE_SECONDS,
            "window_seconds": self._samples.maxlen,
            "samples": self.samples(),
            "epochs": {name: self.databases.leader_epoch(name) for name in self.databases.names()},
        }

"""A server's counters, its ring of recent events and its alerts, safe from any thread.

Alerts
------
An alert is ``{"type", "metric", "value", "threshold", "at"}`` (``at``: when it began,
epoch seconds). A threshold is set per metric name of :data:`THRESHOLD_METRICS`
(``ServerConfig.metrics_thresholds``); the metric *fires* while its value is above the
threshold. Nothing is evaluated per request: the server measures the metrics when its
status is asked for and once a second while any threshold is set, and each alert that
begins firing is recorded in the recent-events ring as an ``alert`` event. Server-wide
metrics fire as ``type: "threshold"``; the changefeed's, measured per subscriber, as
``subscriber_lag`` and ``subscriber_backlog`` (with ``database`` and ``subscriber``),
and a subscriber cut off for ``subscriber_overflow`` is kept as a delivery alert of
that type (the last ``max_recent_events`` of them).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Hashable, Mapping
from typing import Any

from kilndb.protocol import Request
from kilndb.protocol.ops import OPS

__all__ = ["CHANGEFEED_METRICS", "COUNTERS", "THRESHOLD_METRICS", "Latencies", "Metrics"]

#: The counters every server keeps, all starting at 0.
COUNTERS = (
    "requests_total",
    "errors_total",
    "facts_written",
    "facts_replayed",
    "bytes_in",
    "bytes_out",
    "accepted_connections_total",
    "closed_connections_total",
    "rejected_connections_total",
    "subscriptions_total",
    "slow_ops_total",
)

#: The metrics a threshold may be set on: name -> what is measured.
THRESHOLD_METRICS: dict[str, str] = {
    "error_rate": "errors_total / requests_total since the start (0 before any request)",
    "errors_total": "requests answered with an error since the start",
    "slow_ops_total": "requests slower than slow_op_ms since the start",
    "active_connections": "socket connections open now",
    "rejected_connections_total": "connections refused (max_connections, draining)",
    "subscription_count": "changefeed and status streams open now, every transport",
    "failing_databases": "databases whose circuit breaker is open",
    "unsynced_records": "the most facts written and not yet fsynced on one open database",
    "storage_bytes": "bytes of data files of the open databases",
    "replication_lag_records": "the furthest a database followed here is behind its leader",
    "replication_follower_lag_records": "the furthest a follower is behind this leader",
    "subscriber_lag": "positions a changefeed subscriber has still to be handed (each one)",
    "subscriber_backlog_bytes": "bytes handed to a changefeed subscriber it has not read",
}

#: The metrics of :data:`THRESHOLD_METRICS` measured per changefeed subscriber.
CHANGEFEED_METRICS = frozenset({"subscriber_lag", "subscriber_backlog_bytes"})


class Latencies:
    """Request latencies of one interval, in a fixed log-scale histogram: recording one
    is an increment under a lock, and :meth:`take` hands the interval's counts over and
    starts the next. A quantile is read as the upper bound of the bucket it falls in, so
    it is at most :data:`GROWTH` times (19%) above the true value."""

    #: The lower bound of the first bucket, in milliseconds; faster requests count in it.
    SMALLEST_MS = 0.01
    #: Each bucket's upper bound over its lower one.
    GROWTH = 2 ** (1 / 4)
    #: Buckets up to about 5 minutes; slower requests count in the last one.
    BUCKETS = 100

    def __init__(self) -> None:
        self._counts = [0] * self.BUCKETS
        self._lock = threading.Lock()

    def record(self, elapsed_ms: float) -> None:
        """Count one request that took ``elapsed_ms``."""
        ratio = elapsed_ms / self.SMALLEST_MS
        index = 0 if ratio <= 1 else math.ceil(math.log(ratio, self.GROWTH))
        with self._lock:
            self._counts[min(index, self.BUCKETS - 1)] += 1

    def take(self) -> list[int]:
        """The counts recorded since the last call, per bucket; the next interval starts."""
        with self._lock:
            counts, self._counts = self._counts, [0] * self.BUCKETS
        return counts

    @classmethod
    def quantile(cls, counts: list[int], q: float) -> float | None:
        """The ``q`` quantile (0 < q ≤ 1) of ``counts`` in milliseconds, None if empty."""
        total = sum(counts)
        if total == 0:
            return None
        rank = math.ceil(q * total)
        seen = 0
        for index, count in enumerate(counts):
            seen += count
            if seen >= rank:
                return cls.SMALLEST_MS * cls.GROWTH**index
        raise AssertionError("unreachable: the ranks add up to the total")


class Metrics:
    """Counters and recent events. Every update takes the lock: a worker thread, the
    fan-out hubs and the event loop all count, and ``+=`` on a shared dict is not safe
    across threads."""

    def __init__(self, max_recent_events: int = 100) -> None:
        self._counters = dict.fromkeys(COUNTERS, 0)
        #: Streams open over HTTP (SSE, WebSocket subscriptions), a gauge.
        self._http_streams = 0
        self._recent: deque[dict[str, Any]] = deque(maxlen=max_recent_events)
        #: The alerts firing now, per group (see :meth:`firing`), by key.
        self._firing: dict[str, dict[Hashable, dict[str, Any]]] = {}
        #: Subscribers cut off for overflow, the most recent last.
        self._delivery_alerts: deque[dict[str, Any]] = deque(maxlen=max_recent_events)
        #: The last request or storage error: ``{"error", "error_code", "op", "at"}``.
        self._last_error: dict[str, Any] | None = None
        #: The latencies of the requests timed since the last sample (:meth:`timed`).
        self.latencies = Latencies()
        self._lock = threading.Lock()

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``name``."""
        with self._lock:
            self._counters[name] += amount

    def count_result(self, request: Request, result: dict[str, Any]) -> None:
        """Count the facts a successful request wrote or replayed (any transport)."""
        written = OPS[request.op].written(request.params)
        if written:
            self.count("facts_written", written)
        elif request.op == "replay":
            self.count("facts_replayed", len(result["facts"]))

    def request_failed(self, op: str, error_code: str, message: str) -> None:
        """A request was answered with an error: counted, recorded as a
        ``request_error`` event and kept as the last error."""
        now = time.time()
        with self._lock:
            self._counters["errors_total"] += 1
            self._recent.append(
                {"event": "request_error", "at": now, "op": op, "error_code": error_code}
            )
            self._last_error = {"error": message, "error_code": error_code, "op": op, "at": now}

    @property
    def last_error(self) -> dict[str, Any] | None:
        """The last request or storage error (a copy), or None."""
        with self._lock:
            return None if self._last_error is None else dict(self._last_error)

    def firing(self, group: str, alerts: Mapping[Hashable, dict[str, Any]]) -> list[dict[str, Any]]:
        """Set the alerts of ``group`` firing now (by a key that stays the same while one
        goes on firing); those that were not firing before are stamped with the time and
        recorded as ``alert`` events, the others keep their start. Returns them."""
        now = time.time()
        with self._lock:
            before = self._firing.get(group, {})
            current: dict[Hashable, dict[str, Any]] = {}
            for key, alert in alerts.items():
                began = before.get(key)
                if began is None:
                    current[key] = {**alert, "at": now}
                    self._recent.append({"event": "alert", **alert, "at": now})
                else:
                    current[key] = {**alert, "at": began["at"]}
            self._firing[group] = current
            return list(current.values())

    def delivery_alert(self, alert: dict[str, Any]) -> None:
        """A one-off changefeed delivery alert (a subscriber cut off): kept among the
        recent delivery alerts and recorded as an ``alert`` event."""
        stamped = {**alert, "at": time.time()}
        with self._lock:
            self._delivery_alerts.append(stamped)
            self._recent.append({"event": "alert", **stamped})

    def delivery_alerts(self) -> list[dict[str, Any]]:
        """The recent delivery alerts, oldest first."""
        with self._lock:
            return list(self._delivery_alerts)

    def timed(self, op: str, started: float, slow_op_ms: float) -> None:
        """Record the latency of the op begun at ``started`` (``time.monotonic()``), and
        count and record it as slow if it took ``slow_op_ms`` or longer (0: never)."""
        elapsed_ms = (time.monotonic() - started) * 1000
        self.latencies.record(elapsed_ms)
        if slow_op_ms > 0 and elapsed_ms >= slow_op_ms:
            self.count("slow_ops_total")
            self.event("slow_op", op=op, ms=round(elapsed_ms, 1))

    def http_stream(self, opened: bool) -> None:
        """An SSE stream or WebSocket subscription opened (or ended)."""
        with self._lock:
            self._http_streams += 1 if opened else -1

    @property
    def http_streams(self) -> int:
        with self._lock:
            return self._http_streams

    def event(self, kind: str, **details: Any) -> None:
        """Record an event in the bounded recent-events ring."""
        with self._lock:
            self._recent.append({"event": kind, "at": time.time(), **details})

    def counters(self) -> dict[str, int]:
        """A copy of the counters, taken at one moment."""
        with self._lock:
            return dict(self._counters)

    def recent_events(self) -> list[dict[str, Any]]:
        """The recent events, oldest first."""
        with self._lock:
            return list(self._recent)

"""A server's counters and its ring of recent events, safe from any thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from kilndb.protocol import Request
from kilndb.protocol.ops import OPS

__all__ = ["COUNTERS", "Metrics"]

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


class Metrics:
    """Counters and recent events. Every update takes the lock: a worker thread, the
    fan-out hubs and the event loop all count, and ``+=`` on a shared dict is not safe
    across threads."""

    def __init__(self, max_recent_events: int = 100) -> None:
        self._counters = dict.fromkeys(COUNTERS, 0)
        #: Streams open over HTTP (SSE, WebSocket subscriptions), a gauge.
        self._http_streams = 0
        self._recent: deque[dict[str, Any]] = deque(maxlen=max_recent_events)
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

"""A socket connection's replies: their slots in request order, how a batch of queued
requests is cut, and the reply and error frames (counted, timed and recorded)."""

from __future__ import annotations

import logging
from typing import Any

from kilndb.errors import KilnError
from kilndb.protocol import Request, ServerConnection
from kilndb.protocol.ops import OPS
from kilndb.server.metrics import Metrics

__all__ = [
    "CLOSE_GRACE_SECONDS",
    "MAX_BATCH",
    "MAX_BATCH_READS",
    "RUN",
    "SINGLE_WRITES",
    "Applied",
    "Replies",
    "Slot",
    "batch_end",
    "groupable",
]

log = logging.getLogger("kilndb.server")


class Slot:
    """A reply's place in its connection's reply order; ``frame`` is set once it is ready.

    A worker thread may fill a slot while the loop is flushing: a reference store is
    atomic, and the loop only writes out a ready prefix of the queue.
    """

    __slots__ = ("frame",)

    def __init__(self, frame: bytes | None = None) -> None:
        self.frame = frame


#: An applied request: its reply slot, the request, an error frame (or None), the
#: database, the position to make durable and the reply fields.
Applied = tuple[Slot, Request, bytes | None, Any, int, dict[str, Any]]

#: The op of the internal request that carries a committed :class:`WriteRun` from its
#: application to its acknowledgement (never a wire op).
RUN = "kiln.write_run"

#: How long a client whose frame timed out has to read the error before it is dropped.
CLOSE_GRACE_SECONDS = 5.0

#: The most reads (whose replies may be large) applied as one batch: what a connection's
#: replies may hold beyond the transport's buffer when its client does not read them.
MAX_BATCH_READS = 16
#: The most requests of any kind applied as one batch (writes answer in a few bytes).
MAX_BATCH = 1024


def batch_end(queued: list[tuple[Request, Slot]]) -> int:
    """How many of the queued requests the next batch takes."""
    reads = 0
    for index, (request, _) in enumerate(queued[:MAX_BATCH]):
        if OPS[request.op].action == "read":
            reads += 1
            if reads > MAX_BATCH_READS:
                return index
    return min(len(queued), MAX_BATCH)


#: Ops that write one fact: consecutive ones in a pipeline are committed together.
SINGLE_WRITES = frozenset({"write", "write_fact"})


def groupable(request: Request) -> bool:
    """A single-fact write that may be committed together with its neighbours."""
    return request.op in SINGLE_WRITES and request.params["fence"] is None


class Replies:
    """Builds a connection's reply and error frames, counting and recording them."""

    def __init__(self, metrics: Metrics, slow_op_ms: float) -> None:
        self.metrics = metrics
        self.slow_op_ms = slow_op_ms

    def refused(
        self, request: Request, exc: Exception
    ) -> tuple[bytes | None, Any, int, dict[str, Any]]:
        """An applied request's outcome when it raised ``exc``."""
        return self.refusal(request, exc), None, 0, {}

    def refusal(self, request: Request, exc: Exception) -> bytes:
        """The error reply of a request that raised ``exc``."""
        if isinstance(exc, KilnError):
            return self.failed(request, exc)
        # A bug must not take the connection down silently.
        log.exception("request %s failed", request.op, exc_info=exc)
        self.metrics.count("errors_total")
        error = KilnError(f"internal error: {exc}")
        return ServerConnection.error(error, request.request_id)

    def timed(self, op: str, started: float) -> None:
        """Record an op slower than ``slow_op_ms``."""
        self.metrics.timed(op, started, self.slow_op_ms)

    def failed(self, request: Request, error: KilnError) -> bytes:
        self.metrics.request_failed(request.op, error.error_code, error.message)
        return ServerConnection.error(error, request.request_id)

    def reply(self, request: Request, result: dict[str, Any]) -> bytes:
        self.metrics.count_result(request, result)
        return ServerConnection.reply(request.request_id, **result)

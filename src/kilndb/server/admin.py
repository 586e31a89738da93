"""Server ops (``runs: server`` in the op table) and running one request to its reply.

:class:`ServerOps` answers the ops about the server rather than one database: its status
and cluster, the databases it has, creating and removing one, and what it leads and
follows. :class:`Runner` runs one admitted request — a database op through the
dispatcher, a server op here — to its reply fields, for the transports that answer
requests one at a time (WebSocket, HTTP): bounded work on the event loop, everything
else on the server's bounded worker pool. The socket transport batches requests itself
(:mod:`kilndb.server.connections`) but applies them with the same pieces.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from kilndb.errors import InvalidArgumentError, KilnError
from kilndb.protocol import Request
from kilndb.protocol.ops import OPS
from kilndb.server.dispatch import Dispatcher
from kilndb.server.following import Following
from kilndb.server.leader import LeaderSide
from kilndb.server.metrics import Metrics
from kilndb.server.nodes import NodeManager

__all__ = ["Runner", "ServerOps"]

log = logging.getLogger("kilndb.server")


class ServerOps:
    """Answers the server ops (blocking: promoting or re-pointing stops threads)."""

    def __init__(
        self,
        databases: NodeManager,
        following: Following,
        status: Callable[[], dict[str, Any]],
        cluster_status: Callable[[], dict[str, Any]],
    ) -> None:
        self.databases = databases
        self.following = following
        self.status = status
        self.cluster_status = cluster_status
        #: With a coordinator: hand a database's lead to a node (a planned switchover).
        self.handover: Callable[[str, str], dict[str, Any]] | None = None

    def run(self, request: Request) -> dict[str, Any]:
        op, params = request.op, request.params
        if op == "server_status":
            return self.status()
        if op == "cluster":
            return self.cluster_status()
        if op == "databases":
            return {"databases": self.databases.on_disk()}
        if op == "create_database":
            existed = self.databases.exists(params["name"])
            self.databases.get(params["name"])
            return {"database": params["name"], "created": not existed}
        if op == "remove_database":
            return self.databases.remove(params["name"], delete=params["delete"])
        if op == "promote" and self.handover is not None and params["to"] is not None:
            return self.handover(params["database"] or "default", params["to"])
        if op in ("promote", "replicate") and self.following.config.coordinator is not None:
            raise InvalidArgumentError(
                f"{op}: with a coordinator, etcd decides who leads and who follows; to move"
                " a database's lead, send its leader `promote --to NODE`"
            )
        if op == "promote" and params["to"] is not None:
            raise InvalidArgumentError("promote --to needs a cluster with a coordinator")
        if op == "promote":
            database = params["database"]
            return self.following.promote(None if database is None else [database])
        if op == "replicate":
            return self.following.follow(params["leader"], params["databases"])
        raise KilnError(f"internal error: {op!r} is not a server op")


class Runner:
    """Runs admitted requests to their reply fields (WebSocket and HTTP)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        server_ops: ServerOps,
        leader: LeaderSide,
        metrics: Metrics,
        executor: Executor,
        slow_op_ms: float = 0.0,
    ) -> None:
        self.dispatcher = dispatcher
        self.server_ops = server_ops
        self.leader = leader
        self.metrics = metrics
        self.executor = executor
        #: Requests taking this long or longer are counted as slow (0: none).
        self.slow_op_ms = slow_op_ms

    async def run(self, request: Request) -> dict[str, Any]:
        """The reply fields of ``request`` (its database already bound); raises the
        KilnError that becomes the error reply, ``internal`` for a bug."""
        op = OPS[request.op]
        if op.runs == "server" and op.quick:  # a snapshot of the server's state
            return self._answer(request)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, self._answer, request)
        finally:
            self.metrics.timed(request.op, started, self.slow_op_ms)

    def _answer(self, request: Request) -> dict[str, Any]:
        metrics = self.metrics
        try:
            if OPS[request.op].runs == "server":
                result = self.server_ops.run(request)
            else:
                result, db, position = self.dispatcher.apply(request, "default")
                if db is not None and position:
                    db.wait_durable(position)
                    replicas = self.leader.replicas_for(request)
                    if replicas:
                        self.leader.wait_replicas(db.name, position, replicas)
                    self.dispatcher.confirm(db.name)
        except KilnError as exc:
            metrics.request_failed(request.op, exc.error_code, exc.message)
            raise
        except Exception as exc:  # a bug: answered as ``internal``, never a bare 500
            log.exception("request %s failed", request.op, exc_info=exc)
            error = KilnError(f"internal error: {exc}")
            metrics.request_failed(request.op, error.error_code, error.message)
            raise error from exc
        metrics.count_result(request, result)
        return result

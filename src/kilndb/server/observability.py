"""What a server reports of itself: the health snapshot (``/v1/health``) and the
observability snapshot (``server_status``, ``/v1/status``, ``/metrics``), the same JSON
on every transport.

Igniter's shapes, kept: the health snapshot has ``schema_version``, ``status``
(``ready``, ``draining``, ``stopped``), ``backend``, ``transport``, ``bind_address``,
``uptime_ms``, ``active_connections``, ``subscriptions`` and ``last_error``; the status
has ``schema_version``, ``generated_at``, ``status``, ``uptime_ms``, ``metrics``,
``alerts``, ``storage``, ``server`` and ``changefeed``. KilnDB adds ``pid``, every
listener (``transports``, ``bind_addresses``) and, in the status, its databases,
nodes and replication. Taking the status measures the alert thresholds
(:mod:`kilndb.server.metrics`).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Protocol

from kilndb.errors import KilnError
from kilndb.server.metrics import CHANGEFEED_METRICS, Metrics
from kilndb.server.nodes import NodeManager

if TYPE_CHECKING:
    from kilndb.server.cluster import ClusterAgent
    from kilndb.server.config import ServerConfig
    from kilndb.server.connections import SocketConnection
    from kilndb.server.fanout import Fanout
    from kilndb.server.leadership import Leadership
    from kilndb.server.tasks import TaskOwner

__all__ = ["Observed", "health", "status"]


class Observed(Protocol):
    """What the snapshots read of a server (:class:`~kilndb.server.Server` has it all)."""

    @property
    def config(self) -> ServerConfig: ...
    @property
    def state(self) -> str: ...
    @property
    def uptime_ms(self) -> int: ...
    @property
    def addresses(self) -> list[str]: ...
    @property
    def bind_address(self) -> str | None: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def databases(self) -> NodeManager: ...
    @property
    def connections(self) -> set[SocketConnection]: ...
    @property
    def cluster(self) -> ClusterAgent | None: ...
    @property
    def leadership(self) -> Leadership | None: ...
    @property
    def assembled(self) -> bool: ...
    @property
    def tasks(self) -> TaskOwner: ...
    @property
    def fanout(self) -> Fanout: ...
    def replication_status(self) -> dict[str, Any]: ...


#: What the status reports of each open database (``Database.stats()`` fields).
_STORAGE_FIELDS = (
    "last_position",
    "durable_position",
    "facts",
    "keys",
    "stores",
    "files",
    "data_bytes",
    "dead_bytes",
    "fsyncs",
    "sync",
    "subscribers",
)


def health(server: Observed) -> dict[str, Any]:
    """The compact health snapshot: cheap, no database read."""
    return {
        "schema_version": 1,
        "status": server.state,
        "uptime_ms": server.uptime_ms,
        "pid": os.getpid(),
        **_server_section(server),
        "active_connections": len(server.connections),
        "subscriptions": _subscriptions(server),
    }


def status(server: Observed) -> dict[str, Any]:
    """The observability snapshot; the alerts that begin firing are recorded."""
    counters = server.metrics.counters()
    nodes = server.databases.status()
    replication = server.replication_status()
    storage = _storage(server.databases)
    metrics = {
        **counters,
        "open_databases": nodes["open_count"],
        "opened_databases_total": nodes["opened_total"],
        "evicted_databases_total": nodes["evicted_total"],
        "failing_databases": len(nodes["failing"]),
        "replication_followers": len(replication["followers"]),
        "replication_follower_lag_records": max(
            (f["lag_records"] for f in replication["followers"]), default=0
        ),
        "replication_lag_records": max(
            (f["lag_records"] for f in replication["following"]), default=0
        ),
        **({} if server.cluster is None else server.cluster.metrics()),
        **({} if server.leadership is None else server.leadership.gauges()),
        "active_connections": len(server.connections),
        "subscription_count": _subscriptions(server),
        "background_tasks": server.tasks.task_count if server.assembled else 0,
        "background_threads": server.tasks.thread_count if server.assembled else 0,
    }
    thresholds = server.config.metrics_thresholds
    measured = {
        **metrics,
        "error_rate": min(1.0, counters["errors_total"] / max(1, counters["requests_total"])),
        "unsynced_records": max(
            (d["last_position"] - d["durable_position"] for d in storage.values()), default=0
        ),
        "storage_bytes": sum(d["data_bytes"] for d in storage.values()),
    }
    alerts = server.metrics.firing(
        "threshold",
        {
            name: {"type": "threshold", "metric": name, "value": value, "threshold": limit}
            for name, limit in thresholds.items()
            if name not in CHANGEFEED_METRICS and (value := measured[name]) > limit
        },
    )
    changefeed: dict[str, Any] = (
        server.fanout.snapshot(thresholds)
        if server.assembled
        else {"subscribers": 0, "by_database": {}, "overflows_total": 0, "alerts": []}
    )
    return {
        "schema_version": 1,
        "generated_at": time.time(),
        "status": server.state,
        "uptime_ms": server.uptime_ms,
        "pid": os.getpid(),
        "addresses": server.addresses,
        "databases": server.databases.names(),
        "nodes": nodes,
        "replication": replication,
        "metrics": metrics,
        "alerts": alerts + changefeed["alerts"],
        "storage": storage,
        "server": _server_section(server),
        "changefeed": changefeed,
    }


def _listeners(addresses: list[str]) -> list[tuple[str, str]]:
    """(transport, bind address) of each listener: ``tcp``, ``127.0.0.1:7400``."""
    return [
        (transport, where)
        for transport, _, where in (address.partition("://") for address in addresses)
    ]


def _server_section(server: Observed) -> dict[str, Any]:
    listeners = _listeners(server.addresses)
    return {
        "backend": "memory" if server.config.memory else "file",
        "transport": listeners[0][0] if listeners else None,
        "transports": [transport for transport, _ in listeners],
        "bind_address": server.bind_address,
        "bind_addresses": [address for _, address in listeners],
        "last_error": server.metrics.last_error,
    }


def _subscriptions(server: Observed) -> int:
    """Changefeed and status streams open now, every transport."""
    sockets = sum(1 for c in list(server.connections) if c.subscribed())
    return server.metrics.http_streams + sockets


def _storage(databases: NodeManager) -> dict[str, dict[str, Any]]:
    """Per open database: positions, facts, bytes and files, fsyncs (a closed
    database is not opened to be reported)."""
    storage = {}
    for name in databases.names():
        db = databases.peek(name)
        if db is None:
            continue
        try:
            stats = db.stats()
        except KilnError:  # closed meanwhile
            continue
        storage[name] = {key: stats[key] for key in _STORAGE_FIELDS}
    return storage

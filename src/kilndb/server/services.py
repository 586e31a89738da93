"""What a transport may use of its server: :class:`Services`, and nothing else.

Transports (sockets, HTTP, WebSocket) and the cluster agent receive this instead of the
server object, so that they depend on the parts they use — and the server module on
them — without an import circle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from kilndb.server.admin import Runner, ServerOps
from kilndb.server.auth import Authenticator
from kilndb.server.config import ServerConfig
from kilndb.server.dispatch import Dispatcher
from kilndb.server.fanout import Fanout
from kilndb.server.following import Following
from kilndb.server.leader import LeaderSide
from kilndb.server.metrics import Metrics
from kilndb.server.nodes import NodeManager
from kilndb.server.tasks import TaskOwner

__all__ = ["Services"]


@dataclass(frozen=True, slots=True)
class Services:
    """The parts of a running server its transports share."""

    config: ServerConfig
    loop: asyncio.AbstractEventLoop
    auth: Authenticator
    databases: NodeManager
    dispatcher: Dispatcher
    fanout: Fanout
    #: The bounded worker pool for blocking work.
    executor: Executor
    metrics: Metrics
    leader: LeaderSide
    following: Following
    server_ops: ServerOps
    runner: Runner
    tasks: TaskOwner
    #: ``hello``'s routing fields for a database (``role``, ``leader``, ``cluster``).
    routing: Callable[[str], dict[str, Any]]
    #: The server's state: ``starting``, ``ready``, ``draining`` or ``stopped``.
    state: Callable[[], str]
    #: The observability snapshot (``server_status``).
    status: Callable[[], dict[str, Any]]
    #: The compact health snapshot (``/v1/health``).
    health: Callable[[], dict[str, Any]]
    #: The followers it ships to and the leaders it follows.
    replication_status: Callable[[], dict[str, Any]]
    #: The cluster as this member sees it.
    cluster_status: Callable[[], dict[str, Any]]

"""The KilnDB server: node manager, request dispatch, sockets, HTTP."""

from kilndb.server.dispatch import CONNECTION_OPS, Dispatcher
from kilndb.server.nodes import NodeConfig, NodeManager

__all__ = ["CONNECTION_OPS", "Dispatcher", "NodeConfig", "NodeManager"]

"""The KilnDB server: sessions, transports, dispatch, replication, cluster membership."""

from kilndb.server.config import ServerConfig
from kilndb.server.dispatch import Dispatcher
from kilndb.server.lifecycle import Server
from kilndb.server.nodes import NodeConfig, NodeManager

__all__ = ["Dispatcher", "NodeConfig", "NodeManager", "Server", "ServerConfig"]

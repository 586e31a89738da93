"""The server side: databases shared by many clients over the wire protocol."""

from kilndb.server.dispatch import CONNECTION_OPS, Databases, Dispatcher

__all__ = ["CONNECTION_OPS", "Databases", "Dispatcher"]

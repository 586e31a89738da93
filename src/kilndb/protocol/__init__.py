"""The wire protocol, sans I/O: bytes in, validated requests out; replies to bytes.

Transports (the asyncio server, the client, tests) own the sockets; this package owns
the rules: frames (:mod:`kilndb.codec`), which ops exist and what their fields must be
(:mod:`kilndb.protocol.ops`), and one connection's state
(:mod:`kilndb.protocol.connection`).
"""

from kilndb.protocol.connection import (
    PROTOCOL_VERSION,
    BadRequest,
    ConnectionBroken,
    Event,
    Request,
    ServerConnection,
    WriteRun,
    parse_request,
)
from kilndb.protocol.ops import OPS, check_params

__all__ = [
    "OPS",
    "PROTOCOL_VERSION",
    "BadRequest",
    "ConnectionBroken",
    "Event",
    "Request",
    "ServerConnection",
    "WriteRun",
    "check_params",
    "parse_request",
]

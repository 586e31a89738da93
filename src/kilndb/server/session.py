"""One client's side of the protocol, whatever carries its bytes: a sans-I/O state machine.

Theory of operation
-------------------
Every transport — TCP, TLS and Unix sockets, WebSocket, and HTTP (a session per
request) — turns what it receives into checked :class:`~kilndb.protocol.Request` objects
and hands each to its :class:`Session`, which decides what happens to it and returns a
:data:`Step`:

:class:`Answer`
    reply now with these fields (``ping``, ``hello``);
:class:`Refuse`
    reply with this error: an op this transport does not carry, a connection that has
    not authenticated, a token that does not grant the op, a second subscription on a
    socket connection, an unknown subscription;
:class:`Close`
    reply ``ok`` and close once every earlier reply is out;
:class:`Execute`
    run the op (a database op through the dispatcher, a server op through the server's
    admin side) and reply with its result;
:class:`Open` and :class:`Unsubscribe`
    start or end a stream — a changefeed, a segment-status stream, a follower's
    replication stream — named by the request's ``request_id`` on WebSocket;
:class:`Acknowledge`
    a follower's ``replication_ack``, answered by nothing.

The session holds what the protocol keeps per connection: the selected database (a
request that names none is bound to it when it arrives, so that a later ``hello`` does
not redirect a request still queued), the principal its token speaks for, whether it is
closing, and the names of its open streams. It does no I/O and knows nothing of sockets,
threads or databases: what each op is comes from the op table
(:mod:`kilndb.protocol.ops`), so every transport gives the same answer, the same error
code and the same authorization for the same request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kilndb.errors import (
    AuthenticationError,
    InvalidArgumentError,
    KilnError,
    ProtocolError,
    UnavailableError,
)
from kilndb.protocol import PROTOCOL_VERSION, Request
from kilndb.protocol.ops import OPS, Op, Transport, carried_by
from kilndb.server.auth import ANONYMOUS, Authenticator, Principal

__all__ = [
    "Acknowledge",
    "Answer",
    "Close",
    "Execute",
    "Open",
    "Refuse",
    "Session",
    "Step",
    "Unsubscribe",
]

#: Streams one WebSocket connection may hold at once.
MAX_WEBSOCKET_STREAMS = 64

#: The ops that open a stream on the connection.
_STREAMS = frozenset({"subscribe", "subscribe_status", "sync_request"})


@dataclass(frozen=True, slots=True)
class Answer:
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Refuse:
    error: KilnError


@dataclass(frozen=True, slots=True)
class Close:
    pass


@dataclass(frozen=True, slots=True)
class Execute:
    request: Request
    op: Op


@dataclass(frozen=True, slots=True)
class Open:
    """Open a stream; ``name`` is what later messages of it carry (WebSocket)."""

    request: Request
    name: Any


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    name: Any


@dataclass(frozen=True, slots=True)
class Acknowledge:
    applied: int
    durable: int
    #: The newest leader epoch the follower knows (None from older followers).
    epoch: int | None = None


Step = Answer | Refuse | Close | Execute | Open | Unsubscribe | Acknowledge


class Session:
    """The protocol state of one connection (or of one HTTP request)."""

    def __init__(
        self,
        transport: Transport,
        auth: Authenticator,
        routing: Callable[[str], dict[str, Any]] = lambda database: {},
        *,
        principal: Principal | None = None,
        database: str = "default",
    ) -> None:
        """``routing(database)``: the fields ``hello`` adds to say where that database's
        writes go (``role``, ``leader``, ``cluster``). ``principal``: who a token given
        out of band (an HTTP header) speaks for."""
        self.transport = transport
        self.auth = auth
        self.routing = routing
        #: Who the connection's token speaks for; None until it authenticates.
        self.principal = principal if principal is not None or auth.enabled else ANONYMOUS
        self.database = database
        self.closing = False
        #: The streams open on this connection, by name.
        self.streams: set[Any] = set()

    def receive(self, request: Request) -> Step:
        """What to do with ``request``."""
        op = OPS[request.op]
        name = op.name
        try:
            carried_by(op, self.transport)
            if name == "ping":
                return Answer({"pong": True})
            if name == "hello":
                return Answer(self._hello(request))
            if name == "close":
                self.closing = True
                return Close()
            if request.database is None:
                request = request._replace(database=self.database)
            if self.principal is None:
                raise AuthenticationError("authenticate first: hello {token}")
            self.principal.check(name, request.database)
            if name in _STREAMS:
                return Open(request, self._stream_name(request))
            if name == "unsubscribe":
                return Unsubscribe(self._unsubscribe(request))
            if name == "replication_ack":
                params = request.params
                return Acknowledge(params["applied"], params["durable"], params.get("epoch"))
        except KilnError as error:
            return Refuse(error)
        return Execute(request, op)

    def ended(self, name: Any) -> None:
        """The stream ``name`` ended (or failed to open): the name is free again."""
        self.streams.discard(name)

    def _hello(self, request: Request) -> dict[str, Any]:
        params = request.params
        version = params["protocol_version"]
        if version is not None and version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {version} is not supported; this server speaks"
                f" {PROTOCOL_VERSION}"
            )
        if params["token"] is not None:
            self.principal = self.auth.verify(params["token"])
        if params["database"] is not None:
            self.database = params["database"]
        return {
            "protocol_version": PROTOCOL_VERSION,
            "database": self.database,
            **self.routing(self.database),
        }

    def _stream_name(self, request: Request) -> Any:
        if self.transport != "ws":
            if self.streams:
                raise ProtocolError("this connection is already subscribed")
            self.streams.add(None)
            return None
        name = request.request_id
        if name is None:
            raise InvalidArgumentError("a subscription needs a request_id of its own to name it")
        if name in self.streams:
            raise InvalidArgumentError(f"subscription {name!r} exists already")
        if len(self.streams) >= MAX_WEBSOCKET_STREAMS:
            raise UnavailableError(f"at most {MAX_WEBSOCKET_STREAMS} subscriptions per connection")
        self.streams.add(name)
        return name

    def _unsubscribe(self, request: Request) -> Any:
        name = request.params["subscription"]
        if name not in self.streams:
            raise InvalidArgumentError(f"no subscription {name!r}")
        self.streams.discard(name)
        return name

"""The server side of one wire-protocol connection, without any I/O.

Theory of operation
-------------------
A transport (an asyncio Protocol, a test) feeds received bytes to
:meth:`ServerConnection.receive_data` and gets back events, in arrival order:

:class:`Request`
    a well-formed request: ``op``, its checked ``params``, the ``request_id`` to echo
    and the ``database`` it names (or None for the connection's database).
:class:`BadRequest`
    a frame that arrived intact but is not a valid request — bad JSON, not an object,
    no ``op``, an unknown op, a wrong-typed field — or a frame over ``max_frame_bytes``
    (``FrameTooLargeError``), refused as soon as its header is read: its body and CRC are
    discarded as they arrive, never buffered. The stream is still in step: the
    transport answers it with :meth:`ServerConnection.error` (in request order, like any
    reply) and goes on.
:class:`WriteRun`
    with ``ServerConnection(write_runs=True)`` only: one or more consecutive *plain
    writes* (``{"op": "write", "store", "key", "value"}`` with at most a ``request_id``
    and options set to ``null``: nothing to check field by field, every option at its
    default, no database of their own), recognised in one call into the core. Each
    envelope is its own checked params; a transport may commit the run as one group and
    frame its replies with :meth:`ServerConnection.write_replies`, or take it apart with
    :meth:`WriteRun.requests` and answer each like any request.
:class:`ConnectionBroken`
    the byte stream lost its framing — a CRC mismatch. Nothing after it can be trusted:
    the transport sends :meth:`ServerConnection.error` as a last frame and closes. Later
    data is ignored.

Replies are built by :meth:`ServerConnection.reply` (``{"ok": true, ...}``) and
:meth:`ServerConnection.error` (``{"ok": false, "error", "error_code", ...}``), both echoing
``request_id`` when the request had one, and pushed changefeed frames by
:meth:`ServerConnection.fact_event` (Igniter's ``{"event": "fact_written", "fact": …}``).
Keeping replies in request order is the transport's job; this class holds no queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from kilndb import _core
from kilndb.codec import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frame
from kilndb.errors import (
    FrameTooLargeError,
    InvalidArgumentError,
    KilnError,
    ProtocolError,
    UnknownOpError,
)
from kilndb.model import validate_database_name
from kilndb.protocol.ops import OPS

__all__ = [
    "PROTOCOL_VERSION",
    "BadRequest",
    "parse_request",
    "ConnectionBroken",
    "Event",
    "Request",
    "ServerConnection",
    "WriteRun",
]

#: Version of the native protocol, announced and checked by ``hello``.
PROTOCOL_VERSION = 1

_CHECK_WRITE = OPS["write"].check


class Request(NamedTuple):
    """A valid request: answer it, in order, with a reply or an error.

    A named tuple: one is made per request on the server's hot path.
    """

    op: str
    params: dict[str, Any]
    request_id: Any = None
    database: str | None = None


@dataclass(frozen=True, slots=True)
class BadRequest:
    """An intact frame that is not a valid request; answer with ``error`` and go on."""

    error: KilnError
    request_id: Any = None


@dataclass(frozen=True, slots=True)
class ConnectionBroken:
    """The stream lost its framing: send ``error`` as a last frame, then close."""

    error: ProtocolError


@dataclass(frozen=True, slots=True)
class WriteRun:
    """Consecutive plain write requests (see the module docs), in arrival order."""

    envelopes: list[dict[str, Any]]

    def requests(self) -> list[Request]:
        """The run as the requests :func:`parse_request` makes of its frames."""
        return [
            Request("write", _CHECK_WRITE(envelope), _request_id(envelope), None)
            for envelope in self.envelopes
        ]


Event = Request | BadRequest | WriteRun | ConnectionBroken


def _request_id(body: dict[str, Any]) -> Any:
    request_id = body.get("request_id")
    # Echo only what can be echoed faithfully; anything else is dropped, not refused.
    return request_id if isinstance(request_id, str | int) else None


def parse_request(body: bytes) -> Request | BadRequest:
    """Check one request body (a JSON op envelope), from a frame, HTTP or WebSocket."""
    try:
        message = _core.loads(body)
    except orjson.JSONDecodeError as exc:
        return BadRequest(ProtocolError(f"request is not valid JSON: {exc}"))
    if not isinstance(message, dict):
        return BadRequest(ProtocolError("request must be a JSON object"))
    request_id = _request_id(message)
    op = message.get("op")
    if not isinstance(op, str):
        problem = "missing field 'op'" if op is None else "field 'op' must be a string"
        return BadRequest(InvalidArgumentError(problem), request_id)
    declared = OPS.get(op)
    if declared is None:
        return BadRequest(UnknownOpError(f"unknown op {op!r}"), request_id)
    try:
        params = declared.check(message)
        database = message.get("database")
        if database is not None:
            database = validate_database_name(database)
        if op == "hello":  # selects the connection's database rather than naming one
            params["database"], database = database, None
    except InvalidArgumentError as exc:
        return BadRequest(InvalidArgumentError(f"{op}: {exc.message}"), request_id)
    return Request(op, params, request_id, database)


class ServerConnection:
    """Sans-I/O server side of one connection: bytes in, events out; replies to bytes."""

    def __init__(
        self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, *, write_runs: bool = False
    ) -> None:
        """``write_runs``: gather consecutive plain writes into :class:`WriteRun` events
        (a transport that commits them as a group); otherwise each is a Request."""
        self._decoder = FrameDecoder(max_frame_bytes, skip_oversize=True)
        self._write_runs = write_runs
        self.broken: ConnectionBroken | None = None
        #: Requests decoded so far (valid or not), for metrics.
        self.requests = 0

    @property
    def buffered(self) -> int:
        """Bytes of a frame received only in part (0 between frames)."""
        return self._decoder.buffered

    @property
    def partial(self) -> bool:
        """A frame has begun and not ended (its bytes, or an oversize one's to skip)."""
        decoder = self._decoder
        return self.broken is None and (decoder.buffered > 0 or decoder.skipping > 0)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Events for the frames ``data`` completes; empty if more bytes are needed."""
        if self.broken is not None:
            return []
        events: list[Event] = []
        decoder = self._decoder
        decoder.feed(data)
        while True:
            try:
                bodies = decoder.frames()
            except FrameTooLargeError as exc:  # skipped: the stream is still in step
                self.requests += 1
                events.append(BadRequest(exc))
                continue
            except ProtocolError as exc:
                self.broken = ConnectionBroken(exc)
                break
            if not bodies:
                break
            self._parse(bodies, events)
        if self.broken is not None:
            events.append(self.broken)
        return events

    def _parse(self, bodies: list[bytes], events: list[Event]) -> None:
        """Append the events of intact frames' ``bodies`` to ``events``."""
        self.requests += len(bodies)
        i, count = 0, len(bodies)
        while i < count:
            envelopes, end = _core.plain_write_run(bodies, i) if self._write_runs else ([], i)
            if end > i:
                events.append(WriteRun(envelopes))
                i = end
            else:
                events.append(parse_request(bodies[i]))
                i += 1

    @staticmethod
    def reply(request_id: Any = None, **result: Any) -> bytes:
        """A successful reply frame: ``{"ok": true, **result}`` echoing ``request_id``."""
        body: dict[str, Any] = {"ok": True, **result}
        if request_id is not None:
            body["request_id"] = request_id
        return encode_frame(orjson.dumps(body))

    @staticmethod
    def write_replies(run: WriteRun, outcomes: list[Any]) -> bytes | None:
        """The replies of a run whose every write was committed, back to back (what
        :meth:`reply` makes of each ``fact=`` its stored JSON, given as bytes); None if
        an outcome is anything else."""
        return _core.write_replies(run.envelopes, outcomes)

    @staticmethod
    def error(error: KilnError, request_id: Any = None) -> bytes:
        """A failed reply frame carrying the error's message, code and fields."""
        body = error.to_wire()
        if request_id is not None:
            body["request_id"] = request_id
        return encode_frame(orjson.dumps(body))

    @staticmethod
    def fact_event(fact: dict[str, Any]) -> bytes:
        """A pushed changefeed frame in Igniter's form."""
        return encode_frame(orjson.dumps({"event": "fact_written", "fact": fact}))

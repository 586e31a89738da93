"""``GET /v1/ws``: the op JSON messages over WebSocket, many at once on one connection.

Each text message is one op envelope (as on the socket protocol), handed to the
connection's :class:`~kilndb.server.session.Session` like a socket connection's
requests. Requests run concurrently — at most ``MAX_IN_FLIGHT`` per connection — and
each reply carries the request's ``request_id``, so a client tags its requests and
matches the replies in any order. ``subscribe`` and ``subscribe_status`` open a
subscription named by their ``request_id`` (required): after its ``ok`` reply, its pushed
messages carry ``"subscription": <request_id>``; ``unsubscribe {subscription}`` ends one,
``close`` ends the connection. Changefeeds are feeds of the database's fan-out hub and
every subscription is pushed by a task of its own through an
:class:`~kilndb.server.push.Outbox`: an idle one holds no thread, a slow reader ends with
``subscriber_overflow``. The server pings every 30 s and drops a client it has not heard
from (pongs included) for 90 s. A message over the server's ``max_frame_bytes`` gets a
``frame_too_large`` error message, then the connection is closed with code 1009 (Message
Too Big): WebSocket has no way to skip the rest of a message and go on.

With authentication on, the token comes in the ``Authorization: Bearer`` header of the
upgrade request or in a first ``hello {token}`` message; until then only ``hello``,
``ping`` and ``close`` are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from kilndb.codec import FrameDecoder
from kilndb.engine import StatusSubscription
from kilndb.errors import FrameTooLargeError, InvalidArgumentError, KilnError
from kilndb.protocol import BadRequest, Request, parse_request
from kilndb.server.auth import Principal
from kilndb.server.fanout import Feed
from kilndb.server.push import (
    Outbox,
    changefeed,
    changefeed_start,
    event_bodies,
    pump_status,
)
from kilndb.server.services import Services
from kilndb.server.session import (
    Answer,
    Close,
    Execute,
    Open,
    Refuse,
    Session,
    Unsubscribe,
)
from kilndb.streams import new_channel

__all__ = ["MAX_IN_FLIGHT", "PING_SECONDS", "SILENCE_SECONDS", "websocket_handler"]

log = logging.getLogger("kilndb.server")

PING_SECONDS = 30.0
SILENCE_SECONDS = 90.0
MAX_IN_FLIGHT = 256


def _dumps(body: dict[str, Any]) -> str:
    return orjson.dumps(body).decode()


def _error(error: KilnError, request_id: Any) -> str:
    body = error.to_wire()
    if request_id is not None:
        body["request_id"] = request_id
    return _dumps(body)


def _reply(request_id: Any, **fields: Any) -> str:
    body = {"ok": True, **fields}
    if request_id is not None:
        body["request_id"] = request_id
    return _dumps(body)


class _Socket(web.WebSocketResponse):
    """A server WebSocket that says why it closes on a message over ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        # aiohttp refuses a message of exactly max_msg_size bytes: a frame may have
        # ``limit`` bytes, so a message may too.
        super().__init__(autoping=True, max_msg_size=limit + 1)
        self.limit = limit

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        # aiohttp closes with 1009 itself when a message is over the limit; the client
        # gets the error first, as it would on any other transport.
        if code == WSCloseCode.MESSAGE_TOO_BIG and not self.closed:
            limit = self.limit
            error = FrameTooLargeError(limit + 1, limit, f"message over the limit of {limit} bytes")
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await self.send_str(_error(error, None))
            message = message or error.error_code.encode()
        return await super().close(code=code, message=message, drain=drain)


class _Stream:
    """One subscription of a WebSocket connection: its outbox, what feeds it, its pusher."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.feed: Feed | None = None
        self.status: StatusSubscription | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        #: The stream's channel id (the client's, or a UUID).
        self.channel = ""


class _Connection:
    def __init__(
        self,
        services: Services,
        socket: _Socket,
        transport: asyncio.BaseTransport | None,
        principal: Principal | None,
    ) -> None:
        self.services = services
        self.transport = transport if isinstance(transport, asyncio.WriteTransport) else None
        self.metrics = services.metrics
        self.socket = socket
        self.session = Session("ws", services.auth, services.routing, principal=principal)
        self.streams: dict[Any, _Stream] = {}
        self.requests: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def send(self, text: str) -> None:
        if not self.socket.closed:
            with contextlib.suppress(ConnectionResetError):
                await self.socket.send_str(text)

    async def serve(self) -> None:
        pinger = self.services.tasks.spawn(self._ping(), "kilndb-ws-ping")
        try:
            while True:
                try:
                    message = await self.socket.receive(timeout=SILENCE_SECONDS)
                except TimeoutError:
                    self.metrics.event("websocket_silent", seconds=SILENCE_SECONDS)
                    break
                if message.type == WSMsgType.TEXT:
                    if not await self._on_text(message.data):
                        break
                elif message.type == WSMsgType.BINARY:
                    self.metrics.count("errors_total")
                    await self.send(_error(InvalidArgumentError("send text messages"), None))
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    break
        finally:
            pinger.cancel()
            current = asyncio.current_task()
            await self._end(going_away=current is not None and current.cancelling() > 0)

    async def _ping(self) -> None:
        while not self.socket.closed:
            await asyncio.sleep(PING_SECONDS)
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await self.socket.ping()

    async def _on_text(self, text: str) -> bool:
        """Handle one message; False ends the connection."""
        self.metrics.count("requests_total")
        parsed = parse_request(text.encode())
        if isinstance(parsed, BadRequest):
            self.metrics.count("errors_total")
            await self.send(_error(parsed.error, parsed.request_id))
            return True
        step = self.session.receive(parsed)
        request_id = parsed.request_id
        if isinstance(step, Execute):
            await self.slots.acquire()
            task = asyncio.get_running_loop().create_task(self._request(step.request))
            self.requests.add(task)
            task.add_done_callback(self.requests.discard)
        elif isinstance(step, Answer):
            await self.send(_reply(request_id, **step.fields))
        elif isinstance(step, Refuse):
            self.metrics.count("errors_total")
            self.metrics.event("request_error", op=parsed.op, error_code=step.error.error_code)
            await self.send(_error(step.error, request_id))
        elif isinstance(step, Close):
            await self.send(_reply(request_id))
            return False
        elif isinstance(step, Open):
            await self._open(step.request, step.name)
        elif isinstance(step, Unsubscribe):
            await self._close_stream(step.name)
            await self.send(_reply(request_id, subscription=step.name))
        return True

    async def _request(self, request: Request) -> None:
        try:
            result = await self.services.runner.run(request)
            await self.send(_reply(request.request_id, **result))
        except KilnError as exc:
            await self.send(_error(exc, request.request_id))
        finally:
            self.slots.release()

    async def _open(self, request: Request, name: Any) -> None:
        services = self.services
        params = request.params
        outbox = Outbox(services.loop, services.config.max_subscriber_buffer, self._held)
        stream = _Stream(outbox)
        stream.channel = channel = new_channel(params["channel"])
        try:
            db = services.databases.get(request.database or "default", create=False)
            if request.op == "subscribe":
                after = changefeed_start(db, params["stores"], params["after"])
                fields: dict[str, Any] = {"position": after}
                stream.feed = changefeed(outbox, params["stores"], after)
            else:
                stream.status = db.space(params["space"]).subscribe_status(
                    params["segment"], params["heartbeat"], channel=channel
                )
                fields = {
                    "space": stream.status.space,
                    "segment": stream.status.segment,
                    "heartbeat": stream.status.heartbeat,
                }
        except KilnError as exc:
            self.session.ended(name)
            self.metrics.count("errors_total")
            await self.send(_error(exc, name))
            return
        await self.send(_reply(name, subscription=name, channel_id=channel, **fields))
        self.streams[name] = stream
        tasks = services.tasks
        if stream.feed is not None:
            services.fanout.attach(db, stream.feed)
        else:
            assert stream.status is not None
            producer = pump_status(stream.status, outbox, services.executor)
            stream.tasks.append(tasks.spawn(producer, "kilndb-ws-status"))
        stream.tasks.append(tasks.spawn(self._push(name, outbox), "kilndb-ws-push"))
        self.metrics.count("subscriptions_total")
        self.metrics.http_stream(True)
        self.metrics.event(
            "subscription_opened", transport="websocket", op=request.op, channel_id=channel
        )
        log.debug("websocket %s stream opened", request.op, extra={"channel_id": channel})

    def _held(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def _push(self, name: Any, outbox: Outbox) -> None:
        """Each event frame of the stream as a message naming its subscription."""
        decoder = FrameDecoder()
        prefix = b'{"subscription":' + orjson.dumps(name) + b","
        while (data := await outbox.take()) is not None:
            for body in event_bodies(decoder, data):
                # {"event": …, …} with the subscription's name added, without decoding.
                await self.send((prefix + body[1:]).decode())
        await self._ended(name, outbox)

    async def _ended(self, name: Any, outbox: Outbox) -> None:
        """A stream ended by itself (overflow, its database closed): say so."""
        error = outbox.error
        if error is not None and (stream := self.streams.pop(name, None)) is not None:
            self.session.ended(name)
            self.metrics.http_stream(False)
            overflow = error.error_code == "subscriber_overflow"
            kind = "subscriber_overflow" if overflow else "subscription_ended"
            self.metrics.event(kind, transport="websocket", channel_id=stream.channel)
            log.info("stream ended: %s", error.message, extra={"channel_id": stream.channel})
            await self.send(_error(error, name))

    async def _close_stream(self, name: Any) -> None:
        stream = self.streams.pop(name, None)
        if stream is None:
            return
        self.metrics.http_stream(False)
        if stream.feed is not None:
            self.services.fanout.detach(stream.feed)
        if stream.status is not None:
            stream.status.close()
        stream.outbox.end()
        current = asyncio.current_task()
        for task in stream.tasks:
            if task is not current:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _end(self, going_away: bool = False) -> None:
        names = list(self.streams)
        for name in names:
            await self._close_stream(name)
        if names:
            self.metrics.event("subscription_closed", transport="websocket")
        for task in list(self.requests):
            with contextlib.suppress(asyncio.CancelledError, KilnError):
                await task
        code = WSCloseCode.GOING_AWAY if going_away else WSCloseCode.OK
        await self.socket.close(code=code)


def websocket_handler(
    services: Services, principal_of: Callable[[web.Request], Principal | None]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The ``/v1/ws`` handler; ``principal_of`` reads the upgrade request's bearer token
    (None: none sent)."""

    async def websocket(http: web.Request) -> web.StreamResponse:
        try:
            principal = principal_of(http)
        except KilnError as exc:  # a bad token in the header: refused before upgrading
            services.metrics.count("errors_total")
            return web.Response(
                body=orjson.dumps(exc.to_wire()),
                status=exc.http_status,
                content_type="application/json",
            )
        socket = _Socket(services.config.max_frame_bytes)
        await socket.prepare(http)
        # Served by a task of the server, so that a stopping server ends it (closing the
        # socket with 1001, going away) instead of waiting for the client.
        connection = _Connection(services, socket, http.transport, principal)
        serving = services.tasks.spawn(connection.serve(), "kilndb-ws")
        try:
            await serving
        except asyncio.CancelledError:
            serving.cancel()
        return socket

    return websocket

"""``GET /v1/ws``: the op JSON messages over WebSocket, many at once on one connection.

Each text message is one op envelope (as on the socket protocol). Requests run
concurrently — at most ``MAX_IN_FLIGHT`` per connection — and each reply carries the
request's ``request_id``, so a client tags its requests and matches the replies in any
order. ``subscribe`` and ``subscribe_status`` open a subscription named by their
``request_id`` (required): after its ``ok`` reply, its pushed messages carry
``"subscription": <request_id>``; ``unsubscribe {subscription}`` ends one, ``close`` ends
the connection. The server pings every 30 s and drops a client it has not heard from
(pongs included) for 90 s. A message over the server's ``max_frame_bytes`` gets a
``frame_too_large`` error message, then the connection is closed with code 1009 (Message
Too Big): WebSocket has no way to skip the rest of a message and go on.

With authentication on, the token comes in the ``Authorization: Bearer`` header of the
upgrade request or in a first ``hello {token}`` message; until then only ``hello``,
``ping`` and ``close`` are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from kilndb.errors import (
    AuthenticationError,
    FrameTooLargeError,
    InvalidArgumentError,
    KilnError,
    ProtocolError,
    UnavailableError,
)
from kilndb.protocol import PROTOCOL_VERSION, BadRequest, Request, parse_request
from kilndb.server.auth import Principal

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from kilndb.server.sockets import Server

__all__ = [
    "MAX_IN_FLIGHT",
    "MAX_SUBSCRIPTIONS",
    "PING_SECONDS",
    "SILENCE_SECONDS",
    "websocket_handler",
]

PING_SECONDS = 30.0
SILENCE_SECONDS = 90.0
MAX_IN_FLIGHT = 256
#: Subscriptions one WebSocket connection may hold at once.
MAX_SUBSCRIPTIONS = 64


_ENDS = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


def _dumps(body: dict[str, Any]) -> str:
    return orjson.dumps(body).decode()


def _error(error: KilnError, request_id: Any) -> str:
    body = error.to_wire()
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


class _Session:
    def __init__(
        self,
        server: Server,
        socket: web.WebSocketResponse,
        run: Callable[[Request, str], Awaitable[dict[str, Any]]],
        principal: Principal | None,
    ) -> None:
        self.server = server
        self.socket = socket
        self.run = run
        self.principal = principal
        self.database = "default"
        self.subscriptions: dict[Any, tuple[Any, asyncio.Task[None]]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def send(self, text: str) -> None:
        if not self.socket.closed:
            with contextlib.suppress(ConnectionResetError):
                await self.socket.send_str(text)

    async def serve(self) -> None:
        pinger = asyncio.get_running_loop().create_task(self._ping())
        try:
            while True:
                try:
                    message = await self.socket.receive(timeout=SILENCE_SECONDS)
                except TimeoutError:
                    self.server.event("websocket_silent", seconds=SILENCE_SECONDS)
                    break
                if message.type == WSMsgType.TEXT:
                    if not await self._on_text(message.data):
                        break
                elif message.type == WSMsgType.BINARY:
                    await self.send(_error(InvalidArgumentError("send text messages"), None))
                elif (
                    message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
                    or message.type == WSMsgType.ERROR
                ):
                    break
        finally:
            pinger.cancel()
            await self._end()

    async def _ping(self) -> None:
        while not self.socket.closed:
            await asyncio.sleep(PING_SECONDS)
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await self.socket.ping()

    async def _on_text(self, text: str) -> bool:
        """Handle one message; False ends the connection."""
        self.server.count("requests_total")
        parsed = parse_request(text.encode())
        if isinstance(parsed, BadRequest):
            self.server.count("errors_total")
            await self.send(_error(parsed.error, parsed.request_id))
            return True
        op, request_id = parsed.op, parsed.request_id
        if op == "close":
            return False
        if op == "ping":
            await self.send(_dumps(_reply(request_id, pong=True)))
            return True
        if op == "hello":
            await self._hello(parsed)
            return True
        database = parsed.database or self.database
        try:
            if self.principal is None:
                raise AuthenticationError("authenticate first: hello {token}")
            self.principal.check(op, None if op == "remove_database" else database)
        except KilnError as exc:
            self.server.count("errors_total")
            await self.send(_error(exc, request_id))
            return True
        if op == "unsubscribe":
            await self._unsubscribe(parsed)
        elif op in ("subscribe", "subscribe_status"):
            await self._subscribe(parsed, database)
        elif op == "server_status":
            await self.send(_dumps(_reply(request_id, **self.server.status())))
        else:
            await self.slots.acquire()
            task = asyncio.get_running_loop().create_task(self._request(parsed, database))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return True

    async def _request(self, request: Request, database: str) -> None:
        try:
            result = await self.run(request, database)
            await self.send(_dumps(_reply(request.request_id, **result)))
        except KilnError as exc:
            await self.send(_error(exc, request.request_id))
        finally:
            self.slots.release()

    async def _hello(self, request: Request) -> None:
        params = request.params
        try:
            version = params["protocol_version"]
            if version is not None and version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"protocol version {version} is not supported; this server speaks"
                    f" {PROTOCOL_VERSION}"
                )
            if params["token"] is not None:
                self.principal = self.server.auth.verify(params["token"])
            elif self.principal is None:
                raise AuthenticationError("a token is required: hello {token}")
        except KilnError as exc:
            self.server.count("errors_total")
            await self.send(_error(exc, request.request_id))
            return
        if params["database"] is not None:
            self.database = params["database"]
        await self.send(_dumps(_reply(request.request_id, database=self.database)))

    async def _subscribe(self, request: Request, database: str) -> None:
        name = request.request_id
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            full = UnavailableError(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
            await self.send(_error(full, name))
            return
        if name is None or name in self.subscriptions:
            error = InvalidArgumentError(
                "a subscription needs a request_id of its own to name it"
                if name is None
                else f"subscription {name!r} exists already"
            )
            await self.send(_error(error, name))
            return
        params = request.params
        fields: dict[str, Any]
        try:
            db = self.server.databases.get(database, create=False)
            if request.op == "subscribe":
                after = params["after"]
                if after is None:
                    after = db.stats()["durable_position"]
                source: Any = db.subscribe(params["stores"], after)
                fields = {"position": after}
            else:
                source = db.space(params["space"]).subscribe_status(
                    params["segment"], params["heartbeat"]
                )
                fields = {"space": source.space, "segment": source.segment}
        except KilnError as exc:
            await self.send(_error(exc, name))
            return
        await self.send(_dumps(_reply(name, subscription=name, **fields)))
        self.server.count("subscriptions_total")
        self.server.event("subscription_opened", transport="websocket", op=request.op)
        pump = asyncio.get_running_loop().create_task(self._pump(name, source, request.op))
        self.subscriptions[name] = (source, pump)

    async def _pump(self, name: Any, source: Any, op: str) -> None:
        loop = asyncio.get_running_loop()
        executor = self.server.executor
        ready = asyncio.Event()
        if op == "subscribe":
            # An idle changefeed holds no thread: the log wakes it through the loop.
            source.watch(functools.partial(loop.call_soon_threadsafe, ready.set))
        try:
            while not self.socket.closed and not source.closed:
                if op == "subscribe":
                    ready.clear()
                    facts = await loop.run_in_executor(executor, source.get_batch, 256, 0)
                    for fact in facts:
                        event = {"event": "fact_written", "subscription": name}
                        await self.send(_dumps({**event, "fact": fact.to_dict()}))
                    if not facts:
                        # The timeout re-checks the socket now and then.
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(ready.wait(), 1.0)
                else:
                    message = await loop.run_in_executor(executor, source.get, 1.0)
                    if message is not None:
                        event = {"event": "segment_status", "subscription": name}
                        await self.send(_dumps({**event, **message}))
        finally:
            source.close()

    async def _unsubscribe(self, request: Request) -> None:
        name = request.params["subscription"]
        found = self.subscriptions.pop(name, None)
        if found is None:
            error = InvalidArgumentError(f"no subscription {name!r}")
            await self.send(_error(error, request.request_id))
            return
        source, pump = found
        source.close()
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        await self.send(_dumps(_reply(request.request_id, subscription=name)))

    async def _end(self) -> None:
        for source, pump in self.subscriptions.values():
            source.close()
            pump.cancel()
        for _, pump in self.subscriptions.values():
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if self.subscriptions:
            self.server.event("subscription_closed", transport="websocket")
        self.subscriptions.clear()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, KilnError):
                await task
        await self.socket.close()


def _reply(request_id: Any, **fields: Any) -> dict[str, Any]:
    body = {"ok": True, **fields}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def websocket_handler(
    server: Server,
    run: Callable[[Request, str], Awaitable[dict[str, Any]]],
    principal_of: Callable[[web.Request], Principal | None],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The ``/v1/ws`` handler of ``server``; ``run`` executes one request and
    ``principal_of`` reads the upgrade request's bearer token (None: none sent)."""

    async def websocket(http: web.Request) -> web.StreamResponse:
        try:
            principal = principal_of(http)
        except KilnError as exc:  # a bad token in the header: refused before upgrading
            server.count("errors_total")
            return web.Response(
                body=orjson.dumps(exc.to_wire()),
                status=exc.http_status,
                content_type="application/json",
            )
        socket = _Socket(server.config.max_frame_bytes)
        await socket.prepare(http)
        await _Session(server, socket, run, principal).serve()
        return socket

    return websocket

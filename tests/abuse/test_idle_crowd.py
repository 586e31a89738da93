"""700 idle subscribers — 300 SSE streams, 200 WebSocket and 200 TCP subscriptions —
open on one server while REST, TCP, Unix-socket and WebSocket clients read and write:
every request is served, every subscriber still gets the next fact of its store, a
SIGTERM drain ends every stream, and each acknowledged write is there after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest

import kilndb
from tests.abuse.clients import (
    FrameSocket,
    next_sse_event,
    open_sse,
    open_tcp_subscriber,
    open_ws_subscriber,
)
from tests.abuse.live import DEADLINE_SECONDS, Ledger, LiveServer, cleanup

pytestmark = pytest.mark.integration

SSE, WEBSOCKET, TCP = 300, 200, 200
#: The store every idle subscriber follows; nobody writes it until the end.
QUIET = "quiet"
#: Writes of each kind of client while the crowd is open.
WRITES = 40

_T = TypeVar("_T")


async def gather_in_batches(count: int, make: Callable[[int], Awaitable[_T]]) -> list[_T]:
    """``make(i)`` for i < count, 50 at a time (a burst of 700 connects would overflow
    the listen backlog and wait for SYN retries)."""
    made: list[_T] = []
    for start in range(0, count, 50):
        made += await asyncio.gather(*(make(i) for i in range(start, min(count, start + 50))))
    return made


class Crowd:
    """The idle subscribers of one server."""

    def __init__(self, server: LiveServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.sse: list[aiohttp.ClientResponse] = []
        self.websockets: list[aiohttp.ClientWebSocketResponse] = []
        self.tcp: list[FrameSocket] = []

    async def open(self) -> None:
        http, address = self.server.http_url, self.server.tcp_address
        self.sse = await gather_in_batches(SSE, lambda i: open_sse(self.session, http, QUIET))
        self.websockets = await gather_in_batches(
            WEBSOCKET, lambda i: open_ws_subscriber(self.session, http, QUIET, f"idle-{i}")
        )
        self.tcp = await gather_in_batches(TCP, lambda i: open_tcp_subscriber(address, QUIET))

    async def each_gets(self, key: str) -> None:
        """Every subscriber receives the fact just written to ``key`` of the quiet store."""

        async def sse(response: aiohttp.ClientResponse) -> None:
            fact = await next_sse_event(response)
            assert (fact["store"], fact["key"]) == (QUIET, key)

        async def websocket(ws: aiohttp.ClientWebSocketResponse, i: int) -> None:
            event = orjson.loads(await asyncio.wait_for(ws.receive_str(), DEADLINE_SECONDS))
            assert event["event"] == "fact_written" and event["subscription"] == f"idle-{i}"
            assert event["fact"]["key"] == key

        async def tcp(conn: FrameSocket) -> None:
            event = await conn.receive()
            assert event is not None and event["event"] == "fact_written", event
            assert event["fact"]["key"] == key

        await asyncio.gather(
            *(sse(response) for response in self.sse),
            *(websocket(ws, i) for i, ws in enumerate(self.websockets)),
            *(tcp(conn) for conn in self.tcp),
        )

    async def each_ends(self) -> None:
        """Every stream ends (the server is draining): EOF, a close, an error frame."""

        async def sse(response: aiohttp.ClientResponse) -> None:
            while await asyncio.wait_for(response.content.readline(), DEADLINE_SECONDS):
                pass

        async def websocket(ws: aiohttp.ClientWebSocketResponse) -> None:
            while True:
                message = await asyncio.wait_for(ws.receive(), DEADLINE_SECONDS)
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    return
                assert message.type != aiohttp.WSMsgType.ERROR, message

        async def tcp(conn: FrameSocket) -> None:
            while (event := await conn.receive()) is not None:
                assert "fact" not in event, event  # nothing was written to the store
            await conn.close()

        await asyncio.gather(
            *(sse(response) for response in self.sse),
            *(websocket(ws) for ws in self.websockets),
            *(tcp(conn) for conn in self.tcp),
        )
        for response in self.sse:
            response.release()


async def traffic(server: LiveServer, session: aiohttp.ClientSession, ledger: Ledger) -> None:
    """REST, TCP (client library and raw pipelined frames), Unix socket and WebSocket
    clients write and read back, all at once."""

    async def rest() -> None:
        for i in range(WRITES):
            url = f"{server.http_url}/v1/db/default/stores/rest/keys/r{i}"
            async with session.put(url, json={"i": i}) as response:
                assert response.status == 200, await response.text()
            ledger.acknowledged("rest", f"r{i}", {"i": i})
            async with session.get(url) as response:
                assert response.status == 200 and (await response.json())["value"] == {"i": i}

    def library(url: str, store: str) -> None:
        with kilndb.connect(url, timeout=DEADLINE_SECONDS) as db:
            for i in range(WRITES):
                db.store(store).write(f"k{i}", [store, i])
                ledger.acknowledged(store, f"k{i}", [store, i])
                fact = db.store(store).read(f"k{i}")
                assert fact is not None and fact.value == [store, i]

    async def pipelined() -> None:
        conn = await FrameSocket.tcp(server.tcp_address)
        for i in range(WRITES):
            write = {"op": "write", "store": "raw", "key": f"p{i}", "value": i, "request_id": i}
            await conn.send_json(write)
        for i in range(WRITES):
            reply = await conn.receive()
            assert reply is not None and reply["ok"] and reply["request_id"] == i, reply
            ledger.acknowledged("raw", f"p{i}", i)
        await conn.close()

    async def websocket() -> None:
        async with session.ws_connect(f"{server.http_url}/v1/ws") as ws:
            for i in range(WRITES):
                write = {"op": "write", "store": "ws", "key": f"w{i}", "value": i, "request_id": i}
                await ws.send_str(orjson.dumps(write).decode())
            replies: dict[Any, Any] = {}
            while len(replies) < WRITES:
                reply = orjson.loads(await asyncio.wait_for(ws.receive_str(), DEADLINE_SECONDS))
                replies[reply["request_id"]] = reply
            for i, reply in replies.items():
                assert reply["ok"], reply
                ledger.acknowledged("ws", f"w{i}", i)
            await ws.send_str(orjson.dumps({"op": "read", "store": "ws", "key": "w0"}).decode())
            read = orjson.loads(await asyncio.wait_for(ws.receive_str(), DEADLINE_SECONDS))
            assert read["ok"] and read["fact"]["value"] == 0, read

    await asyncio.gather(
        rest(),
        asyncio.to_thread(library, server.tcp_url, "tcp"),
        asyncio.to_thread(library, server.unix_url, "unix"),
        pipelined(),
        websocket(),
    )


async def crowd_traffic_and_drain(server: LiveServer, ledger: Ledger) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=DEADLINE_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        crowd = Crowd(server, session)
        await crowd.open()
        await traffic(server, session, ledger)
        # The crowd is still being served: the next fact of its store reaches every one.
        async with session.put(
            f"{server.http_url}/v1/db/default/stores/{QUIET}/keys/wake", json="up"
        ) as response:
            assert response.status == 200
        ledger.acknowledged(QUIET, "wake", "up")
        await crowd.each_gets("wake")
        # SIGTERM with the SSE and TCP crowd still open: the drain ends every stream and
        # exits 0. The WebSockets close first: an open one holds up the drain (see
        # test_sigterm_closes_an_open_websocket).
        await asyncio.gather(*(ws.close() for ws in crowd.websockets))
        crowd.websockets.clear()
        stopped = asyncio.create_task(asyncio.to_thread(server.stop))
        await crowd.each_ends()
        assert await stopped == 0


def test_700_idle_subscribers_while_every_transport_reads_and_writes(
    tmp_path: Path, sock_dir: Path
) -> None:
    server = LiveServer(tmp_path / "data", unix=sock_dir / "crowd.sock").start()
    ledger = Ledger()
    try:
        asyncio.run(crowd_traffic_and_drain(server, ledger))
        assert len(ledger) == 5 * WRITES + 1
        server.start()  # the same data directory
        assert ledger.missing(server.tcp_url) == []
        assert ledger.missing(server.unix_url) == []
    finally:
        cleanup(server)


async def websocket_across_sigterm(server: LiveServer) -> tuple[int | None, int | None]:
    """Open a WebSocket with a subscription, SIGTERM the server; the close code the
    client got and the server's exit status (None: not within the deadline). The
    client keeps its end open until both are known."""
    async with aiohttp.ClientSession() as session:
        ws = await open_ws_subscriber(session, server.http_url, QUIET, "sub")
        process = server.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        code = None
        with contextlib.suppress(TimeoutError):
            message = await asyncio.wait_for(ws.receive(), DRAINED_WITHIN)
            if message.type == aiohttp.WSMsgType.CLOSE:
                code = int(message.data)
        if code is None:
            await ws.close()
            return None, None
        try:
            status: int | None = await asyncio.to_thread(process.wait, DRAINED_WITHIN)
        except subprocess.TimeoutExpired:
            status = None
        await ws.close()
    return code, status


#: The server below drains for at most 1 s; this leaves it plenty more.
DRAINED_WITHIN = 5.0


def test_sigterm_closes_an_open_websocket(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", "--drain-timeout", "1").start()
    try:
        code, status = asyncio.run(websocket_across_sigterm(server))
        assert code in (1000, 1001)  # normal closure or going away
        assert status == 0
    finally:
        cleanup(server)

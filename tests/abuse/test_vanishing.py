"""Clients that vanish mid-frame — half a frame header, half a body, all but the CRC,
half an HTTP request or body, half a WebSocket upgrade, frame header or message — with a
FIN or with an RST: nothing of the partial request is applied, the server lets the
connection go, every other client is served, and nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest

import kilndb
from kilndb.codec import encode_frame
from tests.abuse.clients import (
    FrameSocket,
    close_stream,
    http_request,
    reset,
    run,
    ws_frame,
    ws_upgrade,
    ws_upgrade_request,
)
from tests.abuse.live import DEADLINE_SECONDS, Ledger, LiveServer

pytestmark = pytest.mark.integration

STORE = "vanish"
Opener = Callable[[LiveServer], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def tcp(server: LiveServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*server.tcp_address)


async def http(server: LiveServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*server.http_address)


async def websocket(server: LiveServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await ws_upgrade(server.http_address)


def tcp_write(key: str) -> bytes:
    body = orjson.dumps({"op": "write", "store": STORE, "key": key, "value": "x" * 1000})
    return encode_frame(body)


def http_put(key: str) -> bytes:
    return http_request(
        "PUT", f"/v1/db/default/stores/{STORE}/keys/{key}", b'"' + b"x" * 1000 + b'"'
    )


def ws_write(key: str) -> bytes:
    return ws_frame(orjson.dumps({"op": "write", "store": STORE, "key": key, "value": "x" * 1000}))


#: name → (how to connect, the request's bytes for a key, how many of them are sent).
CUTS: dict[str, tuple[Opener, Callable[[str], bytes], Callable[[bytes], int]]] = {
    "tcp-half-header": (tcp, tcp_write, lambda data: 2),
    "tcp-half-body": (tcp, tcp_write, lambda data: len(data) // 2),
    "tcp-all-but-crc": (tcp, tcp_write, lambda data: len(data) - 4),
    "http-half-request-line": (http, http_put, lambda data: 10),
    "http-half-headers": (http, http_put, lambda data: data.index(b"Host") + 8),
    "http-half-body": (http, http_put, lambda data: len(data) - 500),
    "ws-half-frame-header": (websocket, ws_write, lambda data: 1),
    "ws-header-and-mask": (websocket, ws_write, lambda data: 8),
    "ws-half-message": (websocket, ws_write, lambda data: len(data) // 2),
}


async def vanish(server: LiveServer, name: str, how: str) -> None:
    opener, request, cut = CUTS[name]
    _, writer = await opener(server)
    data = request(f"{name}-{how}")
    writer.write(data[: cut(data)])
    await writer.drain()
    if how == "rst":
        reset(writer)
    await close_stream(writer)


async def half_upgrade(server: LiveServer, how: str) -> None:
    _, writer = await http(server)
    upgrade = ws_upgrade_request()
    writer.write(upgrade[: len(upgrade) // 2])
    await writer.drain()
    if how == "rst":
        reset(writer)
    await close_stream(writer)


async def others_are_served(server: LiveServer, ledger: Ledger, key: str) -> None:
    """A raw TCP write, a REST write and a WebSocket write, each acknowledged."""
    conn = await FrameSocket.tcp(server.tcp_address)
    assert (await conn.call({"op": "write", "store": "tcp", "key": key, "value": key}))["ok"]
    ledger.acknowledged("tcp", key, key)
    await conn.close()
    async with aiohttp.ClientSession() as session:
        url = f"{server.http_url}/v1/db/default/stores/rest/keys/{key}"
        async with session.put(url, json=key) as response:
            assert response.status == 200
        ledger.acknowledged("rest", key, key)
        async with session.ws_connect(f"{server.http_url}/v1/ws") as ws:
            write = {"op": "write", "store": "ws", "key": key, "value": key}
            await ws.send_str(orjson.dumps(write).decode())
            reply = orjson.loads(await asyncio.wait_for(ws.receive_str(), DEADLINE_SECONDS))
            assert reply["ok"], reply
        ledger.acknowledged("ws", key, key)


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("name", [*CUTS, "ws-half-upgrade"])
def test_a_client_that_vanishes_mid_frame_leaves_nothing_behind(
    live: LiveServer, name: str, how: str
) -> None:
    ledger = Ledger()
    connections = live.metric("active_connections")
    if name == "ws-half-upgrade":
        run(half_upgrade(live, how))
    else:
        run(vanish(live, name, how))
    run(others_are_served(live, ledger, f"after-{name}-{how}"))
    live.wait_for_metric("active_connections", connections)  # the TCP ones let go
    assert ledger.missing(live.tcp_url) == []
    with kilndb.connect(live.tcp_url) as db:  # nothing of the partial request applied
        assert db.store(STORE).read(f"{name}-{how}") is None
    assert live.alive()


async def whole_then_gone(server: LiveServer) -> None:
    """A write sent whole, then FIN before its reply is read."""
    _, writer = await tcp(server)
    writer.write(tcp_write("whole"))
    await writer.drain()
    await close_stream(writer)


def test_a_write_received_whole_is_applied_though_its_client_is_gone(live: LiveServer) -> None:
    run(whole_then_gone(live))
    deadline = time.monotonic() + DEADLINE_SECONDS
    with kilndb.connect(live.tcp_url) as db:
        while db.store(STORE).read("whole") is None:
            assert time.monotonic() < deadline, "a write received whole was never applied"
            time.sleep(0.02)

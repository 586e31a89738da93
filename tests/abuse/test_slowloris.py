"""Clients that send one byte a second (slowloris) on TCP, HTTP and WebSocket: while
each holds a partial request, every other client is served; once the rest arrives, the
slow request is answered too, as long as it finishes within the server's
``--frame-timeout``; one that does not is closed with ``protocol_error`` and its slot
freed (docs/cli.md, "Misbehaving clients", says what each transport does)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest

from kilndb.codec import encode_frame
from tests.abuse.clients import (
    FrameSocket,
    close_stream,
    http_request,
    read_http_response,
    read_ws_frame,
    run,
    ws_frame,
    ws_upgrade,
)
from tests.abuse.live import DEADLINE_SECONDS, Ledger, LiveServer, cleanup

pytestmark = pytest.mark.integration

#: Bytes each slow client sends one a second before sending the rest at once.
TRICKLED = 4


async def trickle(writer: asyncio.StreamWriter, data: bytes, trickled: asyncio.Event) -> None:
    """The first TRICKLED bytes of ``data`` one a second, then the rest."""
    for i in range(TRICKLED):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(1.0)  # the slowloris's pace, not a wait for the server
    trickled.set()
    writer.write(data[TRICKLED:])
    await writer.drain()


async def slow_tcp(server: LiveServer, ledger: Ledger, trickled: asyncio.Event) -> None:
    conn = await FrameSocket.tcp(server.tcp_address)
    write = {"op": "write", "store": "slow", "key": "tcp", "value": 1, "request_id": "slow"}
    await trickle(conn.writer, encode_frame(orjson.dumps(write)), trickled)
    reply = await conn.receive()
    assert reply is not None and reply["ok"] and reply["request_id"] == "slow", reply
    ledger.acknowledged("slow", "tcp", 1)
    await conn.close()


async def slow_http(server: LiveServer, ledger: Ledger, trickled: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(*server.http_address)
    put = http_request("PUT", "/v1/db/default/stores/slow/keys/http", b"2")
    await trickle(writer, put, trickled)
    status, _, body = await read_http_response(reader)
    assert status == 200 and orjson.loads(body)["value"] == 2, body
    ledger.acknowledged("slow", "http", 2)
    await close_stream(writer)


async def slow_websocket(server: LiveServer, ledger: Ledger, trickled: asyncio.Event) -> None:
    reader, writer = await ws_upgrade(server.http_address)
    write = {"op": "write", "store": "slow", "key": "ws", "value": 3, "request_id": "slow"}
    await trickle(writer, ws_frame(orjson.dumps(write)), trickled)
    opcode, payload = await read_ws_frame(reader)
    reply = orjson.loads(payload)
    assert opcode == 1 and reply["ok"] and reply["request_id"] == "slow", reply
    ledger.acknowledged("slow", "ws", 3)
    await close_stream(writer)


async def others_meanwhile(server: LiveServer, ledger: Ledger, done: list[asyncio.Event]) -> int:
    """Rounds of a TCP write, a REST write and a WebSocket write, one after the other,
    until every slow client has trickled its bytes; the number of rounds."""
    rounds = 0
    conn = await FrameSocket.tcp(server.tcp_address)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{server.http_url}/v1/ws")
        while not all(event.is_set() for event in done):
            key = f"r{rounds}"
            write = {"op": "write", "store": "tcp", "key": key, "value": rounds}
            assert (await conn.call(write))["ok"]
            ledger.acknowledged("tcp", key, rounds)
            url = f"{server.http_url}/v1/db/default/stores/rest/keys/{key}"
            async with session.put(url, json=rounds) as response:
                assert response.status == 200
            ledger.acknowledged("rest", key, rounds)
            await ws.send_str(orjson.dumps({**write, "store": "ws"}).decode())
            reply = orjson.loads(await asyncio.wait_for(ws.receive_str(), DEADLINE_SECONDS))
            assert reply["ok"], reply
            ledger.acknowledged("ws", key, rounds)
            rounds += 1
        await ws.close()
    await conn.close()
    return rounds


async def slowloris(server: LiveServer, ledger: Ledger) -> int:
    done = [asyncio.Event() for _ in range(3)]
    *_, rounds = await asyncio.gather(
        slow_tcp(server, ledger, done[0]),
        slow_http(server, ledger, done[1]),
        slow_websocket(server, ledger, done[2]),
        others_meanwhile(server, ledger, done),
    )
    return rounds


def test_one_byte_a_second_on_tcp_http_and_websocket_holds_up_nobody(live: LiveServer) -> None:
    ledger = Ledger()
    rounds = run(slowloris(live, ledger))
    assert rounds >= 1
    assert len(ledger) == 3 + 3 * rounds
    assert ledger.missing(live.tcp_url) == []


#: The connection cap of the server below.
CAP = 3


async def slots_held(server: LiveServer) -> None:
    stalled = []
    for _ in range(CAP):  # each sends half a frame header and stops
        conn = await FrameSocket.tcp(server.tcp_address)
        await conn.send(b"\x00\x00")
        stalled.append(conn)
    server.wait_for_metric("active_connections", CAP)
    # One more TCP client is refused while the stalled ones hold every slot...
    refused = await FrameSocket.tcp(server.tcp_address)
    error = await refused.receive()
    assert error is not None and error["error_code"] == "unavailable", error
    assert await refused.receive() is None
    await refused.close()
    # ... HTTP is not capped by them ...
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.http_url}/v1/health") as response,
    ):
        assert response.status == 200
    # ... and a slot is free again once a stalled client finishes its frame and leaves.
    first = stalled.pop(0)
    assert (await first.call_raw(encode_frame(b'{"op": "ping"}')[2:]))["pong"]
    await first.close()
    server.wait_for_metric("active_connections", CAP - 1)
    served = await FrameSocket.tcp(server.tcp_address)
    assert (await served.call({"op": "ping"}))["pong"]
    for conn in [served, *stalled]:
        await conn.close()


def test_stalled_tcp_clients_hold_their_connection_slots(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", "--max-connections", str(CAP)).start()
    try:
        run(slots_held(server))
    finally:
        cleanup(server)


async def stalled_past_the_frame_timeout(server: LiveServer) -> None:
    stalled = await FrameSocket.tcp(server.tcp_address)
    await stalled.send(encode_frame(b'{"op": "ping"}')[:5])  # a header and a byte of body
    server.wait_for_metric("active_connections", 1)
    error = await stalled.receive()  # within the timeout, long before DEADLINE_SECONDS
    assert error is not None and error["error_code"] == "protocol_error", error
    assert "not finished within 1 s" in error["error"]
    assert await stalled.receive() is None  # then closed: its slot is free
    await stalled.close()
    server.wait_for_metric("active_connections", 0)
    # A client that finishes its frames in time is not affected, however long it idles.
    patient = await FrameSocket.tcp(server.tcp_address)
    await asyncio.sleep(1.5)  # idle between frames: no frame is open
    assert (await patient.call({"op": "ping"}))["pong"]
    await patient.close()


def test_a_frame_not_finished_within_the_frame_timeout_closes_the_connection(
    tmp_path: Path,
) -> None:
    server = LiveServer(tmp_path / "data", "--frame-timeout", "1").start()
    try:
        run(stalled_past_the_frame_timeout(server))
    finally:
        cleanup(server)

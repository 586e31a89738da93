"""Readers that stop reading: a TCP subscriber and an SSE stream are cut off once the
server's ``max_subscriber_buffer`` (8 MiB; ``kiln serve`` has no option for it) piles up,
a WebSocket subscriber lags without holding anyone up, and a client that pipelines
requests without reading their replies is not buffered without bound. Meanwhile the
writer's every write is acknowledged, a healthy subscriber of the same store gets every
fact, and each acknowledged write reads back."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

import kilndb
from kilndb.codec import encode_frame
from tests.abuse.clients import (
    FrameSocket,
    close_stream,
    http_request,
    next_sse_event,
    open_sse,
    open_tcp_subscriber,
    read_http_response,
    read_ws_frame,
    run,
    ws_frame,
    ws_upgrade_request,
)
from tests.abuse.live import DEADLINE_SECONDS, Ledger, LiveServer

pytestmark = pytest.mark.integration

#: One write's value: 256 KiB of text.
PAD = "x" * (256 * 1024)
#: The server's max_subscriber_buffer (its default: kiln serve has no option for it).
SUBSCRIBER_BUFFER = 8 * 1024 * 1024


def kernel_send_buffer() -> int:
    """The most a server's socket may hold unsent (Linux autotunes up to tcp_wmem's max)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024


#: Writes that overflow a slow reader for sure: its buffer, the kernel's, then as much
#: again (an SSE stream shows no sign when it is cut, so it is sent this many).
OVERFLOWING_WRITES = 2 * (SUBSCRIBER_BUFFER + kernel_send_buffer()) // len(PAD)
#: Writes a slow reader is sent at most.
MAX_WRITES = 2 * OVERFLOWING_WRITES
#: A slow reader's receive buffer, so that its kernel holds little of what it leaves.
RCVBUF = 4096
#: The key written last, after the pads: a healthy reader stops at it.
END = "end"


def write_pads(
    server: LiveServer, ledger: Ledger, store: str, done: Callable[[], bool] = lambda: False
) -> int:
    """Write PAD to ``store`` (keys 0, 1, …) until ``done()`` or MAX_WRITES, then END;
    every write must be acknowledged. The number of pads written."""
    written = MAX_WRITES
    with kilndb.connect(server.tcp_url, timeout=DEADLINE_SECONDS) as db:
        for i in range(MAX_WRITES):
            db.store(store).write(str(i), PAD)
            ledger.acknowledged(store, str(i), PAD)
            if done():
                written = i + 1
                break
        db.store(store).write(END, None)
    ledger.acknowledged(store, END, None)
    return written


def consecutive(positions: list[int]) -> bool:
    return bool(positions) and positions == list(range(positions[0], positions[0] + len(positions)))


async def follow_tcp(conn: FrameSocket) -> list[str]:
    """A healthy TCP subscriber's keys up to END."""
    keys: list[str] = []
    while True:
        event = await conn.receive()
        assert event is not None and event.get("event") == "fact_written", event
        if event["fact"]["key"] == END:
            await conn.close()
            return keys
        keys.append(event["fact"]["key"])


async def slow_socket(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address)
    return sock


async def tcp_slow_subscriber(server: LiveServer, ledger: Ledger) -> None:
    slow = await FrameSocket.tcp(server.tcp_address, rcvbuf=RCVBUF)
    assert (await slow.call({"op": "subscribe", "stores": ["tcp-firehose"]}))["ok"]
    healthy = asyncio.create_task(
        follow_tcp(await open_tcp_subscriber(server.tcp_address, "tcp-firehose"))
    )
    subscribed = server.metric("subscription_count")

    def cut_off() -> bool:
        return server.metric("subscription_count") < subscribed

    written = await asyncio.to_thread(write_pads, server, ledger, "tcp-firehose", cut_off)
    assert cut_off(), f"{written} writes of 256 KiB never overflowed the slow subscriber"
    assert await healthy == [str(i) for i in range(written)]
    # The slow subscriber reads at last: facts in order, then the error, then EOF.
    positions = []
    while (message := await slow.receive()) is not None and "event" in message:
        positions.append(message["fact"]["position"])
    assert message is not None, "cut off without a subscriber_overflow error"
    assert message["error_code"] == "subscriber_overflow", message
    assert consecutive(positions) and len(positions) < written
    assert message["position"] == positions[-1]  # it resumes exactly there
    assert await slow.receive() is None
    await slow.close()


def test_a_tcp_subscriber_that_never_reads_is_cut_off_with_subscriber_overflow(
    live: LiveServer,
) -> None:
    ledger = Ledger()
    run(tcp_slow_subscriber(live, ledger))
    assert ledger.missing(live.tcp_url) == []


async def sse_slow_stream(server: LiveServer, ledger: Ledger) -> None:
    reader, writer = await asyncio.open_connection(sock=await slow_socket(server.http_address))
    writer.write(http_request("GET", "/v1/events?stores=sse-firehose"))
    await writer.drain()

    async def follow(response: aiohttp.ClientResponse) -> list[str]:
        keys = []
        while (key := (await next_sse_event(response))["key"]) != END:
            keys.append(key)
        response.release()
        return keys

    async with aiohttp.ClientSession() as session:
        healthy = asyncio.create_task(
            follow(await open_sse(session, server.http_url, "sse-firehose"))
        )

        def enough() -> bool:
            return len(ledger) >= OVERFLOWING_WRITES

        written = await asyncio.to_thread(write_pads, server, ledger, "sse-firehose", enough)
        assert await healthy == [str(i) for i in range(written)]
    # The slow stream reads at last: events in order, then the end of the response.
    status, _, body = await read_http_response(reader)
    assert status == 200
    ids = [int(line[4:]) for line in body.decode().splitlines() if line.startswith("id: ")]
    assert consecutive(ids) and len(ids) < written
    await close_stream(writer)


def test_an_sse_stream_that_never_reads_ends_once_its_buffer_is_full(live: LiveServer) -> None:
    ledger = Ledger()
    run(sse_slow_stream(live, ledger))
    assert ledger.missing(live.tcp_url) == []


async def websocket_slow_subscriber(server: LiveServer, ledger: Ledger) -> None:
    reader, writer = await asyncio.open_connection(sock=await slow_socket(server.http_address))
    writer.write(ws_upgrade_request())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_SECONDS)
    assert head.startswith(b"HTTP/1.1 101")
    subscribe = {"op": "subscribe", "stores": ["ws-firehose"], "request_id": "slow"}
    writer.write(ws_frame(orjson.dumps(subscribe)))
    await writer.drain()
    opcode, reply = await read_ws_frame(reader)
    assert opcode == 1 and orjson.loads(reply)["ok"], reply
    healthy = asyncio.create_task(
        follow_tcp(await open_tcp_subscriber(server.tcp_address, "ws-firehose"))
    )
    # The slow WebSocket never reads while MAX_WRITES pads are written to its store.
    written = await asyncio.to_thread(write_pads, server, ledger, "ws-firehose")
    assert await healthy == [str(i) for i in range(written)]
    # Reading at last, it gets its facts in order: all of them, or a prefix then an error.
    keys: list[str] = []
    while True:
        opcode, payload = await read_ws_frame(reader)
        assert opcode == 1, (opcode, payload)
        message = orjson.loads(payload)
        if "event" not in message:
            assert message["error_code"] == "subscriber_overflow", message
            break
        if message["fact"]["key"] == END:
            break
        keys.append(message["fact"]["key"])
    assert keys and keys == [str(i) for i in range(len(keys))]
    await close_stream(writer)


def test_a_websocket_subscriber_that_never_reads_holds_up_no_writer(live: LiveServer) -> None:
    ledger = Ledger()
    run(websocket_slow_subscriber(live, ledger))
    assert ledger.missing(live.tcp_url) == []


#: Replies a pipelining client leaves unread: 200 reads of a 256 KiB value, 50 MiB.
UNREAD_REPLIES = 200
#: What a server may hold for one client that does not read (its socket buffers and
#: a bounded write buffer), well under the 50 MiB of replies asked for.
HELD_FOR_ONE_CLIENT = 24 * 1024 * 1024


async def pipelined_reads_never_read(server: LiveServer) -> int:
    """The server's memory growth while a client that never reads has asked for 50 MiB
    of replies (once the server has taken every request, or after a few seconds)."""
    with kilndb.connect(server.tcp_url) as db:
        db.store("big").write("value", PAD)
    before = server.rss_bytes()
    requests = server.metric("requests_total")
    greedy = await FrameSocket.tcp(server.tcp_address, rcvbuf=RCVBUF)
    read = encode_frame(orjson.dumps({"op": "read", "store": "big", "key": "value"}))
    await greedy.send(read * UNREAD_REPLIES)
    deadline = time.monotonic() + 5
    while server.metric("requests_total") < requests + UNREAD_REPLIES:
        if time.monotonic() > deadline:  # the server stopped taking requests: good
            break
        await asyncio.sleep(0.05)
    grown = server.rss_bytes() - before
    # Everyone else is still served meanwhile.
    with kilndb.connect(server.tcp_url) as db:
        fact = db.store("big").read("value")
        assert fact is not None and fact.value == PAD
    await greedy.close()
    return grown


def test_a_client_that_never_reads_its_replies_is_not_buffered_without_bound(
    live: LiveServer,
) -> None:
    grown = run(pipelined_reads_never_read(live))
    assert grown < HELD_FOR_ONE_CLIENT, f"the server grew by {grown >> 20} MiB"

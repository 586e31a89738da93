"""Garbage on every transport — oversize frames, bodies and messages, malformed JSON,
wrong field types, unknown ops, a CRC mismatch — against the server that
docs/cli.md ("Misbehaving clients") shows: each gets its documented error code, the
connection stays usable where the transport allows, and writes go on being acknowledged."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from kilndb.codec import encode_frame
from tests.abuse.clients import (
    Body,
    FrameSocket,
    close_stream,
    http_exchange,
    http_request,
    run,
)
from tests.abuse.live import DEADLINE_SECONDS, Ledger, LiveServer, cleanup

pytestmark = pytest.mark.integration

DOCS = Path(__file__).parents[2] / "docs" / "cli.md"
LIMIT = 65536


def documented_command() -> list[str]:
    """The ``kiln serve`` command of the "Misbehaving clients" section."""
    text = DOCS.read_text()
    section = text[text.index("#### Misbehaving clients") :]
    start = section.index("```sh\n") + 6
    block = section[start : section.index("\n```", start)]
    assert "\n" not in block
    return shlex.split(block)


@pytest.fixture(scope="module")
def documented(tmp_path_factory: pytest.TempPathFactory, sock_dir: Path) -> Iterator[LiveServer]:
    """The documented server, its ``./data`` and ``./kiln.sock`` in temporary places."""
    data, unix = tmp_path_factory.mktemp("documented") / "data", sock_dir / "documented.sock"
    argv = [{"./data": str(data), "./kiln.sock": str(unix)}.get(a, a) for a in documented_command()]
    assert argv[0] == "kiln" and str(data) in argv and str(unix) in argv
    assert argv[argv.index("--max-frame-bytes") + 1] == str(LIMIT)
    server = LiveServer(data, unix=unix, argv=argv).start()
    try:
        yield server
    finally:
        cleanup(server)


def frame(body: Any) -> bytes:
    return encode_frame(body if isinstance(body, bytes) else orjson.dumps(body))


#: (frame body, error_code, request_id the reply echoes).
WIRE_CASES: list[tuple[Any, str, Any]] = [
    (b"{not json", "protocol_error", None),
    (b"[1, 2]", "protocol_error", None),
    (b"\xff\xfe", "protocol_error", None),
    ({"op": 5}, "bad_request", None),
    ({"request_id": 1}, "bad_request", 1),
    ({"op": "frobnicate", "request_id": 7}, "unknown_op", 7),
    ({"op": "write", "store": 5, "key": "k", "value": 1, "request_id": 8}, "bad_request", 8),
    ({"op": "write", "store": "s", "key": ["k"], "value": 1, "request_id": 9}, "bad_request", 9),
    (
        {"op": "write", "store": "s", "key": "k", "value": 1, "expected_seq": "one"},
        "bad_request",
        None,
    ),
    ({"op": "read", "store": "s", "request_id": 10}, "bad_request", 10),
    ({"op": "subscribe", "stores": "s", "request_id": 11}, "bad_request", 11),
    ({"op": "replay", "after": -1, "request_id": 12}, "bad_request", 12),
    ({"op": "write", "store": "s", "key": "k", "value": "x" * LIMIT}, "frame_too_large", None),
]


async def wire_garbage(conn: FrameSocket, ledger: Ledger, name: str) -> None:
    # One at a time, each followed by a ping on the same connection.
    for i, (body, code, request_id) in enumerate(WIRE_CASES):
        reply = await conn.call_raw(frame(body))
        assert not reply["ok"] and reply["error_code"] == code, (body, reply)
        assert reply.get("request_id") == request_id, reply
        assert await conn.call({"op": "ping", "request_id": i}) == {
            "ok": True,
            "pong": True,
            "request_id": i,
        }
    # All at once, pipelined between writes: every reply in request order.
    batch = b""
    for i, (body, _, _) in enumerate(WIRE_CASES):
        write = {"op": "write", "store": name, "key": f"k{i}", "value": i, "request_id": i}
        batch += frame(write) + frame(body)
    await conn.send(batch)
    for i, (body, code, _) in enumerate(WIRE_CASES):
        written = await conn.receive()
        assert written is not None and written["ok"] and written["request_id"] == i, written
        ledger.acknowledged(name, f"k{i}", i)
        refused = await conn.receive()
        assert refused is not None and refused["error_code"] == code, (body, refused)


async def oversize_refused_at_its_header(conn: FrameSocket) -> None:
    """A frame over the limit is refused once its header arrives, before its body."""
    body = b'{"op": "ping", "pad": "' + b"x" * LIMIT + b'"}'
    whole = frame(body)
    await conn.send(whole[:4])
    reply = await conn.receive()
    assert reply is not None and reply["error_code"] == "frame_too_large", reply
    assert (reply["size"], reply["limit"]) == (len(body), LIMIT)
    await conn.send(whole[4 : len(whole) // 2])
    await conn.send(whole[len(whole) // 2 :])
    assert (await conn.call({"op": "ping"}))["pong"]


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_wire_protocol_garbage_gets_its_error_and_the_connection_goes_on(
    documented: LiveServer, transport: str
) -> None:
    ledger = Ledger()

    async def main() -> None:
        if transport == "tcp":
            conn = await FrameSocket.tcp(documented.tcp_address)
        else:
            conn = await FrameSocket.unix(str(documented.unix))
        await wire_garbage(conn, ledger, transport)
        await oversize_refused_at_its_header(conn)
        await conn.close()

    run(main())
    assert len(ledger) == len(WIRE_CASES)
    assert ledger.missing(documented.tcp_url) == []


def test_a_crc_mismatch_gets_an_error_frame_then_a_close(documented: LiveServer) -> None:
    async def main() -> None:
        conn = await FrameSocket.tcp(documented.tcp_address)
        damaged = bytearray(frame({"op": "ping"}))
        damaged[-1] ^= 0xFF
        reply = await conn.call_raw(bytes(damaged))
        assert reply["error_code"] == "protocol_error", reply
        assert await conn.receive() is None
        await conn.close()

    run(main())


#: (method, path, body, status, error_code) on a kept-alive HTTP connection.
HTTP_CASES: list[tuple[str, str, bytes, int, str]] = [
    ("POST", "/v1/dispatch", b"{not json", 400, "protocol_error"),
    ("POST", "/v1/dispatch", b"[1]", 400, "protocol_error"),
    ("POST", "/v1/dispatch", b'{"op": "frobnicate"}', 400, "unknown_op"),
    (
        "POST",
        "/v1/dispatch",
        b'{"op": "write", "store": 5, "key": "k", "value": 1}',
        400,
        "bad_request",
    ),
    ("POST", "/v1/dispatch", b'{"op": "read", "store": "s"}', 400, "bad_request"),
    ("PUT", "/v1/db/default/stores/s/keys/k", b"{not json", 400, "bad_request"),
    ("PUT", "/v1/db/default/stores/s/keys/k?expected_seq=one", b"1", 400, "bad_request"),
    ("GET", "/v1/db/default/stores/s/keys/k?colour=red", b"", 400, "bad_request"),
    ("GET", "/v1/events?cursor=soon", b"", 400, "bad_request"),
]


async def http_garbage(server: LiveServer, ledger: Ledger) -> None:
    reader, writer = await asyncio.open_connection(*server.http_address)
    for i, (method, path, body, status, code) in enumerate(HTTP_CASES):
        got = await http_exchange(reader, writer, http_request(method, path, body))
        assert got[0] == status and got[1]["error_code"] == code, (method, path, got)
        # The same connection serves the next request.
        put = http_request("PUT", f"/v1/db/default/stores/http/keys/k{i}", b"%d" % i)
        status_put, fact = await http_exchange(reader, writer, put)
        assert status_put == 200 and fact["value"] == i, fact
        ledger.acknowledged("http", f"k{i}", i)
    await close_stream(writer)


async def http_oversize(server: LiveServer) -> None:
    """Over the limit with a Content-Length and chunked: 413 ``frame_too_large``."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * (LIMIT // 2)

    big = b'"' + b"x" * LIMIT + b'"'
    async with aiohttp.ClientSession() as session:
        for method, path in (("POST", "/v1/dispatch"), ("PUT", "/v1/db/default/stores/s/keys/k")):
            for data in (big, chunks()):
                async with session.request(method, server.http_url + path, data=data) as response:
                    body: Body = orjson.loads(await response.read())
                    assert response.status == 413, body
                    assert body["error_code"] == "frame_too_large" and body["limit"] == LIMIT


def test_http_garbage_gets_4xx_with_its_error_code(documented: LiveServer) -> None:
    ledger = Ledger()
    run(http_garbage(documented, ledger))
    run(http_oversize(documented))
    assert ledger.missing(documented.tcp_url) == []


#: (message, error_code, request_id the reply echoes) on one WebSocket.
WS_CASES: list[tuple[str, str, Any]] = [
    ("{not json", "protocol_error", None),
    ("[1]", "protocol_error", None),
    ('{"op": "frobnicate", "request_id": 1}', "unknown_op", 1),
    ('{"op": "write", "store": 5, "key": "k", "value": 1, "request_id": 2}', "bad_request", 2),
    ('{"op": "subscribe", "stores": ["s"]}', "bad_request", None),
    ('{"op": "unsubscribe", "subscription": "none", "request_id": 3}', "bad_request", 3),
]


async def websocket_garbage(server: LiveServer, ledger: Ledger) -> None:
    async def reply(ws: aiohttp.ClientWebSocketResponse) -> Body:
        body: Body = orjson.loads(await asyncio.wait_for(ws.receive_str(), DEADLINE_SECONDS))
        return body

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{server.http_url}/v1/ws") as ws,
    ):
        for i, (message, code, request_id) in enumerate(WS_CASES):
            await ws.send_str(message)
            got = await reply(ws)
            assert got["error_code"] == code and got.get("request_id") == request_id, got
            write = {"op": "write", "store": "ws", "key": f"k{i}", "value": i, "request_id": i}
            await ws.send_str(orjson.dumps(write).decode())
            written = await reply(ws)
            assert written["ok"] and written["request_id"] == i, written
            ledger.acknowledged("ws", f"k{i}", i)
        await ws.send_bytes(b'{"op": "ping"}')
        assert (await reply(ws))["error_code"] == "bad_request"
        # Over the limit: the error, then a close with 1009 (Message Too Big).
        sending = asyncio.create_task(ws.send_str("x" * (LIMIT + 1)))
        got = await reply(ws)
        assert got["error_code"] == "frame_too_large" and got["limit"] == LIMIT, got
        closing = await asyncio.wait_for(ws.receive(), DEADLINE_SECONDS)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1009, closing
        await asyncio.gather(sending, return_exceptions=True)


def test_websocket_garbage_gets_its_error_and_oversize_closes_with_1009(
    documented: LiveServer,
) -> None:
    ledger = Ledger()
    run(websocket_garbage(documented, ledger))
    assert ledger.missing(documented.tcp_url) == []

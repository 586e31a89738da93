"""Clients for the abuse suite, at the byte level where a test needs to misbehave.

- :class:`FrameSocket`: the wire protocol over a raw asyncio stream (TCP or Unix), with
  :func:`~kilndb.codec.encode_frame` and :class:`~kilndb.codec.FrameDecoder`.
- :func:`http_exchange`: one HTTP/1.1 request on a raw stream, its status and body.
- :func:`ws_frame`, :func:`ws_upgrade`: a masked client WebSocket frame and the upgrade
  handshake, for clients that stop half way through one.
- :func:`open_sse`, :func:`open_ws_subscriber`, :func:`open_tcp_subscriber`: idle
  changefeed subscribers, each confirmed open by the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp
import orjson

from kilndb.codec import FrameDecoder, encode_frame
from tests.abuse.live import DEADLINE_SECONDS

Body = dict[str, Any]
_T = TypeVar("_T")


class FrameSocket:
    """One wire-protocol connection over an asyncio stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self._bodies: list[bytes] = []

    @classmethod
    async def tcp(cls, address: tuple[str, int], *, rcvbuf: int | None = None) -> FrameSocket:
        """Connect over TCP; ``rcvbuf``: a small receive buffer, set before connecting so
        that the kernel holds little of what a slow reader leaves unread."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    @classmethod
    async def unix(cls, path: str) -> FrameSocket:
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_json(self, body: Body) -> None:
        await self.send(encode_frame(orjson.dumps(body)))

    async def receive(self) -> Body | None:
        """The next frame's body, or None at end-of-file."""
        while not self._bodies:
            self._bodies.extend(self.decoder.frames())
            if self._bodies:
                break
            data = await asyncio.wait_for(self.reader.read(1 << 16), DEADLINE_SECONDS)
            if not data:
                return None
            self.decoder.feed(data)
        body: Body = orjson.loads(self._bodies.pop(0))
        return body

    async def call(self, body: Body) -> Body:
        """Send a request and return the next frame, which must be there."""
        return await self.call_raw(encode_frame(orjson.dumps(body)))

    async def call_raw(self, data: bytes) -> Body:
        """Send bytes and return the next frame, which must be there."""
        await self.send(data)
        reply = await self.receive()
        assert reply is not None, f"the server closed instead of answering {data[:80]!r}"
        return reply

    async def close(self) -> None:
        await close_stream(self.writer)


async def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close a stream and wait until its socket is closed (the peer may have reset it)."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def run(coroutine: Coroutine[Any, Any, _T], timeout: float = 2 * DEADLINE_SECONDS) -> _T:
    """``asyncio.run`` with an overall deadline, so that a test fails instead of hanging."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_http_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length or chunked): status, headers, body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_SECONDS)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    else:
        body = b""
    return status, headers, body


def http_request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    """The bytes of an HTTP/1.1 request with a Content-Length."""
    lines = [f"{method} {path} HTTP/1.1", "Host: kiln", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def http_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, Body]:
    """Send ``request`` on a kept-alive connection; the reply's status and JSON body."""
    writer.write(request)
    await writer.drain()
    status, _, body = await read_http_response(reader)
    return status, orjson.loads(body)


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final, masked client WebSocket frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def ws_upgrade_request() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET /v1/ws HTTP/1.1\r\nHost: kiln\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def ws_upgrade(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection upgraded to WebSocket on ``/v1/ws``."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(ws_upgrade_request())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_SECONDS)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def read_ws_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next (unmasked, server) frame: opcode and payload."""
    first, second = await asyncio.wait_for(reader.readexactly(2), DEADLINE_SECONDS)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(size)


async def open_sse(
    session: aiohttp.ClientSession, http_url: str, store: str
) -> aiohttp.ClientResponse:
    """An SSE stream of ``store``'s facts, its 200 read."""
    response = await session.get(f"{http_url}/v1/events?stores={store}")
    assert response.status == 200, await response.text()
    return response


async def open_ws_subscriber(
    session: aiohttp.ClientSession, http_url: str, store: str, name: str
) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket with one subscription (``request_id`` ``name``), its ``ok`` read."""
    ws = await session.ws_connect(f"{http_url}/v1/ws")
    await ws.send_str(
        orjson.dumps({"op": "subscribe", "stores": [store], "request_id": name}).decode()
    )
    reply = orjson.loads(await asyncio.wait_for(ws.receive_str(), DEADLINE_SECONDS))
    assert reply["ok"] and reply["subscription"] == name, reply
    return ws


async def open_tcp_subscriber(address: tuple[str, int], store: str) -> FrameSocket:
    """A wire-protocol ``subscribe`` of ``store`` (live only), its ``ok`` read."""
    conn = await FrameSocket.tcp(address)
    reply = await conn.call({"op": "subscribe", "stores": [store], "request_id": 1})
    assert reply["ok"], reply
    return conn


async def next_sse_event(response: aiohttp.ClientResponse) -> Body:
    """The data of the next SSE event (keep-alive comments skipped)."""
    while True:
        line = await asyncio.wait_for(response.content.readline(), DEADLINE_SECONDS)
        assert line, "the SSE stream ended"
        if line.startswith(b"data: "):
            body: Body = orjson.loads(line[6:])
            return body

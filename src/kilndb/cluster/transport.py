"""Sockets for a gossip node: one UDP endpoint and one TCP listener, on one port or two.

Kept apart from the node so that the node reads as protocol plumbing, and so another
transport could stand in. TCP carries one frame per message:
``[u32 big-endian length][packet]``; a connection may carry several, then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from kilndb.cluster.messages import parse_address
from kilndb.cluster.wire import REASONS

__all__ = ["COUNTERS", "FRAME", "Datagrams", "bind", "close_writer", "read_frames", "send_frame"]

FRAME = struct.Struct(">I")

#: The counters every node reports, zero until something happens.
COUNTERS = (
    "packets_in_udp",
    "packets_in_tcp",
    "packets_out_udp",
    "packets_out_tcp",
    "bytes_in",
    "bytes_out",
    "send_errors",
    "callback_errors",
    "timer_errors",
    "probes",
    "indirect_probes",
    "probe_failures",
    "suspicions",
    "declared_dead",
    "refutations",
    "gossip_rounds",
    "push_pulls",
    "stale_writes",
    *(f"dropped_{reason}" for reason in REASONS),
)
Receive = Callable[[bytes, str], None]


class Datagrams(asyncio.DatagramProtocol):
    """Hands every datagram to ``receive(data, "host:port")``."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._receive(data, f"{addr[0]}:{addr[1]}")


async def bind(
    host: str,
    port: int,
    receive: Receive,
    on_connection: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    tcp_port: int | None = None,
) -> tuple[asyncio.DatagramTransport, asyncio.Server, int, int]:
    """Bind UDP on ``port`` and TCP on ``tcp_port`` — by default the same port (port 0:
    a free one for both; ``tcp_port=0``: a free one other than the UDP port); return the
    sockets and the UDP and TCP ports bound.

    Raises:
        OSError: a port cannot be bound (or, for port 0 shared by both, no port was free
            for both after 20 tries).
    """
    loop = asyncio.get_running_loop()
    if tcp_port is not None:
        udp, _ = await loop.create_datagram_endpoint(
            lambda: Datagrams(receive), local_addr=(host, port)
        )
        udp_port: int = udp.get_extra_info("sockname")[1]
        try:
            server = await asyncio.start_server(on_connection, host, tcp_port)
            # Port 0 asks for a TCP port of its own: not the UDP one, should the system
            # happen to pick that number.
            while tcp_port == 0 and _port(server) == udp_port:
                server.close()
                await server.wait_closed()
                server = await asyncio.start_server(on_connection, host, 0)
        except OSError:
            udp.close()
            raise
        return udp, server, udp_port, _port(server)
    for _ in range(20):
        udp, _ = await loop.create_datagram_endpoint(
            lambda: Datagrams(receive), local_addr=(host, port)
        )
        actual: int = udp.get_extra_info("sockname")[1]
        try:
            server = await asyncio.start_server(on_connection, host, actual)
        except OSError:
            udp.close()
            if port:
                raise
            continue
        return udp, server, actual, actual
    raise OSError(f"no port free for both UDP and TCP on {host}")


def _port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


async def read_frames(
    reader: asyncio.StreamReader,
    max_bytes: int,
    receive: Callable[[bytes], None],
    timeout: float = 10.0,
) -> str:
    """Feed each frame of one connection to ``receive``; '' at a clean end, else why the
    connection was given up (``"oversize"`` or ``"malformed"``)."""
    try:
        async with asyncio.timeout(timeout):
            while head := await reader.read(FRAME.size):
                if len(head) < FRAME.size:
                    head += await reader.readexactly(FRAME.size - len(head))
                (length,) = FRAME.unpack(head)
                if length > max_bytes:
                    return "oversize"
                receive(await reader.readexactly(length))
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return "malformed"
    return ""


async def send_frame(address: str, data: bytes, timeout: float) -> None:
    """Connect to ``address``, send ``data`` as one frame, close.

    Raises:
        OSError: connection refused or reset. ValueError: a bad address.
        TimeoutError: not done within ``timeout`` seconds.
    """
    host, port = parse_address(address)
    async with asyncio.timeout(timeout):
        _, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(FRAME.pack(len(data)) + data)
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a server-side connection, ignoring a peer that already went away."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()

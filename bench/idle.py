#!/usr/bin/env python3
"""Idle subscribers benchmark: does a crowd of idle changefeeds slow everyone else down?

A ``kiln serve`` process (``sync="always"``) on loopback. One-at-a-time REST ``GET`` of
a key and one-at-a-time durable TCP writes (``kilndb.connect``) are timed twice: alone,
and with ``--sse`` idle Server-Sent-Events streams, ``--ws`` idle WebSocket subscriptions
and ``--tcp`` idle TCP subscribers (200 + 150 + 150 = 500 by default) open on the same
server, each waiting for facts of a store nobody writes. Rows: p50 and p99 of each,
without and with the crowd, and their ratio.

Goal (issue 14): with the idle subscribers, each p99 within 2x of the one without, and
under 50 ms.

    python bench/idle.py            # full run (``make bench``)
    python bench/idle.py --smoke    # a few subscribers, a few seconds
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

import kilndb
from kilndb.codec import encode_frame
from server import Output, Processes, log, percentile

GOAL_RATIO = 2.0
GOAL_MS = 50.0


def start_server(procs: Processes, data: Path) -> tuple[str, str]:
    """``kiln serve`` with TCP and HTTP on free ports: its tcp:// and http:// URLs."""
    kiln = Path(sys.executable).with_name("kiln")
    args = [str(kiln)] if kiln.exists() else [sys.executable, "-m", "kilndb.cli"]
    args += ["--data", str(data), "serve", "--port", "0", "--http-port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = procs.start(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    output = Output(proc)
    tcp = output.wait_for("tcp://127.0.0.1:", 30).split("listening on ")[1].strip()
    http = output.wait_for("http://127.0.0.1:", 30).split("listening on ")[1].strip()
    return tcp, http


def latencies(call: Callable[[int], Any], count: int) -> list[float]:
    """Seconds each of ``count`` calls took, one after the other."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
    return times


def measure(tcp_url: str, http_url: str, count: int) -> dict[str, list[float]]:
    key_url = f"{http_url}/v1/db/default/stores/bench/keys/k"

    def rest_get(i: int) -> None:
        with urllib.request.urlopen(key_url, timeout=30) as response:
            response.read()

    with kilndb.connect(tcp_url) as db:
        store = db.store("bench")
        store.write("k", {"warm": True})
        return {
            "REST GET of a key": latencies(rest_get, count),
            "durable TCP write": latencies(lambda i: store.write("k", {"i": i}), count),
        }


def read_head(sock: socket.socket) -> bytes:
    """An HTTP response's head (the server sends nothing more until a fact arrives)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the server closed an idle subscriber")
        head += chunk
    return head


def ws_subscribe(sock: socket.socket, name: str) -> None:
    """Upgrade ``sock`` to a WebSocket on /v1/ws and subscribe to the quiet store."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        "GET /v1/ws HTTP/1.1\r\nHost: kiln\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = read_head(sock)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"WebSocket refused: {head[:80]!r}")
    payload = orjson.dumps({"op": "subscribe", "stores": ["quiet"], "request_id": name})
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126  # one short, final, masked text frame
    sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
    reply = b""
    while len(reply) < 2 or len(reply) < 2 + (reply[1] & 0x7F):
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the server closed an idle WebSocket")
        reply += chunk
    if b'"ok":true' not in reply:
        raise RuntimeError(f"WebSocket subscribe refused: {reply!r}")


def raise_fd_limit(wanted: int) -> None:
    """Raise the soft limit on open files (the server inherits it): a socket on each side
    for every idle subscriber."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def open_idle(tcp_url: str, http_url: str, sse: int, ws: int, tcp: int) -> list[socket.socket]:
    """``sse`` idle SSE streams, ``ws`` idle WebSocket subscriptions and ``tcp`` idle TCP
    subscribers, each confirmed open."""
    http_host, http_port = http_url.removeprefix("http://").split(":")
    tcp_host, tcp_port = tcp_url.removeprefix("tcp://").split(":")
    sockets = []
    request = b"GET /v1/events?stores=quiet HTTP/1.1\r\nHost: kiln\r\n\r\n"
    for _ in range(sse):
        sock = socket.create_connection((http_host, int(http_port)), timeout=30)
        sock.sendall(request)
        head = read_head(sock)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"SSE refused: {head[:80]!r}")
        sockets.append(sock)
    for i in range(ws):
        sock = socket.create_connection((http_host, int(http_port)), timeout=30)
        ws_subscribe(sock, f"idle-{i}")
        sockets.append(sock)
    subscribe = encode_frame(orjson.dumps({"op": "subscribe", "stores": ["quiet"], "after": 0}))
    for _ in range(tcp):
        sock = socket.create_connection((tcp_host, int(tcp_port)), timeout=30)
        sock.sendall(subscribe)
        if not sock.recv(4096):
            raise RuntimeError("the server closed a TCP subscriber")
        sockets.append(sock)
    return sockets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="a few subscribers and requests")
    parser.add_argument("--sse", type=int, help="idle SSE streams (default 200)")
    parser.add_argument("--ws", type=int, help="idle WebSocket subscriptions (default 150)")
    parser.add_argument("--tcp", type=int, help="idle TCP subscribers (default 150)")
    parser.add_argument("--requests", type=int, help="timed requests of each kind")
    args = parser.parse_args(argv)
    sse = args.sse if args.sse is not None else (4 if args.smoke else 200)
    ws = args.ws if args.ws is not None else (3 if args.smoke else 150)
    tcp = args.tcp if args.tcp is not None else (3 if args.smoke else 150)
    raise_fd_limit(2 * (sse + ws + tcp) + 1024)
    count = args.requests or (50 if args.smoke else 1000)
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="kiln-idle-") as root:
            tcp_url, http_url = start_server(procs, Path(root) / "data")
            log(f"without subscribers: {count:,} requests of each kind")
            alone = measure(tcp_url, http_url, count)
            log(f"opening {sse} idle SSE, {ws} idle WebSocket and {tcp} idle TCP subscribers")
            crowd = open_idle(tcp_url, http_url, sse, ws, tcp)
            try:
                log(f"with {len(crowd)} idle subscribers: {count:,} requests of each kind")
                crowded = measure(tcp_url, http_url, count)
            finally:
                for sock in crowd:
                    sock.close()
    finally:
        procs.stop_all()
    print(
        f"KilnDB idle-subscribers benchmark: {sse} SSE + {ws} WebSocket + {tcp} TCP"
        f" = {sse + ws + tcp} idle subscribers"
    )
    print(
        f"{'request':<22} | {'p50 alone':>10} | {'p50 crowd':>10} | {'p99 alone':>10} |"
        f" {'p99 crowd':>10} | {'p99 ratio':>9}"
    )
    verdicts = []
    for name, before in alone.items():
        after = crowded[name]
        p50a, p50c = percentile(before, 50) * 1e3, percentile(after, 50) * 1e3
        p99a, p99c = percentile(before, 99) * 1e3, percentile(after, 99) * 1e3
        ratio = p99c / p99a if p99a else float("inf")
        print(
            f"{name:<22} | {p50a:8.2f}ms | {p50c:8.2f}ms | {p99a:8.2f}ms | {p99c:8.2f}ms |"
            f" {ratio:8.2f}x"
        )
        met = ratio <= GOAL_RATIO and p99c < GOAL_MS
        verdicts.append(
            f"  {'PASS' if met else 'MISS'}  {name} p99 with idle subscribers within"
            f" {GOAL_RATIO:g}x and under {GOAL_MS:g} ms: {p99c:.2f} ms, {ratio:.2f}x"
        )
    print("\nGoal (issue 14):")
    print("\n".join(verdicts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

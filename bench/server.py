#!/usr/bin/env python3
"""Server benchmark: the KilnDB server beside redis-server (and NATS JetStream), one table.

KilnDB runs as its own process (``kiln serve``), always durable (fsync, group commit);
redis-server runs on loopback from a temp dir, once with ``appendonly yes`` +
``appendfsync always`` and once with ``appendfsync everysec``; both are driven from
Python, KilnDB over its wire protocol (raw pipelined frames or the bundled clients),
Redis with redis-py. Values are ~100-byte JSON documents. Rows:

1. pipelined durable writes from one connection, 1,000 in flight (Redis: XADD pipelines
   of 1,000);
2. the same from 16 connections (16 threads of this process);
3. one-at-a-time request latency, p50 and p99 (KilnDB sync client ``write`` vs
   redis-py ``SET``);
4. replay of ``--facts`` facts over the network (KilnDB ``replay`` vs ``XRANGE`` pages);
5. changefeed fan-out: 50 subscribers (in 2 child processes) while one writer produces a
   steady 10,000 facts/s; delivery lag (receive time - send time in the value), p50/p99;
6. memory: the RSS of a fresh server holding ``--keys`` keys (1,000,000; ``--smoke``: a
   few thousand) written by ``write_many``, beside a fresh redis-server holding the same
   keys and values (``SET``), and the bytes per key that loading them added.

NATS JetStream (nats-py) joins rows 1 and 2 when ``nats-server`` is installable with
apt. The targets of issue 13 are printed below the table as PASS/MISS (row 6 is
informational: "info", never PASS/MISS).

    python bench/server.py              # full run (``make bench``), a few minutes
    python bench/server.py --smoke      # tiny sizes, a few seconds, never runs apt

Without ``--smoke`` the bench installs redis-server / nats-server with apt when they are
missing (as root); with ``--smoke`` peers that are not on PATH are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import queue
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

import kilndb
from kilndb.codec import FrameDecoder, encode_frame

HOST = "127.0.0.1"
WINDOW = 1_000  # requests in flight for the pipelined rows
CONNECTIONS = 16
SUBSCRIBER_PROCS = 2

# The bench extra provides redis-py; without it the Redis rows are skipped.
redis: Any
try:
    import redis as _redis_module
except ImportError:  # pragma: no cover - depends on the bench extra
    redis = None
else:
    redis = _redis_module


# -- sizes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    pipelined: int  # writes for the 1-connection pipelined row
    per_connection: int  # writes per connection for the 16-connection row
    latency: int  # one-at-a-time requests
    facts: int  # facts replayed
    subscribers: int
    rate: int  # facts/s produced during fan-out
    seconds: float  # fan-out duration
    keys: int  # distinct keys held for the memory row


FULL = Sizes(100_000, 10_000, 3_000, 500_000, 50, 10_000, 4.0, 1_000_000)
SMOKE = Sizes(2_000, 200, 100, 2_000, 4, 1_000, 1.0, 2_000)

#: The issue whose targets this benchmark judges.
ISSUE = "13"


def payload(i: int) -> dict[str, Any]:
    """A ~100-byte JSON document."""
    return {
        "user": f"u{i % 100_000:07d}",
        "event": "page_view",
        "path": f"/products/{i % 977}",
        "session": f"s-{i:012d}",
        "ms": i % 1000,
        "ok": True,
        "n": i,
    }


def value_bytes(i: int) -> bytes:
    return orjson.dumps(payload(i))


# -- results and table ---------------------------------------------------------------


#: Units where a smaller number is better; for them the ratio is peer / KilnDB.
LOWER_IS_BETTER = frozenset({"ms", "MiB", "B/key"})


@dataclass
class Cell:
    value: float
    unit: str  # "writes/s", "facts/s" (higher is better) or "ms", "MiB", "B/key" (lower)

    def text(self) -> str:
        if self.unit == "ms":
            return f"{self.value:,.2f} ms"
        return f"{self.value:,.0f} {self.unit}"


@dataclass
class Line:
    label: str
    kiln: Cell | str
    peer: str = ""
    result: Cell | str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """How many times better KilnDB is (> 1: KilnDB ahead)."""
        k, p = self.kiln, self.result
        if not isinstance(k, Cell) or not isinstance(p, Cell) or not k.value or not p.value:
            return None
        return p.value / k.value if k.unit in LOWER_IS_BETTER else k.value / p.value


@dataclass
class Target:
    ok: bool | None  # None: could not be judged
    text: str
    measured: str
    info: bool = False  # informational: printed as "info", never PASS/MISS


@dataclass
class Report:
    lines: list[Line] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)

    def add(self, label: str, kiln: Cell | str, peers: Sequence[tuple[str, Cell | str]]) -> None:
        for peer, result in peers or [("", "")]:
            self.lines.append(Line(label, kiln, peer, result))

    def ratio(self, label: str, peer: str) -> float | None:
        for line in self.lines:
            if line.label == label and line.peer == peer:
                return line.ratio
        return None


def render(report: Report, issue: str = "3") -> str:
    header = ("benchmark", "KilnDB", "peer", "peer result", "KilnDB/peer")
    rows: list[tuple[str, ...]] = []
    groups: list[bool] = []
    previous = ""
    for line in report.lines:
        first = line.label != previous
        previous = line.label
        ratio = line.ratio
        kiln = line.kiln.text() if isinstance(line.kiln, Cell) else line.kiln
        result = line.result.text() if isinstance(line.result, Cell) else line.result
        rows.append(
            (
                line.label if first else "",
                kiln if first else "",
                line.peer or "-",
                result or "-",
                "-" if ratio is None else f"{ratio:.2f}x",
            )
        )
        groups.append(first)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {1, 3, 4}

    def text(cells: tuple[str, ...]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return " | ".join(parts).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    out = [text(header), rule]
    for i, (cells, first) in enumerate(zip(rows, groups, strict=True)):
        if first and i:
            out.append(rule)
        out.append(text(cells))
    if not report.targets:  # an issue that set no targets
        return "\n".join(out)
    out.append("")
    out.append(f"Targets (issue {issue}), judged from this run:")
    width = max((len(t.text) for t in report.targets), default=0)
    for t in report.targets:
        verdict = "PASS" if t.ok else ("MISS" if t.ok is not None else "n/a ")
        if t.info:
            verdict = "info"
        out.append(f"  {verdict}  {t.text.ljust(width)}  measured {t.measured}")
    return "\n".join(out)


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Processes:
    """Every child process the bench starts; all are stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(list(args), start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)
        self.procs.clear()


class Output:
    """A child's stdout, read line by line by a thread (so the child never blocks)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.args = proc.args
        self.lines: queue.Queue[str] = queue.Queue()
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self.lines.put(line)
            self.lines.put("")

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, needle: str, timeout: float) -> str:
        """The next line containing ``needle``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if not line:
                break
            if needle in line:
                return line
        raise RuntimeError(f"{self.args!r} did not print {needle!r} within {timeout:.0f}s")


def start_kiln(procs: Processes, root: Path, name: str = "kiln") -> tuple[str, int]:
    url, port, _ = start_kiln_process(procs, root / name)
    return url, port


def start_kiln_process(procs: Processes, data: Path) -> tuple[str, int, subprocess.Popen[Any]]:
    """``kiln serve`` on ``data``: its URL, port and process."""
    kiln = Path(sys.executable).with_name("kiln")
    args = [str(kiln)] if kiln.exists() else [sys.executable, "-m", "kilndb.cli"]
    args += ["--data", str(data), "serve", "--port", "0", "--http-port", "-1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = procs.start(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = Output(proc).wait_for("tcp://127.0.0.1:", 30)
    port = int(line.split("tcp://127.0.0.1:")[1].split()[0].strip(" ,.)'\""))
    return f"tcp://{HOST}:{port}", port, proc


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (``VmRSS``), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def ensure_installed(binary: str, package: str, smoke: bool) -> str:
    """'' if ``binary`` is (now) on PATH, else why it is not."""
    if shutil.which(binary):
        return ""
    if smoke:
        return f"skipped: {binary} not on PATH (--smoke)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"skipped: {binary} missing and apt-get (as root) unavailable"
    print(f"installing {package} with apt-get ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
            subprocess.run(cmd, env=env, check=True, timeout=240, capture_output=True)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"skipped: apt-get install {package} failed ({type(exc).__name__})"
    if not shutil.which(binary):
        return f"skipped: {binary} still not on PATH after apt-get"
    # The package may have started a system service; leave it alone, we use our own.
    return ""


def start_redis(procs: Processes, root: Path, fsync: str) -> int:
    port, _ = start_redis_process(procs, root / f"redis-{fsync}", fsync)
    return port


def start_redis_process(
    procs: Processes, directory: Path, fsync: str
) -> tuple[int, subprocess.Popen[Any]]:
    """redis-server with an append-only file in ``directory``: its port and process."""
    port = free_port()
    directory.mkdir()
    proc = procs.start(
        [
            "redis-server",
            "--port", str(port), "--bind", HOST, "--dir", str(directory),
            "--save", "", "--appendonly", "yes", "--appendfsync", fsync,
            "--daemonize", "no", "--protected-mode", "no", "--logfile", "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert redis is not None
    deadline = time.monotonic() + 20
    while True:
        try:
            if redis.Redis(host=HOST, port=port).ping():
                return port, proc
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- KilnDB over the wire ------------------------------------------------------------


def kiln_socket(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def write_frame(store: str, i: int, value: dict[str, Any]) -> bytes:
    return encode_frame(
        orjson.dumps(
            {
                "op": "write",
                "store": store,
                "key": f"k{i % 1000:05d}",
                "value": value,
                "request_id": i,
            }
        )
    )


def kiln_pipelined(port: int, store: str, n: int, start: int = 0) -> None:
    """``n`` durable writes over one connection, keeping up to WINDOW in flight."""
    sock = kiln_socket(port)
    decoder = FrameDecoder()
    chunk = WINDOW // 4
    sent = done = 0
    try:
        while done < n:
            while sent < n and sent - done <= WINDOW - chunk:
                k = min(chunk, n - sent)
                sock.sendall(
                    b"".join(
                        write_frame(store, start + sent + j, payload(sent + j)) for j in range(k)
                    )
                )
                sent += k
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError("server closed the connection")
            decoder.feed(data)
            for body in decoder.frames():
                reply = orjson.loads(body)
                if not reply.get("ok"):
                    raise RuntimeError(f"write failed: {reply}")
                done += 1
    finally:
        sock.close()


# -- redis ---------------------------------------------------------------------------


def redis_pipelined(port: int, stream: str, n: int) -> None:
    assert redis is not None
    client = redis.Redis(host=HOST, port=port)
    try:
        done = 0
        while done < n:
            pipe = client.pipeline(transaction=False)
            k = min(WINDOW, n - done)
            for j in range(k):
                pipe.xadd(stream, {"v": value_bytes(done + j)})
            pipe.execute()
            done += k
    finally:
        client.close()


# -- row helpers ---------------------------------------------------------------------


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def parallel(fns: Sequence[Callable[[], None]]) -> float:
    """Run ``fns`` in threads started together; seconds until the last one ends."""
    barrier = threading.Barrier(len(fns) + 1)
    errors: list[BaseException] = []

    def run(fn: Callable[[], None]) -> None:
        barrier.wait()
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(fn,), daemon=True) for fn in fns]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def latencies(call: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


# -- fan-out -------------------------------------------------------------------------


def subscriber_worker(kind: str, port: int, count: int, expected: int, deadline: float) -> None:
    """Child process: ``count`` subscribers; prints "ready", then a JSON summary."""
    lags: list[float] = []
    received = [0] * count
    if kind == "kiln":
        selector = selectors.DefaultSelector()
        socks = []
        for i in range(count):
            sock = kiln_socket(port)
            sock.sendall(
                encode_frame(orjson.dumps({"op": "subscribe", "stores": ["feed"], "after": None}))
            )
            decoder = FrameDecoder()
            while (body := decoder.next_frame()) is None:
                decoder.feed(sock.recv(65536))
            if not orjson.loads(body).get("ok"):
                raise RuntimeError(f"subscribe failed: {body!r}")
            selector.register(sock, selectors.EVENT_READ, (i, decoder))
            socks.append(sock)
        print("ready", flush=True)
        stop = time.time() + deadline
        while min(received) < expected and time.time() < stop:
            for key, _ in selector.select(0.5):
                i, decoder = key.data
                data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
                now = time.time()
                if not data:
                    raise RuntimeError("server closed a subscription")
                decoder.feed(data)
                for body in decoder.frames():
                    message = orjson.loads(body)
                    if "fact" in message:
                        lags.append((now - message["fact"]["value"]["t"]) * 1000)
                        received[i] += 1
        for sock in socks:
            sock.close()
    else:
        assert redis is not None
        lock = threading.Lock()
        ready = threading.Barrier(count + 1)

        def follow(i: int) -> None:
            client = redis.Redis(host=HOST, port=port)
            last = "0-0"
            mine: list[float] = []
            ready.wait()
            stop = time.time() + deadline
            while received[i] < expected and time.time() < stop:
                reply: Any = client.xread({"feed": last}, count=1000, block=500)
                now = time.time()
                for _stream, entries in reply:
                    for entry_id, fields in entries:
                        mine.append((now - orjson.loads(fields[b"v"])["t"]) * 1000)
                        last = entry_id
                        received[i] += 1
            client.close()
            with lock:
                lags.extend(mine)

        threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(count)]
        for t in threads:
            t.start()
        ready.wait()
        print("ready", flush=True)
        for t in threads:
            t.join()
    sample = random.sample(lags, min(len(lags), 50_000))
    print(json.dumps({"received": sum(received), "sample": sample}), flush=True)


def fan_out(procs: Processes, kind: str, port: int, sizes: Sizes) -> tuple[float, float, int, int]:
    """(lag p50 ms, lag p99 ms, facts delivered, facts expected)."""
    total = int(sizes.rate * sizes.seconds)
    counts = [sizes.subscribers // SUBSCRIBER_PROCS] * SUBSCRIBER_PROCS
    counts[0] += sizes.subscribers - sum(counts)
    deadline = sizes.seconds + 20
    workers = [
        procs.start(
            [
                sys.executable,
                __file__,
                "--subscriber",
                kind,
                str(port),
                str(c),
                str(total),
                str(deadline),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for c in counts
        if c
    ]
    outputs = [Output(w) for w in workers]
    for output in outputs:
        output.wait_for("ready", 60)
    time.sleep(0.2)
    tick = 0.01
    per_tick = max(1, int(sizes.rate * tick))
    start = time.time()
    if kind == "kiln":
        sock = kiln_socket(port)
        replies = [0]

        def drain() -> None:
            decoder = FrameDecoder()
            while replies[0] < total:
                data = sock.recv(1 << 20)
                if not data:
                    return
                decoder.feed(data)
                replies[0] += sum(1 for _ in decoder.frames())

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        sent = 0
        while sent < total:
            due = start + (sent // per_tick) * tick
            if (pause := due - time.time()) > 0:
                time.sleep(pause)
            k = min(per_tick, total - sent)
            now = time.time()
            sock.sendall(
                b"".join(
                    write_frame("feed", sent + j, {**payload(sent + j), "t": now}) for j in range(k)
                )
            )
            sent += k
        reader.join(30)
        sock.close()
    else:
        assert redis is not None
        client = redis.Redis(host=HOST, port=port)
        sent = 0
        while sent < total:
            due = start + (sent // per_tick) * tick
            if (pause := due - time.time()) > 0:
                time.sleep(pause)
            k = min(per_tick, total - sent)
            now = time.time()
            pipe = client.pipeline(transaction=False)
            for j in range(k):
                pipe.xadd("feed", {"v": orjson.dumps({**payload(sent + j), "t": now})})
            pipe.execute()
            sent += k
        client.close()
    lags: list[float] = []
    received = 0
    for output in outputs:
        summary = json.loads(output.wait_for('{"received"', deadline + 30))
        received += summary["received"]
        lags.extend(summary["sample"])
    return percentile(lags, 50), percentile(lags, 99), received, total * sizes.subscribers


# -- NATS ----------------------------------------------------------------------------


def nats_pipelined(port: int, n: int, stream: str = "bench") -> float:
    """Writes/s of ``n`` JetStream publishes to ``stream``, WINDOW in flight."""
    import nats

    async def run() -> float:
        nc = await nats.connect(f"nats://{HOST}:{port}")
        try:
            js = nc.jetstream()
            await js.add_stream(name=stream, subjects=[f"{stream}.>"])
            window = asyncio.Semaphore(WINDOW)

            async def publish(i: int) -> None:
                try:
                    await js.publish(f"{stream}.w", value_bytes(i))
                finally:
                    window.release()

            tasks = []
            start = time.perf_counter()
            for i in range(n):
                await window.acquire()
                tasks.append(asyncio.ensure_future(publish(i)))
            await asyncio.gather(*tasks)
            return n / (time.perf_counter() - start)
        finally:
            await nc.close()

    return asyncio.run(run())


def start_nats(procs: Processes, root: Path) -> int:
    port = free_port()
    directory = root / "nats"
    directory.mkdir()
    binary = shutil.which("nats-server") or "nats-server"
    procs.start(
        [binary, "-js", "-a", HOST, "-p", str(port), "-sd", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return port
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- memory --------------------------------------------------------------------------


def server_memory(
    procs: Processes, root: Path, keys: int, redis_reason: str
) -> dict[str, tuple[Cell, Cell]]:
    """(RSS MiB, bytes per key) of a fresh KilnDB and redis-server loaded with ``keys`` keys.

    Each server starts on an empty directory; its RSS is read once it is running (KilnDB:
    and has served a first write, of key 0) and again once every key is written
    (``write_many`` / pipelined ``SET`` of 1,000); the growth divided by ``keys`` is the
    bytes per key. Both are stopped afterwards.
    """
    found: dict[str, tuple[Cell, Cell]] = {}

    def summary(empty: int, loaded: int) -> tuple[Cell, Cell]:
        return Cell(loaded / 2**20, "MiB"), Cell(max(0, loaded - empty) / keys, "B/key")

    url, _, proc = start_kiln_process(procs, root / "kiln-memory")
    with kilndb.connect(url) as db:
        # Open the database and warm the write path first: "empty" is a running server.
        db.store("memory").write(f"key:{0:08d}", payload(0))
        empty = rss_bytes(proc.pid)
        for first in range(0, keys, WINDOW):
            db.write_many(
                kilndb.Write("memory", f"key:{i:08d}", payload(i))
                for i in range(first, min(first + WINDOW, keys))
            )
        time.sleep(0.5)  # let the server settle (background hint and index work)
        if (held := db.stats()["keys"]) != keys:
            raise RuntimeError(f"the server holds {held} keys, expected {keys}")
        found["kiln"] = summary(empty, rss_bytes(proc.pid))
    stop_process(proc)

    if not redis_reason:
        assert redis is not None
        port, proc = start_redis_process(procs, root / "redis-memory", "always")
        empty = rss_bytes(proc.pid)
        client = redis.Redis(host=HOST, port=port)
        try:
            for first in range(0, keys, WINDOW):
                pipe = client.pipeline(transaction=False)
                for i in range(first, min(first + WINDOW, keys)):
                    pipe.set(f"key:{i:08d}", value_bytes(i))
                pipe.execute()
            time.sleep(0.5)
            if (held := client.dbsize()) != keys:
                raise RuntimeError(f"redis-server holds {held} keys, expected {keys}")
            found["redis"] = summary(empty, rss_bytes(proc.pid))
        finally:
            client.close()
        stop_process(proc)
    return found


# -- the run -------------------------------------------------------------------------

ROW1 = "pipelined durable writes, 1 conn, 1,000 in flight"
ROW2 = f"pipelined durable writes, {CONNECTIONS} conns"
ROW3A = "one-at-a-time write latency p50"
ROW3B = "one-at-a-time write latency p99"
ROW4 = "replay over the network"
ROW5A = "fan-out lag p50"
ROW5B = "fan-out lag p99"
ROW6A = "server RSS holding"
ROW6B = "server memory per key"

REDIS_ALWAYS = "redis-py XADD, appendfsync always"
REDIS_EVERYSEC = "redis-py XADD, appendfsync everysec"
NATS = "nats-py JetStream publish, 1,000 in flight"
REPLAY_PEER = "redis-py XRANGE, 1,000 per page"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(sizes: Sizes, smoke: bool, root: Path, procs: Processes) -> Report:
    report = Report()
    url, kport = start_kiln(procs, root)
    redis_reason = "" if redis is not None else "skipped: redis-py not installed (bench extra)"
    if not redis_reason:
        redis_reason = ensure_installed("redis-server", "redis-server", smoke)
    always = everysec = 0
    if not redis_reason:
        always = start_redis(procs, root, "always")
        everysec = start_redis(procs, root, "everysec")

    def peers(
        measure: Callable[[int], Cell], which: Sequence[tuple[str, int]]
    ) -> list[tuple[str, Cell | str]]:
        out: list[tuple[str, Cell | str]] = []
        for name, port in which:
            out.append((name, redis_reason or measure(port)))
        return out

    redis_both = [(REDIS_ALWAYS, always), (REDIS_EVERYSEC, everysec)]

    # 1. pipelined, one connection
    log("row 1: pipelined writes, 1 connection")
    n = sizes.pipelined
    kiln_rate = n / timed(lambda: kiln_pipelined(kport, "p1", n))
    row1 = peers(
        lambda port: Cell(n / timed(lambda: redis_pipelined(port, "p1", n)), "writes/s"), redis_both
    )
    nats_reason = ensure_installed("nats-server", "nats-server", smoke)
    nport = 0
    if nats_reason:
        why = "not on PATH (--smoke)" if smoke else "not installable here"
        nats_reason = f"skipped (nats-server {why})"
    else:
        try:
            nport = start_nats(procs, root)
        except Exception as exc:
            nats_reason = f"skipped: {type(exc).__name__}: {exc}"[:80]

    def nats_peer(measure: Callable[[], Cell], label: str) -> tuple[str, Cell | str]:
        if nats_reason:
            return ("NATS JetStream", nats_reason)
        try:
            return (label, measure())
        except Exception as exc:
            return ("NATS JetStream", f"skipped: {type(exc).__name__}: {exc}"[:80])

    row1.append(nats_peer(lambda: Cell(nats_pipelined(nport, n), "writes/s"), NATS))
    report.add(ROW1, Cell(kiln_rate, "writes/s"), row1)

    # 2. pipelined, 16 connections
    log(f"row 2: pipelined writes, {CONNECTIONS} connections")
    m = sizes.per_connection
    total = m * CONNECTIONS
    seconds = parallel(
        [functools.partial(kiln_pipelined, kport, f"p2_{c}", m) for c in range(CONNECTIONS)]
    )

    def redis_many(port: int) -> Cell:
        fns = [functools.partial(redis_pipelined, port, f"p2_{c}", m) for c in range(CONNECTIONS)]
        return Cell(total / parallel(fns), "writes/s")

    def nats_many() -> Cell:
        # One connection, event loop and stream per thread, as Redis gets one stream each.
        def publisher(c: int) -> None:
            nats_pipelined(nport, m, f"bench16_{c}")

        fns = [functools.partial(publisher, c) for c in range(CONNECTIONS)]
        return Cell(total / parallel(fns), "writes/s")

    row2 = peers(redis_many, redis_both)
    row2.append(nats_peer(nats_many, f"{NATS} per conn"))
    report.add(ROW2, Cell(total / seconds, "writes/s"), row2)

    # 3. one-at-a-time latency
    log("row 3: one-at-a-time latency")
    db = kilndb.connect(url)
    try:
        store = db.store("lat")
        kiln_lat = latencies(lambda i: store.write(f"k{i % 100}", payload(i)), sizes.latency)
    finally:
        db.close()
    redis_lat: dict[str, list[float]] = {}
    if not redis_reason:
        for name, port in ((REDIS_ALWAYS, always), (REDIS_EVERYSEC, everysec)):
            client = redis.Redis(host=HOST, port=port)

            def redis_set(i: int, c: redis.Redis = client) -> object:
                return c.set(f"k{i % 100}", value_bytes(i))

            redis_lat[name] = latencies(redis_set, sizes.latency)
            client.close()
    for label, p in ((ROW3A, 50), (ROW3B, 99)):
        report.add(
            label,
            Cell(percentile(kiln_lat, p), "ms"),
            [
                (
                    name.replace("XADD", "SET"),
                    redis_reason or Cell(percentile(redis_lat[name], p), "ms"),
                )
                for name in (REDIS_ALWAYS, REDIS_EVERYSEC)
            ],
        )

    # 4. replay
    log(f"row 4: replay of {sizes.facts:,} facts (loading first)")
    db = kilndb.connect(url)
    try:
        for first in range(0, sizes.facts, WINDOW):
            db.write_many(
                kilndb.Write("replay", f"k{i % 1000:05d}", payload(i))
                for i in range(first, min(first + WINDOW, sizes.facts))
            )
        start = time.perf_counter()
        replayed = sum(1 for _ in db.replay(after=0, stores=["replay"]))
        kiln_replay = replayed / (time.perf_counter() - start)
    finally:
        db.close()
    if replayed != sizes.facts:
        raise RuntimeError(f"replayed {replayed} facts, expected {sizes.facts}")

    def redis_replay(port: int) -> Cell:
        assert redis is not None
        redis_pipelined(port, "replay", sizes.facts)
        client = redis.Redis(host=HOST, port=port)
        count, last = 0, "-"
        start = time.perf_counter()
        while True:
            page: Any = client.xrange("replay", min=last, max="+", count=1000)
            for _entry_id, fields in page:
                orjson.loads(fields[b"v"])  # decode, as KilnDB's client does
            count += len(page)
            if len(page) < 1000:
                break
            last = "(" + page[-1][0].decode()
        rate = count / (time.perf_counter() - start)
        client.close()
        return Cell(rate, "facts/s")

    report.add(
        f"replay of {sizes.facts:,} facts",
        Cell(kiln_replay, "facts/s"),
        peers(redis_replay, [(REPLAY_PEER, everysec)]),
    )

    # 5. fan-out
    log(f"row 5: fan-out to {sizes.subscribers} subscribers at {sizes.rate:,} facts/s")
    k50, k99, kgot, kwant = fan_out(procs, "kiln", kport, sizes)
    kiln_note = "" if kgot == kwant else f" ({kgot:,}/{kwant:,} delivered)"
    r50: Cell | str = redis_reason
    r99: Cell | str = redis_reason
    rnote = ""
    if not redis_reason:
        a, b, rgot, rwant = fan_out(procs, "redis", always, sizes)
        r50, r99 = Cell(a, "ms"), Cell(b, "ms")
        rnote = "" if rgot == rwant else f" ({rgot:,}/{rwant:,} delivered)"
    label = f"{sizes.subscribers} subscribers, {sizes.rate:,} facts/s"
    peer = "redis-py XREAD BLOCK, appendfsync always" + rnote
    report.add(f"{ROW5A}, {label}{kiln_note}", Cell(k50, "ms"), [(peer, r50)])
    report.add(f"{ROW5B}, {label}{kiln_note}", Cell(k99, "ms"), [(peer, r99)])
    report.values["lag_p99"] = k99
    report.values["delivered"] = float(kgot == kwant)

    # 6. memory
    log(f"row 6: memory of a server holding {sizes.keys:,} keys")
    memory = server_memory(procs, root, sizes.keys, redis_reason)
    held = f"{ROW6A} {sizes.keys:,} keys"
    per_key = f"{ROW6B}, {sizes.keys:,} keys (RSS growth / keys)"
    redis_peer = "redis-server (appendfsync always), SET of the same data"
    kiln_rss, kiln_per_key = memory["kiln"]
    redis_rss: Cell | str = redis_reason
    redis_per_key: Cell | str = redis_reason
    if "redis" in memory:
        redis_rss, redis_per_key = memory["redis"]
    report.add(held, kiln_rss, [(redis_peer, redis_rss)])
    report.add(per_key, kiln_per_key, [(redis_peer, redis_per_key)])

    # targets
    def judge(ratio: float | None, goal: float, text: str) -> None:
        if ratio is None:
            report.targets.append(Target(None, text, "not measured (peer skipped)"))
        else:
            report.targets.append(Target(ratio >= goal, text, f"{ratio:.2f}x (target {goal:g}x)"))

    def nats_ratio(row: str) -> float | None:
        line = next((ln for ln in report.lines if ln.label == row and "nats-py" in ln.peer), None)
        return None if line is None else line.ratio

    for row, conns in ((ROW1, "1 conn"), (ROW2, f"{CONNECTIONS} conns")):
        judge(
            report.ratio(row, REDIS_ALWAYS),
            2.0,
            f"pipelined durable writes, {conns} >= 2x redis XADD (always)",
        )
        judge(nats_ratio(row), 6.0, f"pipelined durable writes, {conns} >= 6x NATS JetStream")
    judge(
        report.ratio(ROW3A, REDIS_ALWAYS.replace("XADD", "SET")),
        1.0,
        "one-at-a-time write p50 <= redis SET (always) p50",
    )
    judge(
        report.ratio(f"replay of {sizes.facts:,} facts", REPLAY_PEER),
        2.0,
        "replay over the network >= 2x redis XRANGE pages",
    )
    report.targets.append(
        Target(
            k99 < 50 and kgot == kwant,
            "fan-out lag p99 < 50 ms (all facts delivered)",
            f"{k99:,.2f} ms{kiln_note}",
        )
    )
    redis_text = (
        f"redis-server {redis_rss.text()}, {redis_per_key.text()}"
        if isinstance(redis_rss, Cell) and isinstance(redis_per_key, Cell)
        else "redis-server not measured"
    )
    report.targets.append(
        Target(
            None,
            f"server RSS with {sizes.keys:,} keys beside redis-server (informational)",
            f"KilnDB {kiln_rss.text()}, {kiln_per_key.text()}; {redis_text}",
            info=True,
        )
    )
    return report


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--subscriber"]:
        kind, port, count, expected, deadline = args[1:6]
        subscriber_worker(kind, int(port), int(count), int(expected), float(deadline))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds, no apt")
    parser.add_argument("--facts", type=int, help="facts replayed (row 4)")
    parser.add_argument(
        "--keys", type=int, help="keys held for the memory row (row 6; default 1,000,000)"
    )
    options = parser.parse_args(args)
    sizes = SMOKE if options.smoke else FULL
    if options.facts is not None:
        sizes = Sizes(**{**sizes.__dict__, "facts": options.facts})
    if options.keys is not None:
        if options.keys < 1:
            parser.error("--keys must be at least 1")
        sizes = Sizes(**{**sizes.__dict__, "keys": options.keys})
    procs = Processes()
    root = Path(tempfile.mkdtemp(prefix="kiln-server-bench-"))
    # Our own handlers for both, so that asyncio.run (NATS) does not swallow Ctrl-C.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = run(sizes, options.smoke, root, procs)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(render(report, issue=ISSUE))
    return 0


if __name__ == "__main__":
    sys.exit(main())

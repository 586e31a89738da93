#!/usr/bin/env python3
"""Streams and tenants benchmark: segments beside Redis Streams, and 1,000 tenant databases.

KilnDB runs as ``kiln serve`` (``sync="always"``), redis-server on loopback with
``appendonly yes`` + ``appendfsync always``; both driven from Python (``kilndb.connect``,
redis-py). Rows:

1. segment produce in batches of 100 (one atomic produce per batch; Redis: a pipeline of
   100 ``XADD`` per round trip);
2. consume of the whole segment, 1,000 entries per page (Redis: ``XRANGE`` pages);
3. 1,000 tenant databases on a server with idle eviction on (``--idle-evict-after 1``):
   the first write to each (an open and create per tenant), the server's RSS with all
   of them touched and after eviction, and the reopen of an evicted tenant.

Targets (issue 13, unchanged since issue 4): produce and consume >= 1.5x Redis Streams.

    python bench/streams.py            # full run (``make bench``)
    python bench/streams.py --smoke    # tiny sizes, a few seconds
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kilndb
from kilndb.client.transport import Connection
from server import (
    HOST,
    Cell,
    Output,
    Processes,
    Report,
    Target,
    ensure_installed,
    log,
    payload,
    redis,
    render,
    start_redis,
    value_bytes,
)

BATCH = 100
PAGE = 1000
REDIS = "redis-py, appendfsync always"
#: The issue whose targets this benchmark judges.
ISSUE = "13"


@dataclass(frozen=True)
class Sizes:
    entries: int
    tenants: int


FULL = Sizes(100_000, 1_000)
SMOKE = Sizes(2_000, 20)


def start_kiln(procs: Processes, root: Path, *options: str) -> tuple[str, int]:
    kiln = Path(sys.executable).with_name("kiln")
    args = [str(kiln)] if kiln.exists() else [sys.executable, "-m", "kilndb.cli"]
    args += ["--data", str(root), "serve", "--port", "0", "--http-port", "-1", *options]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = procs.start(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = Output(proc).wait_for("tcp://127.0.0.1:", 30)
    port = int(line.split("tcp://127.0.0.1:")[1].split()[0].strip(" ,.)'\""))
    return f"tcp://{HOST}:{port}", proc.pid


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def kiln_produce(url: str, n: int) -> float:
    with kilndb.connect(url) as db:
        segment = db.space("bench").segment("orders")
        start = time.perf_counter()
        for first in range(0, n, BATCH):
            segment.produce(
                [kilndb.Record(payload(i)) for i in range(first, min(first + BATCH, n))]
            )
        return n / (time.perf_counter() - start)


def kiln_consume(url: str, n: int) -> float:
    with kilndb.connect(url) as db:
        segment = db.space("bench").segment("orders")
        start = time.perf_counter()
        got, next_seq = 0, 1
        while True:
            page = segment.consume(min_seq=next_seq, limit=PAGE)
            got += len(page)
            if len(page) < PAGE:
                break
            next_seq = page[-1].sequence + 1
        if got != n:
            raise RuntimeError(f"consumed {got} entries, expected {n}")
        return n / (time.perf_counter() - start)


def redis_produce(port: int, n: int) -> float:
    assert redis is not None
    client = redis.Redis(host=HOST, port=port)
    start = time.perf_counter()
    for first in range(0, n, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(first + BATCH, n)):
            pipe.xadd("orders", {"v": value_bytes(i)})
        pipe.execute()
    rate = n / (time.perf_counter() - start)
    client.close()
    return rate


def redis_consume(port: int, n: int) -> float:
    assert redis is not None
    import orjson

    client = redis.Redis(host=HOST, port=port)
    start = time.perf_counter()
    got, low = 0, "-"
    while True:
        page: Any = client.xrange("orders", min=low, max="+", count=PAGE)
        for _entry_id, fields in page:
            orjson.loads(fields[b"v"])  # decode, as KilnDB's client does
        got += len(page)
        if len(page) < PAGE:
            break
        low = "(" + page[-1][0].decode()
    rate = n / (time.perf_counter() - start)
    client.close()
    if got != n:
        raise RuntimeError(f"XRANGE read {got} entries, expected {n}")
    return rate


def tenants(procs: Processes, root: Path, count: int) -> dict[str, float]:
    url, pid = start_kiln(
        procs, root / "tenants", "--idle-evict-after", "1", "--idle-check-interval", "0.2"
    )
    base = rss_mib(pid)
    conn = Connection(url)
    try:
        conn.hello("default")
        start = time.perf_counter()
        for t in range(count):
            conn.call("write", database=f"tenant-{t:04d}", store="s", key="k", value=t)
        first_ms = (time.perf_counter() - start) * 1000 / count
        touched = rss_mib(pid)
        open_now = conn.call("server_status")["metrics"]["open_databases"]
        deadline = time.monotonic() + 60
        while conn.call("server_status")["metrics"]["open_databases"] > 1:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        evicted = rss_mib(pid)
        start = time.perf_counter()
        sample = min(count, 100)
        for t in range(sample):
            conn.call("read", database=f"tenant-{t:04d}", store="s", key="k")
        reopen_ms = (time.perf_counter() - start) * 1000 / sample
    finally:
        conn.close()
    return {
        "first_ms": first_ms,
        "reopen_ms": reopen_ms,
        "rss_base": base,
        "rss_touched": touched,
        "rss_evicted": evicted,
        "open_peak": float(open_now),
    }


def run(sizes: Sizes, smoke: bool, root: Path, procs: Processes) -> Report:
    report = Report()
    url, _ = start_kiln(procs, root / "kiln")
    reason = "" if redis is not None else "skipped: redis-py not installed (bench extra)"
    if not reason:
        reason = ensure_installed("redis-server", "redis-server", smoke)
    port = 0 if reason else start_redis(procs, root, "always")
    n = sizes.entries

    log(f"row 1: produce {n:,} entries in batches of {BATCH}")
    produce = Cell(kiln_produce(url, n), "entries/s")
    report.add(
        f"segment produce, batches of {BATCH}",
        produce,
        [
            (
                f"{REDIS}: XADD, pipelines of {BATCH}",
                reason or Cell(redis_produce(port, n), "entries/s"),
            )
        ],
    )
    log(f"row 2: consume {n:,} entries, pages of {PAGE}")
    consume = Cell(kiln_consume(url, n), "entries/s")
    report.add(
        f"segment consume, pages of {PAGE:,}",
        consume,
        [
            (
                f"{REDIS}: XRANGE, pages of {PAGE:,}",
                reason or Cell(redis_consume(port, n), "entries/s"),
            )
        ],
    )
    log(f"row 3: {sizes.tenants:,} tenant databases, idle eviction after 1 s")
    t = tenants(procs, root, sizes.tenants)
    label = f"{sizes.tenants:,} tenants"
    report.add(f"{label}: first write to each (open + create)", Cell(t["first_ms"], "ms"), [])
    report.add(f"{label}: reopen of an evicted tenant", Cell(t["reopen_ms"], "ms"), [])
    report.add(
        f"{label}: server RSS empty / all touched / after eviction",
        f"{t['rss_base']:.0f} / {t['rss_touched']:.0f} / {t['rss_evicted']:.0f} MiB",
        [],
    )
    for label, goal_label in (
        (f"segment produce, batches of {BATCH}", "segment produce >= 1.5x Redis Streams XADD"),
        (f"segment consume, pages of {PAGE:,}", "segment consume >= 1.5x Redis Streams XRANGE"),
    ):
        line = next(ln for ln in report.lines if ln.label == label and ln.peer)
        ratio = line.ratio
        report.targets.append(
            Target(
                None if ratio is None else ratio >= 1.5,
                goal_label,
                "not measured" if ratio is None else f"{ratio:.2f}x (target 1.5x)",
            )
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds, no apt")
    options = parser.parse_args(argv)
    sizes = SMOKE if options.smoke else FULL
    procs = Processes()
    root = Path(tempfile.mkdtemp(prefix="kiln-streams-bench-"))
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        report = run(sizes, options.smoke, root, procs)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    print(render(report, issue=ISSUE))
    return 0


if __name__ == "__main__":
    sys.exit(main())

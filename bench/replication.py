#!/usr/bin/env python3
"""Replication benchmark: a ``kiln serve`` leader and a follower process on loopback.

Rows (all durable: ``sync="always"`` on both nodes):

1. catch-up: a follower started ``--facts`` facts behind (1M) until it holds them all;
2. replication throughput: pipelined writes to the leader, facts/s reaching the follower;
3. follower lag under a steady 10,000 facts/s: commit on the leader to delivery by the
   follower's changefeed, p50/p99;
4. the cost of ``replicas=1``: one-at-a-time writes acknowledged by the leader alone
   versus by the leader and one follower.

    python bench/replication.py            # full run (``make bench``)
    python bench/replication.py --smoke    # tiny sizes, a few seconds
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import kilndb
from server import (
    HOST,
    Cell,
    Processes,
    Report,
    kiln_pipelined,
    log,
    payload,
    percentile,
    render,
)
from streams import start_kiln

#: The issue these rows report on, in the table's footer.
ISSUE = "5"


@dataclass(frozen=True)
class Sizes:
    behind: int  # facts the follower starts behind
    pipelined: int  # writes for the throughput row
    rate: int  # steady facts/s for the lag row
    seconds: float  # duration of the lag row
    one_at_a_time: int  # writes per case of the replicas row


FULL = Sizes(1_000_000, 100_000, 10_000, 5.0, 2_000)
SMOKE = Sizes(3_000, 2_000, 1_000, 1.0, 100)


def last_position(url: str) -> int:
    try:
        with kilndb.connect(url) as db:
            return int(db.stats()["last_position"])
    except kilndb.UnavailableError:
        return 0  # a follower's copy that does not exist yet


def wait_until(url: str, position: int, timeout: float) -> float:
    """Seconds until ``url`` holds ``position``."""
    start = time.perf_counter()
    while last_position(url) < position:
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"{url} did not reach position {position} in {timeout} s")
        time.sleep(0.05)
    return time.perf_counter() - start


def load(url: str, n: int) -> int:
    with kilndb.connect(url) as db:
        for first in range(0, n, 1000):
            db.write_many(
                kilndb.Write("load", f"k{i % 10_000}", payload(i))
                for i in range(first, min(first + 1000, n))
            )
        return int(db.stats()["last_position"])


def follower_lag(leader: str, follower: str, sizes: Sizes) -> tuple[float, float, int, int]:
    """(p50 ms, p99 ms, delivered, sent) at a steady rate."""
    lags: list[float] = []
    total = int(sizes.rate * sizes.seconds)
    start_after = last_position(follower)
    done = threading.Event()

    def listen() -> None:
        with kilndb.connect(follower) as db, db.subscribe(["lag"], after=start_after) as sub:
            while len(lags) < total and not done.is_set():
                fact = sub.get(timeout=0.5)
                if fact is not None:
                    lags.append((time.time() - fact.value["t"]) * 1000)

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.3)
    tick = 0.01
    per_tick = max(1, int(sizes.rate * tick))
    with kilndb.connect(leader) as db:
        start = time.time()
        sent = 0
        while sent < total:
            due = start + (sent // per_tick) * tick
            if (pause := due - time.time()) > 0:
                time.sleep(pause)
            k = min(per_tick, total - sent)
            now = time.time()
            db.write_many(
                kilndb.Write("lag", f"k{sent + j}", {"t": now, "i": sent + j}) for j in range(k)
            )
            sent += k
    listener.join(sizes.seconds + 30)
    done.set()
    return percentile(lags, 50), percentile(lags, 99), len(lags), total


def one_at_a_time(url: str, n: int, replicas: int | None) -> float:
    with kilndb.connect(url) as db:
        store = db.store("single")
        start = time.perf_counter()
        for i in range(n):
            store.write(f"k{i % 100}", {"i": i}, replicas=replicas)
        return n / (time.perf_counter() - start)


def run(sizes: Sizes, root: Path, procs: Processes) -> Report:
    report = Report()
    leader_url, _ = start_kiln(procs, root / "leader")
    port = int(leader_url.rsplit(":", 1)[1])

    log(f"row 1: loading {sizes.behind:,} facts, then a follower catches up")
    last = load(leader_url, sizes.behind)
    follower_url, _ = start_kiln(procs, root / "follower", "--replica-of", f"{HOST}:{port}")
    seconds = wait_until(follower_url, last, timeout=600)
    report.add(
        f"catch-up of a follower {sizes.behind:,} facts behind",
        Cell(sizes.behind / seconds, "facts/s"),
        [],
    )

    log(f"row 2: {sizes.pipelined:,} pipelined writes, until the follower has them")
    start = time.perf_counter()
    kiln_pipelined(port, "piped", sizes.pipelined)
    target = last_position(leader_url)
    wait_until(follower_url, target, timeout=600)
    elapsed = time.perf_counter() - start
    report.add(
        "replication throughput (pipelined writes, facts/s reaching the follower)",
        Cell(sizes.pipelined / elapsed, "facts/s"),
        [],
    )

    log(f"row 3: follower lag at {sizes.rate:,} facts/s")
    p50, p99, got, sent = follower_lag(leader_url, follower_url, sizes)
    note = "" if got == sent else f" ({got:,}/{sent:,} delivered)"
    report.add(f"follower lag p50 at {sizes.rate:,} facts/s{note}", Cell(p50, "ms"), [])
    report.add(f"follower lag p99 at {sizes.rate:,} facts/s{note}", Cell(p99, "ms"), [])

    log("row 4: one-at-a-time writes, leader-only vs replicas=1")
    alone = one_at_a_time(leader_url, sizes.one_at_a_time, 0)
    replicated = one_at_a_time(leader_url, sizes.one_at_a_time, 1)
    report.add(
        "one-at-a-time writes acknowledged with replicas=1",
        Cell(replicated, "writes/s"),
        [("the same acknowledged by the leader alone", Cell(alone, "writes/s"))],
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    options = parser.parse_args(argv)
    sizes = SMOKE if options.smoke else FULL
    procs = Processes()
    root = Path(tempfile.mkdtemp(prefix="kiln-replication-bench-"))

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        report = run(sizes, root, procs)
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

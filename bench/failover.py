#!/usr/bin/env python3
"""Automatic failover benchmark: how long a database takes no writes when its leader dies.

Three ``kiln serve`` processes on loopback hold their leadership through a real etcd
(``--coordinator``, ``--min-insync-replicas 1``, the default ``--leader-ttl`` of 10 s).
A writer sends one write after another, each with an ``id``, to whichever node answers
as the leader. Each round kill -9s the leader and times the gap from the kill to the
first write acknowledged by the new leader; the killed node is then restarted (it
rejoins as a follower) before the next round. Rows: p50 and max over the rounds, beside
the goal (the TTL plus 3 s) and Patroni's default TTL (30 s) for reference — a Patroni
failover cannot start before its leader key expires.

A second table: durable write throughput of the three-node cluster with
``--min-insync-replicas 1`` (every write on a follower before it is answered, the
in-sync set published in etcd) against a lone ``kiln serve``, both pipelined.

    python bench/failover.py            # 10 kills (``make bench``)
    python bench/failover.py --smoke    # one kill with a 2 s TTL
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
from pathlib import Path

import kilndb
from server import Output, Processes, free_port, kiln_pipelined, log, percentile

PATRONI_TTL = 30.0
GOAL_SLACK = 3.0


def start_etcd(procs: Processes, root: Path) -> str:
    script = Path(__file__).resolve().parents[1] / "scripts" / "install-etcd.sh"
    subprocess.run(["bash", str(script)], check=True, stdout=subprocess.DEVNULL)
    client, peer = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    procs.start(
        [
            "etcd",
            "--data-dir",
            str(root / "etcd"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"default={peer}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return "etcd://" + client.removeprefix("http://")


def start_node(
    procs: Processes, root: Path, name: str, etcd: str, ttl: float, port: int
) -> subprocess.Popen[str]:
    kiln = Path(sys.executable).with_name("kiln")
    args = [str(kiln)] if kiln.exists() else [sys.executable, "-m", "kilndb.cli"]
    args += ["--data", str(root / name), "serve", "--port", str(port), "--http-port", "0"]
    args += ["--node-name", name, "--coordinator", etcd, "--leader-ttl", str(ttl)]
    args += ["--min-insync-replicas", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = procs.start(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    Output(proc).wait_for("tcp://127.0.0.1:", 30)
    return proc


def leader_of(urls: dict[str, str]) -> str | None:
    """The node whose server says it leads ``default``."""
    for name, url in urls.items():
        try:
            with kilndb.connect(url, follow_leader=False, timeout=2, reconnect_timeout=0) as db:
                reply = db._call("cluster")
        except kilndb.KilnError:
            continue
        seen = reply.get("coordinator") or {}
        if "default" in seen.get("led", {}):
            return name
    return None


def write_somewhere(urls: dict[str, str], key: str) -> str:
    """Write ``key`` (with an id) through the first node that takes it; its name."""
    for name, url in urls.items():
        try:
            with kilndb.connect(url, timeout=2, reconnect_timeout=0) as db:
                db.store("bench").write(key, {"at": time.time()}, id=key)
            return name
        except kilndb.KilnError:
            continue
    raise kilndb.UnavailableError("no node took the write")


def failover_gaps(root: Path, rounds: int, ttl: float) -> list[float]:
    procs = Processes()
    try:
        etcd = start_etcd(procs, root)
        ports = {name: free_port() for name in ("n1", "n2", "n3")}
        nodes = {n: start_node(procs, root, n, etcd, ttl, p) for n, p in ports.items()}
        urls = {name: f"tcp://127.0.0.1:{port}" for name, port in ports.items()}
        deadline = time.monotonic() + 60
        while True:  # the first write creates the database and elects its leader
            try:
                write_somewhere(urls, "first")
                break
            except kilndb.KilnError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        gaps = []
        for round_ in range(rounds):
            leader = None
            while leader is None:
                leader = leader_of(urls)
                time.sleep(0.1)
            time.sleep(1.0)  # the followers in step
            killed = time.monotonic()
            nodes[leader].send_signal(signal.SIGKILL)
            nodes[leader].wait()
            others = {n: u for n, u in urls.items() if n != leader}
            i = 0
            while True:
                i += 1
                try:
                    write_somewhere(others, f"r{round_}-{i}")
                    break
                except kilndb.KilnError:
                    time.sleep(0.05)
            gaps.append(time.monotonic() - killed)
            log(f"round {round_ + 1}: {leader} killed, writes again after {gaps[-1]:.2f} s")
            nodes[leader] = start_node(procs, root, leader, etcd, ttl, ports[leader])
        return gaps
    finally:
        procs.stop_all()


def throughput(root: Path, writes: int) -> tuple[float, float]:
    """(three nodes with one in-sync replica, a lone server): durable writes/s."""
    procs = Processes()
    try:
        etcd = start_etcd(procs, root / "t")
        ports = {name: free_port() for name in ("n1", "n2", "n3")}
        for name, port in ports.items():
            start_node(procs, root / "t", name, etcd, 10.0, port)
        urls = {name: f"tcp://127.0.0.1:{port}" for name, port in ports.items()}
        write_somewhere(urls, "first")
        leader = None
        while leader is None:
            leader = leader_of(urls)
        time.sleep(1.0)
        start = time.perf_counter()
        kiln_pipelined(ports[leader], "tp", writes)
        cluster = writes / (time.perf_counter() - start)
    finally:
        procs.stop_all()
    procs = Processes()
    try:
        kiln = Path(sys.executable).with_name("kiln")
        port = free_port()
        proc = procs.start(
            [str(kiln), "--data", str(root / "lone"), "serve", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        Output(proc).wait_for("tcp://127.0.0.1:", 30)
        start = time.perf_counter()
        kiln_pipelined(port, "tp", writes)
        lone = writes / (time.perf_counter() - start)
    finally:
        procs.stop_all()
    return cluster, lone


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="one kill with a 2 s TTL")
    parser.add_argument("--rounds", type=int, help="kills (default 10)")
    options = parser.parse_args()
    ttl = 2.0 if options.smoke else 10.0
    rounds = options.rounds or (1 if options.smoke else 10)
    root = Path(tempfile.mkdtemp(prefix="kiln-failover-bench-"))
    try:
        gaps = failover_gaps(root / "f", rounds, ttl)
        cluster, lone = throughput(root, 2_000 if options.smoke else 50_000)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    goal = ttl + GOAL_SLACK
    p50, worst = percentile(gaps, 50), max(gaps)
    print(f"KilnDB automatic failover: {rounds} kill -9 of the leader, --leader-ttl {ttl:g} s")
    print(f"{'measure':<46} | {'KilnDB':>9} | reference")
    print(f"{'kill -9 to first acknowledged write, p50':<46} | {p50:>7.2f} s | goal {goal:g} s")
    print(
        f"{'kill -9 to first acknowledged write, max':<46} | {worst:>7.2f} s |"
        f" Patroni's default TTL alone: {PATRONI_TTL:g} s"
    )
    print(
        f"{'durable writes/s, 3 nodes, 1 in-sync replica':<46} | {cluster:>9,.0f} |"
        f" lone server: {lone:,.0f} ({cluster / lone:.2f}x)"
    )
    print()
    print("Goal (issue 15):")
    verdict = "PASS" if worst <= goal else "MISS"
    print(f"  {verdict}  failover within the TTL + {GOAL_SLACK:g} s: max {worst:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

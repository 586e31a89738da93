"""A Jepsen-style torture test of automatic failover: three ``kiln serve`` processes on a
real etcd with ``--min-insync-replicas 1``, writers that put an ``id`` on every write
(plain writes and ``expected_seq`` writes), and faults drawn at random for a bounded
time — kill -9 of the leader, SIGSTOP past its lease then SIGCONT, its link to etcd cut,
its links to the other nodes and clients cut, both at once (each node reaches etcd
through a fault-injecting proxy, and is reached through one: ``--advertise-url``), a
restart of etcd.

Afterwards, on every node: each acknowledged write is there exactly once with its value,
positions run without a gap, all nodes hold the same log, and no two acknowledged writes
share a store, key and seq. A write whose outcome was unknown may be there or not, but
never twice. The schedule comes from a seed (``KILN_TORTURE_SEED``, else random); a
failure names it, so the same schedule replays."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import kilndb
from tests.fixtures.etcd import EtcdProcess, free_port
from tests.fixtures.faultproxy import FaultProxy
from tests.processes import KILN, reap

pytestmark = pytest.mark.integration

TTL = 2.0
FAULT_SECONDS = 14.0
NODES = ("n1", "n2", "n3")


@dataclass
class Ledger:
    """What the writers were told."""

    acknowledged: dict[str, tuple[str, str, Any, int]] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Cluster:
    """Three nodes, each reaching etcd through a proxy of its own."""

    def __init__(self, root: Path, etcd: EtcdProcess) -> None:
        self.root = root
        host, port = etcd.endpoint.removeprefix("http://").rsplit(":", 1)
        self.proxies = {name: FaultProxy((host, int(port))) for name in NODES}
        self.ports = {name: free_port() for name in NODES}
        #: What the others (nodes and writers) reach each node through.
        self.fronts = {name: FaultProxy(("127.0.0.1", self.ports[name])) for name in NODES}
        self.urls = {
            name: "tcp://{}:{}".format(*front.address) for name, front in self.fronts.items()
        }
        self.processes: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str) -> None:
        proxy = self.proxies[name].endpoint.removeprefix("http://")
        self.processes[name] = subprocess.Popen(
            [
                str(KILN),
                "--data",
                str(self.root / name),
                "serve",
                "--port",
                str(self.ports[name]),
                "--http-port",
                "0",
                "--node-name",
                name,
                "--coordinator",
                f"etcd://{proxy}",
                "--leader-ttl",
                str(TTL),
                "--min-insync-replicas",
                "1",
                "--advertise-url",
                self.urls[name],
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def alive(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def leader(self) -> str | None:
        for name, url in self.urls.items():
            if not self.alive(name):
                continue
            try:
                with kilndb.connect(url, follow_leader=False, timeout=1, reconnect_timeout=0) as db:
                    seen = db._call("cluster").get("coordinator") or {}
            except kilndb.KilnError:
                continue
            if "default" in seen.get("led", {}):
                return name
        return None

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with_signal(process, signal.SIGCONT)
            reap(process)
        for proxy in [*self.proxies.values(), *self.fronts.values()]:
            proxy.close()


def with_signal(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it died meanwhile
        os.kill(process.pid, sig)


def writer(cluster: Cluster, ledger: Ledger, number: int, stop: threading.Event) -> None:
    """Writes until ``stop``: plain ones and expected_seq ones, each with an id, retried
    with the same id on the next node until acknowledged or given up."""
    rng = random.Random(number)
    count = 0
    while not stop.is_set():
        count += 1
        write_id = f"w{number}-{count}"
        store = "plain" if count % 2 else "cas"
        key = f"k{number}-{rng.randrange(8)}"
        for attempt in range(40):
            url = list(cluster.urls.values())[(count + attempt) % len(cluster.urls)]
            try:
                with kilndb.connect(url, timeout=3, reconnect_timeout=0) as db:
                    handle = db.store(store)
                    if store == "cas":
                        current = handle.read(key)
                        seq = 0 if current is None else current.seq
                        fact = handle.write(key, write_id, id=write_id, expected_seq=seq)
                    else:
                        fact = handle.write(key, write_id, id=write_id)
                with ledger.lock:
                    ledger.acknowledged[write_id] = (store, key, write_id, fact.seq)
                    ledger.unknown.discard(write_id)
                break
            except kilndb.ConflictError:
                with ledger.lock:
                    if write_id not in ledger.unknown:
                        break  # refused for certain: never applied
                # An earlier attempt may have been applied: its id answers the retry.
            except kilndb.KilnError:
                with ledger.lock:
                    ledger.unknown.add(write_id)
                time.sleep(0.1)


def faults(cluster: Cluster, etcd: EtcdProcess, rng: random.Random, log: list[str]) -> None:
    deadline = time.monotonic() + FAULT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 3.0))
        leader = cluster.leader() or rng.choice(NODES)
        fault = rng.choice(("kill", "pause", "cut", "partition", "isolate", "etcd"))
        log.append(f"{fault} {leader}")
        if fault == "kill":
            process = cluster.processes[leader]
            with_signal(process, signal.SIGKILL)
            process.wait()
            time.sleep(rng.uniform(0.5, 2.0))
            cluster.start(leader)
        elif fault == "pause":
            process = cluster.processes[leader]
            with_signal(process, signal.SIGSTOP)
            time.sleep(TTL * rng.uniform(1.2, 2.0))
            with_signal(process, signal.SIGCONT)
        elif fault in ("cut", "partition", "isolate"):
            links = []
            if fault in ("cut", "isolate"):  # from etcd: its lease runs out
                links.append(cluster.proxies[leader])
            if fault in ("partition", "isolate"):  # from the other nodes and the writers
                links.append(cluster.fronts[leader])
            for link in links:
                link.cut()
            time.sleep(TTL * rng.uniform(1.2, 2.0))
            for link in links:
                link.heal()
        else:
            etcd.stop()
            time.sleep(rng.uniform(0.5, 2.0))
            etcd.start()


def logs(cluster: Cluster) -> dict[str, list[tuple[int, str, str, str, int, Any]]]:
    """Every node's log: (position, id, store, key, seq, value) in position order."""
    found = {}
    for name, url in cluster.urls.items():
        with kilndb.connect(url, follow_leader=False, timeout=10, reconnect_timeout=5) as db:
            found[name] = [(f.position, f.id, f.store, f.key, f.seq, f.value) for f in db.replay()]
    return found


def settled(cluster: Cluster) -> dict[str, list[tuple[int, str, str, str, int, Any]]] | None:
    try:
        found = logs(cluster)
    except kilndb.KilnError:
        return None
    if cluster.leader() is None or len({len(log) for log in found.values()}) != 1:
        return None
    return found


def test_no_acknowledged_write_is_lost_or_doubled_under_faults(
    tmp_path: Path, etcd: EtcdProcess
) -> None:
    seed = int(os.environ.get("KILN_TORTURE_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    cluster = Cluster(tmp_path, etcd)
    ledger = Ledger()
    schedule: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=writer, args=(cluster, ledger, n, stop), daemon=True)
        for n in range(3)
    ]
    try:
        for name in NODES:
            cluster.start(name)
        for thread in threads:
            thread.start()
        faults(cluster, etcd, rng, schedule)
        stop.set()
        for thread in threads:
            thread.join(60)
        for name in NODES:  # every node back, every link healed
            cluster.proxies[name].heal()
            cluster.fronts[name].heal()
            if not cluster.alive(name):
                cluster.start(name)
        deadline = time.monotonic() + 60
        found = None
        while found is None and time.monotonic() < deadline:
            found = settled(cluster)
            time.sleep(0.5)
        context = f"seed {seed}, faults {schedule}"
        assert found is not None, f"the cluster did not settle ({context})"
        reference = next(iter(found.values()))
        for name, log in found.items():
            assert log == reference, f"{name} holds another log ({context})"
        positions = [entry[0] for entry in reference]
        assert positions == list(range(1, len(positions) + 1)), f"a gap ({context})"
        ids = [entry[1] for entry in reference]
        assert len(ids) == len(set(ids)), f"a write applied twice ({context})"
        by_id = {entry[1]: entry for entry in reference}
        for write_id, (store, key, value, seq) in ledger.acknowledged.items():
            entry = by_id.get(write_id)
            assert entry is not None, f"acknowledged {write_id} lost ({context})"
            assert entry[2:] == (store, key, seq, value), f"{write_id} changed ({context})"
        seqs = [(e[2], e[3], e[4]) for e in reference if e[1] in ledger.acknowledged]
        assert len(seqs) == len(set(seqs)), f"two writes share a seq ({context})"
        assert ledger.acknowledged, f"no write was acknowledged at all ({context})"
    finally:
        stop.set()
        cluster.close()

"""Replication between real ``kiln serve`` processes: a follower SIGKILLed and restarted
under writes converges to exactly the leader's log."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import kilndb
from tests.processes import reap, start_server
from tests.replication.test_follower import _digest, _eventually


@pytest.mark.integration
def test_a_killed_follower_process_converges(tmp_path: Path) -> None:
    leader, leader_url = start_server(tmp_path / "leader", "--http-port", "-1")
    address = leader_url.removeprefix("tcp://")
    follower_args = ("--http-port", "0", "--replica-of", address, "--log-level", "warning")
    follower, follower_url = start_server(tmp_path / "follower", *follower_args)
    stop = threading.Event()
    written = [0]

    def write() -> None:
        with kilndb.connect(leader_url) as db:
            while not stop.is_set():
                db.store("s").write(f"k{written[0] % 17}", written[0])
                written[0] += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(3):
            time.sleep(0.5)
            os.kill(follower.pid, signal.SIGKILL)
            follower.wait(10)
            reap(follower)
            follower, follower_url = start_server(tmp_path / "follower", *follower_args)
        stop.set()
        writer.join(30)
        assert written[0] > 100
        _eventually(lambda: _digest(follower_url) == _digest(leader_url), timeout=60)
        with kilndb.connect(follower_url) as db:
            status = db._call("server_status")
        http = next(a for a in status["addresses"] if a.startswith("http"))
        with urllib.request.urlopen(http + "/v1/replication", timeout=10) as reply:
            replication = json.loads(reply.read())
        assert replication["role"] == "follower"
        assert replication["following"][0]["state"] == "streaming"
    finally:
        stop.set()
        writer.join(30)
        for process in (follower, leader):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
            reap(process)


@pytest.mark.integration
def test_writes_acknowledged_with_a_replica_survive_the_leader(tmp_path: Path) -> None:
    leader, leader_url = start_server(tmp_path / "leader", "--http-port", "-1")
    address = leader_url.removeprefix("tcp://")
    followers = [
        start_server(tmp_path / f"follower{n}", "--http-port", "-1", "--replica-of", address)
        for n in range(2)
    ]
    acknowledged: list[tuple[str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def write(worker: int) -> None:
        try:
            with kilndb.connect(leader_url) as db:
                i = 0
                while not stop.is_set():
                    key = f"w{worker}-{i}"
                    fact = db.store("s").write(key, i, replicas=1)
                    with lock:
                        acknowledged.append((key, fact.id))
                    i += 1
        except kilndb.KilnError:
            pass  # the leader died under us: the write in flight was never acknowledged

    try:
        with kilndb.connect(leader_url) as db:
            db.store("s").write("first", 0)  # the database exists before followers sync
        for _, url in followers:  # and every follower holds a copy before the writes
            _eventually(functools.partial(_holds_a_copy, url))
        writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for writer in writers:
            writer.start()
        _eventually(lambda: len(acknowledged) >= 200, timeout=60)
        os.kill(leader.pid, signal.SIGKILL)
        leader.wait(10)
        stop.set()
        for writer in writers:
            writer.join(30)
        positions = [_last(url) for _, url in followers]
        best = followers[positions.index(max(positions))][1]
        with kilndb.connect(best) as db:
            db._call("promote")
            store = db.store("s")
            missing = [
                key
                for key, fact_id in acknowledged
                if (found := store.read(key)) is None or found.id != fact_id
            ]
        assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:5]}"
    finally:
        stop.set()
        for process in (leader, *(p for p, _ in followers)):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
            reap(process)


@pytest.mark.integration
def test_a_killed_leader_with_an_unreplicated_tail_rejoins_and_converges(
    tmp_path: Path,
) -> None:
    quiet = ("--http-port", "-1", "--log-level", "warning")
    old, old_url = start_server(tmp_path / "a", *quiet)
    follower_args = (*quiet, "--replica-of", old_url.removeprefix("tcp://"))
    new, new_url = start_server(tmp_path / "b", *follower_args)
    processes = [old, new]
    try:
        with kilndb.connect(old_url) as db:
            for i in range(300):
                db.store("s").write(f"k{i % 13}", i)
        _eventually(lambda: _digest(new_url) == _digest(old_url), timeout=60)
        shared = _last(new_url)
        os.kill(new.pid, signal.SIGKILL)  # the follower is gone: nothing more is shipped
        new.wait(10)
        with kilndb.connect(old_url) as db:
            for i in range(50):
                db.store("s").write(f"unreplicated-{i}", i)
        os.kill(old.pid, signal.SIGKILL)
        old.wait(10)

        # The follower comes back, its leader dead, and is promoted by hand.
        new, new_url = start_server(tmp_path / "b", *follower_args)
        processes.append(new)
        with kilndb.connect(new_url) as db:
            with pytest.raises(kilndb.ReadOnlyReplicaError):  # a copy, even unreachable
                db.store("s").write("too-early", 1)
            db._call("promote")
            for i in range(20):
                db.store("s").write(f"after-failover-{i}", i)

        # The old leader restarts as a follower of the new one: its tail is dropped.
        rejoin = (*quiet, "--replica-of", new_url.removeprefix("tcp://"))
        old, old_url = start_server(tmp_path / "a", *rejoin)
        processes.append(old)
        _eventually(lambda: _digest(old_url) == _digest(new_url), timeout=60)
        with kilndb.connect(old_url) as db:
            (state,) = db._call("server_status")["replication"]["following"]
            assert state["truncations"] == 1 and state["full_resyncs"] == 0
            assert db.store("s").read("unreplicated-0") is None
            assert db.store("s").read("after-failover-19") is not None
        assert _last(old_url) == shared + 20
        assert list((tmp_path / "a" / "default").glob("*.divergent-*"))
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
            reap(process)


def _holds_a_copy(url: str) -> bool:
    return _last(url) >= 1


def _last(url: str) -> int:
    with kilndb.connect(url) as db:
        return int(db.stats()["last_position"])


CHAOS_WRITES = int(os.environ.get("KILN_CHAOS_WRITES", "100000"))


@pytest.mark.integration
def test_followers_converge_through_kills_and_cut_links(tmp_path: Path) -> None:
    import random

    from tests.replication.proxy import CuttingProxy

    leader, leader_url = start_server(tmp_path / "leader", "--http-port", "-1")
    host, port = leader_url.removeprefix("tcp://").rsplit(":", 1)
    with kilndb.connect(leader_url) as db:
        db.store("s").write("first", 0)
    proxies = [CuttingProxy((host, int(port))) for _ in range(2)]

    def start_follower(n: int) -> tuple[subprocess.Popen[str], str]:
        proxy_host, proxy_port = proxies[n].address
        return start_server(
            tmp_path / f"follower{n}",
            "--http-port",
            "-1",
            "--replica-of",
            f"{proxy_host}:{proxy_port}",
            "--log-level",
            "error",
        )

    followers = [start_follower(n) for n in range(2)]
    stop = threading.Event()
    kills = [0]

    def chaos() -> None:
        rng = random.Random(7)
        while not stop.wait(rng.uniform(0.2, 0.8)):
            if rng.random() < 0.6:
                rng.choice(proxies).cut()
            else:
                n = rng.randrange(2)
                process, _ = followers[n]
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
                reap(process)
                followers[n] = start_follower(n)
                kills[0] += 1

    def write(worker: int, count: int) -> None:
        with kilndb.connect(leader_url) as db:
            for first in range(0, count, 50):
                db.write_many(
                    kilndb.Write("s", f"w{worker}-{i % 500}", i)
                    for i in range(first, min(first + 50, count))
                )

    agitator = threading.Thread(target=chaos)
    agitator.start()
    try:
        per_writer = CHAOS_WRITES // 4
        writers = [threading.Thread(target=write, args=(n, per_writer)) for n in range(4)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(600)
        stop.set()
        agitator.join(30)
        assert kills[0] >= 1 and sum(p.cuts for p in proxies) >= 1
        expected = _digest(leader_url)
        assert expected[0] == 4 * per_writer + 1
        for _, url in followers:

            def caught_up(url: str = url) -> bool:
                return _digest(url) == expected

            _eventually(caught_up, timeout=180)
        # Nothing was compacted and no leader changed: every follower resumed by
        # extending its log — no full copy and no truncation was ever required.
        for _, url in followers:
            with kilndb.connect(url) as db:
                status = db._call("server_status")["replication"]["following"]
                assert all(f["full_resyncs"] == 0 for f in status)
                assert all(f["truncations"] == 0 for f in status)
    finally:
        stop.set()
        for proxy in proxies:
            proxy.close()
        for process in (leader, *(p for p, _ in followers)):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
            reap(process)

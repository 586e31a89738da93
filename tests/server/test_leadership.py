"""Leadership held through a real etcd: one leader per database, chosen by etcd, taken
over automatically when it stops, dies or freezes; nothing acknowledged is lost."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kilndb
from kilndb.server import Server
from tests.processes import reap, start_server
from tests.server.test_sockets import RawClient

pytestmark = pytest.mark.integration

TTL = 2.0


def wait_for(check: Callable[[], Any], seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {check}")


def cluster_of(url: str) -> dict[str, Any]:
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    client = RawClient((host, int(port)))
    try:
        client.send({"op": "cluster"})
        reply = client.receive() or {}
    finally:
        client.close()
    assert reply.get("ok"), reply
    return reply


def leader_of(url: str, database: str = "default") -> dict[str, Any] | None:
    leaders: dict[str, Any] = cluster_of(url)["coordinator"]["leaders"]
    return leaders.get(database)


@pytest.fixture
def nodes(tmp_path: Path, etcd: Any) -> Iterator[list[Server]]:
    servers = [
        Server(
            data=tmp_path / name,
            port=0,
            node_name=name,
            coordinator=etcd.url,
            cluster_name="t",
            leader_ttl=TTL,
            min_insync_replicas=1,
        ).start()
        for name in ("n1", "n2", "n3")
    ]
    yield servers
    for server in servers:
        server.stop()


def current_leader(servers: list[Server]) -> Server:
    def found() -> Server | None:
        leading = [s for s in servers if s.leadership is not None and s.leadership.led]
        return leading[0] if len(leading) == 1 else None

    leader: Server = wait_for(found)
    return leader


def first_write(servers: list[Server]) -> Server:
    """No database exists before a write creates one: the node written to leads it."""
    with kilndb.connect(servers[0].url) as db:
        db.store("s").write("first", 0, id="first")
    return current_leader(servers)


def test_one_node_leads_and_the_others_follow_it(nodes: list[Server]) -> None:
    leader = first_write(nodes)
    with kilndb.connect(leader.url) as db:
        for i in range(20):
            db.store("s").write(f"k{i}", i, id=f"w{i}")
    for server in nodes:
        record = wait_for(functools.partial(leader_of, server.url))
        assert record["node"] == leader.config.node_name and record["epoch"] >= 1
    seen = cluster_of(leader.url)["coordinator"]
    default = seen["databases"]["default"]
    assert default["role"] == "leader" and default["leader"] == leader.config.node_name
    # Both followers hold every acknowledged write: both are in sync, and named so.
    assert sorted(default["in_sync"]) == sorted(
        str(s.config.node_name) for s in nodes if s is not leader
    )
    assert {f["node"] for f in default["followers"]} == set(default["in_sync"])
    assert seen["elections"][0]["database"] == "default"
    assert seen["elections"][0]["seconds"] >= 0
    metrics = leader.status()["metrics"]
    assert metrics["coordinator_databases_led"] == 1
    for follower in (s for s in nodes if s is not leader):
        with kilndb.connect(follower.url, follow_leader=False) as db:  # its own copy
            store = db.store("s")
            wait_for(lambda: store.read("k19") is not None)  # noqa: B023
            with pytest.raises(kilndb.ReadOnlyReplicaError):
                db._call("write", store="s", key="x", value=1)


def test_a_stopped_leader_is_replaced_and_no_acknowledged_write_is_lost(
    nodes: list[Server],
) -> None:
    first = first_write(nodes)
    with kilndb.connect(first.url) as db:
        for i in range(50):
            db.store("s").write(f"k{i}", i, id=f"w{i}")
    epoch = first.leadership.led["default"] if first.leadership else 0
    first.stop()  # revokes its lease: the others take over at once
    rest = [s for s in nodes if s is not first]
    second = current_leader(rest)
    assert second.leadership is not None and second.leadership.led["default"] > epoch
    with kilndb.connect(second.url) as db:
        for i in range(50):
            assert db.store("s").read(f"k{i}") is not None, i
        db.store("s").write("after", 1, id="after")
    nodes.remove(first)


def test_a_write_to_a_new_database_elects_its_leader_everywhere(nodes: list[Server]) -> None:
    anywhere = nodes[2]
    with kilndb.connect(anywhere.url, "fresh") as db:
        db.store("s").write("k", 1)
    for server in nodes:
        record = wait_for(functools.partial(leader_of, server.url, "fresh"))
        assert record["node"] == "n3"


def start_node(data: Path, name: str, etcd: Any) -> tuple[subprocess.Popen[str], str]:
    return start_server(
        data,
        "--node-name",
        name,
        "--coordinator",
        etcd.url,
        "--cluster-name",
        "p",
        "--leader-ttl",
        str(TTL),
        "--http-port",
        "0",
        "--min-insync-replicas",
        "1",
    )


def process_leader(urls: dict[str, str]) -> str:
    def found() -> str | None:
        for url in urls.values():
            try:
                record = leader_of(url)
            except (OSError, AssertionError):
                continue
            if record is not None:
                return str(record["node"])
        return None

    leader: str = wait_for(found)
    return leader


def test_a_killed_or_frozen_leader_is_replaced_and_refuses_writes_on_waking(
    tmp_path: Path, etcd: Any
) -> None:
    processes: dict[str, subprocess.Popen[str]] = {}
    urls: dict[str, str] = {}
    try:
        for name in ("n1", "n2", "n3"):
            processes[name], urls[name] = start_node(tmp_path / name, name, etcd)
        with kilndb.connect(urls["n1"]) as db:
            db.store("s").write("first", 0, id="first")
        first = process_leader(urls)
        with kilndb.connect(urls[first]) as db:
            for i in range(30):
                db.store("s").write(f"a{i}", i, id=f"a{i}")
        # kill -9: its lease expires after the TTL, and another node takes the lead.
        processes[first].send_signal(signal.SIGKILL)
        reap(processes.pop(first))
        killed_url = urls.pop(first)
        second = wait_for(lambda: (n := process_leader(urls)) != first and n, seconds=TTL * 4 + 10)
        with kilndb.connect(urls[second]) as db:
            for i in range(30):
                assert db.store("s").read(f"a{i}") is not None, i
            db.store("s").write("b", 1, id="b")
        # SIGSTOP past the lease, then SIGCONT: on waking it takes no write.
        frozen = processes[second]
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            third = wait_for(
                lambda: (
                    (n := process_leader({k: v for k, v in urls.items() if k != second})) != second
                    and n
                ),
                seconds=TTL * 4 + 10,
            )
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        with (
            kilndb.connect(urls[second], follow_leader=False) as db,
            pytest.raises((kilndb.ReadOnlyReplicaError, kilndb.UnavailableError)),
        ):
            db._call("write", store="s", key="late", value=1)
        with kilndb.connect(urls[third]) as db:
            assert db.store("s").read("b") is not None
            assert db.store("s").read("late") is None
        assert killed_url
    finally:
        for process in processes.values():
            reap(process)


def test_manual_promotion_is_refused_where_etcd_decides(nodes: list[Server]) -> None:
    leader = first_write(nodes)
    follower = next(s for s in nodes if s is not leader)
    with (
        kilndb.connect(follower.url, follow_leader=False) as db,
        pytest.raises(kilndb.InvalidArgumentError, match="etcd decides"),
    ):
        db._call("promote")


def test_a_planned_switchover_hands_the_lead_over_without_losing_a_write(
    nodes: list[Server],
) -> None:
    leader = first_write(nodes)
    target = next(s for s in nodes if s is not leader)
    acknowledged: list[str] = []
    stop = threading.Event()

    def write() -> None:
        with kilndb.connect(leader.url) as db:  # follows the lead when it moves
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    db.store("s").write(f"h{n}", n, id=f"h{n}")
                    acknowledged.append(f"h{n}")
                except kilndb.KilnError:
                    time.sleep(0.05)  # refused while the lead moves: retried

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.5)
        with kilndb.connect(leader.url, follow_leader=False) as db:
            moved = db._call("promote", to=target.config.node_name)
        assert moved["from"] == leader.config.node_name
        assert moved["to"] == target.config.node_name and moved["epoch"] >= 2
        time.sleep(0.5)
    finally:
        stop.set()
        writer.join(30)
    assert current_leader(nodes) is target
    with kilndb.connect(target.url) as db:
        missing = [key for key in acknowledged if db.store("s").read(key) is None]
    assert acknowledged and not missing
    with (
        kilndb.connect(target.url, follow_leader=False) as db,
        pytest.raises(kilndb.InvalidArgumentError, match="does not lead"),
    ):
        db._call("promote", to=leader.config.node_name, database="nothing-here")

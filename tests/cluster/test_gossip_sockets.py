"""Real UDP/TCP sockets on loopback: in-process nodes with a 0.1 s probe interval.

Every wait is a condition polled against a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kilndb.cluster import (
    AsyncGossip,
    ClusterConfig,
    Gossip,
    KeyEvent,
    MemberEvent,
    MemberState,
    SyncEvent,
)
from kilndb.cluster import messages as m
from kilndb.cluster.messages import parse_address
from kilndb.cluster.wire import Codec
from kilndb.errors import InvalidArgumentError

KEY = b"test-cluster-key-0123456789abcdef"
CFG = ClusterConfig(probe_interval=0.1)


def eventually(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check()`` holds; AssertionError after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout:.1f} s")
        time.sleep(0.005)
    return time.monotonic() - start


def state(g: Gossip, name: str) -> MemberState | None:
    member = g.member(name)
    return None if member is None else member.state


@pytest.fixture
def cluster() -> Iterator[list[Gossip]]:
    seed = Gossip("n0", "127.0.0.1:0", cluster_key=KEY, config=CFG)
    seed.start()
    nodes = [seed]
    try:
        for i in range(1, 4):
            node = Gossip(
                f"n{i}", "127.0.0.1:0", seeds=[str(seed.address)], cluster_key=KEY, config=CFG
            )
            node.start()
            nodes.append(node)
        eventually(lambda: all(len(g.members()) == 4 for g in nodes), 5.0)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def test_join_through_one_seed_and_metadata_spreads(cluster: list[Gossip]) -> None:
    seen: list[KeyEvent] = []
    cluster[3].on("new_key", seen.append)
    cluster[3].on("key_changed", seen.append)
    cluster[1].set("role", {"leads": ["billing"]})
    eventually(
        lambda: all(g.get("role", node="n1") == {"leads": ["billing"]} for g in cluster), 3.0
    )
    cluster[1].set("role", {"leads": []})
    eventually(lambda: all(g.get("role", node="n1") == {"leads": []} for g in cluster), 3.0)
    assert [(e.kind, e.node, e.key) for e in seen] == [
        ("new_key", "n1", "role"),
        ("key_changed", "n1", "role"),
    ]
    assert cluster[0].find("role") == {"n1": {"leads": []}}
    assert cluster[1].get("role") == {"leads": []} and cluster[1].items() == {"role": {"leads": []}}
    cluster[1].delete("role")
    eventually(lambda: all(g.find("role") == {} for g in cluster), 3.0)
    for g in cluster:
        assert {m.name: m.state for m in g.members()} == {
            f"n{i}": MemberState.ALIVE for i in range(4)
        }


def test_a_stopped_node_is_seen_dead_within_the_bound(cluster: list[Gossip]) -> None:
    dead: list[MemberEvent] = []
    cluster[0].on("member_dead", dead.append)
    cluster[2].stop()
    bound = CFG.detection_bound(4)
    took = eventually(
        lambda: all(state(g, "n2") is MemberState.DEAD for g in cluster[:2] + cluster[3:]),
        bound + 1.0,
    )
    assert took <= bound + 1.0  # one second of slack for thread scheduling on a busy CI box
    assert [e.member.name for e in dead] == ["n2"]
    counters = cluster[0].counters()
    assert counters["probes"] > 0 and counters["packets_in_udp"] > 0


def test_goodbye_is_left_at_once(cluster: list[Gossip]) -> None:
    cluster[3].leave()
    took = eventually(lambda: all(state(g, "n3") is MemberState.LEFT for g in cluster[:3]), 2.0)
    assert took < 0.5
    assert all(g.counters()["suspicions"] == 0 for g in cluster[:3])


def test_bad_packets_are_dropped_and_counted_and_the_node_keeps_working(
    cluster: list[Gossip],
) -> None:
    target = cluster[1]
    host, port = parse_address(str(target.address))
    before = target.counters()
    spy = Codec(KEY, time.time_ns() // 1000)
    valid = spy.seal(m.Packet("spy", m.Ping(1, "n1")), "udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.sendto(b"\x00garbage", (host, port))
        udp.sendto(Codec(b"wrong key", 1).seal(m.Packet("x", m.Ping(1, "n1")), "udp"), (host, port))
        udp.sendto(b"\x01" + b"z" * 1500, (host, port))
        udp.sendto(valid, (host, port))
        udp.sendto(valid, (host, port))  # the replay of a captured packet
        udp.settimeout(2.0)
        reply = Codec(KEY, 1).open(udp.recv(2048), "udp")  # the first copy was acked
        assert reply.body == m.Ack(1) and reply.sender == "n1"
    with socket.create_connection((host, port)) as tcp:
        tcp.sendall((10_000_000).to_bytes(4, "big"))  # a frame over max_tcp_bytes

    def dropped(reason: str) -> int:
        return target.counters()[f"dropped_{reason}"] - before[f"dropped_{reason}"]

    eventually(lambda: all(dropped(r) >= 1 for r in ("malformed", "bad_mac", "replay")), 2.0)
    eventually(lambda: dropped("oversize") >= 2, 2.0)
    target.set("still", "working")
    eventually(lambda: all(g.get("still", node="n1") == "working" for g in cluster), 3.0)
    assert all(state(g, "n1") is MemberState.ALIVE for g in cluster)


def test_async_gossip_runs_inside_the_callers_loop() -> None:
    async def scenario() -> dict[str, Any]:
        a = AsyncGossip("a", "127.0.0.1:0", config=CFG, cluster_key=KEY)
        await a.start()
        b = AsyncGossip("b", "127.0.0.1:0", seeds=[str(a.address)], config=CFG, cluster_key=KEY)
        syncs: list[SyncEvent] = []
        gossip_rounds: list[tuple[Any, ...]] = []
        ticks: list[float] = []
        joined = asyncio.Event()
        b.after("sync", syncs.append)
        b.before("gossip", lambda *args: gossip_rounds.append(("before", *args)))
        b.after("gossip", lambda *args: gossip_rounds.append(("after", *args)))
        b.every(0.05, lambda: ticks.append(time.monotonic()))

        async def on_join(event: MemberEvent) -> None:
            joined.set()

        a.on("member_joined", on_join)
        b.set("http", "127.0.0.1:8080")  # before start: published at start
        await b.start()
        async with asyncio.timeout(5):
            await joined.wait()
            while a.get("http", node="b") != "127.0.0.1:8080" or len(ticks) < 3:
                await asyncio.sleep(0.01)
        status = b.status()
        await b.leave()
        async with asyncio.timeout(2):
            while (member := a.member("b")) is None or member.state is not MemberState.LEFT:
                await asyncio.sleep(0.01)
        await a.stop()
        a_port = int(str(a.address).rpartition(":")[2])
        return {"syncs": syncs, "gossip": gossip_rounds, "status": status, "a_port": a_port}

    result = asyncio.run(scenario())
    assert [(s.peer, s.join) for s in result["syncs"]][:1] == [("a", True)]
    # Pokan's arguments: (address, port, bytes) before each gossip packet, (address,
    # port) after it, to the member gossiped with.
    a_port = result["a_port"]
    befores = [r for r in result["gossip"] if r[0] == "before"]
    afters = [r for r in result["gossip"] if r[0] == "after"]
    assert befores and afters
    assert all(r[1:3] == ("127.0.0.1", a_port) and r[3] > 0 for r in befores)
    assert all(r[1:] == ("127.0.0.1", a_port) for r in afters)
    status = result["status"]
    assert status["name"] == "b" and status["authenticated"] and status["running"]
    assert {mm["name"]: mm["state"] for mm in status["members"]} == {"a": "alive", "b": "alive"}
    assert status["counters"]["packets_out_tcp"] >= 1


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        Gossip("x", "nowhere")
    with pytest.raises(InvalidArgumentError):
        Gossip("", "127.0.0.1:0")
    g = AsyncGossip("x", "127.0.0.1:0")
    with pytest.raises(InvalidArgumentError):
        g.on("no_such_event", print)
    with pytest.raises(InvalidArgumentError):
        g.before("sync", print)
    with pytest.raises(TypeError):
        g.set("k", object())


def test_a_node_started_before_its_seed_joins_once_the_seed_is_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        seed_address = f"127.0.0.1:{probe.getsockname()[1]}"
    early = Gossip("early", "127.0.0.1:0", seeds=[seed_address], cluster_key=KEY, config=CFG)
    early.start()
    seed = Gossip("seed", seed_address, cluster_key=KEY, config=CFG)
    try:
        eventually(lambda: early.counters().get("send_errors", 0) >= 1, 5.0)  # refused
        seed.start()
        # Far sooner than the next push-pull (30 probe intervals): it keeps asking.
        took = eventually(lambda: state(early, "seed") is MemberState.ALIVE, 2.0)
        assert took < CFG.push_pull_every
        eventually(lambda: state(seed, "early") is MemberState.ALIVE, 2.0)
    finally:
        early.stop()
        seed.stop()


def test_callbacks_may_use_the_node_and_even_stop_it() -> None:
    seen: list[Any] = []
    node = Gossip("cb", "127.0.0.1:0", cluster_key=KEY, config=CFG)
    # A blocking method called from a callback (on the node's own thread) runs at once
    # instead of waiting for the loop that is running the callback.
    node.every(0.05, lambda: seen.append(node.get("k")))
    node.start()
    node.set("k", 1)
    eventually(lambda: 1 in seen, 2.0)
    node.every(0.05, node.stop)  # stopping from a callback returns, then the node stops
    eventually(lambda: node._loop is None, 2.0)
    node.stop()  # and stopping again is a no-op


def test_a_member_with_an_unusable_address_breaks_nothing() -> None:
    a = Gossip("a", "127.0.0.1:0", cluster_key=KEY, config=CFG)
    a.start()
    try:
        codec = Codec(KEY, boot=1)
        bogus = m.Packet("evil", m.Ping(1, "a"), (m.Alive("evil", "\u00dc" * 70 + ":7946", 0),))
        host, port = parse_address(str(a.address))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(codec.seal(bogus, "udp"), (host, port))
        eventually(lambda: a.member("evil") is not None, 2.0)
        eventually(lambda: a.counters()["send_errors"] >= 1, 3.0)  # it was probed
        c = Gossip("c", "127.0.0.1:0", seeds=[str(a.address)], cluster_key=KEY, config=CFG)
        c.start()
        try:  # a still probes, gossips and takes members in
            eventually(lambda: state(a, "c") is MemberState.ALIVE, 3.0)
            eventually(lambda: state(a, "evil") is MemberState.DEAD, 10.0)
            assert a.counters()["timer_errors"] == 0
        finally:
            c.stop()
    finally:
        a.stop()

"""What a Pokan user relies on: ``start``/``shutdown`` events, separate TCP and UDP
ports, the gossip interval, timestamped stores, SIGQUIT, and seed/peer roles.

Real sockets on 127.0.0.1 with a 0.1 s probe interval; every wait is a condition polled
against a deadline.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import kilndb
from kilndb.cluster import (
    PEER,
    SEED,
    AsyncGossip,
    ClusterConfig,
    Gossip,
    MemberState,
    ShutdownEvent,
    StartEvent,
    SyncEvent,
)
from kilndb.cluster import messages as m
from kilndb.cluster.__main__ import parse_args
from kilndb.cluster.wire import Codec, WireError, decode_payload, encode_payload
from kilndb.errors import InvalidArgumentError
from kilndb.server import Server, ServerConfig
from tests.cli.runner import kiln
from tests.cluster.test_gossip_sockets import CFG, KEY, cluster, eventually, state

__all__ = ["cluster"]  # the fixture: n0, a seed, and n1 … n3 joined through it
from tests.processes import start_server, stop


def _node(name: str, *seeds: str, **options: Any) -> Gossip:
    node = Gossip(name, "127.0.0.1:0", seeds=list(seeds), cluster_key=KEY, config=CFG, **options)
    node.start()
    return node


@pytest.fixture
def split_ports() -> Iterator[list[Gossip]]:
    """Three members, each on a UDP port and a different TCP port, joined through n0."""
    nodes = [_node("n0", tcp_port=0)]
    try:
        seed = str(nodes[0].tcp_address)
        nodes += [_node(f"n{i}", seed, tcp_port=0) for i in (1, 2)]
        eventually(lambda: all(len(g.members()) == 3 for g in nodes), 5.0)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


# -- start and shutdown ----------------------------------------------------------------


def test_start_tells_the_addresses_ports_role_interval_and_seeds() -> None:
    seen: list[StartEvent] = []
    seed = Gossip("s", "127.0.0.1:0", cluster_key=KEY, config=CFG, tcp_port=0)
    seed.on("start", seen.append)
    seed.start()
    try:
        peer = Gossip("p", "127.0.0.1:0", seeds=[str(seed.tcp_address)], cluster_key=KEY)
        peer.on("start", seen.append)
        peer.gossip_every(0.05)
        peer.start()
        try:
            first, second = seen
            assert first.name == "s" and first.role == SEED and first.seeds == ()
            assert first.address == seed.address and first.tcp_address == seed.tcp_address
            assert first.udp_port != first.tcp_port
            assert str(first.tcp_port) == str(seed.tcp_address).rsplit(":", 1)[1]
            assert first.gossip_interval == CFG.gossip_every and first.probe_interval == 0.1
            assert second.role == PEER and second.seeds == (seed.tcp_address,)
            assert second.udp_port == second.tcp_port  # one port unless told otherwise
            assert second.gossip_interval == 0.05
            assert second.to_json()["seeds"] == [seed.tcp_address]
        finally:
            peer.stop()
    finally:
        seed.stop()


def test_shutdown_fires_once_per_run_graceful_only_after_a_goodbye() -> None:
    seen: list[ShutdownEvent] = []
    awaited = threading.Event()

    async def slow(event: ShutdownEvent) -> None:
        await asyncio.sleep(0)
        awaited.set()  # an async callback is awaited before the node's tasks end

    node = Gossip("n", "127.0.0.1:0", cluster_key=KEY, config=CFG)
    node.on("shutdown", seen.append)
    node.on("shutdown", slow)
    node.start()
    address = node.address
    node.leave()
    assert seen == [ShutdownEvent("n", str(address), True)] and awaited.is_set()
    node.leave()  # not running: nothing more
    assert len(seen) == 1
    node.start()  # a new run fires again
    node.stop()
    assert [e.graceful for e in seen] == [True, False]


def test_a_shutdown_callback_that_stops_the_node_again_is_harmless() -> None:
    async def main() -> list[bool]:
        node = AsyncGossip("n", "127.0.0.1:0", cluster_key=KEY, config=CFG)
        seen: list[bool] = []

        async def again(event: ShutdownEvent) -> None:
            seen.append(event.graceful)
            await node.stop()

        node.on("shutdown", again)
        await node.start()
        await node.stop()
        return seen

    assert asyncio.run(main()) == [False]


# -- separate TCP and UDP ports ----------------------------------------------------------


def test_members_on_distinct_tcp_and_udp_ports_join_sync_gossip_and_leave(
    split_ports: list[Gossip],
) -> None:
    n0, n1, n2 = split_ports
    for node in split_ports:
        assert node.address != node.tcp_address
    seen_by_n2 = {member.name: member for member in n2.members()}
    assert seen_by_n2["n1"].address == n1.address
    assert seen_by_n2["n1"].tcp_address == n1.tcp_address  # learnt through n0
    synced: list[SyncEvent] = []
    n1.after("sync", synced.append)
    n1.gossip_every(0.02)
    n1.set("k", "v")
    eventually(lambda: n2.get("k", node="n1") == "v", 5.0)
    eventually(lambda: bool(synced), 10.0)  # push-pulls reach the TCP ports
    n2.leave()
    eventually(lambda: state(n0, "n2") is state(n1, "n2") is MemberState.LEFT, 5.0)


def test_a_member_with_one_port_and_members_with_two_work_together(
    split_ports: list[Gossip],
) -> None:
    single = _node("one", str(split_ports[1].tcp_address))
    try:
        assert single.address == single.tcp_address
        eventually(lambda: all(len(g.members()) == 4 for g in [*split_ports, single]), 5.0)
        single.set("from", "one")
        eventually(lambda: split_ports[2].get("from", node="one") == "one", 5.0)
        one = split_ports[0].member("one")
        assert one is not None and one.tcp_address == one.address
    finally:
        single.stop()


def test_records_without_a_tcp_port_or_a_role_read_as_before() -> None:
    # A member from before those fields sends three-field Alives and four-field records.
    old = orjson.dumps(
        [
            "old",
            0,
            [8, [["old", "10.0.0.1:7946", 0, "alive"]], [], [], False, False],
            [[20, "x", "10.0.0.2:7946", 3]],
        ]
    )
    packet = decode_payload(old)
    assert packet.updates == (m.Alive("x", "10.0.0.2:7946", 3, 0, PEER),)
    assert isinstance(packet.body, m.PushPull)
    assert packet.body.members[0] == m.MemberRecord("old", "10.0.0.1:7946", 0, "alive")
    assert encode_payload(packet) == old  # and the same bytes go back out
    new = m.Packet("n", m.Rumors(), (m.Alive("n", "10.0.0.3:7946", 1, 7947, SEED),))
    assert decode_payload(encode_payload(new)) == new
    codec = Codec(KEY, 1)
    for raw in ([20, "x", "a:1"], [20, "x", "a:1", 0, 0, "peer", "extra"]):
        bad = orjson.dumps(["n", 0, [5], [raw]])
        with pytest.raises(WireError, match="malformed"):
            decode_payload(bad)
    assert codec.open(codec.seal(new, "udp"), "udp") == new


def test_bad_tcp_ports_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="tcp_port"):
        Gossip("n", "127.0.0.1:0", tcp_port=70000)
    with pytest.raises(SystemExit):
        parse_args(["--name", "n", "--tcp-port", "x"])


# -- gossip interval ---------------------------------------------------------------------


def test_the_gossip_interval_is_configurable_and_a_bad_one_refused() -> None:
    assert ClusterConfig().gossip_every == 0.2  # probe_interval / 5
    assert ClusterConfig(probe_interval=2.0).gossip_every == 0.4
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(
            InvalidArgumentError, match="gossip_interval must be a number of seconds > 0"
        ):
            ClusterConfig(gossip_interval=bad)
    node = _node("n")
    try:
        node.gossip_every(0.5)
        assert node.gossip_interval == 0.5 and node.status()["config"]["gossip_interval"] == 0.5
        with pytest.raises(InvalidArgumentError):
            node.gossip_every(0)
        assert node.gossip_interval == 0.5
    finally:
        node.stop()
    options = parse_args(["--name", "n", "--gossip-interval", "0.3"])
    assert options.gossip_interval == 0.3
    for bad_text in ("0", "-1", "nan", "soon"):
        with pytest.raises(SystemExit):
            parse_args(["--name", "n", "--gossip-interval", bad_text])


# -- timestamped stores ------------------------------------------------------------------


def test_the_newer_timestamp_wins_and_every_member_converges(cluster: list[Gossip]) -> None:
    owner, *others = cluster
    assert owner.store("k", "b", 20.0)
    assert not owner.set("k", "a", 10.0)  # older: ignored
    assert owner.set("k", "c", 20.0)  # equal: the later call wins
    assert not owner.delete("k", 19.5)
    assert owner.timestamp("k") == 20.0
    assert owner.get("k") == "c" and owner.counters()["stale_writes"] == 2
    eventually(lambda: all(g.get("k", node="n0") == "c" for g in others), 5.0)
    assert owner.delete("k", datetime.datetime.fromtimestamp(30.0, datetime.UTC))
    assert not owner.set("k", "late", 29.0)
    eventually(lambda: all(g.get("k", node="n0") is None for g in others), 5.0)
    with pytest.raises(InvalidArgumentError):
        owner.set("k", "x", math.nan)


def test_without_a_timestamp_a_write_always_applies_and_stamps_survive_a_restart() -> None:
    node = Gossip("n", "127.0.0.1:0", cluster_key=KEY, config=CFG)
    future = 4_000_000_000.0  # a clock that later steps back below this
    assert node.set("k", 1, future)  # before start: kept for the start
    assert node.set("k", 2)  # no timestamp: applied, stamped no earlier than the last
    assert node.timestamp("k") == future
    node.start()
    try:
        assert node.get("k") == 2
        assert not node.set("k", 3, future - 1)
    finally:
        node.stop()
    node.start()  # the same node again: a new run, the same stamps
    try:
        assert not node.set("k", 3, future - 1)
        assert node.get("k") == 2
    finally:
        node.stop()


# -- roles -------------------------------------------------------------------------------


def test_roles_travel_with_membership_and_select_members(cluster: list[Gossip]) -> None:
    n0, n1, n2, _ = cluster
    assert [g.role for g in cluster] == [SEED, PEER, PEER, PEER]
    assert [x.name for x in n2.members(role=SEED)] == ["n0"]
    assert [x.name for x in n0.members(role="peer")] == ["n1", "n2", "n3"]
    roles = {x["name"]: x["role"] for x in n1.status()["members"]}
    assert roles == {"n0": SEED, "n1": PEER, "n2": PEER, "n3": PEER}
    second_seed = _node("s2", str(n0.tcp_address), role=SEED)
    try:
        eventually(lambda: [x.name for x in n2.members(role=SEED)] == ["n0", "s2"], 5.0)
    finally:
        second_seed.stop()
    with pytest.raises(InvalidArgumentError, match="role"):
        n0.members(role="leader")
    with pytest.raises(InvalidArgumentError, match="role"):
        Gossip("x", "127.0.0.1:0", role="captain")


def test_a_node_whose_only_seed_is_itself_is_a_seed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    own = f"127.0.0.1:{port}"
    node = Gossip("n", own, seeds=[own], cluster_key=KEY, config=CFG)
    assert node.role is None  # decided at start
    node.start()
    try:
        assert node.role == SEED and node.status()["role"] == SEED
    finally:
        node.stop()


# -- the stand-alone agent ---------------------------------------------------------------


def _agent(*options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kilndb.cluster", "--cluster-key", KEY.decode(), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def _read_until(process: subprocess.Popen[str], kind: str) -> list[dict[str, Any]]:
    assert process.stdout is not None
    lines: list[dict[str, Any]] = []
    for line in process.stdout:
        lines.append(json.loads(line))
        if lines[-1]["event"] == kind:
            return lines
    raise AssertionError(f"the agent ended before {kind}: {lines}")


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGTERM, signal.SIGINT])
def test_the_agent_says_goodbye_and_exits_0_on_quit_term_and_int(sig: int) -> None:
    seed = Gossip("seed", "127.0.0.1:0", cluster_key=KEY, config=CFG, tcp_port=0)
    seed.start()
    agent = _agent(
        "--name",
        "agent",
        "--bind",
        "127.0.0.1:0",
        "--tcp-port",
        "0",
        "--join",
        str(seed.tcp_address),
        "--probe-interval",
        "0.1",
        "--gossip-interval",
        "0.05",
    )
    try:
        started = _read_until(agent, "ready")
        start = next(e for e in started if e["event"] == "start")
        assert start["role"] == PEER and start["seeds"] == [seed.tcp_address]
        assert start["gossip_interval"] == 0.05 and start["udp_port"] != start["tcp_port"]
        if not any(e["event"] == "member_joined" for e in started):
            _read_until(agent, "member_joined")  # it knows the seed: it has someone to leave
        eventually(lambda: state(seed, "agent") is MemberState.ALIVE, 5.0)
        agent.send_signal(sig)
        ended = _read_until(agent, "stopped")
        assert agent.wait(10) == 0
        shutdown = [e for e in ended if e["event"] == "shutdown"]
        assert len(shutdown) == 1 and shutdown[0]["graceful"] is True
        eventually(lambda: state(seed, "agent") is MemberState.LEFT, 5.0)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        assert agent.stdout is not None
        agent.stdout.close()
        seed.stop()


# -- a server as a member ----------------------------------------------------------------


def _server(data: Path, **options: Any) -> Server:
    config = ServerConfig(
        data=data,
        port=0,
        gossip_port=0,
        cluster_key=KEY.decode(),
        probe_interval=0.1,
        **options,
    )
    return Server(config).start()


def _seen(server: Server) -> dict[str, Any]:
    with kilndb.connect(server.url) as db:
        found = db.cluster()
    assert found is not None
    return found


def _state_of(server: Server, name: str) -> str | None:
    return {x["name"]: x["state"] for x in _seen(server)["members"]}.get(name)


def test_servers_on_split_ports_publish_roles_and_record_start_and_shutdown(
    tmp_path: Path,
) -> None:
    first = _server(tmp_path / "a", node_name="a", gossip_tcp_port=0, gossip_interval=0.05)
    try:
        seen = _seen(first)
        assert seen["gossip"] != seen["gossip_tcp"] and seen["role"] == SEED
        assert seen["gossip_interval"] == 0.05
        assert f"gossip://{seen['gossip_tcp']}" in first.addresses
        second = _server(tmp_path / "b", node_name="b", join=(seen["gossip_tcp"],))
        try:

            def roles() -> dict[str, str]:
                return {x["name"]: x["role"] for x in _seen(second)["members"]}

            eventually(lambda: roles() == {"a": SEED, "b": PEER}, 5.0)
            members = {x["name"]: x for x in _seen(second)["members"]}
            assert members["a"]["gossip_tcp"] == seen["gossip_tcp"]
            assert _seen(second)["gossip_interval"] == 0.1 / 5
        finally:
            second.stop()
        eventually(lambda: _state_of(first, "b") == "left", 5.0)
        events = [e for e in first.recent_events if e["event"].startswith("cluster_")]
        assert events[0]["event"] == "cluster_start"
        assert events[0]["tcp_address"] == seen["gossip_tcp"]
        assert events[0]["udp_port"] != events[0]["tcp_port"]
    finally:
        first.stop()
    shutdown = [e for e in first.recent_events if e["event"] == "cluster_shutdown"]
    assert len(shutdown) == 1 and shutdown[0]["graceful"] is True


def test_kiln_serve_gossip_options_reach_the_running_cluster(tmp_path: Path) -> None:
    process, url = start_server(
        tmp_path / "n",
        "--gossip-port",
        "0",
        "--gossip-tcp-port",
        "0",
        "--gossip-interval",
        "0.05",
        "--gossip-role",
        "peer",
        "--node-name",
        "n",
        "--cluster-key",
        KEY.decode(),
        "--log-level",
        "warning",
    )
    try:
        with kilndb.connect(url) as db:
            seen = db.cluster()
        assert seen is not None
        assert seen["gossip_interval"] == 0.05 and seen["role"] == PEER
        assert seen["gossip"] != seen["gossip_tcp"]
        shown = kiln(tmp_path, "--url", url, "cluster", "status", "--table")
        assert shown.exit_code == 0, shown.output
        assert "role" in shown.output and " peer " in shown.output
        assert f"tcp {seen['gossip_tcp']}" in shown.output
    finally:
        stop(process)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--gossip-port", "0", "--gossip-interval", "0"], "--gossip-interval"),
        (["--gossip-port", "0", "--gossip-tcp-port", "70000"], "--gossip-tcp-port"),
        (["--gossip-port", "0", "--gossip-role", "captain"], "--gossip-role"),
        (["--gossip-interval", "1"], "need --gossip-port"),
    ],
)
def test_kiln_serve_refuses_bad_gossip_options(
    tmp_path: Path, options: list[str], message: str
) -> None:
    result = kiln(tmp_path, "serve", "--port", "0", *options)
    assert result.exit_code != 0
    assert message in result.output + result.stderr

"""``kiln serve`` processes forming a cluster by gossip: failure detection between real
processes, graceful leave, leaders found through metadata, clients routed to them."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kilndb
from kilndb.cluster import ClusterConfig
from tests.cli.runner import kiln
from tests.processes import reap, start_server, stop

#: Fast probes, so that the whole file runs in seconds; every member uses the same.
PROBE = 0.2
KEY = "test-cluster-key-0123456789"


def _cluster(url: str) -> dict[str, Any]:
    """The cluster as the member at ``url`` sees it (not sent on to another member)."""
    with kilndb.connect(url, follow_leader=False) as db:
        found = db.cluster()
    assert found is not None
    return found


def _replayed(url: str) -> list[dict[str, Any]]:
    """The facts the member at ``url`` holds itself (UnavailableError while a --follow
    member has no copy yet)."""
    with kilndb.connect(url, follow_leader=False) as db:
        return [f.to_dict() for f in db.replay()]


def _states(url: str) -> dict[str, str]:
    return {m["name"]: m["state"] for m in _cluster(url)["members"]}


def _eventually(check: Callable[[], bool], timeout: float) -> float:
    """Wait until ``check()``; return the seconds it took (AssertionError past timeout)."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except kilndb.KilnError:
            pass  # a member that is starting or stopping
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


class Members:
    """Member processes of one test cluster, stopped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.urls: dict[str, str] = {}
        self.seed: str | None = None

    def start(self, name: str, *options: str) -> str:
        join = ("--join", self.seed) if self.seed else ()
        process, url = start_server(
            self.tmp_path / name,
            "--http-port",
            "0",
            "--gossip-port",
            "0",
            "--node-name",
            name,
            "--cluster-key",
            KEY,
            "--probe-interval",
            str(PROBE),
            "--log-level",
            "warning",
            *join,
            *options,
        )
        self.processes[name], self.urls[name] = process, url
        if self.seed is None:
            self.seed = _cluster(url)["gossip"]
        return url

    def led_and_followed(self, leader: str, *followers: str, writes: int) -> list[str]:
        """Start ``leader`` with ``writes`` facts in ``default``, then ``followers`` with
        ``--follow``; return their URLs once every copy equals the leader's."""
        urls = [self.start(leader)]
        with kilndb.connect(urls[0]) as db:
            for i in range(writes):
                db.store("s").write(f"k{i}", i)
        urls += [self.start(name, "--follow") for name in followers]
        _eventually(lambda: all(_replayed(url) == _replayed(urls[0]) for url in urls[1:]), 30)
        return urls

    def stop(self) -> None:
        for process in self.processes.values():
            stop(process)


@pytest.mark.integration
def test_five_members_detect_a_killed_one_see_it_return_and_see_a_goodbye(
    members: Members,
) -> None:
    names = [f"n{i}" for i in range(1, 6)]
    for name in names:
        members.start(name)
    everyone_alive = dict.fromkeys(names, "alive")

    def sees_everyone(name: str) -> bool:
        return _states(members.urls[name]) == everyone_alive

    for name in names:
        _eventually(functools.partial(sees_everyone, name), 20)

    # SIGKILL: no goodbye; the others must find out by probing.
    victim = members.processes["n3"]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    reap(victim)
    bound = ClusterConfig(probe_interval=PROBE).detection_bound(5)
    others = [n for n in names if n != "n3"]
    took = _eventually(
        lambda: all(_states(members.urls[n])["n3"] == "dead" for n in others), bound + 2.0
    )
    assert took <= bound + 2.0

    # Restarted (new process, new ports): alive again everywhere, at a new incarnation.
    before = {m["name"]: m for m in _cluster(members.urls["n1"])["members"]}["n3"]
    members.start("n3")
    _eventually(lambda: all(_states(members.urls[n]).get("n3") == "alive" for n in names), 20)
    after = {m["name"]: m for m in _cluster(members.urls["n1"])["members"]}["n3"]
    assert after["incarnation"] > before["incarnation"] or after["gossip"] != before["gossip"]

    # SIGTERM: the member says goodbye and is `left` at once, not suspected first.
    leaving = members.processes["n4"]
    leaving.send_signal(signal.SIGTERM)
    leaving.wait(30)
    took = _eventually(
        lambda: all(_states(members.urls[n])["n4"] == "left" for n in ("n1", "n2", "n5")), 5
    )
    assert took < bound / 2  # well before a failure detector could have said so


@pytest.mark.integration
def test_a_follower_finds_its_leader_through_gossip_and_clients_write_through_it(
    members: Members, tmp_path: Path
) -> None:
    leader_url = members.start("leader")
    with kilndb.connect(leader_url) as db:
        for i in range(50):
            db.store("s").write(f"k{i}", i)
    follower_url = members.start("follower", "--follow")

    _eventually(lambda: _replayed(follower_url) == _replayed(leader_url), 30)
    # A client that reached the follower learns it is in a cluster and writes through.
    with kilndb.connect(follower_url) as db:
        assert db.cluster_node == "follower" and db.follow_leader
        written = db.store("s").write("through-the-follower", 1)
        with kilndb.connect(leader_url) as direct:
            assert direct.store("s").read("through-the-follower") == written
    with (
        kilndb.connect(follower_url, follow_leader=False) as db,
        pytest.raises(kilndb.ReadOnlyReplicaError),
    ):
        db.store("s").write("no", 1)
    with kilndb.connect(follower_url, read_from="leader") as db:
        assert db.url == leader_url
    # A database only the leader holds: a client of another member is sent there.
    with kilndb.connect(leader_url, "orders") as db:
        db.store("o").write("o1", 1)
    third_url = members.start("third")  # a member that follows nothing
    _eventually(lambda: "orders" in _cluster(third_url)["leaders"], 20)
    with kilndb.connect(third_url, "orders") as db:
        assert db.url == leader_url and db.store("o").read("o1") is not None
    with kilndb.connect(third_url, "orders", follow_leader=False) as db:
        assert db.url == third_url  # told to stay: it stays

    # Everyone agrees who leads what; the status endpoints and the CLI show it.
    found = _cluster(follower_url)
    assert found["leaders"]["default"]["node"] == "leader"
    _eventually(
        lambda: (
            {m["name"]: m for m in _cluster(leader_url)["members"]}["follower"]["databases"]
            .get("default", {})
            .get("role")
            == "follower"
        ),
        10,
    )
    with kilndb.connect(leader_url) as db:
        http = next(a for a in db._call("server_status")["addresses"] if a.startswith("http"))
    with urllib.request.urlopen(http + "/v1/cluster", timeout=10) as reply:
        body = json.loads(reply.read())
    assert {m["name"] for m in body["cluster"]["members"]} == {"leader", "follower", "third"}
    with urllib.request.urlopen(http + "/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    assert "kiln_cluster_members_alive 3.0" in metrics
    assert "kiln_gossip_packets_dropped_total 0.0" in metrics
    result = kiln(tmp_path, "--url", follower_url, "cluster", "status", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["node"] == "follower"
    table = kiln(tmp_path, "--url", follower_url, "cluster", "status", "--table")
    assert table.exit_code == 0 and "leader" in table.stdout and "alive" in table.stdout


def test_cluster_status_of_a_server_outside_a_cluster(tmp_path: Path) -> None:
    from kilndb.server import Server

    with Server(data=tmp_path / "alone", port=0) as server:
        result = kiln(tmp_path, "--url", server.url, "cluster", "status")
        assert result.exit_code == 1 and "not a cluster member" in result.stderr
        with kilndb.connect(server.url) as db:
            assert db.cluster() is None and db.cluster_node is None and not db.follow_leader


def test_cluster_options_need_a_gossip_port_and_a_reachable_host(tmp_path: Path) -> None:
    for options in (("--join", "127.0.0.1:1"), ("--cluster-key", "k"), ("--follow",)):
        result = kiln(tmp_path, "serve", "--port", "0", *options)
        assert result.exit_code == 1 and "need --gossip-port" in result.stderr
    result = kiln(tmp_path, "serve", "--host", "0.0.0.0", "--insecure-bind", "--gossip-port", "0")
    assert result.exit_code == 1 and "not a wildcard" in result.stderr
    follow = kiln(
        tmp_path, "serve", "--gossip-port", "0", "--follow", "--replica-of", "127.0.0.1:1"
    )
    assert follow.exit_code == 1 and "drop --replica-of" in follow.stderr


@pytest.mark.integration
def test_after_a_promotion_followers_re_point_to_the_new_leader_by_themselves(
    members: Members, tmp_path: Path
) -> None:
    _, b_url, c_url = members.led_and_followed("a", "b", "c", writes=30)
    old = members.processes["a"]
    os.kill(old.pid, signal.SIGKILL)
    old.wait(10)
    # Gossip promotes nobody: the operator does, and the cluster learns the new leader.
    promoted = kiln(tmp_path, "--url", b_url, "promote")
    assert promoted.exit_code == 0, promoted.stderr
    _eventually(lambda: _cluster(c_url)["leaders"].get("default", {}).get("node") == "b", 20)
    with kilndb.connect(c_url) as db:  # c followed b by itself; its clients write there
        _eventually(
            lambda: (
                [f["leader"] for f in db._call("server_status")["replication"]["following"]]
                == [b_url]
            ),  # empty for a moment while re-pointing
            20,
        )
        written = db.store("s").write("after-failover", 1)
    _eventually(lambda: _replayed(c_url) == _replayed(b_url), 20)
    with kilndb.connect(b_url) as db:
        assert db.store("s").read("after-failover") == written


@pytest.mark.integration
def test_bad_gossip_packets_are_dropped_counted_and_harmless(members: Members) -> None:
    import socket

    from kilndb.cluster.messages import Packet, Ping
    from kilndb.cluster.wire import Codec

    a_url = members.start("a")
    b_url = members.start("b")
    _eventually(lambda: _states(a_url) == {"a": "alive", "b": "alive"}, 20)
    host, port = _cluster(a_url)["gossip"].rsplit(":", 1)
    ping = Packet("intruder", Ping(1, "a"))
    valid = Codec(KEY.encode(), boot=1).seal(ping, "udp")
    forged = Codec(b"not-the-cluster-key", boot=1).seal(ping, "udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for datagram in (b"\x00garbage", b"x" * 60_000, forged, valid, valid):
            udp.sendto(datagram, (host, int(port)))

    def dropped() -> dict[str, int]:
        counters = _cluster(a_url)["counters"]
        return {k: v for k, v in counters.items() if k.startswith("dropped_") and v}

    _eventually(
        lambda: (
            dropped()
            == {
                "dropped_malformed": 1,
                "dropped_oversize": 1,
                "dropped_bad_mac": 1,
                "dropped_replay": 1,  # the second copy of the valid packet
            }
        ),
        10,
    )
    # The member kept working: b is still alive to it, and writes still go through.
    assert _states(a_url) == {"a": "alive", "b": "alive"}
    with kilndb.connect(b_url) as db:
        assert db.cluster() is not None


def test_a_follow_member_never_announces_its_copies_as_led(tmp_path: Path) -> None:
    from kilndb.server import Server

    with kilndb.open(tmp_path / "data", "orders") as local:  # a copy left from before
        local.store("o").write("o1", 1)
    with Server(
        data=tmp_path / "data",
        port=0,
        gossip_port=0,
        node_name="m",
        probe_interval=PROBE,
        follow=True,
    ) as server:

        def published() -> dict[str, Any]:
            (member,) = _cluster(server.url)["members"]
            return dict(member["databases"])

        _eventually(lambda: "orders" in published(), 10)
        assert published()["orders"] == {"role": "follower", "leader": None, "epoch": 0}
        assert _cluster(server.url)["leaders"] == {}
        with kilndb.connect(server.url, "orders") as db:
            with pytest.raises(kilndb.ReadOnlyReplicaError):  # read-only until a leader
                db.store("o").write("o2", 2)
            assert db.store("o").read("o1") is not None
        # An operator may still promote it (its leader is gone for good).
        with kilndb.connect(server.url, "orders") as db:
            db._call("promote", database="orders")
            db.store("o").write("o2", 2)
        _eventually(lambda: published()["orders"]["role"] == "leader", 10)
        assert published()["orders"]["epoch"] == 1

"""A follower server streaming a leader's database: catch-up, live, restart, read-only."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import kilndb
from kilndb import Write
from kilndb.server import Server
from tests.server.test_sockets import RawClient, tcp_address


def _digest(url: str, database: str = "default") -> tuple[int, str]:
    with kilndb.connect(url, database) as db:
        facts = [f.to_dict() for f in db.replay()]
    return len(facts), hashlib.sha256(repr(facts).encode()).hexdigest()


def _eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except kilndb.UnavailableError:
            pass  # a follower's copy that does not exist yet
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _follower(tmp_path: Path, leader: Server, name: str = "follower") -> Server:
    host, port = tcp_address(leader)
    return Server(
        data=tmp_path / name,
        port=0,
        replica_of=f"{host}:{port}",
        replicate=("default",),
        replication_backoff=(0.05, 0.3),
    ).start()


def _write(url: str, start: int, n: int) -> None:
    with kilndb.connect(url) as db:
        for i in range(start, start + n):
            if i % 10 == 0:
                db.write_many([Write("s", f"b{i}-{j}", j) for j in range(4)])
            else:
                db.store("s").write(f"k{i % 7}", {"i": i})


def test_a_follower_catches_up_then_streams_live(tmp_path: Path) -> None:
    with Server(data=tmp_path / "leader", port=0) as leader:
        _write(leader.url, 0, 200)
        follower = _follower(tmp_path, leader)
        try:
            _eventually(lambda: _digest(follower.url) == _digest(leader.url))
            _write(leader.url, 200, 100)  # live
            _eventually(lambda: _digest(follower.url) == _digest(leader.url))
            status = follower.status()["replication"]
            assert status["role"] == "follower"
            (state,) = status["following"]
            assert state["state"] == "streaming" and state["lag_records"] == 0
            (link,) = leader.status()["replication"]["followers"]
            assert link["state"] == "streaming"
            _eventually(lambda: leader.status()["replication"]["followers"][0]["lag_records"] == 0)
            with kilndb.connect(follower.url) as db:  # reads work, writes go to the leader
                assert db.store("s").read("k1") is not None
                with pytest.raises(kilndb.ReadOnlyReplicaError) as refused:
                    db.store("s").write("k1", 0)
                assert refused.value.leader == leader.url
            # A retention change reaches the follower while it streams: both then hide
            # the same superseded facts.
            with kilndb.connect(leader.url) as db:
                db.set_retention("s", keep="latest")
            _eventually(lambda: _digest(follower.url) == _digest(leader.url))
            with kilndb.connect(follower.url) as db:
                assert db.retention("s")["keep"] == "latest"
                assert len(db.store("s").history("k1")) == 1
        finally:
            follower.stop()


def test_a_restarted_follower_resumes_and_a_restarted_leader_is_found_again(
    tmp_path: Path,
) -> None:
    port = _free_port()
    leader = Server(data=tmp_path / "leader", port=port).start()
    _write(leader.url, 0, 100)
    follower = _follower(tmp_path, leader)
    _eventually(lambda: _digest(follower.url) == _digest(leader.url))
    follower.stop()
    _write(leader.url, 100, 50)  # while the follower is down
    follower = _follower(tmp_path, leader)
    _eventually(lambda: _digest(follower.url) == _digest(leader.url))
    leader.stop()  # the link breaks; the follower retries with backoff
    _eventually(lambda: follower.status()["replication"]["following"][0]["reconnects"] > 0)
    leader = Server(data=tmp_path / "leader", port=port).start()
    _write(leader.url, 150, 50)
    try:
        _eventually(lambda: _digest(follower.url) == _digest(leader.url))
    finally:
        follower.stop()
        leader.stop()


def test_bad_replication_requests_are_refused_and_the_leader_keeps_serving(
    tmp_path: Path,
) -> None:
    with Server(data=tmp_path / "leader", port=0) as leader:
        _write(leader.url, 0, 5)
        client = RawClient(tcp_address(leader))
        base = {"op": "sync_request", "leader_epoch": 0, "position": 0, "request_id": 1}
        client.send({**base, "protocol_version": 99})
        reply = client.receive()
        assert reply is not None and "protocol version 99" in reply["error"]
        client.send({**base, "protocol_version": 1, "database": "nope"})
        reply = client.receive()
        assert reply is not None and reply["error_code"] == "not_found"
        client.send({**base, "protocol_version": 1, "leader_epoch": 7})
        reply = client.receive()
        assert reply is not None and "epoch mismatch" in reply["error"]
        assert reply["error_code"] == "stale_epoch" and reply["newest"] == 7
        client.close()
        with kilndb.connect(leader.url) as db:
            assert db.store("s").read("k1") is not None
            # Told of a newer epoch, the leader no longer takes writes.
            with pytest.raises(kilndb.StaleEpochError):
                db.store("s").write("k1", 0)
        events = [e["event"] for e in leader.recent_events]
        assert events.count("replication_refused") == 3


def test_replicas_wait_for_followers_and_time_out_without_them(tmp_path: Path) -> None:
    with Server(data=tmp_path / "leader", port=0, replica_timeout=0.5) as leader:
        _write(leader.url, 0, 1)
        with kilndb.connect(leader.url) as db:
            with pytest.raises(kilndb.ReplicationTimeoutError, match="0 of 1"):
                db.store("s").write("alone", 1, replicas=1)
            fact = db.store("s").read("alone")
            assert fact is not None  # committed on the leader all the same
        follower = _follower(tmp_path, leader)
        try:
            _eventually(lambda: _digest(follower.url) == _digest(leader.url))
            with kilndb.connect(leader.url) as db:
                written = db.store("s").write("safe", 2, replicas=1)
                with kilndb.connect(follower.url) as copy:  # already there when answered
                    there = copy.store("s").read("safe")
                    assert there is not None and there.position == written.position
                many = db.write_many([Write("s", f"m{j}", j) for j in range(5)], replicas=1)
                assert len(many) == 5
                with pytest.raises(kilndb.ReplicationTimeoutError, match="1 of 2"):
                    db.store("s").write("more", 3, replicas=2)
                with pytest.raises(kilndb.InvalidArgumentError):
                    db.store("s").write("bad", 4, replicas=-1)
        finally:
            follower.stop()


def test_min_insync_replicas_applies_to_every_write(tmp_path: Path) -> None:
    with (
        Server(
            data=tmp_path / "leader", port=0, min_insync_replicas=1, replica_timeout=0.3
        ) as leader,
        kilndb.connect(leader.url) as db,
    ):
        with pytest.raises(kilndb.ReplicationTimeoutError):
            db.store("s").write("k", 1)
        assert db.store("s").write("k", 2, replicas=0).value == 2  # the request decides


def test_a_client_of_a_follower_can_follow_the_leader_for_writes(tmp_path: Path) -> None:
    with Server(data=tmp_path / "leader", port=0) as leader:
        _write(leader.url, 0, 3)
        follower = _follower(tmp_path, leader)
        try:
            _eventually(lambda: _digest(follower.url) == _digest(leader.url))
            with kilndb.connect(follower.url, follow_leader=True) as db:
                written = db.store("s").write("via-follower", 1)  # lands on the leader
                with kilndb.connect(leader.url) as direct:
                    assert direct.store("s").read("via-follower") == written
                _eventually(lambda: db.store("s").read("via-follower") == written)
            with kilndb.connect(follower.url) as db, pytest.raises(kilndb.ReadOnlyReplicaError):
                db.store("s").write("refused", 1)  # outside a cluster: not followed
            with kilndb.connect(follower.url, read_from="leader") as db:
                assert db.url == leader.url and db.cluster_node is None
                assert db.cluster() is None
                db.store("s").write("read-from-leader", 1)
                assert db.store("s").read("read-from-leader") is not None
            with pytest.raises(kilndb.InvalidArgumentError, match="read_from"):
                kilndb.connect(follower.url, read_from="nearest")
            client = RawClient(tcp_address(follower))
            client.send({"op": "hello", "database": "default"})
            assert client.receive() == {
                "ok": True,
                "protocol_version": 1,
                "database": "default",
                "role": "follower",
                "leader": leader.url,
            }
            client.close()
        finally:
            follower.stop()


def test_a_stalled_follower_is_dropped_and_garbage_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kilndb.server import replication

    monkeypatch.setattr(replication, "SILENCE_SECONDS", 0.5)
    monkeypatch.setattr(replication, "HEARTBEAT_SECONDS", 0.1)
    with Server(data=tmp_path / "leader", port=0) as leader:
        _write(leader.url, 0, 5)
        stalled = RawClient(tcp_address(leader))
        stalled.send(
            {"op": "sync_request", "protocol_version": 1, "leader_epoch": 0, "position": 0}
        )
        info = stalled.receive()
        assert info is not None and info["type"] == "shard_info"
        received = []
        while (message := stalled.receive()) is not None:  # never acks: cut off
            received.append(message.get("type"))
        assert "batch" in received
        _eventually(lambda: "follower_dropped" in [e["event"] for e in leader.recent_events])
        stalled.close()
        garbage = RawClient(tcp_address(leader))
        garbage.send_raw(b"\x00\x00\x00\x05hello\x00\x00\x00\x00")
        reply = garbage.receive()
        assert reply is not None and reply["ok"] is False
        garbage.close()
        with kilndb.connect(leader.url) as db:  # the leader keeps serving
            assert db.store("s").read("k1") is not None


def test_following_every_database_of_the_leader_new_ones_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kilndb.server import following

    monkeypatch.setattr(following, "DISCOVER_SECONDS", 0.2)
    with Server(data=tmp_path / "leader", port=0) as leader:
        for name in ("a", "b"):
            with kilndb.connect(leader.url, name) as db:
                db.store("s").write("k", name)
        host, port = tcp_address(leader)
        follower = Server(
            data=tmp_path / "follower",
            port=0,
            replica_of=f"{host}:{port}",
            replicate=None,
            replication_backoff=(0.05, 0.3),
        ).start()
        try:
            for name in ("a", "b"):

                def same(name: str = name) -> bool:
                    return _digest(follower.url, name) == _digest(leader.url, name)

                _eventually(same)
            with kilndb.connect(leader.url, "c") as db:  # a database born later
                db.store("s").write("k", "c")
            _eventually(lambda: _digest(follower.url, "c") == _digest(leader.url, "c"))
            followed = {f["database"] for f in follower.status()["replication"]["following"]}
            assert followed == {"a", "b", "c", "default"}  # the leader serves default too
        finally:
            follower.stop()


def test_the_async_client_follows_the_leader_and_waits_for_replicas(tmp_path: Path) -> None:
    import asyncio

    with Server(data=tmp_path / "leader", port=0, replica_timeout=0.5) as leader:
        _write(leader.url, 0, 2)
        follower = _follower(tmp_path, leader)
        try:
            _eventually(lambda: _digest(follower.url) == _digest(leader.url))

            async def scenario() -> None:
                db = await kilndb.connect_async(follower.url, follow_leader=True)
                try:
                    fact = await db.store("s").write("async", 1, replicas=1)
                    many = await db.write_many([Write("s", "m", 2)], replicas=1)
                    assert len(many) == 1
                    with pytest.raises(kilndb.ReplicationTimeoutError):
                        await db.store("s").write("two", 1, replicas=2)
                finally:
                    await db.close()
                plain = await kilndb.connect_async(follower.url)
                try:
                    with pytest.raises(kilndb.ReadOnlyReplicaError):
                        await plain.store("s").write("refused", 1)
                    found = await plain.store("s").read("async")  # replicated before the ack
                    assert found is not None and found.position == fact.position
                finally:
                    await plain.close()
                direct = await kilndb.connect_async(follower.url, read_from="leader")
                try:
                    assert direct.url == leader.url and await direct.cluster() is None
                    await direct.store("s").write("async-direct", 1)
                finally:
                    await direct.close()

            asyncio.run(scenario())
        finally:
            follower.stop()


def test_a_leader_that_leaves_syncing_to_the_os_still_ships_durable_records(
    tmp_path: Path,
) -> None:
    config = kilndb.DatabaseConfig(sync="none")
    with Server(data=tmp_path / "leader", port=0, database=config) as leader:
        _write(leader.url, 0, 30)
        follower = _follower(tmp_path, leader)
        try:
            _eventually(lambda: _digest(follower.url) == _digest(leader.url))
            _write(leader.url, 30, 10)  # live, still without fsyncs of its own
            _eventually(lambda: _digest(follower.url) == _digest(leader.url))
        finally:
            follower.stop()

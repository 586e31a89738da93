"""Failover by hand: promote a follower; a former leader rejoins, drops its divergent tail
(logged, kept aside) and converges without a full copy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import kilndb
from kilndb.config import DatabaseConfig
from kilndb.server import Server
from tests.cli.runner import json_lines, kiln
from tests.replication.test_follower import _digest, _eventually, _follower, _write
from tests.server.test_sockets import tcp_address


def _address(server: Server) -> str:
    host, port = tcp_address(server)
    return f"{host}:{port}"


def test_promotion_and_a_former_leader_rejoining(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = Server(data=tmp_path / "a", port=0).start()
    _write(old.url, 0, 50)
    follower = _follower(tmp_path, old, "b")
    _eventually(lambda: _digest(follower.url) == _digest(old.url))
    shared = _digest(old.url)[0]
    follower.stop()  # the link is gone: what the old leader takes now is never shipped
    _write(old.url, 50, 20)
    lost = _digest(old.url)[0] - shared
    assert lost > 0
    old.stop()

    # b comes back as a follower of nobody reachable and is promoted by hand.
    b = Server(
        data=tmp_path / "b",
        port=0,
        replica_of="127.0.0.1:9",  # the dead leader
        replication_backoff=(0.05, 0.2),
    ).start()
    promoted = kiln(tmp_path, "--url", b.url, "promote")
    assert promoted.exit_code == 0, promoted.stderr
    (entry,) = json_lines(promoted.stdout)[0]["promoted"]
    assert entry["database"] == "default" and entry["epoch"] == 1
    assert entry["position"] == shared
    with kilndb.connect(b.url) as db:
        db.store("s").write("after-failover", 1)  # the new leader takes writes
    _write(b.url, 100, 10)

    # The old leader restarts and is pointed at b: its unshipped tail goes.
    a = Server(data=tmp_path / "a", port=0).start()
    try:
        with caplog.at_level(logging.WARNING):
            pointed = kiln(tmp_path, "--url", a.url, "replicate", "--from", _address(b))
            assert pointed.exit_code == 0, pointed.stderr
            _eventually(lambda: _digest(a.url) == _digest(b.url))
        (state,) = a.status()["replication"]["following"]
        assert state["truncations"] == 1
        assert any("divergent tail dropped" in r.getMessage() for r in caplog.records)
        kept = list((tmp_path / "a" / "default").glob("*.divergent-*"))
        assert kept, "the dropped records are kept beside the data files"
        with kilndb.connect(a.url) as db:
            with pytest.raises(kilndb.ReadOnlyReplicaError):
                db.store("s").write("x", 1)
            assert db.store("s").read("after-failover") is not None
    finally:
        a.stop()
        b.stop()


def test_promote_refuses_a_server_that_follows_nothing(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0) as server:
        result = kiln(tmp_path, "--url", server.url, "promote")
        assert result.exit_code == 1 and "follows none" in result.stderr


def test_a_follower_behind_the_leaders_compaction_makes_a_full_copy_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    small = DatabaseConfig(max_file_size=4096, auto_compact=False)
    with Server(data=tmp_path / "leader", port=0, database=small) as leader:
        with kilndb.connect(leader.url) as db:
            db.set_retention("s", keep="latest")
        _write(leader.url, 0, 60)
        follower = _follower(tmp_path, leader)
        _eventually(lambda: _digest(follower.url) == _digest(leader.url))
        with kilndb.connect(follower.url) as db:  # the policy came with the log
            assert db.retention("s")["keep"] == "latest"
        (state,) = follower.status()["replication"]["following"]
        copied = state["position"]
        follower.stop()
        # While it is away the leader overwrites the same keys and compacts: the
        # records the follower lacks are gone from the leader's log.
        _write(leader.url, 60, 400)
        with kilndb.connect(leader.url) as db:
            db.compact()
            compacted = db.stats()["compacted_through"]
            by_store = db.stats()["compacted_through_by_store"]
        assert compacted > copied and by_store["s"] > copied
        with caplog.at_level(logging.WARNING):
            follower = _follower(tmp_path, leader)
            try:
                _eventually(lambda: _digest(follower.url) == _digest(leader.url))
                (state,) = follower.status()["replication"]["following"]
                assert state["full_resyncs"] == 1 and state["truncations"] == 0
                assert any("full copy" in r.getMessage() for r in caplog.records)
                with kilndb.connect(follower.url) as db:  # cursors too old there as well
                    assert db.stats()["compacted_through_by_store"] == by_store
                    with pytest.raises(kilndb.CursorTooOldError) as refused:
                        db.subscribe(stores=["s"], after=copied)
                    assert refused.value.store == "s"
                _write(leader.url, 460, 20)  # and it streams on from the copy
                _eventually(lambda: _digest(follower.url) == _digest(leader.url))
                (state,) = follower.status()["replication"]["following"]
                assert state["full_resyncs"] == 1
            finally:
                follower.stop()


def test_two_followers_promoted_from_one_epoch_are_told_apart(tmp_path: Path) -> None:
    a = Server(data=tmp_path / "a", port=0).start()
    _write(a.url, 0, 30)
    b, c = _follower(tmp_path, a, "b"), _follower(tmp_path, a, "c")
    _eventually(lambda: _digest(b.url) == _digest(a.url) == _digest(c.url))
    a.stop()
    # Split brain: both followers are promoted to epoch 1 and take different writes —
    # c more of them, so that its log is longer than b's.
    for server in (b, c):
        result = kiln(tmp_path, "--url", server.url, "promote")
        assert result.exit_code == 0, result.stderr
    with kilndb.connect(b.url) as db:
        db.store("s").write("only-on-b", 1)
    with kilndb.connect(c.url) as db:
        for i in range(20):
            db.store("s").write(f"only-on-c-{i}", i)
    try:
        # The operator keeps b and points c at it: everything c took alone is cut.
        pointed = kiln(tmp_path, "--url", c.url, "replicate", "--from", _address(b))
        assert pointed.exit_code == 0, pointed.stderr
        _eventually(lambda: _digest(c.url) == _digest(b.url))
        (state,) = c.status()["replication"]["following"]
        assert state["truncations"] == 1
        with kilndb.connect(c.url) as db:
            assert db.store("s").read("only-on-c-0") is None
            assert db.store("s").read("only-on-b") is not None
    finally:
        b.stop()
        c.stop()


def test_a_refused_promotion_changes_nothing(tmp_path: Path) -> None:
    with Server(data=tmp_path / "leader", port=0) as leader:
        _write(leader.url, 0, 3)
        host, port = tcp_address(leader)
        with Server(
            data=tmp_path / "follower",
            port=0,
            replica_of=f"{host}:{port}",
            replicate=None,  # every database of the leader: none may be created here
            replication_backoff=(0.05, 0.3),
        ) as follower:
            _eventually(lambda: _digest(follower.url) == _digest(leader.url))
            with kilndb.connect(follower.url) as db, pytest.raises(kilndb.InvalidArgumentError):
                db._call("promote", database="not-followed")
            with kilndb.connect(follower.url, "fresh") as db, pytest.raises(kilndb.KilnError):
                db.store("s").write("k", 1)
            assert not (tmp_path / "follower" / "fresh").exists()

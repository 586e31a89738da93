"""Failover by hand: promote a follower; a former leader rejoins, drops its divergent tail
(logged, kept aside) and converges without a full copy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import kilndb
from kilndb.server.sockets import Server
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

"""Epoch fencing at the resource: a follower refuses a leader older than the newest epoch
it knows (at the handshake and mid-stream, acknowledging nothing to it), a leader told of
a newer epoch stops taking writes at once, and acks from a follower that knows a newer
epoch count for nothing."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

import kilndb
from kilndb.codec import FrameDecoder, encode_frame
from kilndb.protocol import Request, parse_request
from kilndb.replication.fencing import EpochFence
from kilndb.server import Server
from tests.replication.test_follower import _eventually, _write
from tests.server.test_sockets import RawClient, tcp_address

NOWHERE = "tcp://127.0.0.1:9"


def _follower_server(tmp_path: Path, leader: tuple[str, int], name: str = "b") -> Server:
    host, port = leader
    return Server(
        data=tmp_path / name,
        port=0,
        replica_of=f"{host}:{port}",
        replicate=("default",),
        replication_backoff=(0.05, 0.2),
    )


def _following(server: Server) -> dict[str, Any]:
    (state,) = server.status()["replication"]["following"]
    return dict(state)


def _writes_refused(url: str, error: type[kilndb.KilnError]) -> bool:
    with kilndb.connect(url, follow_leader=False) as db:
        try:
            db.store("s").write("probe", 1)
        except error:
            return True
    return False


# -- the fence itself --------------------------------------------------------------------


def test_the_fence_keeps_the_newest_epoch_and_tells_of_news_only() -> None:
    fence = EpochFence()
    heard: list[tuple[str, int, str | None]] = []
    fence.on_newer(lambda name, epoch, leader: heard.append((name, epoch, leader)))
    assert fence.newest("db") == 0 and fence.newest("db", own=3) == 3
    assert fence.learn("db", 2)
    assert not fence.learn("db", 1, "tcp://old")  # older: no news
    assert not fence.learn("db", 2)  # the same: no news
    assert fence.learn("db", 2, "tcp://new")  # who leads it: news
    assert not fence.learn("db", 2)  # forgetting the leader is not news either
    assert heard == [("db", 2, None), ("db", 2, "tcp://new")]
    known = fence.known("db")
    assert known is not None and (known.epoch, known.leader) == (2, "tcp://new")
    fence.check("db", 2)
    fence.check("db", 5, own=5)
    with pytest.raises(kilndb.StaleEpochError) as refused:
        fence.check("db", 1)
    assert (refused.value.database, refused.value.epoch, refused.value.newest) == ("db", 1, 2)
    assert refused.value.to_wire()["error_code"] == "stale_epoch"
    assert fence.newest("other") == 0


# -- followers ---------------------------------------------------------------------------


class EpochBlindProxy:
    """Forwards connections to a leader, rewriting each ``sync_request`` so that it
    claims leader epoch 0: the leader then answers as one that never heard of a newer
    epoch (an older KilnDB would), and only the follower's own check stands."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.rewritten = 0
        self.acks: list[dict[str, Any]] = []
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                return
            server.settimeout(None)
            self._sockets += [client, server]
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._replies, args=(server, client), daemon=True).start()

    def _requests(self, source: socket.socket, target: socket.socket) -> None:
        decoder = FrameDecoder()
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                decoder.feed(data)
                while (body := decoder.next_frame()) is not None:
                    message = orjson.loads(body)
                    if message.get("op") == "sync_request":
                        message["leader_epoch"] = 0
                        self.rewritten += 1
                    if message.get("op") == "replication_ack":
                        self.acks.append(message)
                    target.sendall(encode_frame(orjson.dumps(message)))
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    @staticmethod
    def _replies(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def _blindly_followed(
    tmp_path: Path, newest: int | None = None
) -> Iterator[tuple[Server, EpochBlindProxy, Server]]:
    """A leader with 20 writes, and a follower reaching it through an EpochBlindProxy
    (knowing epoch ``newest`` from the start, when given)."""
    with Server(data=tmp_path / "a", port=0) as leader:
        _write(leader.url, 0, 20)
        proxy = EpochBlindProxy(tcp_address(leader))
        follower = _follower_server(tmp_path, proxy.address)
        if newest is not None:
            follower.epochs.learn("default", newest)  # as gossip would tell it
        try:
            yield leader, proxy, follower.start()
        finally:
            follower.stop()
            proxy.close()


def test_a_follower_refuses_a_stale_leader_before_touching_its_copy(tmp_path: Path) -> None:
    with _blindly_followed(tmp_path, newest=1) as (_, proxy, follower):
        _eventually(lambda: proxy.rewritten >= 2)  # refused, and retried, at least once
        _eventually(lambda: _following(follower)["state"] == "stale_leader")
        state = _following(follower)
        assert state["leader_epoch"] == 0
        assert "older than epoch 1" in state["last_error"]
        # Nothing was appended, or even created, from the stale leader, and nothing
        # acknowledged to it.
        assert not follower.databases.exists("default")
        assert proxy.acks == []


def test_a_follower_that_learns_a_newer_epoch_mid_stream_stops_applying(
    tmp_path: Path,
) -> None:
    with _blindly_followed(tmp_path) as (leader, proxy, follower):
        held = leader.databases.get("default").last_position
        _eventually(lambda: _following(follower)["position"] == held)
        follower.epochs.learn("default", 1)  # news of a promotion elsewhere
        _write(leader.url, 20, 20)  # shipped by the stale leader: never applied
        _eventually(lambda: _following(follower)["state"] == "stale_leader")
        assert follower.databases.get("default").last_position == held
        # ... and never acknowledged (acks of what it held may still be on their way).
        assert all(ack["applied"] <= held and ack["durable"] <= held for ack in proxy.acks)


# -- leaders -----------------------------------------------------------------------------


def test_a_leader_asked_by_a_newer_epoch_fences_itself(tmp_path: Path) -> None:
    with Server(data=tmp_path / "a", port=0) as leader:
        _write(leader.url, 0, 10)
        follower = _follower_server(tmp_path, tcp_address(leader))
        follower.epochs.learn("default", 1)
        follower.start()
        try:
            _eventually(lambda: leader.following.fenced.get("default") == 1)
            with kilndb.connect(leader.url) as db:
                with pytest.raises(kilndb.StaleEpochError) as refused:
                    db.store("s").write("after", 1)
                assert refused.value.database == "default"
                assert (refused.value.epoch, refused.value.newest) == (0, 1)
                assert db.store("s").read("k1") is not None  # reads go on
            fenced = [e for e in leader.recent_events if e["event"] == "fenced"]
            assert fenced and fenced[0]["newer_epoch"] == 1 and fenced[0]["leader"] is None
            # The follower was told why (the epoch mismatch), and holds nothing from it.
            _eventually(lambda: _following(follower)["state"] == "stale_leader")
            assert "epoch mismatch" in _following(follower)["last_error"]
            assert not follower.databases.exists("default")
        finally:
            follower.stop()

        # The new leader becomes known: writes are sent there.
        assert leader.following.fence("default", 2, NOWHERE)
        with kilndb.connect(leader.url, follow_leader=False) as db:
            with pytest.raises(kilndb.ReadOnlyReplicaError) as elsewhere:
                db.store("s").write("after", 1)
            assert elsewhere.value.leader == NOWHERE
        # An older epoch changes nothing; an operator may still promote it (that
        # leader died too): above every epoch known, writes accepted again.
        assert leader.following.fence("default", 1, "tcp://127.0.0.1:8") is True
        assert leader.dispatcher.read_only["default"] == NOWHERE
        (promoted,) = leader.promote(["default"])["promoted"]
        assert promoted["epoch"] == 3
        with kilndb.connect(leader.url) as db:
            db.store("s").write("after", 1)


def test_a_write_applied_before_the_fence_is_not_acknowledged(tmp_path: Path) -> None:
    with Server(data=tmp_path / "a", port=0) as server:
        _write(server.url, 0, 1)
        write = {"op": "write", "database": "default", "store": "s", "key": "k", "value": 1}
        request = parse_request(orjson.dumps(write))
        assert isinstance(request, Request)
        _, db, position = server.dispatcher.apply(request, "default")
        assert db is not None and position
        server.following.fence("default", 1, NOWHERE)  # lands before the answer
        db.wait_durable(position)
        with pytest.raises(kilndb.ReadOnlyReplicaError):
            server.dispatcher.confirm("default")  # what every write passes to be answered
        assert server.status()["replication"]["fenced"] == {"default": 1}


def test_fencing_what_is_not_led_here_changes_nothing(tmp_path: Path) -> None:
    with Server(data=tmp_path / "a", port=0) as server:
        _write(server.url, 0, 3)
        assert server.following.fence("not-held", 4, NOWHERE) is False
        assert server.following.fence("default", 0, NOWHERE) is False  # not newer
        assert "not-held" not in server.dispatcher.read_only
        assert "default" not in server.dispatcher.read_only
        with pytest.raises(kilndb.InvalidArgumentError):
            server.following.fence("bad name!", 4, NOWHERE)
        with kilndb.connect(server.url) as db:
            db.store("s").write("still", 1)
        assert not [e for e in server.recent_events if e["event"] == "fenced"]


def test_the_leader_ignores_acks_from_a_follower_that_knows_a_newer_epoch(
    tmp_path: Path,
) -> None:
    with Server(data=tmp_path / "a", port=0, replica_timeout=30) as leader:
        _write(leader.url, 0, 3)
        link = RawClient(tcp_address(leader))
        try:
            _acks_from(leader, link)
        finally:
            link.sock.close()
        assert leader.following.fenced["default"] == 4


def _acks_from(leader: Server, link: RawClient) -> None:
    """``link`` opens a replication stream, then acknowledges two writes waiting for a
    replica: the first at the leader's epoch, the second at a newer one."""
    link.send({"op": "hello", "database": "default"})
    assert link.receive() is not None
    sync = {"op": "sync_request", "protocol_version": 1, "leader_epoch": 0, "position": 0}
    link.send(sync)
    reply = link.receive()
    assert reply is not None and reply["type"] == "shard_info"

    def replicated_write(key: str) -> Future[Any]:
        def write() -> Any:
            with kilndb.connect(leader.url) as db:
                return db._call("write", store="s", key=key, value=1, replicas=1)

        return pool.submit(write)

    def last() -> int:
        return leader.databases.get("default").last_position

    with ThreadPoolExecutor(2) as pool:
        # An ack from a follower at this leader's epoch: the write is answered.
        before = last()
        answered = replicated_write("one")
        _eventually(lambda: last() > before)
        link.send({"op": "replication_ack", "applied": last(), "durable": last(), "epoch": 0})
        assert answered.result(10)["fact"]["position"] == last()
        # An ack from one that knows a newer epoch: it counts for nothing, and the
        # leader, fenced by the news, answers the waiting write with stale_epoch.
        before = last()
        waiting = replicated_write("two")
        _eventually(lambda: last() > before)
        link.send({"op": "replication_ack", "applied": last(), "durable": last(), "epoch": 4})
        with pytest.raises(kilndb.StaleEpochError):
            waiting.result(10)

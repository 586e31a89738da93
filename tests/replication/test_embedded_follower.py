"""kilndb.replication.Follower: a leader's database copied from Python, without a server."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import kilndb
from kilndb import Write
from kilndb.codec import FrameDecoder, encode_frame
from kilndb.replication import CONNECT_TIMEOUT, Follower
from kilndb.server import Server, ServerConfig
from tests.replication.test_follower import _eventually, _free_port
from tests.replication.test_follower import _write as write
from tests.replication.test_processes import _last


def _facts(url: str) -> list[tuple[int, str, Any]]:
    with kilndb.connect(url) as db:
        return [(f.position, f.id, f.value) for f in db.replay()]


def _copied(follower: Follower) -> list[tuple[int, str, Any]]:
    return [(f.position, f.id, f.value) for f in follower.database.replay()]


def _write(url: str, start: int, n: int) -> int:
    """:func:`tests.replication.test_follower._write`; the leader's last position."""
    write(url, start, n)
    return _last(url)


@contextlib.contextmanager
def _unanswering_address() -> Iterator[str]:
    """A loopback address whose listen queue is full: a connection to it is never
    answered (the SYN is dropped), as a leader behind a dead route would not."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())  # takes the one slot
    try:
        host, port = listener.getsockname()
        yield f"tcp://{host}:{port}"
    finally:
        filler.close()
        listener.close()


def test_a_follower_copies_a_leader_resumes_after_a_restart_and_finds_it_again(
    tmp_path: Path,
) -> None:
    port = _free_port()
    leader = Server(data=tmp_path / "leader", port=port).start()
    try:
        last = _write(leader.url, 0, 30)
        follower = Follower(leader.url, tmp_path / "replica", backoff_min=0.05, backoff_max=0.3)
        assert follower.connect_timeout == CONNECT_TIMEOUT == 5.0
        with pytest.raises(kilndb.UnavailableError):  # nothing copied yet
            follower.database.stats()
        with follower:
            assert follower.wait_for(timeout=20)
            assert follower.position == last
            assert _copied(follower) == _facts(leader.url)
            assert follower.database.store("s").read("k1") is not None
            # Live: what the leader commits next reaches the copy and its changefeed.
            with follower.database.subscribe(after=last) as feed:
                last = _write(leader.url, 30, 10)
                assert follower.wait_for(last, timeout=20)
                live = [feed.get(timeout=5) for _ in range(13)]  # 9 writes, a batch of 4
                assert [f.position for f in live if f] == list(range(last - 12, last + 1))
            status = follower.status()
            assert status["state"] == "streaming" and status["lag_records"] == 0
            assert status["max_position_seen"] == last and status["reconnects"] == 0
            assert status["last_error"] is None
            assert status["path"] == str(tmp_path / "replica" / "default")
            # Only the follower writes to its copy.
            with pytest.raises(kilndb.ReadOnlyReplicaError) as refused:
                follower.database.store("s").write("k1", 0)
            assert refused.value.leader == leader.url
            with pytest.raises(kilndb.ReadOnlyReplicaError):
                follower.database.write_many([Write("s", "k1", 0)])
            with pytest.raises(kilndb.ReadOnlyReplicaError):
                follower.database.store("s").delete("k1")
        assert follower.state == "stopped"
        follower.stop()  # again: nothing happens
        with kilndb.open(tmp_path / "replica") as copy:  # stopped: an ordinary database
            assert copy.last_position == last

        stopped_at, last = last, _write(leader.url, 40, 10)  # while the follower is stopped
        follower.start()
        try:
            assert follower.wait_for(last, timeout=20)
            # It resumed from the end of its copy: only the new facts were shipped.
            assert follower.database.stats()["facts_written"] == last - stopped_at
            assert _copied(follower) == _facts(leader.url)

            leader.stop()  # the link breaks: an error, then retries with backoff
            _eventually(lambda: follower.reconnects >= 1 and follower.last_error is not None)
            assert follower.database.store("s").read("k1") is not None  # still readable
            leader = Server(data=tmp_path / "leader", port=port).start()
            last = _write(leader.url, 50, 10)
            assert follower.wait_for(last, timeout=20)
            assert follower.wait_for(timeout=20)
            assert follower.last_error is None and follower.state == "streaming"
            assert _copied(follower) == _facts(leader.url)
        finally:
            follower.stop()
    finally:
        leader.stop()


def test_a_bad_leader_address_is_reported_and_retried_with_backoff(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    follower = Follower(
        f"127.0.0.1:{port}", tmp_path / "replica", backoff_min=0.01, backoff_max=10.0
    ).start()
    try:
        _eventually(lambda: follower.reconnects >= 3)
        assert not follower.wait_for(timeout=0.05)
    finally:
        follower.stop()
    status = follower.status()
    assert f"cannot connect to tcp://127.0.0.1:{port}" in status["last_error"]
    # The wait doubles from backoff_min after each failure (before jitter).
    assert status["backoff"] == pytest.approx(0.01 * 2 ** (status["reconnects"] - 1))
    assert not (tmp_path / "replica" / "default").exists()  # no copy of nothing

    capped = Follower(f"127.0.0.1:{port}", tmp_path / "r2", backoff_min=0.01, backoff_max=0.04)
    with capped:
        _eventually(lambda: capped.reconnects >= 5)
    assert capped.backoff == 0.04


def test_stop_during_a_backoff_wait_returns_at_once(tmp_path: Path) -> None:
    port = _free_port()
    follower = Follower(
        f"tcp://127.0.0.1:{port}", tmp_path / "replica", backoff_min=60.0, backoff_max=60.0
    ).start()
    _eventually(lambda: follower.reconnects == 1)  # now waiting 30 to 60 s
    stopper = threading.Thread(target=follower.stop)  # from another thread
    stopper.start()
    stopper.join(5)
    assert not stopper.is_alive() and not follower.running
    assert follower.state == "stopped"


def test_a_connection_that_is_never_answered_times_out(tmp_path: Path) -> None:
    with _unanswering_address() as address:
        follower = Follower(
            address, tmp_path / "replica", connect_timeout=0.2, backoff_min=0.01, backoff_max=0.02
        )
        with follower:
            _eventually(lambda: follower.reconnects >= 2)
        assert follower.last_error == (
            f"cannot connect to {address}: no answer within 0.2 s (connect_timeout)"
        )
        # A following server takes the same setting.
        assert ServerConfig().replication_connect_timeout == 5.0
        server = Server(
            data=tmp_path / "server",
            port=0,
            replica_of=address,
            replication_backoff=(0.01, 0.02),
            replication_connect_timeout=0.2,
        ).start()
        try:

            def timed_out() -> bool:
                (state,) = server.status()["replication"]["following"]
                return "no answer within 0.2 s" in str(state["last_error"])

            _eventually(timed_out)
        finally:
            server.stop()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(kilndb.InvalidArgumentError):
        Follower("tcp://127.0.0.1:1", tmp_path, connect_timeout=0)
    with pytest.raises(kilndb.InvalidArgumentError):
        Follower("tcp://127.0.0.1:1", tmp_path, backoff_min=2.0, backoff_max=1.0)
    with pytest.raises(kilndb.InvalidArgumentError):
        Follower("tcp://127.0.0.1:1", tmp_path, name="no/slash")


class _FakeLeader:
    """Speaks the replication protocol on loopback as a script says: answers ``hello``,
    then answers ``sync_request`` with ``script(database_id)`` (a list of messages)."""

    def __init__(self, script: Callable[[str], list[dict[str, Any]]], database_id: str) -> None:
        self.script = script
        self.database_id = database_id
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        host, port = self._listener.getsockname()[:2]
        self.url = f"tcp://{host}:{port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = FrameDecoder(1 << 20)
        with conn:
            try:
                while data := conn.recv(65536):
                    decoder.feed(data)
                    while (body := decoder.next_frame()) is not None:
                        request = orjson.loads(body)
                        if request["op"] == "hello":
                            replies = [{"ok": True, "protocol_version": 1}]
                        elif request["op"] == "sync_request":
                            replies = self.script(self.database_id)
                        else:
                            replies = []
                        for reply in replies:
                            conn.sendall(encode_frame(orjson.dumps(reply)))
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()


def _shard_info(database_id: str) -> dict[str, Any]:
    return {
        "ok": True,
        "type": "shard_info",
        "database": "default",
        "database_id": database_id,
        "protocol_version": 1,
        "leader_epoch": 0,
        "epochs": [{"epoch": 0, "start_position": 1}],
        "last_position": 0,
        "durable_position": 0,
        "compacted_through": 0,
        "compacted_through_by_store": {},
    }


_SCRIPTS: dict[str, tuple[Callable[[str], list[dict[str, Any]]], str]] = {
    "an unknown stream message": (
        lambda db_id: [_shard_info(db_id), {"event": "replication", "type": "rewind"}],
        "type 'rewind'",
    ),
    "a changefeed event": (
        lambda db_id: [_shard_info(db_id), {"event": "fact_written", "fact": {}}],
        "event 'fact_written'",
    ),
    "a second reply": (lambda db_id: [_shard_info(db_id), {"ok": True}], "a reply"),
    "a batch where shard_info is due": (
        lambda db_id: [{"ok": True, "type": "batch", "first": 1, "last": 1, "frames": ""}],
        "type 'batch' where shard_info was due",
    ),
}


@pytest.mark.parametrize("case", sorted(_SCRIPTS))
def test_an_unexpected_message_is_an_error_and_the_follower_reconnects(
    tmp_path: Path, case: str
) -> None:
    script, named = _SCRIPTS[case]
    with kilndb.open(tmp_path / "origin") as origin:
        database_id = origin.database_id
    leader = _FakeLeader(script, database_id)
    try:
        follower = Follower(leader.url, tmp_path / "replica", backoff_min=0.01, backoff_max=0.05)
        with follower:
            _eventually(lambda: follower.reconnects >= 2 and leader.connections >= 3)
        assert follower.last_error == f"unexpected message from the leader {leader.url}: {named}"
    finally:
        leader.close()


def test_a_batch_larger_than_a_client_frame_is_replicated_whole(tmp_path: Path) -> None:
    # 13 MB of records: base64 makes its shipment larger than the 16 MiB a client
    # frame may be, and than the leader's send window; a batch is never split.
    with Server(data=tmp_path / "leader", port=0) as leader:
        with kilndb.connect(leader.url) as db:
            db.write_many(Write("s", f"k{i}", "x" * 100_000) for i in range(130))
            db.store("s").write("after", 1)
        follower = Follower(leader.url, tmp_path / "copy").start()
        try:
            assert follower.wait_for(position=131, timeout=20), follower.status()
            copy = follower.database
            assert copy.store("s").read("k129") is not None
            assert len(copy.store("s").read("k7").value) == 100_000  # type: ignore[union-attr]
        finally:
            follower.stop()


def test_a_backup_copy_never_counts_as_a_replica(tmp_path: Path) -> None:
    with Server(data=tmp_path / "leader", port=0, replica_timeout=0.4) as leader:
        held = _write(leader.url, 0, 3)
        backup = Follower(leader.url, tmp_path / "backup", replica=False).start()
        try:
            assert backup.wait_for(position=held, timeout=10)
            with kilndb.connect(leader.url) as db:
                # The backup holds it, but a copy that stops is no replica.
                with pytest.raises(kilndb.ReplicationTimeoutError, match="0 of 1"):
                    db.store("s").write("alone", 1, replicas=1)
                alone = db.store("s").read("alone")
                assert alone is not None and backup.wait_for(alone.position, timeout=10)
                roles = [f["role"] for f in leader.replication_status()["followers"]]
                assert roles == ["backup"]
                replica = Follower(leader.url, tmp_path / "replica").start()
                try:
                    assert replica.wait_for(position=alone.position, timeout=10)
                    db.store("s").write("held", 2, replicas=1)  # the replica counts
                finally:
                    replica.stop()
        finally:
            backup.stop()

"""Clients after their server restarts: what is sent again, what raises, what resumes.

Each test runs twice: through ``kilndb.connect`` and through ``kilndb.connect_async``
(driven by the conformance suite's blocking adapter, every call going through the
asyncio client). Servers are real and restarted on the same port; a reply lost after
the server applied its request comes from a loopback proxy that throws it away.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import kilndb
from kilndb import Write
from kilndb.server import Server
from kilndb.server.auth import AuthConfig, create_token
from tests.client.proxy import Proxy


class Restartable:
    """A server on loopback that stops and starts again on the same port."""

    def __init__(self, data: Path, **options: Any) -> None:
        self.data = data
        self.options = options
        self.server: Server | None = Server(data=data, port=0, **options).start()
        self.url = self.server.url
        self.port = urlsplit(self.url).port
        self.server.databases.get("default")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def start(self) -> None:
        self.server = Server(data=self.data, port=self.port, **self.options).start()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Restartable]:
    running = Restartable(tmp_path / "data")
    yield running
    running.stop()


@pytest.fixture
def proxy(server: Restartable) -> Iterator[Proxy]:
    running = Proxy(("127.0.0.1", server.port or 0))
    yield running
    running.close()


def test_reads_and_writes_go_on_after_a_restart(server: Restartable, connect: Any) -> None:
    with connect(server.url) as db:
        tasks = db.store("tasks")
        tasks.write("t1", "before")
        server.restart()
        assert tasks.read("t1").value == "before"  # reconnected, hello said again
        assert db.reconnects == 1
        server.restart()
        # The connection was known to be dead before this write was sent: it is simply
        # sent on the new one, id or not.
        assert tasks.write("t1", "after").seq == 2
        assert db.reconnects == 2
        assert [f.value for f in db.replay()] == ["before", "after"]


def test_a_write_with_an_id_whose_reply_was_lost_is_applied_once(
    proxy: Proxy, connect: Any
) -> None:
    with connect(proxy.url) as db:
        tasks = db.store("tasks")
        proxy.lose_reply_to("write")
        fact = tasks.write("t1", {"n": 1}, id="cmd-1")
        assert proxy.lost == ["write"]
        assert (fact.id, fact.seq) == ("cmd-1", 1)
        assert [f.id for f in tasks.history("t1")] == ["cmd-1"]
        proxy.lose_reply_to("write_many")
        facts = db.write_many(
            [Write("tasks", "t2", 1, id="b-1"), Write("tasks", "t3", 2, id="b-2")]
        )
        assert [f.id for f in facts] == ["b-1", "b-2"]
        assert [f.id for f in db.replay()] == ["cmd-1", "b-1", "b-2"]
        proxy.lose_reply_to("delete")
        assert tasks.delete("t1", id="del-1").deleted
        assert len(tasks.history("t1")) == 2


def test_a_read_whose_reply_was_lost_is_asked_again(proxy: Proxy, connect: Any) -> None:
    with connect(proxy.url) as db:
        db.store("s").write("k", 7)
        proxy.lose_reply_to("read")
        assert db.store("s").read("k").value == 7
        proxy.lose_reply_to("history")
        assert [f.value for f in db.store("s").history("k")] == [7]
        assert proxy.lost == ["read", "history"]


@pytest.mark.parametrize(
    ("op", "call"),
    [
        ("write", lambda db: db.store("s").write("k", 1)),
        ("delete", lambda db: db.store("s").delete("k")),
        ("write_many", lambda db: db.write_many([Write("s", "k", 1), Write("s", "j", 1, id="x")])),
        ("produce", lambda db: db.space("s").segment("g").produce([kilndb.Record(1)])),
    ],
)
def test_a_write_without_an_id_whose_reply_was_lost_raises_outcome_unknown(
    proxy: Proxy, connect: Any, op: str, call: Callable[[Any], object]
) -> None:
    with connect(proxy.url) as db:
        db.store("s").write("k", 0)
        proxy.lose_reply_to(op)
        with pytest.raises(kilndb.WriteOutcomeUnknownError, match="may or may not") as unknown:
            call(db)
        assert isinstance(unknown.value, kilndb.ConnectionLostError)
        assert (unknown.value.op, unknown.value.url) == (op, proxy.url)
        assert unknown.value.error_code == "outcome_unknown"
        assert proxy.lost == [op]
        assert db.store("s").read("k") is not None or op == "delete"  # and it goes on


def test_write_each_sends_id_writes_again_and_reports_the_others(
    proxy: Proxy, connect: Any
) -> None:
    with connect(proxy.url) as db:
        proxy.lose_reply_to("write")
        outcomes = db.write_each([Write("s", "a", 1), Write("s", "b", 2, id="w-b")])
        assert isinstance(outcomes[0], kilndb.WriteOutcomeUnknownError)
        assert isinstance(outcomes[1], kilndb.Fact) and outcomes[1].id == "w-b"
        # The lost write was applied; the id write once, whatever was sent twice.
        assert [f.key for f in db.replay()] == ["a", "b"]


def test_a_server_down_longer_than_the_budget_is_connection_lost(
    server: Restartable, connect: Any
) -> None:
    with connect(server.url, reconnect_timeout=0.3) as db:
        db.store("s").write("k", 1)
        server.stop()
        started = time.monotonic()
        with pytest.raises(kilndb.ConnectionLostError, match="could not reconnect within") as e:
            db.store("s").read("k")
        assert not isinstance(e.value, kilndb.WriteOutcomeUnknownError)
        assert time.monotonic() - started < 10  # bounded, not hung
        with pytest.raises(kilndb.ConnectionLostError):
            db.store("s").write("k", 2)  # never sent: plain ConnectionLostError
        server.start()
        assert db.store("s").read("k").value == 1


def test_reconnect_timeout_zero_never_reconnects(server: Restartable, connect: Any) -> None:
    with connect(server.url, reconnect_timeout=0) as db:
        server.restart()
        with pytest.raises(kilndb.ConnectionLostError, match="within 0 s"):
            db.stats()
    with pytest.raises(kilndb.InvalidArgumentError):
        connect(server.url, reconnect_timeout=-1)


def test_a_subscription_resumes_where_it_was_after_a_restart(
    server: Restartable, connect: Any
) -> None:
    with connect(server.url) as db:
        tasks = db.store("tasks")
        tasks.write("a", 1)
        tasks.write("b", 2)
        with db.subscribe(stores=["tasks"]) as sub:
            assert [f.value for f in sub.get_batch(10, timeout=5)] == [1, 2]
            assert sub.covered == sub.position == 2
            server.restart()
            tasks.write("c", 3)
            tasks.write("d", 4)
            got: list[int] = []
            deadline = time.monotonic() + 15
            while len(got) < 2 and time.monotonic() < deadline:
                got += [f.value for f in sub.get_batch(10, timeout=1)]
            assert got == [3, 4]  # nothing missed, nothing twice
            assert sub.position == 4 and sub.reconnects >= 1


def test_writes_sent_on_to_a_restarted_leader_reconnect_to_it(
    tmp_path: Path, server: Restartable, connect: Any
) -> None:
    follower = Server(
        data=tmp_path / "follower",
        port=0,
        replica_of=f"127.0.0.1:{server.port}",
        replicate=("default",),
        replication_backoff=(0.05, 0.3),
    ).start()
    try:
        with connect(follower.url, follow_leader=True) as db:
            first = db.store("s").write("k", 1)  # refused by the follower, sent to the leader
            server.restart()
            # The link to the leader broke with the restart: a new one is made, not the
            # failed one used again.
            second = db.store("s").write("k", 2)
            assert (first.seq, second.seq) == (1, 2)
        with kilndb.connect(server.url) as leader:
            assert [f.value for f in leader.store("s").history("k")] == [1, 2]
    finally:
        follower.stop()


def test_a_reconnection_says_hello_with_the_database_and_token_again(
    tmp_path: Path, connect: Any
) -> None:
    secret = "a-test-secret-long-enough-for-every-hmac-algorithm-0123456789abcdef"
    server = Restartable(tmp_path / "data", auth=AuthConfig(secret=secret))
    try:
        token = create_token(secret, ["kiln::billing"])
        with connect(server.url, "billing", token=token) as db:
            db.store("s").write("k", 1)
            server.restart()
            assert db.store("s").read("k").value == 1  # billing, with the token: allowed
            assert db.stats()["database"] == "billing" and db.reconnects == 1
    finally:
        server.stop()

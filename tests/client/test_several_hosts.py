"""A client given several servers finds the database's leader and follows it.

Real servers on loopback: a leader ``a`` and a follower ``b`` streaming from it; a
failover is done by hand (``a`` stopped, ``b`` promoted), as an operator or the
coordinator would. Each test runs through ``kilndb.connect`` and through
``kilndb.connect_async``. A host that is down is a closed loopback port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kilndb
from kilndb.server import Server
from tests.client.proxy import Proxy
from tests.replication.test_follower import _digest, _eventually, _follower, _free_port
from tests.server.test_sockets import tcp_address


class Pair:
    """A leader and a follower of its database ``default``."""

    def __init__(self, tmp_path: Path) -> None:
        self.a: Server | None = Server(data=tmp_path / "a", port=0).start()
        self.a_url = self.a.url
        self.a.databases.get("default")
        self.b = _follower(tmp_path, self.a, "b")
        self.b_url = self.b.url
        self.b_stopped = False

    def caught_up(self) -> None:
        assert self.a is not None
        _eventually(lambda: _digest(self.b_url) == _digest(self.a_url))

    def fail_over_caught_up(self) -> None:
        """The follower catches up, then the leader dies and the follower is promoted."""
        self.caught_up()
        self.fail_over()

    def fail_over(self) -> None:
        """The leader dies; the follower is promoted."""
        if self.a is not None:
            self.a.stop()
            self.a = None
        self.b.promote()

    def stop(self) -> None:
        """Stop both servers (again: nothing)."""
        if self.a is not None:
            self.a.stop()
            self.a = None
        if not self.b_stopped:
            self.b_stopped = True
            self.b.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    running = Pair(tmp_path)
    yield running
    running.stop()


def _dead() -> str:
    return f"tcp://127.0.0.1:{_free_port()}"


def _ids(url: str, key: str) -> list[str]:
    with kilndb.connect(url) as db:
        return [fact.id for fact in db.store("s").history(key)]


def test_the_first_host_down_at_connect_time_is_skipped(pair: Pair, connect: Any) -> None:
    with connect(f"{_dead()},{pair.a_url},{pair.b_url}") as db:
        assert db.url == pair.a_url
        assert db.store("s").write("k", 1).seq == 1


def test_every_host_down_at_connect_time_is_connection_lost_naming_each(connect: Any) -> None:
    first, second = _dead(), _dead()
    with pytest.raises(kilndb.ConnectionLostError) as lost:
        connect(f"{first},{second}")
    assert first in lost.value.message and second in lost.value.message


def test_every_host_down_later_is_connection_lost_after_the_budget(
    pair: Pair, connect: Any
) -> None:
    with connect(f"{pair.a_url},{pair.b_url}", reconnect_timeout=0.3) as db:
        db.store("s").write("k", 1)
        pair.stop()
        with pytest.raises(kilndb.ConnectionLostError) as lost:
            db.store("s").read("k")
        assert "could not reconnect within 0.3 s" in lost.value.message


def test_a_list_of_followers_sends_writes_to_the_leader_they_name(pair: Pair, connect: Any) -> None:
    with connect(f"{_dead()},{pair.b_url}") as db:
        assert db.url == pair.b_url  # reads stay on the follower (read_from="any")
        written = db.store("s").write("k", "via b", id="w-1")
        assert db.url == pair.b_url
    assert _ids(pair.a_url, "k") == ["w-1"]
    assert written.position >= 1


def test_read_from_leader_connects_to_the_leader_a_follower_names(pair: Pair, connect: Any) -> None:
    with connect(f"{pair.b_url},{_dead()}", read_from="leader") as db:
        assert db.url == pair.a_url


def test_writes_go_on_across_a_failover_with_nothing_in_flight(pair: Pair, connect: Any) -> None:
    with connect(f"{pair.a_url},{pair.b_url}") as db:
        tasks = db.store("s")
        tasks.write("k", 1, id="before")
        pair.caught_up()
        pair.fail_over()  # no call in flight: the next one finds out
        assert tasks.read("k") is not None
        tasks.write("k", 2, id="after")
        plain = tasks.write("k", 3)  # no id, but nothing was in flight: it is sent once
        assert db.url == pair.b_url
    assert _ids(pair.b_url, "k") == ["before", "after", plain.id]


@pytest.mark.parametrize("read_from", ["any", "leader"])
def test_a_write_with_an_id_in_flight_during_a_failover_is_applied_exactly_once(
    pair: Pair, connect: Any, read_from: str
) -> None:
    host, port = tcp_address(pair.a) if pair.a is not None else ("", 0)
    proxy = Proxy((host, port))
    try:
        with connect(f"{proxy.url},{pair.b_url}", read_from=read_from) as db:
            tasks = db.store("s")
            tasks.write("k", 0, id="w-0")
            # a applies the write and ships it to b, then dies before its reply
            # leaves; b is promoted; the client sends the write again, to b.
            proxy.lose_reply_to("write", then=pair.fail_over_caught_up)
            fact = tasks.write("k", 1, id="w-1")
            assert proxy.lost == ["write"]
            assert (fact.id, fact.seq) == ("w-1", 2)
            assert db.url == pair.b_url
            assert tasks.write("k", 2, id="w-2").seq == 3
    finally:
        proxy.close()
    assert _ids(pair.b_url, "k") == ["w-0", "w-1", "w-2"]


def test_a_write_without_an_id_in_flight_during_a_failover_is_outcome_unknown(
    pair: Pair, connect: Any
) -> None:
    host, port = tcp_address(pair.a) if pair.a is not None else ("", 0)
    proxy = Proxy((host, port))
    try:
        with connect(f"{proxy.url},{pair.b_url}") as db:
            tasks = db.store("s")
            proxy.lose_reply_to("write", then=pair.fail_over_caught_up)
            with pytest.raises(kilndb.WriteOutcomeUnknownError) as unknown:
                tasks.write("k", "lost?")
            assert unknown.value.url == proxy.url
            later = tasks.write("k", "later")  # the next write goes to the new leader
            assert db.url == pair.b_url
    finally:
        proxy.close()
    assert _ids(pair.b_url, "k")[-1] == later.id


def test_a_demoted_leader_refuses_and_the_write_goes_to_the_new_one(
    pair: Pair, connect: Any
) -> None:
    hosts = f"{pair.a_url},{pair.b_url}"
    with connect(hosts, read_from="leader") as leader_reader, connect(hosts) as db:
        db.store("s").write("k", 1, id="on-a")
        pair.caught_up()
        # A planned switchover: b leads, a follows it — both stay up, so the
        # clients' connections to a stay open and a refuses their writes.
        pair.b.promote()
        assert pair.a is not None
        host, port = tcp_address(pair.b)
        pair.a.follow(f"{host}:{port}", ["default"])
        assert db.store("s").write("k", 2, id="on-b").seq == 2
        assert db.url == pair.a_url  # reads stay where they were
        assert leader_reader.store("s").write("k", 3, id="on-b-too").seq == 3
        assert leader_reader.url == pair.b_url
    assert _ids(pair.b_url, "k") == ["on-a", "on-b", "on-b-too"]


def test_a_subscription_resumes_on_another_host_from_where_it_was(pair: Pair, connect: Any) -> None:
    with connect(f"{pair.a_url},{pair.b_url}") as db:
        tasks = db.store("s")
        with db.subscribe(stores=["s"]) as sub:
            for i in range(3):
                tasks.write(f"k{i}", i, id=f"w{i}")
            seen = [sub.get(timeout=10) for _ in range(3)]
            pair.caught_up()
            pair.fail_over()
            for i in range(3, 6):
                tasks.write(f"k{i}", i, id=f"w{i}")
            seen += [sub.get(timeout=10) for _ in range(3)]
            assert [fact.id for fact in seen if fact is not None] == [f"w{i}" for i in range(6)]
            assert [fact.position for fact in seen if fact is not None] == list(range(1, 7))
            assert sub.get(timeout=0.2) is None  # nothing twice


def test_follow_leader_false_on_a_list_raises_the_refusal(pair: Pair, connect: Any) -> None:
    with connect(f"{pair.b_url},{pair.a_url}", follow_leader=False) as db:
        with pytest.raises(kilndb.ReadOnlyReplicaError) as refused:
            db.store("s").write("k", 1)
        assert refused.value.leader == pair.a_url


def test_a_bad_list_is_refused_before_anything_is_sent(connect: Callable[..., Any]) -> None:
    with pytest.raises(kilndb.InvalidArgumentError, match="a list uses one scheme"):
        connect("tcp://127.0.0.1:1,tls://127.0.0.1:2")
    with pytest.raises(kilndb.InvalidArgumentError, match=r"server 2 of .*: empty"):
        connect("tcp://127.0.0.1:1,,127.0.0.1:3")


def test_a_single_url_redirected_to_the_leader_subscribes_there(pair: Pair, connect: Any) -> None:
    with connect(pair.b_url, read_from="leader") as db, db.subscribe() as sub:
        assert (db.url, sub.url) == (pair.a_url, pair.a_url)


def test_write_each_on_a_follower_of_the_list_goes_on_to_the_leader(
    pair: Pair, connect: Any
) -> None:
    with connect(f"{pair.b_url},{pair.a_url}") as db:
        assert db.url == pair.b_url
        outcomes = db.write_each(
            [kilndb.Write("s", "k", i, id=f"e{i}") for i in range(3)]
            + [kilndb.Write("s", "k", 9, expected_seq=0)]
        )
        assert [getattr(o, "seq", None) for o in outcomes[:3]] == [1, 2, 3]
        assert isinstance(outcomes[3], kilndb.ConflictError)  # the leader's answer
    assert _ids(pair.a_url, "k") == ["e0", "e1", "e2"]

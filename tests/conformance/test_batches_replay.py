"""Conformance: atomic write_many, replay and the changefeed."""

from __future__ import annotations

import threading
import time

import pytest

import kilndb
from kilndb import Write
from tests.conformance.conftest import Backend


def test_write_many_commits_every_fact_in_order(db: kilndb.Database) -> None:
    facts = db.write_many(
        [
            Write("tasks", "t1", {"a": 1}, expected_seq=0),
            Write("tasks", "t1", {"a": 2}, expected_seq=1),
            Write("other", "o1", [1, 2], metadata={"m": "x"}),
        ]
    )
    assert [(f.store, f.key, f.seq, f.position) for f in facts] == [
        ("tasks", "t1", 1, 1),
        ("tasks", "t1", 2, 2),
        ("other", "o1", 1, 3),
    ]
    assert facts[2].metadata == {"m": "x"}
    assert db.write_many([]) == []


def test_write_many_is_all_or_nothing(db: kilndb.Database) -> None:
    db.store("tasks").write("t1", "v")
    with pytest.raises(kilndb.ConflictError):
        db.write_many(
            [
                Write("tasks", "t2", "new"),
                Write("tasks", "t1", "clash", expected_seq=0),
                Write("tasks", "t3", "new"),
            ]
        )
    with pytest.raises(kilndb.InvalidArgumentError):
        db.write_many([Write("tasks", "t2", "ok"), Write("tasks", "", "empty key")])
    assert db.store("tasks").keys() == ["t1"]
    assert db.stats()["last_position"] == 1


def test_write_many_deletes_and_ids(db: kilndb.Database) -> None:
    db.store("s").write("gone", 1)
    facts = db.write_many(
        [
            Write("s", "gone", deleted=True),
            Write("s", "k", 1, id="w-1"),
            Write("s", "k", 2, id="w-1"),  # same id again inside the batch
        ]
    )
    assert facts[0].deleted and facts[1] == facts[2]
    assert db.store("s").read("gone") is None
    again = db.write_many([Write("s", "k", 3, id="w-1"), Write("s", "k2", 1)])
    assert again[0] == facts[1]
    assert again[1].position == 4


def test_write_many_rejects_other_objects(db: kilndb.Database) -> None:
    with pytest.raises(kilndb.InvalidArgumentError):
        db.write_many([("tasks", "t1", 1)])  # type: ignore[list-item]


def test_write_each_gives_every_write_its_own_outcome(db: kilndb.Database) -> None:
    db.store("s").write("taken", 1)
    outcomes = db.write_each(
        [
            Write("s", "a", 1),
            Write("s", "taken", 2, expected_seq=0),  # conflict
            Write("s", "a", 2, expected_seq=1),  # sees the first write of the call
            Write("s", "", 3),  # invalid key
            Write("s", "ghost", deleted=True),  # nothing to delete
            ("s", "b", 1),  # type: ignore[list-item]  # not a Write
            Write("s", "b", {"x": [1, 2]}, id="cmd-1"),
            Write("s", "b", "again", id="cmd-1"),  # the same id: the stored fact
        ]
    )
    a1, conflict, a2, invalid, missing, not_write, b, retry = outcomes
    assert isinstance(a1, kilndb.Fact) and (a1.seq, a1.value) == (1, 1)
    assert isinstance(conflict, kilndb.ConflictError)
    assert isinstance(a2, kilndb.Fact) and (a2.seq, a2.value) == (2, 2)
    assert isinstance(invalid, kilndb.InvalidArgumentError)
    assert isinstance(missing, kilndb.NotFoundError)
    assert isinstance(not_write, kilndb.InvalidArgumentError)
    assert isinstance(b, kilndb.Fact) and b.value == {"x": [1, 2]}
    assert retry == b
    # Refused writes take no position.
    assert [a1.position, a2.position, b.position] == [2, 3, 4]
    assert db.write_each([]) == []


def test_write_each_survives_a_restart(backend: Backend) -> None:
    db = backend.open()
    written = db.write_each([Write("s", "k", i) for i in range(100)])
    assert all(isinstance(f, kilndb.Fact) for f in written)
    db = backend.reopen(db)
    assert [f.value for f in db.replay()] == list(range(100))
    assert db.write_each([Write("s", "k", 0, expected_seq=100)])[0] == db.store("s").read("k")


def test_replay_in_position_order_with_filters(db: kilndb.Database) -> None:
    for i in range(10):
        db.store("even" if i % 2 == 0 else "odd").write(f"k{i}", i)
    assert [f.value for f in db.replay()] == list(range(10))
    # Values 0..9 sit at positions 1..10.
    assert [f.value for f in db.replay(after=7)] == [7, 8, 9]
    assert [f.value for f in db.replay(stores=["odd"])] == [1, 3, 5, 7, 9]
    assert [f.value for f in db.replay(after=2, stores=["even"], limit=2)] == [2, 4]
    assert list(db.replay(after=10)) == []
    assert list(db.replay(limit=0)) == []


def test_replay_argument_errors(db: kilndb.Database) -> None:
    with pytest.raises(kilndb.InvalidArgumentError):
        db.replay(after=-1)
    with pytest.raises(kilndb.InvalidArgumentError):
        db.replay(stores="tasks")
    with pytest.raises(kilndb.InvalidArgumentError):
        db.replay(limit=-5)


def test_subscribe_catches_up_then_follows_live(db: kilndb.Database) -> None:
    tasks = db.store("tasks")
    for i in range(3):
        tasks.write(f"k{i}", i)
    received: list[int] = []
    with db.subscribe(stores=["tasks"], after=1) as sub:
        for _ in range(2):
            fact = sub.get(timeout=5)
            assert fact is not None
            received.append(fact.position)
        db.store("other").write("x", "ignored")
        tasks.write("k3", 3)
        fact = sub.get(timeout=5)
        assert fact is not None
        received.append(fact.position)
        assert sub.get(timeout=0.05) is None
        assert sub.position == 5
    assert received == [2, 3, 5]


def test_subscription_iterates_across_threads_and_closes(db: kilndb.Database) -> None:
    sub = db.subscribe()
    received: list[int] = []
    done = threading.Event()

    def consume() -> None:
        for fact in sub:
            received.append(fact.value)
        done.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    writers = [
        threading.Thread(target=lambda n=n: [db.store("s").write(f"{n}", i) for i in range(20)])
        for n in range(4)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    deadline = time.monotonic() + 10
    while len(received) < 80 and time.monotonic() < deadline:
        time.sleep(0.005)
    sub.close()
    assert done.wait(5)
    consumer.join()
    assert len(received) == 80
    assert sub.get(timeout=0) is None


def test_subscription_ends_when_the_database_closes(backend: Backend) -> None:
    db = backend.open()
    sub = db.subscribe()
    ended = threading.Event()

    def consume() -> None:
        for _ in sub:
            pass
        ended.set()

    thread = threading.Thread(target=consume)
    thread.start()
    db.close()
    assert ended.wait(5)
    thread.join()


def test_no_gap_no_duplicate_while_writers_race(db: kilndb.Database) -> None:
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            db.store("s").write("k", i)
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while db.stats()["last_position"] < 50 and time.monotonic() < deadline:
            time.sleep(0.001)
        with db.subscribe() as sub:
            positions: list[int] = []
            while len(positions) < 300:
                fact = sub.get(timeout=10)
                assert fact is not None
                positions.append(fact.position)
    finally:
        stop.set()
        writer.join()
    assert positions == list(range(1, 301))


def test_subscribe_argument_errors(db: kilndb.Database) -> None:
    with pytest.raises(kilndb.InvalidArgumentError):
        db.subscribe(after=-1)
    with pytest.raises(kilndb.InvalidArgumentError):
        db.subscribe(stores=["bad name!"])

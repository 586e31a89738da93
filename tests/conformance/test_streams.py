"""Conformance: the streams view — spaces, ordered segments, status subscriptions."""

from __future__ import annotations

import os
import threading
import time

import pytest

import kilndb
from kilndb import Record
from tests.conformance.conftest import Backend


def test_produce_consume_peek_and_status(db: kilndb.Database) -> None:
    segment = db.space("orders").segment("o-1")
    assert segment.peek() is None
    assert segment.status() == {
        "space": "orders",
        "segment": "o-1",
        "first_sequence": None,
        "first_timestamp": None,
        "last_sequence": None,
        "last_timestamp": None,
    }
    binary = bytes(range(256)) + os.urandom(64)
    entries = segment.produce(
        [Record(binary, {"kind": "raw"}), Record({"qty": 2}), Record("three")], expected_seq=0
    )
    assert [e.sequence for e in entries] == [1, 2, 3]
    assert entries[0].payload == binary and entries[0].metadata == {"kind": "raw"}
    assert len({e.timestamp for e in entries}) == 1  # one atomic batch
    consumed = segment.consume()
    assert [e.payload for e in consumed] == [binary, {"qty": 2}, "three"]
    assert consumed == entries
    assert segment.peek() == entries[-1]
    status = segment.status()
    assert (status["first_sequence"], status["last_sequence"]) == (1, 3)
    assert status["last_timestamp"] == entries[-1].timestamp
    assert [e.sequence for e in segment.consume(min_seq=2, max_seq=2)] == [2]
    assert [e.sequence for e in segment.consume(limit=2)] == [1, 2]
    assert segment.consume(limit=0) == []
    assert len(segment.consume(limit=10**12)) == 3  # clamped, not refused


def test_expected_sequence_says_expected_and_actual(db: kilndb.Database) -> None:
    segment = db.space("s").segment("g")
    segment.produce([Record(1)], expected_seq=0)
    with pytest.raises(kilndb.ConflictError, match="expected sequence 0, actual sequence 1") as e:
        segment.produce([Record(2), Record(3)], expected_seq=0)
    assert (e.value.expected, e.value.actual) == (0, 1)
    assert [x.payload for x in segment.consume()] == [1]  # the batch wrote nothing
    assert [x.sequence for x in segment.produce([Record(2)], expected_seq=1)] == [2]


def test_time_filters_and_the_space_in_commit_order(db: kilndb.Database) -> None:
    space = db.space("events")
    first = space.segment("a").produce([Record(1)])[0]
    time.sleep(0.02)
    second = space.segment("b").produce([Record(2)])[0]
    space.segment("a").produce([Record(3)])
    db.space("other").segment("x").produce([Record(0)])
    assert [e.payload for e in space.consume()] == [1, 2, 3]
    assert [e.payload for e in space.consume(after=first.position)] == [2, 3]
    assert [e.payload for e in space.consume(min_ts=second.timestamp)] == [2, 3]
    assert [e.payload for e in space.consume(max_ts=first.timestamp)] == [1]
    assert [e.payload for e in space.consume(limit=1)] == [1]
    assert [e.payload for e in space.segment("a").consume(min_ts=second.timestamp)] == [3]
    assert db.spaces() == ["events", "other"]
    assert space.segments() == ["a", "b"]


@pytest.mark.parametrize(
    "call",
    [
        lambda seg: seg.produce([("not", "a record")]),
        lambda seg: seg.produce([Record(1, {"kiln.payload": "x"})]),
        lambda seg: seg.produce([Record(1, {"k": 1})]),  # type: ignore[dict-item]
        lambda seg: seg.produce([Record(float("nan"))]),
        lambda seg: seg.produce([Record(1)], expected_seq=-1),
        lambda seg: seg.consume(limit=-1),
        lambda seg: seg.consume(min_ts="yesterday"),
    ],
)
def test_bad_stream_arguments(db: kilndb.Database, call: object) -> None:
    segment = db.space("s").segment("k")
    with pytest.raises(kilndb.InvalidArgumentError):
        call(segment)  # type: ignore[operator]
    assert segment.consume() == []


def test_concurrent_producers_get_exactly_one_winner_per_sequence(backend: Backend) -> None:
    # Over the network, a client each; embedded, one database shared by the threads.
    handles = [backend.open()] * 6 if backend.embedded else [backend.open() for _ in range(6)]
    winners: dict[int, list[int]] = {}
    lock = threading.Lock()

    def producer(n: int) -> None:
        segment = handles[n].space("race").segment("seg")
        for _ in range(30):
            last = segment.status()["last_sequence"] or 0
            try:
                segment.produce([Record({"by": n})], expected_seq=last)
            except kilndb.ConflictError:
                continue
            with lock:
                winners.setdefault(last + 1, []).append(n)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(len(handles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    entries = handles[0].space("race").segment("seg").consume()
    assert all(len(who) == 1 for who in winners.values())
    assert sorted(winners) == [e.sequence for e in entries]
    assert [winners[e.sequence][0] for e in entries] == [e.payload["by"] for e in entries]


def test_status_subscription_snapshot_changes_and_heartbeats(db: kilndb.Database) -> None:
    space = db.space("jobs")
    space.segment("a").produce([Record(1)])
    space.segment("b").produce([Record(1), Record(2)])
    with space.subscribe_status(heartbeat=0.01) as statuses:  # clamped to 1 s
        snapshot = [statuses.get(timeout=5) for _ in range(2)]
        assert [(m["type"], m["segment"], m["last_sequence"]) for m in snapshot if m] == [
            ("status", "a", 1),
            ("status", "b", 2),
        ]
        space.segment("b").produce([Record(3)])
        change = statuses.get(timeout=5)
        assert change is not None and change["type"] == "change"
        assert (change["segment"], change["first_sequence"], change["last_sequence"]) == (
            "b",
            1,
            3,
        )
        started = time.monotonic()
        beat = statuses.get(timeout=5)
        assert beat is not None and beat["type"] == "heartbeat"
        assert 0.5 < time.monotonic() - started < 3
    with space.subscribe_status(segment="a", heartbeat=60) as only_a:
        first = only_a.get(timeout=5)
        assert first is not None and first["segment"] == "a"
        space.segment("b").produce([Record(4)])
        space.segment("a").produce([Record(2)])
        change = only_a.get(timeout=5)
        assert change is not None and (change["segment"], change["last_sequence"]) == ("a", 2)


def test_a_plain_write_cannot_break_a_segment(db: kilndb.Database) -> None:
    db.store("s").write("g", "not base64!", metadata={"kiln.payload": "base64"})
    (entry,) = db.space("s").segment("g").consume()
    assert entry.payload == "not base64!"  # shown as written, not an error


def test_leases_stay_out_of_replay_and_the_changefeed(db: kilndb.Database) -> None:
    db.store("s").write("k", 1)
    db.acquire_lease("job", "w1", 30)
    with db.subscribe(after=0) as sub:
        first = sub.get(timeout=5)
        assert first is not None and first.store == "s"
        assert sub.get(timeout=0.3) is None
    assert [f.store for f in db.replay()] == ["s"]

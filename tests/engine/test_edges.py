"""Edge cases around durability, retention, closing and bad input."""

from __future__ import annotations

import errno
import math
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import kilndb


@pytest.mark.usefixtures("os_io")
def test_an_idempotent_retry_is_acknowledged_no_sooner_than_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = kilndb.open(tmp_path)
    s = db.store("s")
    s.write("warm", 1)
    entered, release = threading.Event(), threading.Event()

    def failing_fdatasync(fd: int) -> None:
        entered.set()
        release.wait(10)
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    outcome: dict[str, Any] = {}

    def write(name: str) -> None:
        try:
            outcome[name] = s.write("k", "v", id="cmd-1")
        except kilndb.KilnError as exc:
            outcome[name] = exc

    original = threading.Thread(target=write, args=("original",))
    original.start()
    assert entered.wait(10)  # the original is appended and its fsync is running
    retry = threading.Thread(target=write, args=("retry",))
    retry.start()
    retry.join(0.2)
    assert retry.is_alive(), "the retry returned before the original was durable"
    release.set()
    original.join(10)
    retry.join(10)
    assert isinstance(outcome["original"], kilndb.StorageError)
    assert isinstance(outcome["retry"], kilndb.StorageError)
    db.close()


def test_a_batch_with_an_idempotent_hit_in_a_keep_latest_store(tmp_path: Path) -> None:
    with kilndb.open(tmp_path) as db:
        db.set_retention("s", keep="latest")
        first = db.store("s").write("K", "v1", id="a")
        out = db.write_many([kilndb.Write("s", "K", "v2"), kilndb.Write("s", "K", "v1", id="a")])
        assert out[1] == first
        latest = db.store("s").read("K")
        assert latest is not None and (latest.value, latest.seq) == ("v2", 2)


def test_max_age_drops_stay_dropped_after_a_restart(tmp_path: Path) -> None:
    with kilndb.open(tmp_path, max_file_size=4096) as db:
        s = db.store("s")
        s.write("k", "old", id="X")
        s.write("k", "new")
        for i in range(40):  # rotations seal the file and write its hint
            db.store("pad").write(f"p{i}", "x" * 200)
        db.set_retention("s", max_age=1e-6)
        db._log.apply_age_retention()  # what automatic compaction does first
        assert [f.value for f in s.history("k")] == ["new"]
    with kilndb.open(tmp_path, max_file_size=4096) as db:
        assert [f.value for f in db.store("s").history("k")] == ["new"]
        ids = [f.id for f in db.replay()]
        assert len(ids) == len(set(ids))


@pytest.mark.usefixtures("os_io")
def test_an_fsync_failure_while_sealing_a_file_poisons_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = kilndb.open(tmp_path, max_file_size=4096, auto_compact=False)
    s = db.store("s")
    while db.stats()["data_bytes"] < 3500:
        s.write("k", "x" * 200)
    before = db.stats()["last_position"]

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(kilndb.StorageError):
        s.write("k", "x" * 400)  # needs a rotation: sealing fails
    monkeypatch.undo()
    with pytest.raises(kilndb.StorageError):
        s.write("k", "after")
    db._log._dir_lock.release()  # as if the process died: reopen from disk
    with kilndb.open(tmp_path) as again:
        assert again.stats()["last_position"] >= before


@pytest.mark.usefixtures("os_io")
def test_an_exception_in_the_fsync_leader_does_not_block_other_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = kilndb.open(tmp_path)
    real = os.fdatasync
    calls = {"n": 0}

    def interrupted_once(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        real(fd)

    monkeypatch.setattr(os, "fdatasync", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        db.store("s").write("a", 1)
    done = threading.Event()

    def write() -> None:
        db.store("s").write("b", 2)
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    assert done.wait(10), "a later write is blocked behind the interrupted leader"
    thread.join()
    db.close()


def test_work_on_a_closed_database_is_refused(tmp_path: Path) -> None:
    db = kilndb.open(tmp_path, max_file_size=4096)
    for i in range(100):
        db.store("s").write(f"k{i}", "x" * 100)
    facts = db.replay()
    next(facts)
    db.close()
    with pytest.raises(kilndb.ClosedError):
        list(facts)
    with pytest.raises(kilndb.ClosedError):
        db.compact()
    with pytest.raises(kilndb.ClosedError):
        db.store("s").history("k1")


@pytest.mark.parametrize(
    "call",
    [
        lambda db: db.write_many([kilndb.Write("s", "a", deleted="no")]),  # type: ignore[arg-type]
        lambda db: db.store("s").read("a", as_of=math.nan),
        lambda db: db.store("s").read(["x"]),
        lambda db: db.store("s").history(5),
        lambda db: db.store(["x"]),
    ],
    ids=["deleted-not-bool", "as-of-nan", "read-list-key", "history-int-key", "store-list"],
)
def test_bad_arguments_are_invalid_argument_errors(tmp_path: Path, call: Any) -> None:
    with kilndb.open(tmp_path) as db:
        db.store("s").write("a", 1)
        with pytest.raises(kilndb.InvalidArgumentError):
            call(db)
        assert db.stats()["last_position"] == 1


def test_a_write_in_flight_when_the_database_closes_is_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = kilndb.open(tmp_path)
    log = db._log
    appended, closed = threading.Event(), threading.Event()
    original = log.wait_durable

    def paused(position: int) -> None:
        appended.set()
        closed.wait(10)
        original(position)

    monkeypatch.setattr(log, "wait_durable", paused)
    outcome: dict[str, Any] = {}
    writer = threading.Thread(target=lambda: outcome.update(fact=db.store("s").write("k", 1)))
    writer.start()
    assert appended.wait(10)
    db.close()  # fsyncs what was written: the waiting writer is served by it
    closed.set()
    writer.join(10)
    assert outcome["fact"].position == 1
    with kilndb.open(tmp_path) as again:
        latest = again.store("s").read("k")
        assert latest is not None and latest.value == 1


@pytest.mark.usefixtures("os_io")
def test_segments_show_durable_entries_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = kilndb.open(tmp_path)
    segment = db.space("s").segment("g")
    segment.produce([kilndb.Record(1)])
    entered, release = threading.Event(), threading.Event()
    real = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        entered.set()
        release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    producer = threading.Thread(target=segment.produce, args=([kilndb.Record(2)],))
    producer.start()
    assert entered.wait(10)
    # Applied but not yet durable: a consumer must not move its cursor past it.
    assert [e.payload for e in segment.consume()] == [1]
    assert segment.status()["last_sequence"] == 1
    assert segment.peek() is not None and segment.peek().payload == 1  # type: ignore[union-attr]
    release.set()
    producer.join(10)
    assert [e.payload for e in segment.consume()] == [1, 2]
    db.close()


def test_a_leaders_watermarks_are_adopted_per_store_or_for_every_store(tmp_path: Path) -> None:
    with kilndb.open(tmp_path) as db:
        db.store("a").write("k", 1)
        db.store("b").write("k", 1)
        db.adopt_compacted(7, {"a": 5})  # a leader that sends its map
        assert (db.compacted_through, db.compacted_through_by_store) == (7, {"a": 5})
        db.subscribe(stores=["b"], after=1).close()
        db.adopt_compacted(9)  # an older leader: nothing tells which stores lost facts
        assert db.compacted_through_by_store == {"a": 9, "b": 9}
        db.adopt_compacted(3, {"a": 4})  # watermarks never go down
        assert (db.compacted_through, db.compacted_through_by_store) == (9, {"a": 9, "b": 9})
        db.store("c").write("k", 1)
        db.subscribe(stores=["c"], after=1).close()

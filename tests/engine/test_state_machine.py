"""The database against a plain in-memory model, through writes, batches, deletes,
retention, compaction, clean reopens and crashes that damage the newest data file.

The crash rule abandons the database without a clean close (as a killed process would),
then truncates or flips a byte at a random offset of the newest data file and reopens.
Damage that nothing intact follows is a torn tail: the facts from the damaged frame on
(a whole batch, if the damage hits one of its frames) are cut. Damage that intact records
follow is corruption: the database refuses to open until ``kiln check --fix`` drops the
damaged fact (or its whole batch) and nothing else. The model forgets exactly those
facts, and every other acknowledged fact must still be there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import kilndb
import kilndb.storage.log
from kilndb.storage.check import check_database
from kilndb.storage.datafile import FrameReader, list_data_files

STORES = ["a", "b"]
KEYS = ["k1", "k2", "k3"]
IDS = [f"id-{i}" for i in range(4)]
OPTIONS: dict[str, Any] = {"max_file_size": 4096, "auto_compact": True}


@dataclass
class ModelFact:
    position: int
    store: str
    key: str
    seq: int
    value: Any
    deleted: bool
    id: str | None


def crash(db: kilndb.Database) -> None:
    """Abandon ``db`` the way a killed process would: no seal, no hint, no truncation."""
    log = db._log
    with log.lock:
        log.closed = True
    log._stop_interval.set()
    log._tasks.put(None)
    log._worker.join()
    for datafile in log.files.values():
        datafile.close()
    log._dir_lock.release()


def data_end(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = FrameReader(fd, 0, os.fstat(fd).st_size)
        for _ in reader:
            pass
        return reader.stop_offset
    finally:
        os.close(fd)


@dataclass
class Frame:
    offset: int
    end: int
    record: dict[str, Any]
    batch_start: int | None  # first position of the batch this fact belongs to


def read_frames(path: Path) -> list[Frame]:
    fd = os.open(path, os.O_RDONLY)
    try:
        found = list(FrameReader(fd, 0, os.fstat(fd).st_size))
    finally:
        os.close(fd)
    frames = []
    batch_start, batch_left = None, 0
    for offset, body in found:
        record = orjson.loads(body)
        member = None
        if "batch" in record:
            batch_start, batch_left = record["first"], record["batch"]
        elif "position" in record and batch_left:
            member, batch_left = batch_start, batch_left - 1
        frames.append(Frame(offset, offset + 8 + len(body), record, member))
    return frames


def predict_loss(path: Path, damage: int, truncate: bool) -> tuple[set[int], bool]:
    """Positions a crash that damages ``path`` at ``damage`` loses, and whether the
    database refuses to open (intact records follow the damage) until repaired."""
    frames = read_frames(path)
    positions = [f.record["position"] for f in frames if "position" in f.record]
    hit = next((i for i, f in enumerate(frames) if f.end > damage), None)
    if hit is None or (not truncate and frames[hit].offset > damage):
        return set(), False  # the damage is past the data: a torn tail of garbage
    frame = frames[hit]
    last = hit == len(frames) - 1
    if truncate or last:  # a torn tail: cut from the damaged frame (or its batch) on
        if "file" in frame.record:
            return set(positions), False
        start = frame.batch_start or frame.record.get("first") or frame.record["position"]
        return {p for p in positions if p >= start}, False
    # Intact records follow: the database refuses to open; `kiln check --fix` then
    # drops the damaged fact, or the whole batch it belongs to, and nothing else.
    if "position" not in frame.record:
        return set(), True
    if frame.batch_start is None:
        return {frame.record["position"]}, True
    batch = {f.record["position"] for f in frames if f.batch_start == frame.batch_start}
    return batch, True


class StepClock:
    """Transaction times one second apart: record sizes, and so file rotations, are the
    same in every run, which keeps Hypothesis's replays and shrinking deterministic."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def time(self) -> float:
        self.now += 1.0
        return self.now


class DatabaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._real_time = vars(kilndb.storage.log)["time"]
        vars(kilndb.storage.log)["time"] = StepClock()
        self.directory = Path(tempfile.mkdtemp(prefix="kiln-sm-"))
        self.db = kilndb.open(self.directory, **OPTIONS)
        self.facts: dict[int, ModelFact] = {}
        self.next_position = 1
        self.floor = 0
        self.keep: dict[str, str] = {}

    # -- model helpers ---------------------------------------------------------------

    def history(self, store: str, key: str) -> list[ModelFact]:
        return sorted(
            (f for f in self.facts.values() if f.store == store and f.key == key),
            key=lambda f: f.position,
        )

    def current(self, store: str, key: str) -> tuple[int, bool]:
        facts = self.history(store, key)
        return (facts[-1].seq, facts[-1].deleted) if facts else (0, False)

    def by_id(self, fact_id: str) -> ModelFact | None:
        return next((f for f in self.facts.values() if f.id == fact_id), None)

    def add(self, fact: ModelFact) -> None:
        self.facts[fact.position] = fact
        if self.keep.get(fact.store) == "latest":
            for old in self.history(fact.store, fact.key)[:-1]:
                del self.facts[old.position]

    # -- rules -----------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        assert self.db.stats()["last_position"] == 0

    @rule(
        store=st.sampled_from(STORES),
        key=st.sampled_from(KEYS),
        value=st.integers(0, 1000) | st.text(max_size=30),
        fact_id=st.none() | st.sampled_from(IDS),
        expect=st.sampled_from(["none", "right", "wrong"]),
    )
    def write(self, store: str, key: str, value: Any, fact_id: str | None, expect: str) -> None:
        seq, _ = self.current(store, key)
        expected = {"none": None, "right": seq, "wrong": seq + 7}[expect]
        stored = self.by_id(fact_id) if fact_id else None
        if stored is not None:
            fact = self.db.store(store).write(key, value, id=fact_id, expected_seq=expected)
            assert fact.position == stored.position
            return
        if expect == "wrong":
            with pytest.raises(kilndb.ConflictError):
                self.db.store(store).write(key, value, id=fact_id, expected_seq=expected)
            return
        fact = self.db.store(store).write(key, value, id=fact_id, expected_seq=expected)
        got, want = (fact.position, fact.seq, fact.value), (self.next_position, seq + 1, value)
        assert got == want, f"wrote {got}, model expected {want}"
        self.add(ModelFact(fact.position, store, key, seq + 1, value, False, fact_id))
        self.next_position += 1

    @rule(
        writes=st.lists(
            st.tuples(st.sampled_from(STORES), st.sampled_from(KEYS), st.integers(0, 99)),
            min_size=1,
            max_size=5,
        ),
        conflict=st.booleans(),
    )
    def write_many(self, writes: list[tuple[str, str, int]], conflict: bool) -> None:
        batch = [kilndb.Write(s, k, v) for s, k, v in writes]
        if conflict:
            s, k, v = writes[-1]
            seq, _ = self.current(s, k)
            batch[-1] = kilndb.Write(s, k, v, expected_seq=seq + 100)
            with pytest.raises(kilndb.ConflictError):
                self.db.write_many(batch)
            return
        facts = self.db.write_many(batch)
        for (store, key, value), fact in zip(writes, facts, strict=True):
            seq, _ = self.current(store, key)
            got, want = (fact.position, fact.seq), (self.next_position, seq + 1)
            assert got == want, f"batch wrote {got}, model expected {want}"
            self.add(ModelFact(fact.position, store, key, seq + 1, value, False, None))
            self.next_position += 1

    @rule(store=st.sampled_from(STORES), key=st.sampled_from(KEYS))
    def delete(self, store: str, key: str) -> None:
        seq, deleted = self.current(store, key)
        if seq == 0 or deleted:
            with pytest.raises(kilndb.NotFoundError):
                self.db.store(store).delete(key)
            return
        fact = self.db.store(store).delete(key)
        assert fact.deleted and fact.position == self.next_position
        self.add(ModelFact(fact.position, store, key, seq + 1, None, True, None))
        self.next_position += 1

    @rule()
    def compact(self) -> None:
        self.db.compact()

    @rule(store=st.sampled_from(STORES), keep=st.sampled_from(["all", "latest"]))
    def set_retention(self, store: str, keep: str) -> None:
        self.db.set_retention(store, keep=keep)
        self.keep[store] = keep
        if keep == "latest":
            for key in KEYS:
                for old in self.history(store, key)[:-1]:
                    del self.facts[old.position]

    @rule()
    def reopen(self) -> None:
        self.db.close()
        self.db = kilndb.open(self.directory, **OPTIONS)

    @precondition(lambda self: all(keep == "all" for keep in self.keep.values()))
    @rule(data=st.data(), truncate=st.booleans())
    def crash_and_damage(self, data: st.DataObject, truncate: bool) -> None:
        crash(self.db)
        directory = self.directory / "default"
        newest = directory / f"{list_data_files(directory)[-1]:08d}.log"
        # Aim at a frame (or just past the data) and a point inside it. Drawing indexes
        # and fractions, not byte offsets, keeps the draws independent of record sizes,
        # which vary from run to run with the transaction times.
        frames = read_frames(newest)
        index = data.draw(st.integers(0, len(frames)), label="damaged frame (or past the end)")
        within = data.draw(st.integers(0, 99), label="percent into the frame")
        if index == len(frames):
            start, length = (frames[-1].end if frames else 0), 64
        else:
            start, length = frames[index].offset, frames[index].end - frames[index].offset
        damage = min(start + length * within // 100, newest.stat().st_size - 1)
        lost, refuses = predict_loss(newest, damage, truncate)
        if truncate:
            os.truncate(newest, damage)
        else:
            raw = bytearray(newest.read_bytes())
            raw[damage] ^= data.draw(st.integers(1, 255), label="xor")
            newest.write_bytes(bytes(raw))
        try:
            self.db = kilndb.open(self.directory, **OPTIONS)
        except kilndb.CorruptRecordError as exc:
            assert refuses, f"refused to open after a torn tail: {exc}"
            assert check_database(directory, fix=True).fixed
            self.db = kilndb.open(self.directory, **OPTIONS)
        else:
            assert not refuses, "opened although intact records follow the damage"
        for position in lost:
            self.facts.pop(position, None)
        if refuses:
            # Positions up to the highest a repaired file held are never handed out again.
            self.floor = max(self.floor, self.next_position - 1)
        if lost and not refuses:
            self.next_position = max(min(self.next_position, *lost), self.floor + 1)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        db = self.db
        for store in STORES:
            live = []
            for key in KEYS:
                expected = self.history(store, key)
                got = db.store(store).history(key)
                assert [(f.position, f.seq, f.value, f.deleted) for f in got] == [
                    (f.position, f.seq, f.value, f.deleted) for f in expected
                ]
                latest = db.store(store).read(key)
                if expected and not expected[-1].deleted:
                    live.append(key)
                    assert latest is not None and latest.position == expected[-1].position
                else:
                    assert latest is None
            assert db.store(store).keys() == live
        assert [f.position for f in db.replay()] == sorted(self.facts)

    def teardown(self) -> None:
        vars(kilndb.storage.log)["time"] = self._real_time
        self.db.close()
        shutil.rmtree(self.directory, ignore_errors=True)


DatabaseMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDatabase = DatabaseMachine.TestCase

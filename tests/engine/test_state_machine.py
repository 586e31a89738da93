"""The database against a plain in-memory model, through writes, batches, deletes,
retention, compaction, clean reopens and crashes that damage the newest data file.

The crash rule abandons the database without a clean close (as a killed process would),
then truncates or flips a byte at a random offset of the newest data file and reopens.
Every fact whose frame lies wholly before the damage must survive; facts from the
damaged frame on (a whole batch, if the damage hits one of its frames) may be lost, and
the model forgets exactly those.
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


def first_lost_position(path: Path, damage: int) -> int | None:
    """The first position recovery may drop when ``path`` is damaged at ``damage``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = FrameReader(fd, 0, os.fstat(fd).st_size)
        frames = list(reader)
    finally:
        os.close(fd)
    batch_start: int | None = None
    batch_left = 0
    first_position: int | None = None
    for offset, body in frames:
        record = orjson.loads(body)
        end = offset + 8 + len(body)
        if "file" in record:
            first_position = record["first_position"]
            if end > damage:
                return first_position
            continue
        if "batch" in record:
            batch_start, batch_left = record["first"], record["batch"]
            if end > damage:
                return batch_start
            continue
        in_batch = batch_left > 0
        if in_batch:
            batch_left -= 1
        if end > damage:
            return batch_start if in_batch else record["position"]
    return None


class DatabaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="kiln-sm-"))
        self.db = kilndb.open(self.directory, **OPTIONS)
        self.facts: dict[int, ModelFact] = {}
        self.next_position = 1
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
        assert (fact.position, fact.seq, fact.value) == (self.next_position, seq + 1, value)
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
            assert (fact.position, fact.seq) == (self.next_position, seq + 1)
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
        # Aim at the data and just past it, not the preallocated zeros beyond. Drawing
        # a fraction keeps the draws independent of byte sizes that vary between runs.
        span = data_end(newest) + 64
        fraction = data.draw(st.integers(0, 10_000), label="damage at (1/10000 of span)")
        damage = min(span * fraction // 10_000, newest.stat().st_size - 1)
        lost = first_lost_position(newest, damage)
        if truncate:
            os.truncate(newest, damage)
        else:
            raw = bytearray(newest.read_bytes())
            raw[damage] ^= data.draw(st.integers(1, 255), label="xor")
            newest.write_bytes(bytes(raw))
        self.db = kilndb.open(self.directory, **OPTIONS)
        if lost is not None:
            for position in [p for p in self.facts if p >= lost]:
                del self.facts[position]
            self.next_position = min(self.next_position, lost)

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
        self.db.close()
        shutil.rmtree(self.directory, ignore_errors=True)


DatabaseMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDatabase = DatabaseMachine.TestCase

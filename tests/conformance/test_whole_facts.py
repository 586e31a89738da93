"""Conformance: Igniter's NetworkBackend calls — write_fact and write_snapshot of whole
facts, and subscribe with a callback — on every backend."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

import kilndb
from kilndb.engine.writes import ORIGIN_TIME_KEY
from kilndb.model import Fact, canonical_json, value_hash
from tests.conformance.conftest import Backend


def igniter_fact(key: str, value: Any, **fields: Any) -> dict[str, Any]:
    """A fact hash as Igniter's NetworkBackend sends it (``fact.to_h``)."""
    return {
        "id": f"id-{key}",
        "store": "tasks",
        "key": key,
        "value": value,
        "value_hash": value_hash(canonical_json(value)),
        "causation": None,
        "transaction_time": 1717236000.25,
        "valid_time": None,
        "schema_version": 1,
        "producer": None,
        "derivation": None,
        **fields,
    }


def test_write_fact_keeps_the_fact_and_assigns_position_seq_and_time(
    db: kilndb.Database,
) -> None:
    sent = igniter_fact(
        "t1",
        {"title": "Hello"},
        causation="cmd-1",
        valid_time=1.5e9,
        schema_version=2,
        producer={"app": "ruby"},
        derivation=["x"],
        metadata={"by": "ann"},
        seq=41,
        position=99,
    )
    before = time.time()
    fact = db.write_fact(sent)
    assert (fact.id, fact.store, fact.key, fact.value) == ("id-t1", "tasks", "t1", sent["value"])
    assert (fact.causation, fact.valid_time, fact.schema_version) == ("cmd-1", 1.5e9, 2)
    assert (fact.producer, fact.derivation) == ({"app": "ruby"}, ["x"])
    assert (fact.seq, fact.position) == (1, 1)  # this database's, not the sender's
    assert fact.transaction_time >= before  # this database's clock
    assert fact.metadata == {"by": "ann", ORIGIN_TIME_KEY: repr(1717236000.25)}
    assert fact.value_hash == sent["value_hash"]
    assert db.store("tasks").read("t1") == fact
    assert db.write_fact(sent) == fact  # its id is stored: the stored fact, not a second


def test_write_fact_of_a_fact_from_another_database(db: kilndb.Database) -> None:
    original = db.store("a").write("k", [1, 2], metadata={"m": "1"}, id="orig")
    copy = db.write_fact(
        Fact(**{**original.to_dict(), "store": "b", "id": "copy", "deleted": False})
    )
    assert (copy.store, copy.value, copy.position) == ("b", [1, 2], 2)
    assert copy.metadata == {"m": "1", ORIGIN_TIME_KEY: repr(original.transaction_time)}
    again = db.write_fact({**copy.to_dict(), "store": "c", "id": "copy-of-copy"})
    assert again.metadata[ORIGIN_TIME_KEY] == repr(original.transaction_time)  # the first


def test_a_client_clock_ahead_never_moves_the_databases_transaction_time(
    db: kilndb.Database,
) -> None:
    future = time.time() + 10 * 365 * 86400
    late = db.write_fact(igniter_fact("late", 1, transaction_time=future))
    early = db.write_fact(igniter_fact("early", 2, transaction_time=0.5))
    plain = db.store("tasks").write("plain", 3)
    times = [late.transaction_time, early.transaction_time, plain.transaction_time]
    assert times == sorted(times) and times[-1] < future
    assert late.metadata[ORIGIN_TIME_KEY] == repr(future)
    assert db.store("tasks").read("late", as_of=times[0]) == late


def test_a_value_hash_that_does_not_match_is_refused(db: kilndb.Database) -> None:
    with pytest.raises(kilndb.InvalidArgumentError, match="value_hash"):
        db.write_fact(igniter_fact("t1", {"title": "Hello"}, value_hash="0" * 64))
    with pytest.raises(kilndb.InvalidArgumentError, match="transaction_time"):
        db.write_fact(igniter_fact("t1", 1, transaction_time="yesterday"))
    with pytest.raises(kilndb.InvalidArgumentError):
        db.write_fact({"store": "tasks", "key": "t1"})  # no value
    with pytest.raises(kilndb.InvalidArgumentError):
        db.write_fact("not a fact")  # type: ignore[arg-type]
    assert db.store("tasks").keys() == [] and db.stats()["last_position"] == 0


def test_write_fact_of_a_tombstone_deletes(db: kilndb.Database) -> None:
    db.store("tasks").write("t1", 1)
    tombstone = db.write_fact(igniter_fact("t1", None, deleted=True, id="del-1"))
    assert tombstone.deleted and db.store("tasks").read("t1") is None


def test_write_snapshot_adds_what_is_missing_and_removes_nothing(backend: Backend) -> None:
    db = backend.open()
    db.write_fact(igniter_fact("t1", 1))
    db.store("tasks").write("other", 0)
    snapshot = [igniter_fact("t1", 1), igniter_fact("t2", 2), igniter_fact("t2", 2)]
    assert db.write_snapshot(snapshot) == {"written": 1, "skipped": 2}
    assert db.write_snapshot(snapshot) == {"written": 0, "skipped": 3}
    assert db.write_snapshot([]) == {"written": 0, "skipped": 0}
    db = backend.reopen(db)
    assert db.store("tasks").keys() == ["other", "t1", "t2"]
    stored = db.store("tasks").read("t2")
    assert stored is not None and stored.metadata[ORIGIN_TIME_KEY] == repr(1717236000.25)


def test_write_snapshot_is_all_or_nothing(db: kilndb.Database) -> None:
    bad = igniter_fact("t2", 2, value_hash=value_hash(b"3"))
    with pytest.raises(kilndb.InvalidArgumentError, match="value_hash"):
        db.write_snapshot([igniter_fact("t1", 1), bad])
    with pytest.raises(kilndb.InvalidArgumentError):
        db.write_snapshot(igniter_fact("t1", 1))  # type: ignore[arg-type]
    assert db.stats()["last_position"] == 0


class Collected:
    """What a callback received, and an event per fact count reached."""

    def __init__(self) -> None:
        self.facts: list[kilndb.Fact] = []
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self, fact: kilndb.Fact) -> None:
        with self._cond:
            self.facts.append(fact)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()
        if fact.value == "boom":
            raise RuntimeError("the callback broke")

    def wait_for(self, count: int) -> list[Any]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.facts) >= count, timeout=10)
            return [fact.value for fact in self.facts]


def test_subscribe_with_a_callback(db: kilndb.Database, caplog: pytest.LogCaptureFixture) -> None:
    tasks = db.store("tasks")
    tasks.write("a", 1)
    got = Collected()
    with (
        caplog.at_level(logging.ERROR, logger="kilndb.subscription"),
        db.subscribe(["tasks"], callback=got, channel="ch-1") as handle,
    ):
        assert handle.channel_id == "ch-1"
        assert got.wait_for(1) == [1]
        tasks.write("b", "boom")  # the callback raises: logged, and the next fact follows
        db.store("elsewhere").write("x", 0)
        tasks.write("c", 3)
        assert got.wait_for(3) == [1, "boom", 3]
        assert handle.failures == 1 and handle.position == 4 and not handle.closed
    assert handle.closed
    handle.close()  # idempotent
    tasks.write("d", 4)
    assert db.store("tasks").read("d") is not None and len(got.facts) == 3
    assert any("callback failed" in r.getMessage() for r in caplog.records)
    failure = next(r for r in caplog.records if "callback failed" in r.getMessage())
    assert getattr(failure, "channel_id", None) == "ch-1"


def test_a_callback_subscription_gets_a_channel_id_and_refuses_bad_arguments(
    db: kilndb.Database,
) -> None:
    handle = db.subscribe(callback=lambda fact: None)
    assert isinstance(handle.channel_id, str) and len(handle.channel_id) == 36
    handle.close()
    with pytest.raises(kilndb.InvalidArgumentError):
        db.subscribe(callback=42)  # type: ignore[call-overload]
    with pytest.raises(kilndb.InvalidArgumentError):
        db.subscribe(channel="x" * 129)
    with pytest.raises(kilndb.InvalidArgumentError):
        db.subscribe(channel=7)  # type: ignore[call-overload]

"""Conformance: write, read, time travel, history, delete, keys, idempotency."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import orjson
import pytest

import kilndb
from tests.conformance.conftest import Backend

IGNITER_FIELDS = {
    "id",
    "store",
    "key",
    "value",
    "value_hash",
    "transaction_time",
    "valid_time",
    "causation",
    "schema_version",
    "producer",
    "derivation",
}


def test_write_returns_the_committed_fact(db: kilndb.Database) -> None:
    fact = db.store("tasks").write("t1", {"title": "Hello", "n": [1, 2.5, None, True]})
    assert isinstance(fact, kilndb.Fact)
    assert (fact.store, fact.key, fact.seq, fact.position) == ("tasks", "t1", 1, 1)
    assert fact.value == {"title": "Hello", "n": [1, 2.5, None, True]}
    assert fact.deleted is False
    assert fact.metadata == {}
    assert fact.schema_version == 1
    assert fact.valid_time is None and fact.causation is None
    assert isinstance(fact.id, str) and len(fact.id) == 36
    canonical = orjson.dumps(fact.value, option=orjson.OPT_SORT_KEYS)
    assert fact.value_hash == hashlib.sha256(canonical).hexdigest()


def test_to_dict_has_igniter_fields_and_ours(db: kilndb.Database) -> None:
    fact = db.store("tasks").write("t1", 1)
    data = fact.to_dict()
    assert set(data) == IGNITER_FIELDS | {"seq", "position", "metadata", "deleted"}
    assert orjson.loads(orjson.dumps(data)) == data
    assert data["value"] == 1


def test_all_optional_fields_round_trip(db: kilndb.Database) -> None:
    tasks = db.store("tasks")
    written = tasks.write(
        "t1",
        {"title": "Hi"},
        id="cmd-42",
        causation="cmd-41",
        valid_time=1.7e9,
        schema_version=3,
        producer={"system": "billing", "version": "2"},
        derivation={"from": ["a", "b"]},
        metadata={"by": "ann"},
    )
    read = tasks.read("t1")
    assert read == written
    assert read is not None
    assert (read.id, read.causation, read.valid_time) == ("cmd-42", "cmd-41", 1.7e9)
    assert read.schema_version == 3
    assert read.producer == {"system": "billing", "version": "2"}
    assert read.derivation == {"from": ["a", "b"]}
    assert read.metadata == {"by": "ann"}


def test_seq_per_key_and_gap_free_positions(db: kilndb.Database) -> None:
    a, b = db.store("a"), db.store("b")
    facts = [a.write("k", 1), b.write("k", 1), a.write("k", 2), a.write("j", 1)]
    assert [f.seq for f in facts] == [1, 1, 2, 1]
    assert [f.position for f in facts] == [1, 2, 3, 4]
    times = [f.transaction_time for f in facts]
    assert times == sorted(times)


def test_read_latest_missing_and_as_of(db: kilndb.Database) -> None:
    tasks = db.store("tasks")
    assert tasks.read("nope") is None
    first = tasks.write("t1", "v1")
    second = tasks.write("t1", "v2")
    latest = tasks.read("t1")
    assert latest is not None and latest.value == "v2"
    past = tasks.read("t1", as_of=first.transaction_time)
    assert past is not None and past.value == "v1"
    now = tasks.read("t1", as_of=second.transaction_time)
    assert now is not None and now.value == "v2"
    assert tasks.read("t1", as_of=first.transaction_time - 1000) is None


def test_history_filters(db: kilndb.Database) -> None:
    tasks = db.store("tasks")
    for i in range(1, 8):
        tasks.write("t", i)
    assert [f.seq for f in tasks.history("t")] == list(range(1, 8))
    assert [f.value for f in tasks.history("t", since_seq=3, until_seq=5)] == [3, 4, 5]
    assert [f.seq for f in tasks.history("t", since_seq=2, limit=2)] == [2, 3]
    assert tasks.history("t", limit=0) == []
    assert tasks.history("missing") == []


def test_expected_seq(db: kilndb.Database) -> None:
    tasks = db.store("tasks")
    tasks.write("t1", "a", expected_seq=0)
    tasks.write("t1", "b", expected_seq=1)
    with pytest.raises(kilndb.ConflictError) as info:
        tasks.write("t1", "c", expected_seq=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert info.value.error_code == "conflict"
    with pytest.raises(kilndb.ConflictError) as again:
        tasks.write("t1", "c", expected_seq=0)
    assert again.value.actual == 2
    latest = tasks.read("t1")
    assert latest is not None and latest.value == "b"
    assert db.stats()["last_position"] == 2


def test_idempotent_id_returns_the_stored_fact(db: kilndb.Database) -> None:
    tasks = db.store("tasks")
    first = tasks.write("t1", "a", id="cmd-1")
    again = tasks.write("t1", "something else", id="cmd-1")
    assert again == first
    generated = tasks.write("t2", "x")
    assert tasks.write("t2", "y", id=generated.id) == generated
    assert db.stats()["last_position"] == 2
    assert [f.value for f in tasks.history("t1")] == ["a"]


def test_delete_writes_a_tombstone(db: kilndb.Database) -> None:
    tasks = db.store("tasks")
    tasks.write("t1", "a")
    tomb = tasks.delete("t1")
    assert tomb.deleted is True and tomb.seq == 2 and tomb.value is None
    assert tasks.read("t1") is None
    assert [f.deleted for f in tasks.history("t1")] == [False, True]
    with pytest.raises(kilndb.NotFoundError):
        tasks.delete("t1")
    with pytest.raises(kilndb.NotFoundError):
        tasks.delete("never")
    again = tasks.write("t1", "b", expected_seq=2)
    assert again.seq == 3
    latest = tasks.read("t1")
    assert latest is not None and latest.value == "b"


def test_keys_sorted_prefix_limit_without_deleted(db: kilndb.Database) -> None:
    tasks = db.store("tasks")
    for key in ["b2", "a1", "b1", "c1"]:
        tasks.write(key, key)
    tasks.delete("c1")
    db.store("other").write("b9", 0)
    assert tasks.keys() == ["a1", "b1", "b2"]
    assert tasks.keys(prefix="b") == ["b1", "b2"]
    assert tasks.keys(limit=2) == ["a1", "b1"]
    assert db.store("empty").keys() == []


def test_keys_page_after_a_key(db: kilndb.Database) -> None:
    tasks = db.store("tasks")
    for key in ["b2", "a1", "b1", "c1", "b3"]:
        tasks.write(key, key)
    tasks.delete("b3")
    assert tasks.keys(after="a1") == ["b1", "b2", "c1"]
    assert tasks.keys(after="b", limit=1) == ["b1"]
    assert tasks.keys(prefix="b", after="b1") == ["b2"]
    assert tasks.keys(after="c1") == []
    pages, after = [], None
    while page := tasks.keys(limit=2, after=after):
        pages.append(page)
        after = page[-1]
    assert pages == [["a1", "b1"], ["b2", "c1"]]


def test_stores_and_stats(db: kilndb.Database) -> None:
    db.store("b").write("k", 1)
    db.store("a").write("k", 1)
    assert db.stores() == ["a", "b"]
    stats = db.stats()
    assert stats["facts"] == 2 and stats["keys"] == 2 and stats["stores"] == 2
    assert stats["last_position"] == 2


def test_values_of_every_json_type(db: kilndb.Database) -> None:
    tasks = db.store("values")
    values: list[Any] = [
        None,
        True,
        0,
        -(2**63),
        2**64 - 1,
        1.5,
        "",
        "ünïcødé ✓ 🚀",
        [],
        {},
        {"nested": {"deep": [1, {"x": None}]}},
    ]
    for i, value in enumerate(values):
        tasks.write(f"k{i}", value)
    for i, value in enumerate(values):
        fact = tasks.read(f"k{i}")
        assert fact is not None and fact.value == value


def test_many_threads_write_safely(db: kilndb.Database) -> None:
    tasks = db.store("tasks")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                tasks.write(f"k{n}", i)
                tasks.write("shared", [n, i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [f.seq for f in tasks.history("shared")] == list(range(1, 301))
    positions = [f.position for f in db.replay()]
    assert positions == list(range(1, 601))


def test_data_survives_reopen(backend: Backend, db: kilndb.Database) -> None:
    tasks = db.store("tasks")
    written = [tasks.write("t1", i, id=f"cmd-{i}") for i in range(5)]
    tasks.delete("t1")
    db.store("other").write("o", {"x": 1})
    db = backend.reopen(db)
    tasks = db.store("tasks")
    assert tasks.read("t1") is None
    assert tasks.history("t1")[:5] == written
    assert tasks.write("t1", "again", id="cmd-3") == written[3]
    assert tasks.write("t1", "new").seq == 7
    assert db.store("other").read("o") is not None
    assert [f.position for f in db.replay()] == list(range(1, 9))


def test_closed_database_refuses_work(backend: Backend, db: kilndb.Database) -> None:
    db.close()
    db.close()  # idempotent
    with pytest.raises(kilndb.ClosedError):
        db.store("tasks").write("t", 1)
    with pytest.raises(kilndb.ClosedError):
        db.store("tasks").read("t")
    with pytest.raises(kilndb.ClosedError):
        db.stats()

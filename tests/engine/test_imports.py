"""Bulk import into an embedded database (:mod:`kilndb.engine.imports`)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

import kilndb
import kilndb.storage.facts
from kilndb.engine.imports import (
    ImportItem,
    ImportOutcome,
    first_invalid,
    import_batch,
    import_item,
    import_lines,
    read_lines,
)
from kilndb.engine.writes import ORIGIN_TIME_KEY
from kilndb.model import canonical_json, value_hash
from kilndb.storage.ids import IdCodec


def _source(path: Path) -> list[dict[str, Any]]:
    with kilndb.open(path) as db:
        db.store("a").write("k", 1, id="one", metadata={"m": "v"}, valid_time=3.0)
        db.write_many([kilndb.Write("a", "k", 2), kilndb.Write("b", "k", {"x": [1]})])
        db.store("a").delete("k")
        return [fact.to_dict() for fact in db.replay()]


def _items(facts: list[dict[str, Any]]) -> list[ImportItem]:
    return [import_item(fact) for fact in facts]


def test_a_batch_keeps_each_facts_transaction_time_across_a_restart(tmp_path: Path) -> None:
    facts = _source(tmp_path / "source")
    with kilndb.open(tmp_path / "target") as db:
        outcome = import_batch(db, _items(facts))
        assert (outcome.written, outcome.skipped, outcome.last_position) == (4, 0, 4)
        assert [f.to_dict() for f in db.replay()] == facts
    with kilndb.open(tmp_path / "target") as db:  # recovered from the data file
        assert [f.to_dict() for f in db.replay()] == facts
        assert import_batch(db, _items(facts)).skipped == 4  # ids survive the restart
        later = db.store("a").write("k", 3)
        assert later.seq == 4 and later.transaction_time >= facts[-1]["transaction_time"]


def test_ids_stored_or_repeated_in_the_batch_are_skipped(tmp_path: Path) -> None:
    with kilndb.open(tmp_path) as db:
        db.store("a").write("k", 0, id="there")
        items = [
            import_item({"store": "a", "key": "k", "value": 1, "id": "there"}),
            import_item({"store": "a", "key": "k", "value": 2, "id": "new"}),
            import_item({"store": "a", "key": "k", "value": 3, "id": "new"}),
        ]
        outcome = import_batch(db, items)
        assert (outcome.written, outcome.skipped) == (1, 2)
        assert [f.value for f in db.store("a").history("k")] == [0, 2]
        assert import_batch(db, items[:1]) == type(outcome)(0, 1, 0)


def test_a_refused_item_writes_nothing_of_the_batch(tmp_path: Path) -> None:
    with kilndb.open(tmp_path) as db:
        good = import_item({"store": "a", "key": "k", "value": 1})
        conflict = import_item({"store": "a", "key": "k", "value": 2, "expected_seq": 0})
        with pytest.raises(kilndb.ConflictError):
            import_batch(db, [good, conflict])
        tombstone = import_item({"store": "a", "key": "gone", "deleted": True})
        with pytest.raises(kilndb.NotFoundError):
            import_batch(db, [good, tombstone])
        assert db.last_position == 0


def test_a_batch_over_max_record_bytes_is_refused(tmp_path: Path) -> None:
    with kilndb.open(tmp_path, max_record_bytes=1024) as db:
        items = [import_item({"store": "a", "key": f"k{i}", "value": "x" * 100}) for i in range(20)]
        with pytest.raises(kilndb.InvalidArgumentError, match="max_record_bytes"):
            import_batch(db, items)
        assert db.last_position == 0


def test_a_time_that_cannot_be_kept_goes_to_the_metadata(tmp_path: Path) -> None:
    past = dict(_source(tmp_path / "source")[0])  # older than the target's own fact
    future = time.time() + 3600
    with kilndb.open(tmp_path / "target") as db:
        db.store("a").write("first", 0)
        last = db.store("a").read("first")
        assert last is not None
        ahead = {**past, "id": "ahead", "transaction_time": future}
        import_batch(db, [import_item(past), import_item(ahead)])
        copied = list(db.replay(after=1))
    assert copied[0].metadata == {"m": "v", ORIGIN_TIME_KEY: repr(past["transaction_time"])}
    assert copied[1].metadata == {"m": "v", ORIGIN_TIME_KEY: repr(future)}
    assert last.transaction_time <= copied[0].transaction_time <= time.time()
    assert copied[1].transaction_time == copied[0].transaction_time


def test_retention_keep_latest_applies_to_imported_facts(tmp_path: Path) -> None:
    with kilndb.open(tmp_path) as db:
        db.set_retention("a", keep="latest")
        items = [import_item({"store": "a", "key": "k", "value": i}) for i in range(3)]
        import_batch(db, items)
        assert [f.value for f in db.store("a").history("k")] == [2]


def test_a_write_between_batches_follows_the_imported_facts(tmp_path: Path) -> None:
    with kilndb.open(tmp_path) as db:
        import_batch(db, [import_item({"store": "a", "key": "k", "value": "imported"})])
        db.store("a").write("k", "other writer")
        import_batch(db, [import_item({"store": "a", "key": "k", "value": "again"})])
        assert [(f.seq, f.value) for f in db.store("a").history("k")] == [
            (1, "imported"),
            (2, "other writer"),
            (3, "again"),
        ]


def test_as_of_reads_see_each_imported_fact_at_its_own_time(tmp_path: Path) -> None:
    with kilndb.open(tmp_path / "source") as db:
        for value in range(4):
            db.store("a").write("k", value)
            db.store("b").write(f"k{value}", value)
        facts = [fact.to_dict() for fact in db.replay()]
    times = [fact["transaction_time"] for fact in facts]
    assert len(set(times)) == len(times)  # one batch each: distinct times
    with kilndb.open(tmp_path / "target") as db:
        import_batch(db, _items(facts[:3]))
        import_batch(db, _items(facts[3:]))
    for _ in range(2):  # as imported, and recovered from the data files
        with kilndb.open(tmp_path / "target") as db:
            assert [f.to_dict() for f in db.replay()] == facts
            store = db.store("a")
            assert store.read("k", as_of=times[0] - 1) is None
            for fact, ttime in zip(facts, times, strict=True):
                if fact["store"] == "a":
                    found = store.read("k", as_of=ttime)
                    assert found is not None and found.value == fact["value"]
                    assert found.transaction_time == ttime


def test_a_fact_earlier_than_the_one_before_it_gets_the_database_time(tmp_path: Path) -> None:
    now = time.time()
    facts = [
        {"store": "a", "key": "k", "value": 1, "transaction_time": now - 10},
        {"store": "a", "key": "k", "value": 2, "transaction_time": now - 20},
        {"store": "a", "key": "k", "value": 3, "transaction_time": None},
    ]
    with kilndb.open(tmp_path) as db:
        import_batch(db, _items(facts))
        first, second, third = db.store("a").history("k")
    assert (first.transaction_time, first.metadata) == (now - 10, {})
    assert second.metadata == {ORIGIN_TIME_KEY: repr(now - 20)}
    assert now <= second.transaction_time == third.transaction_time <= time.time()
    assert third.metadata == {}  # a write without a time of its own


def test_a_skipped_fact_does_not_hold_back_the_time_of_the_next(tmp_path: Path) -> None:
    with kilndb.open(tmp_path) as db:
        stored = db.store("a").write("k", 0, id="there")
        time.sleep(0.01)
        start = stored.transaction_time
        items = _items(
            [
                {
                    "store": "a",
                    "key": "k",
                    "value": 1,
                    "id": "there",
                    "transaction_time": start + 0.002,
                },
                {"store": "a", "key": "k", "value": 2, "transaction_time": start + 0.001},
            ]
        )
        assert import_batch(db, items) == ImportOutcome(1, 1, 2)
        copied = db.store("a").read("k")
    assert copied is not None and copied.transaction_time == start + 0.001
    assert copied.metadata == {}


def test_an_export_imported_into_its_own_database_writes_nothing(tmp_path: Path) -> None:
    facts = _source(tmp_path)  # its ids are ones this database generated, and one of its own
    with kilndb.open(tmp_path) as db:
        outcome = import_batch(db, _items(facts))
        assert (outcome.written, outcome.skipped) == (0, len(facts))
        unknown = IdCodec(db.database_id).generate(db.last_position + 100)
        with pytest.raises(kilndb.InvalidArgumentError, match="does not name a stored fact"):
            import_batch(db, [import_item({"store": "a", "key": "k", "value": 1, "id": unknown})])
        assert [f.to_dict() for f in db.replay()] == facts


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"store": "a", "key": "k", "value": 1, "schema_version": "x"}, "schema_version"),
        ({"store": "a", "key": "", "value": 1}, "key must not be empty"),
        ({"store": "a", "key": "k", "value": 1, "id": 5}, "id must be a string"),
        (
            {"store": "a", "key": "k", "value": 1, "value_hash": "0" * 64, "transaction_time": 1.0},
            "value_hash '0000",
        ),
    ],
)
def test_a_refused_batch_names_its_first_bad_item(fields: dict[str, Any], message: str) -> None:
    items = [import_item({"store": "a", "key": "k", "value": 0}), import_item(fields)]
    found = first_invalid(items)
    assert found is not None and found[0] == 1 and message in found[1]
    assert first_invalid(items[:1]) is None


def test_a_refused_item_refuses_its_batch(tmp_path: Path) -> None:
    with kilndb.open(tmp_path) as db:
        good = import_item({"store": "a", "key": "k", "value": 0})
        forged = import_item(
            {"store": "a", "key": "k", "value": 1, "value_hash": "0" * 64, "transaction_time": 1.0}
        )
        with pytest.raises(kilndb.InvalidArgumentError, match="does not match the value"):
            import_batch(db, [good, forged])
        bad = import_item({"store": "a", "key": "k", "value": 1, "schema_version": "x"})
        with pytest.raises(kilndb.InvalidArgumentError, match="schema_version"):
            import_batch(db, [good, bad])
        assert db.last_position == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"store": "a", "key": "k"}, "missing field 'value'"),
        ({"store": "a", "value": 1}, "missing field 'key'"),
        ({"store": "a", "key": "k", "value": 1, "seq": 1}, "unknown field 'seq' in a write"),
        ({"transaction_time": 1.0, "store": "a", "key": "k", "value": 1, "x": 1}, "'x' in a fact"),
        ({"transaction_time": "soon", "store": "a", "key": "k", "value": 1}, "transaction_time"),
        ({"store": "a", "key": "k", "value": 1, "metadata": {"n": 1}}, "metadata"),
    ],
)
def test_import_item_names_the_bad_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(kilndb.InvalidArgumentError, match=message):
        import_item(fields)


# -- the native reading of exported lines ------------------------------------------------


def _varied(path: Path) -> list[dict[str, Any]]:
    """Facts with every field used, values of every JSON kind, and a tombstone."""
    with kilndb.open(path) as db:
        store = db.store("tasks")
        store.write(
            "t1",
            {"b": [1, {"z": None, "a": "x"}], "a": {"é": 1, "e": 2.5, "": []}},
            id="cmd-é-1",
            causation="cmd-0",
            valid_time=1.7e9,
            schema_version=3,
            producer={"app": "test", "at": 1e-7, "z": [True, False]},
            derivation=["a", 1, 2**64 - 1],
            metadata={"by": "ann", "note": 'quote " and \\ and \n'},
        )
        db.write_many(
            [
                kilndb.Write("tasks", "t2", "tab\t nul\0 emoji 😀 \u2028 \x7f"),
                kilndb.Write("tasks", "t3", [-0.0, 1e16, 123456789.123456789, -(2**63), 2**63]),
                kilndb.Write("notes", "n/1 ü", None, valid_time=5.0),
            ]
        )
        store.write("t1", {"k": {"deep": [[[{}]]]}}, expected_seq=1)
        store.delete("t2")
        return [fact.to_dict() for fact in db.replay()]


def _lines(facts: list[dict[str, Any]]) -> list[bytes]:
    """The facts as exported, then again under new ids in other layouts the Python path
    reads the same way (spaces, escapes, members in another order, no id)."""
    lines = [orjson.dumps(fact) + b"\n" for fact in facts]
    for i, fact in enumerate(facts):
        other = {**fact, "id": None if i == 1 else f"again-{i}"}
        lines.append(json.dumps(dict(reversed(other.items())), separators=(", ", " : ")).encode())
    lines.insert(3, b"  \n")
    return lines


def _import_both_ways(target: Path, lines: list[bytes], batch: int) -> list[Any]:
    """Import ``lines`` natively into ``target`` and through the Python path into a copy
    of it made beforehand (same database id: same generated ids); the outcomes."""
    kilndb.open(target).close()
    shutil.copytree(target, target.with_name("python"))
    outcomes: list[Any] = []
    with kilndb.open(target) as native, kilndb.open(target.with_name("python")) as python:
        for start in range(0, len(lines), batch):
            chunk = lines[start : start + batch]
            read = read_lines(chunk)
            assert read is not None and read.count == sum(1 for line in chunk if line.strip())
            outcome = import_lines(native, read)
            items = [import_item(orjson.loads(line)) for line in chunk if line.strip()]
            assert outcome == import_batch(python, items)
            outcomes.append(outcome)
    return outcomes


def _log_files(directory: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted((directory / "default").glob("*.log"))]


@pytest.mark.parametrize("later", [False, True], ids=["own-times", "database-times"])
def test_lines_read_natively_are_stored_byte_for_byte_as_by_the_python_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, later: bool
) -> None:
    facts = _varied(tmp_path / "source")
    with kilndb.open(tmp_path / "native") as db:
        if later:  # a fact later than every exported one: they get the database's time
            time.sleep(0.001)
            db.store("other").write("k", 0)
    # The copies under new ids are earlier than the facts before them: they get the
    # database's time too, "now", the same for both paths.
    clock = time.time() + 100
    monkeypatch.setattr(kilndb.storage.facts, "time", SimpleNamespace(time=lambda: clock))
    outcomes = _import_both_ways(tmp_path / "native", _lines(facts), batch=4)
    assert sum(o.written for o in outcomes) == 2 * len(facts)
    assert sum(o.skipped for o in outcomes) == 0
    native, python = _log_files(tmp_path / "native"), _log_files(tmp_path / "python")
    assert native == python and len(native[0]) > 4096
    with kilndb.open(tmp_path / "native") as db:
        copied = [f.to_dict() for f in db.replay()]
    with kilndb.open(tmp_path / "native") as db:  # reopened: the same facts and times
        assert [f.to_dict() for f in db.replay()] == copied
    kept, again = copied[later : later + len(facts)], copied[later + len(facts) :]
    if later:
        assert all(f["transaction_time"] == clock for f in kept)
        assert [f["metadata"][ORIGIN_TIME_KEY] for f in kept] == [
            repr(f["transaction_time"]) for f in facts
        ]
    else:
        assert kept == facts
    assert all(f["transaction_time"] == clock for f in again)
    assert [f["metadata"][ORIGIN_TIME_KEY] for f in again] == [
        repr(f["transaction_time"]) for f in facts
    ]


def test_ids_stored_or_repeated_are_skipped_natively_too(tmp_path: Path) -> None:
    facts = _varied(tmp_path / "source")
    lines = [orjson.dumps(fact) + b"\n" for fact in facts]
    outcomes = _import_both_ways(tmp_path / "native", lines[:2] + lines, batch=3)
    assert [(o.written, o.skipped) for o in outcomes] == [(2, 1), (2, 1), (2, 0)]
    assert _log_files(tmp_path / "native") == _log_files(tmp_path / "python")


@pytest.mark.parametrize(
    "change",
    [
        {"metadata": {"n": 1}},
        {"value": {"title": "forged"}},
        {"transaction_time": "soon"},
        {"schema_version": 0},
        {"store": "kiln.leases"},
        {"expected_seq": 1},
        {"colour": "red"},
    ],
)
def test_a_batch_with_any_other_line_is_left_to_the_python_path(change: dict[str, Any]) -> None:
    whole = {
        "id": "i", "store": "a", "key": "k", "seq": 1, "position": 1, "value": 1,
        "value_hash": value_hash(canonical_json(1)), "transaction_time": 1.0,
        "valid_time": None, "causation": None, "schema_version": 1, "producer": None,
        "derivation": None, "metadata": {}, "deleted": False,
    }  # fmt: skip
    good = orjson.dumps(whole)
    assert read_lines([good, b"\n"]) is not None
    assert read_lines([good, orjson.dumps({"store": "a", "key": "k", "value": 0})]) is None
    assert read_lines([good, orjson.dumps({**whole, **change})]) is None


def test_a_batch_refused_natively_is_refused_by_the_python_path(tmp_path: Path) -> None:
    tombstone = {**_varied(tmp_path / "source")[-1], "store": "elsewhere"}
    assert tombstone["deleted"] is True
    with kilndb.open(tmp_path / "target") as db:
        read = read_lines([orjson.dumps(tombstone)])
        assert read is not None and import_lines(db, read) is None
        with pytest.raises(kilndb.NotFoundError, match="has no value to delete"):
            import_batch(db, [import_item(tombstone)])
        assert db.last_position == 0

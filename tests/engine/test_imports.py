"""Bulk import into an embedded database (:mod:`kilndb.engine.imports`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import kilndb
from kilndb.engine.imports import ImportItem, import_batch, import_item
from kilndb.engine.writes import ORIGIN_TIME_KEY
from kilndb.storage.log import Log


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


def test_a_writer_appending_meanwhile_makes_the_batch_stage_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kilndb.open(tmp_path) as db:
        original = Log.append_shipment
        raced: list[bool] = []

        def racing(log: Log, frames: bytes, after: int | None = None) -> int:
            if not raced:
                raced.append(True)
                db.store("a").write("k", "other writer")
            return original(log, frames, after)

        monkeypatch.setattr(Log, "append_shipment", racing)
        import_batch(db, [import_item({"store": "a", "key": "k", "value": "imported"})])
        assert [(f.seq, f.value) for f in db.store("a").history("k")] == [
            (1, "other writer"),
            (2, "imported"),
        ]


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

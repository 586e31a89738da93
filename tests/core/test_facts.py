"""Facts the core builds (a write's reply, a read, a history, a replay) are ordinary
``kilndb.Fact`` dataclass instances: the same as the constructor makes, frozen, with
their fields in record order, serialisable, copyable and picklable."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path

import orjson
import pytest

import kilndb
from kilndb import Fact, Write
from kilndb.model import FACT_FIELDS, facts_from_dicts


def _facts(tmp_path: Path) -> list[Fact]:
    with kilndb.open(tmp_path / "db") as db:
        tasks = db.store("tasks")
        made = [
            tasks.write("t1", {"title": "Hello", "n": [1, 2.5, None]}),
            tasks.write("t1", "again", id="cmd-1", causation="c", metadata={"by": "ann"}),
            *db.write_many([Write("tasks", "t2", 2**63 - 1), Write("audit", "a", True)]),
            tasks.delete("t2"),
        ]
        read = tasks.read("t1")
        assert read is not None
        return [*made, read, *tasks.history("t1"), *db.replay()]


def test_core_built_facts_are_ordinary_frozen_dataclasses(tmp_path: Path) -> None:
    facts = _facts(tmp_path)
    assert len(facts) == 13
    for fact in facts:
        assert type(fact) is Fact
        assert list(vars(fact)) == list(FACT_FIELDS)
        rebuilt = Fact(**fact.to_dict())
        assert rebuilt == fact and repr(rebuilt) == repr(fact)
        assert dataclasses.asdict(fact) == fact.to_dict()
        assert orjson.dumps(fact) == orjson.dumps(fact.to_dict())
        assert pickle.loads(pickle.dumps(fact)) == fact
        assert copy.deepcopy(fact) == fact
        assert dataclasses.replace(fact, key="other").key == "other"
        with pytest.raises(dataclasses.FrozenInstanceError):
            fact.key = "changed"  # type: ignore[misc]


def test_the_same_fact_read_twice_is_two_private_copies(tmp_path: Path) -> None:
    with kilndb.open(tmp_path / "db") as db:
        tasks = db.store("tasks")
        tasks.write("t1", {"tags": ["a"]})
        first, second = tasks.read("t1"), tasks.read("t1")
        assert first is not None and second is not None
        assert first == second and first.value is not second.value
        first.value["tags"].append("b")  # a reader's copy: the stored fact is unchanged
        assert second.value == {"tags": ["a"]}
        again = tasks.read("t1")
        assert again is not None and again.value == {"tags": ["a"]}


def test_facts_from_dicts_makes_the_facts_a_server_sent(tmp_path: Path) -> None:
    facts = _facts(tmp_path)
    rebuilt = facts_from_dicts([orjson.loads(orjson.dumps(f)) for f in facts])
    assert rebuilt == facts and all(type(f) is Fact for f in rebuilt)
    assert facts_from_dicts([]) == []
    with pytest.raises(TypeError, match="a fact must be given as a dict"):
        facts_from_dicts([facts[0].to_dict(), ["not", "a", "dict"]])  # type: ignore[list-item]

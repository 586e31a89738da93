"""write_each: independent writes committed together, each with its own outcome."""

from __future__ import annotations

from pathlib import Path

import pytest

import kilndb
from kilndb import Write
from kilndb.errors import ConflictError, InvalidArgumentError, NotFoundError


def test_each_write_succeeds_or_fails_on_its_own(tmp_path: Path) -> None:
    db = kilndb.open(tmp_path)
    db.store("s").write("taken", 1)
    outcomes = db.write_each(
        [
            Write("s", "a", 1),
            Write("s", "taken", 2, expected_seq=0),  # conflict
            Write("s", "a", 2, expected_seq=1),  # sees the first write of the call
            Write("s", "", 3),  # invalid key
            Write("s", "ghost", deleted=True),  # nothing to delete
            Write("s", "b", {"x": [1, 2]}),
        ]
    )
    a1, conflict, a2, invalid, missing, b = outcomes
    assert isinstance(a1, kilndb.Fact) and (a1.seq, a1.value) == (1, 1)
    assert isinstance(conflict, ConflictError)
    assert isinstance(a2, kilndb.Fact) and (a2.seq, a2.value) == (2, 2)
    assert isinstance(invalid, InvalidArgumentError)
    assert isinstance(missing, NotFoundError)
    assert isinstance(b, kilndb.Fact) and b.value == {"x": [1, 2]}
    # Refused writes take no position: the written ones are consecutive.
    assert [a1.position, a2.position, b.position] == [2, 3, 4]
    assert a1.transaction_time == b.transaction_time
    db.close()


def test_a_write_over_max_record_bytes_is_refused_alone(tmp_path: Path) -> None:
    db = kilndb.open(tmp_path, max_record_bytes=1024)
    small, big = db.write_each([Write("s", "a", 1), Write("s", "b", "x" * 2000)])
    assert isinstance(small, kilndb.Fact)
    assert isinstance(big, InvalidArgumentError)
    assert db.store("s").read("b") is None
    db.close()


def test_not_a_write_is_refused_alone(tmp_path: Path) -> None:
    db = kilndb.open(tmp_path)
    bad, good = db.write_each([("s", "a", 1), Write("s", "a", 1)])  # type: ignore[list-item]
    assert isinstance(bad, InvalidArgumentError) and isinstance(good, kilndb.Fact)
    with pytest.raises(InvalidArgumentError):
        db.write_many([("s", "a", 1)])  # type: ignore[list-item]
    db.close()

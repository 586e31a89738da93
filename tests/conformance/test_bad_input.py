"""Conformance: bad arguments raise a clear kilndb error and write nothing."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest

import kilndb


class Opaque:
    pass


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        Opaque(),
        math.nan,
        [1.0, math.inf],
        {"a": -math.inf},
        datetime.datetime(2026, 1, 1),
        {1: "non-string key"},
        2**70,
        b"bytes",
    ],
    ids=["set", "object", "nan", "inf", "neg-inf", "datetime", "int-key", "bigint", "bytes"],
)
def test_non_json_values_are_refused(db: kilndb.Database, value: Any) -> None:
    with pytest.raises(kilndb.InvalidArgumentError, match="JSON"):
        db.store("s").write("k", value)
    assert db.stats()["last_position"] == 0


@pytest.mark.parametrize("key", ["", None, 5, b"k", "x" * 1025])
def test_bad_keys(db: kilndb.Database, key: Any) -> None:
    with pytest.raises(kilndb.InvalidArgumentError):
        db.store("s").write(key, 1)
    assert db.stats()["last_position"] == 0


@pytest.mark.parametrize("name", ["", "has space", "slash/no", None, 7, "-leading", "x" * 129])
def test_bad_store_names(db: kilndb.Database, name: Any) -> None:
    with pytest.raises(kilndb.InvalidArgumentError):
        db.store(name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"expected_seq": -1}, "expected_seq"),
        ({"expected_seq": "1"}, "expected_seq"),
        ({"expected_seq": True}, "expected_seq"),
        ({"id": ""}, "id"),
        ({"id": 5}, "id"),
        ({"causation": 1}, "causation"),
        ({"valid_time": "now"}, "valid_time"),
        ({"valid_time": math.nan}, "valid_time"),
        ({"schema_version": 0}, "schema_version"),
        ({"metadata": {"a": 1}}, "metadata"),
        ({"metadata": ["a"]}, "metadata"),
        ({"producer": {1, 2}}, "producer"),
        ({"derivation": math.inf}, "derivation"),
    ],
)
def test_bad_write_arguments(db: kilndb.Database, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(kilndb.InvalidArgumentError, match=match):
        db.store("s").write("k", 1, **kwargs)
    assert db.stats()["last_position"] == 0


def test_bad_read_arguments(db: kilndb.Database) -> None:
    tasks = db.store("s")
    tasks.write("k", 1)
    with pytest.raises(kilndb.InvalidArgumentError):
        tasks.read("k", as_of="yesterday")  # type: ignore[arg-type]
    with pytest.raises(kilndb.InvalidArgumentError):
        tasks.history("k", limit=-1)
    with pytest.raises(kilndb.InvalidArgumentError):
        tasks.history("k", since_seq="1")  # type: ignore[arg-type]
    with pytest.raises(kilndb.InvalidArgumentError):
        tasks.keys(prefix=3)  # type: ignore[arg-type]
    with pytest.raises(kilndb.InvalidArgumentError):
        tasks.keys(after=3)  # type: ignore[arg-type]


def test_bad_retention(db: kilndb.Database) -> None:
    with pytest.raises(kilndb.InvalidArgumentError):
        db.set_retention("s", keep="some")
    with pytest.raises(kilndb.InvalidArgumentError):
        db.set_retention("s", max_age=-1)


def test_generated_id_form_for_a_future_position_is_refused(db: kilndb.Database) -> None:
    fact = db.store("s").write("k", 1)
    forged = fact.id[:-12] + f"{999:012x}"
    with pytest.raises(kilndb.InvalidArgumentError):
        db.store("s").write("k", 2, id=forged)

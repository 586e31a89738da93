"""The id index of client-supplied fact ids, in the core and through the database."""

from __future__ import annotations

from pathlib import Path

import pytest

import kilndb
from kilndb import _core
from kilndb.errors import InvalidArgumentError


def test_the_index_maps_ids_to_positions_and_repoints_them() -> None:
    ids = _core.IdIndex()
    assert len(ids) == 0 and ids.get("a") is None and ids.get("a", 7) == 7
    ids["cmd-1"] = 3
    ids["cmd-10"] = 4
    ids[""] = 5
    assert (ids["cmd-1"], ids["cmd-10"], ids[""]) == (3, 4, 5)
    assert "cmd-1" in ids and "cmd-2" not in ids
    ids["cmd-1"] = 9  # a dropped fact's id written again
    assert ids.get("cmd-1") == 9 and len(ids) == 3
    with pytest.raises(KeyError):
        ids["missing"]
    with pytest.raises(InvalidArgumentError):
        ids["bad"] = 0
    ids.load_hint({11: "h-1", 12: "é-ü"})
    assert (ids["h-1"], ids["é-ü"], len(ids)) == (11, 12, 5)


def test_the_index_is_compact() -> None:
    ids = _core.IdIndex()
    for n in range(200_000):
        ids[f"order-{n:020d}"] = n + 1  # 26 characters, as a UUID-less idempotency key
    assert ids.memory / len(ids) < 80  # 48 bytes each, plus the vectors' growth room
    assert ids["order-00000000000000199999"] == 200_000


def test_idempotent_retries_find_ids_after_reopening_with_and_without_hints(
    tmp_path: Path,
) -> None:
    with kilndb.open(tmp_path, max_file_size=4096) as db:
        store = db.store("s")
        first = [store.write(f"k{i}", i, id=f"cmd-{i}") for i in range(60)]  # rotates
    for _ in range(2):  # sealed files have hints; the active file was scanned or hinted
        with kilndb.open(tmp_path, max_file_size=4096) as db:
            store = db.store("s")
            again = [store.write(f"k{i}", "other", id=f"cmd-{i}") for i in range(60)]
            assert again == first
            assert db.stats()["last_position"] == 60

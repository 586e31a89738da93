"""Cutting a divergent tail and emptying a copy for a full resync, crash included."""

from __future__ import annotations

from pathlib import Path

import orjson

import kilndb
from kilndb.storage.meta import write_meta
from kilndb.storage.truncate import discard_copy, truncate_after


def _filled(path: Path, n: int) -> None:
    with kilndb.open(path, max_file_size=4096) as db:
        for i in range(n):
            db.store("s").write(f"k{i}", {"i": i, "pad": "x" * 64})


def test_truncate_after_keeps_the_prefix_and_sets_the_tail_aside(tmp_path: Path) -> None:
    _filled(tmp_path / "db", 200)
    dropped = truncate_after(tmp_path / "db" / "default", 120)
    assert dropped == list(range(121, 201))
    assert list((tmp_path / "db" / "default").glob("*.divergent-*"))
    with kilndb.open(tmp_path / "db") as db:
        assert [f.position for f in db.replay()] == list(range(1, 121))


def test_discard_copy_empties_the_copy_and_keeps_its_identity(tmp_path: Path) -> None:
    _filled(tmp_path / "db", 200)
    with kilndb.open(tmp_path / "db") as db:
        identity = db.database_id
    directory = tmp_path / "db" / "default"
    assert discard_copy(directory) == 200
    meta = orjson.loads((directory / "META").read_bytes())
    assert "discarding" not in meta and meta["compacted_through"] == 0
    assert not list(directory.glob("*.log")) and not list(directory.glob("*.hint"))
    with kilndb.open(tmp_path / "db") as db:
        assert db.database_id == identity and list(db.replay()) == []


def test_a_discard_interrupted_by_a_crash_is_finished_at_the_next_open(tmp_path: Path) -> None:
    _filled(tmp_path / "db", 200)
    directory = tmp_path / "db" / "default"
    # The state a crash leaves after the intent was written and one file was removed.
    meta = orjson.loads((directory / "META").read_bytes())
    meta["discarding"] = True
    write_meta(directory, meta)
    sorted(directory.glob("*.log"))[0].unlink()
    with kilndb.open(tmp_path / "db") as db:
        assert list(db.replay()) == []  # never a copy with a hole in the middle
        assert db.stats()["last_position"] == 0
    assert "discarding" not in orjson.loads((directory / "META").read_bytes())

"""Conformance: retention policies and compaction."""

from __future__ import annotations

import kilndb
from tests.conformance.conftest import Backend


def test_keep_latest_drops_history_at_once(db: kilndb.Database) -> None:
    s = db.store("s")
    for i in range(5):
        s.write("k", i)
    db.set_retention("s", keep="latest")
    assert db.retention("s") == {"keep": "latest", "max_age": None}
    assert [f.value for f in s.history("k")] == [4]
    s.write("k", 5)
    assert [(f.seq, f.value) for f in s.history("k")] == [(6, 5)]
    assert [f.value for f in db.replay()] == [5]


def test_compaction_reclaims_space_and_survives_reopen(backend: Backend) -> None:
    db = backend.open(max_file_size=8192)
    s = db.store("s")
    for i in range(400):
        s.write(f"k{i % 10}", {"i": i, "pad": "x" * 40})
    db.store("keep").write("k", "all of it")
    before = db.stats()["data_bytes"]
    db.set_retention("s", keep="latest")
    db.compact()  # automatic compaction may already have done part of the work
    after = db.stats()
    assert after["data_bytes"] < before / 2
    assert after["facts"] == 11
    db = backend.reopen(db, max_file_size=8192)
    s = db.store("s")
    for k in range(10):
        latest = s.read(f"k{k}")
        assert latest is not None and latest.value["i"] == 390 + k
        assert len(s.history(f"k{k}")) == 1
    assert db.store("keep").read("k") is not None
    assert s.write("k0", "next").seq == 41
    positions = [f.position for f in db.replay()]
    assert positions == sorted(positions) and positions[-1] == 402


def test_loosening_retention_does_not_resurrect(backend: Backend) -> None:
    db = backend.open()
    s = db.store("s")
    for i in range(5):
        s.write("k", i)
    db.set_retention("s", keep="latest")
    db.set_retention("s", keep="all")
    assert len(s.history("k")) == 1
    db = backend.reopen(db)
    assert len(db.store("s").history("k")) == 1


def test_max_age_keeps_the_latest_fact(db: kilndb.Database) -> None:
    s = db.store("s")
    for i in range(3):
        s.write("k", i)
    db.set_retention("s", max_age=1e-9)
    db.compact()
    assert [f.value for f in s.history("k")] == [2]


def test_subscribe_from_a_compacted_cursor_is_refused(db: kilndb.Database) -> None:
    s = db.store("s")
    for i in range(5):
        s.write("k", i)
    db.set_retention("s", keep="latest")
    db.compact()
    try:
        db.subscribe(after=1)
    except kilndb.CursorTooOldError as exc:
        assert exc.cursor == 1 and exc.oldest == 4
    else:
        raise AssertionError("expected CursorTooOldError")
    with db.subscribe(after=0) as sub:
        fact = sub.get(timeout=5)
        assert fact is not None and fact.position == 5

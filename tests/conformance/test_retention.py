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
        assert (exc.cursor, exc.oldest, exc.store, exc.oldest_available) == (1, 4, "s", 5)
        assert str(exc) == (
            "cursor 1 is too old for store 's': facts up to position 4 were compacted away;"
            " the oldest still available is 5"
        )
    else:
        raise AssertionError("expected CursorTooOldError")
    with db.subscribe(after=0) as sub:
        fact = sub.get(timeout=5)
        assert fact is not None and fact.position == 5


def _refusal(
    db: kilndb.Database, after: int, stores: list[str] | None
) -> tuple[str, int, int | None]:
    try:
        db.subscribe(stores=stores, after=after).close()
    except kilndb.CursorTooOldError as exc:
        assert exc.cursor == after
        assert exc.store is not None
        return exc.store, exc.oldest, exc.oldest_available
    raise AssertionError(f"expected CursorTooOldError for after={after} stores={stores}")


def test_compacting_one_store_leaves_cursors_on_others_valid(
    backend: Backend, db: kilndb.Database
) -> None:
    db.set_retention("a", keep="latest")
    for i in range(4):  # a: 1 3 5 7, b: 2 4 6 8
        db.store("a").write("k", i)
        db.store("b").write("k", i)
    db.compact()
    assert db.stats()["compacted_through_by_store"] == {"a": 5}
    with db.subscribe(stores=["b"], after=1) as sub:
        got = [sub.get(timeout=5) for _ in range(4)]
        assert [(f.store, f.value) for f in got if f is not None] == [("b", i) for i in range(4)]
    assert _refusal(db, 1, ["a"]) == ("a", 5, 6)
    assert _refusal(db, 4, ["a", "b"]) == ("a", 5, 6)
    assert _refusal(db, 4, None) == ("a", 5, 6)  # no filter: every store counts
    with db.subscribe(stores=["a"], after=5) as sub:
        fact = sub.get(timeout=5)
        assert fact is not None and (fact.store, fact.position) == ("a", 7)
    db.subscribe(after=5).close()
    db.subscribe(stores=["a"], after=0).close()  # 0: from the oldest retained fact
    # The watermarks survive a restart, and compacting again only raises them.
    db = backend.reopen(db)
    assert _refusal(db, 1, ["a"]) == ("a", 5, 6)
    db.subscribe(stores=["b"], after=1).close()
    db.set_retention("b", keep="latest")
    db.compact()
    assert db.stats()["compacted_through_by_store"] == {"a": 5, "b": 6}
    assert _refusal(db, 1, None) == ("b", 6, 7)
    assert _refusal(db, 5, ["b"]) == ("b", 6, 7)
    db.subscribe(stores=["c"], after=1).close()  # a store compaction never touched

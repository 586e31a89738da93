"""A data directory written by the pure-Python engine that predates the native core
opens and reads the same with the current code (the on-disk format did not change).

The fixture was made by tests/fixtures/make_v1_datadir.py with KilnDB 0.1.0: several
sealed files with hints, batches, tombstones, client ids, a keep-latest store, a lease
and a fenced write, unicode, big integers and floats.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

import kilndb
from kilndb.engine import lease_book as lease_book_module

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EXPECTED: dict[str, Any] = orjson.loads((FIXTURES / "v1-expected.json").read_bytes())


@pytest.fixture
def v1_data(tmp_path: Path) -> Path:
    with tarfile.open(FIXTURES / "v1-datadir.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path / "data"


def snapshot(db: kilndb.Database) -> dict[str, Any]:
    return {
        "replay": [orjson.loads(orjson.dumps(f.to_dict())) for f in db.replay()],
        "stores": db.stores(),
        "keys": {s: db.store(s).keys() for s in db.stores()},
        "history_t1": [f.seq for f in db.store("tasks").history("t1")],
        "last_position": db.stats()["last_position"],
    }


def test_a_v1_data_directory_reads_the_same(v1_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with kilndb.open(v1_data) as db:
        assert snapshot(db) == EXPECTED
        # The stored JSON of each fact is what the v1 engine wrote, byte for byte.
        assert [body for _, body in db.replay_wire()] == [
            orjson.dumps(fact) for fact in EXPECTED["replay"]
        ]
        for fact in EXPECTED["replay"]:
            read = db.store(fact["store"]).read(fact["key"])
            if (fact["store"], fact["key"]) == ("tasks", "t3"):
                assert read is None  # deleted in v1
            else:
                assert read is not None and read.position >= fact["position"]
        assert db.store("tasks").write("idempotent", 2, id="cmd-1").value == 1

    # The lease taken in v1 for an hour is held, read at the time it was taken.
    taken_at = next(f for f in EXPECTED["replay"] if f["key"] == "fenced")["transaction_time"]
    monkeypatch.setattr(lease_book_module, "time", SimpleNamespace(time=lambda: taken_at))
    with kilndb.open(v1_data) as db:
        assert [(lease.key, lease.holder) for lease in db.leases()] == [("job", "w1")]


def test_a_v1_data_directory_reads_the_same_without_its_hints(v1_data: Path) -> None:
    for hint in (v1_data / "default").glob("*.hint"):
        hint.unlink()
    with kilndb.open(v1_data) as db:
        assert snapshot(db) == EXPECTED


def test_a_v1_data_directory_takes_new_writes_and_compacts(v1_data: Path, tmp_path: Path) -> None:
    with kilndb.open(v1_data) as db:
        fact = db.store("tasks").write("t1", {"after": "upgrade"})
        assert fact.position == EXPECTED["last_position"] + 1
        db.compact()
        expected_after = [*EXPECTED["replay"], fact.to_dict()]
    with kilndb.open(v1_data) as db:
        replayed = [f.to_dict() for f in db.replay()]
    # Compaction keeps every fact of keep="all" stores; keep="latest" had dropped the rest.
    assert replayed == [orjson.loads(orjson.dumps(f)) for f in expected_after]
    shutil.rmtree(v1_data)


def _meta(v1_data: Path) -> dict[str, Any]:
    meta: dict[str, Any] = orjson.loads((v1_data / "default" / "META").read_bytes())
    return meta


def test_a_v1_data_directory_gets_per_store_watermarks(v1_data: Path) -> None:
    assert "compacted_through_by_store" not in _meta(v1_data)
    last = EXPECTED["last_position"]
    with kilndb.open(v1_data) as db:
        assert _meta(v1_data)["compacted_through_by_store"] == {}  # v1 never compacted
        db.subscribe(after=1).close()
        db.compact()
        # Only the keep="latest" stores lost facts (retention dropped them in v1 already).
        watermarks = db.stats()["compacted_through_by_store"]
        assert sorted(watermarks) == ["latest"]
        db.subscribe(stores=["tasks", "batch", "other"], after=1).close()
        with pytest.raises(kilndb.CursorTooOldError) as refused:
            db.subscribe(after=1)
        assert refused.value.store == "latest"
        assert refused.value.oldest == watermarks["latest"] < last
    with kilndb.open(v1_data) as db:
        assert db.stats()["compacted_through_by_store"] == watermarks


def test_a_compacted_v1_watermark_applies_to_every_store_it_held(v1_data: Path) -> None:
    """A database compacted before watermarks were kept per store: nothing tells which
    stores lost facts, so the database-wide watermark holds for all that existed."""
    meta = _meta(v1_data)
    meta["compacted_through"] = 20
    (v1_data / "default" / "META").write_bytes(orjson.dumps(meta))
    with kilndb.open(v1_data) as db:
        held = [*EXPECTED["stores"], "kiln.leases"]
        assert db.stats()["compacted_through_by_store"] == dict.fromkeys(held, 20)
        for store in EXPECTED["stores"]:
            with pytest.raises(kilndb.CursorTooOldError) as refused:
                db.subscribe(stores=[store], after=19)
            assert (refused.value.store, refused.value.oldest_available) == (store, 21)
            db.subscribe(stores=[store], after=20).close()
        db.store("fresh").write("k", 1)
        db.subscribe(stores=["fresh"], after=1).close()  # created after: nothing lost
    with kilndb.open(v1_data) as db:
        assert db.stats()["compacted_through_by_store"] == dict.fromkeys(held, 20)

"""Log shipping: a follower fed a leader's shipments holds the same facts at the same
positions, byte for byte, across batches, rotations, compaction holes and restarts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import orjson
import pytest

import kilndb
from kilndb import Write, _core
from kilndb.codec import encode_frame
from kilndb.engine import Database
from kilndb.errors import CursorTooOldError, ProtocolError, StorageError
from kilndb.storage.records import file_header
from kilndb.storage.shipping import LogReader, parse_shipment


def _digest(db: Database) -> str:
    return hashlib.sha256(b"".join(body for _, body in db.replay_wire())).hexdigest()


def _ship_all(leader: Database, follower: Database, max_records: int = 256) -> int:
    reader = leader.log_reader(follower.stats()["last_position"])
    shipments = 0
    while (shipment := reader.next(max_records=max_records)) is not None:
        assert follower.append_shipment(shipment.frames) == shipment.last
        shipments += 1
    return shipments


def _fill(db: Database, start: int, n: int) -> None:
    s = db.store("s")
    for i in range(start, start + n):
        if i % 7 == 0:
            db.write_many([Write("s", f"k{i}-{j}", {"i": i, "j": j}) for j in range(5)])
        elif i % 11 == 0:
            s.write(f"k{i % 13}", i, id=f"cmd-{i}")
        elif i % 17 == 0 and s.read(f"k{i % 13}") is not None:
            s.delete(f"k{i % 13}")
        else:
            s.write(f"k{i % 13}", {"i": i, "pad": "x" * (i % 50)})


def test_a_follower_ends_with_the_leaders_log(tmp_path: Path) -> None:
    leader = Database(tmp_path / "leader", config=kilndb.DatabaseConfig(max_file_size=16384))
    _fill(leader, 0, 400)
    follower = Database(
        tmp_path / "follower",
        config=kilndb.DatabaseConfig(max_file_size=8192),
        database_id=leader.database_id,
    )
    assert _ship_all(leader, follower, max_records=37) > 5
    assert _digest(follower) == _digest(leader)
    # Live: more writes, shipped from where the follower is.
    _fill(leader, 400, 100)
    _ship_all(leader, follower)
    assert _digest(follower) == _digest(leader)
    assert follower.stats()["last_position"] == leader.stats()["last_position"]
    # Idempotent ids and generated ids resolve on the follower as on the leader.
    assert follower.store("s").read("k0") == leader.store("s").read("k0")
    follower.close()
    follower = Database(tmp_path / "follower", database_id=leader.database_id)
    assert _digest(follower) == _digest(leader)  # recovered from its own files
    stored = leader.store("s").history("k11")[0]
    retry = follower.store("s").write("k11", "again", id="cmd-11")  # an idempotent retry
    assert retry == stored  # the follower knows the client-supplied id
    leader.close()
    follower.close()


def test_batches_are_never_split_and_only_durable_records_ship(tmp_path: Path) -> None:
    leader = Database(tmp_path / "leader")
    leader.write_many([Write("s", f"k{j}", j) for j in range(50)])
    leader.store("s").write("one", 1)
    reader = leader.log_reader(0)
    first = reader.next(max_records=10)
    assert first is not None and (first.first, first.last, first.count) == (1, 50, 50)
    second = reader.next(max_records=10)
    assert second is not None and (second.first, second.last) == (51, 51)
    assert reader.next() is None
    leader.close()


def test_compaction_holes_are_kept(tmp_path: Path) -> None:
    leader = Database(tmp_path / "leader", config=kilndb.DatabaseConfig(max_file_size=4096))
    leader.set_retention("s", keep="latest")
    for i in range(200):
        leader.store("s").write(f"k{i % 5}", {"i": i, "pad": "y" * 40})
    leader.compact()
    follower = Database(tmp_path / "follower", database_id=leader.database_id)
    follower.set_retention("s", keep="latest")
    with pytest.raises(CursorTooOldError):
        leader.log_reader(1)  # compacted away: such a follower needs a full copy
    _ship_all(leader, follower)
    assert _digest(follower) == _digest(leader)
    assert [f.position for f in follower.replay()] == [f.position for f in leader.replay()]
    leader.close()
    follower.close()


def test_bad_shipments_change_nothing(tmp_path: Path) -> None:
    leader = Database(tmp_path / "leader")
    for i in range(5):
        leader.store("s").write("k", i)
    follower = Database(tmp_path / "follower", database_id=leader.database_id)
    shipment = leader.log_reader(0).next()
    assert shipment is not None
    frames = shipment.frames
    damaged = frames[:-1] + bytes([frames[-1] ^ 0xFF])
    for bad, match in (
        (damaged, "CRC"),
        (frames[:-3], "inside a frame"),
        (frames + frames, "does not follow"),
    ):
        with pytest.raises(ProtocolError, match=match):
            follower.append_shipment(bad)
        assert follower.stats()["last_position"] == 0
    follower.append_shipment(frames)
    with pytest.raises(ProtocolError):
        follower.append_shipment(frames)  # the same records again
    assert _digest(follower) == _digest(leader)
    leader.close()
    follower.close()


def test_a_replica_must_hold_its_leaders_database(tmp_path: Path) -> None:
    Database(tmp_path / "a").close()
    with pytest.raises(StorageError, match="database id"):
        Database(tmp_path / "a", database_id="00000000-0000-4000-8000-000000000000")


def test_a_batch_cut_by_a_crash_is_not_half_applied(tmp_path: Path) -> None:
    leader = Database(tmp_path / "leader")
    leader.write_many([Write("s", f"k{j}", j) for j in range(10)])
    shipment = leader.log_reader(0).next()
    assert shipment is not None
    follower = Database(tmp_path / "follower", database_id=leader.database_id)
    follower.append_shipment(shipment.frames)
    follower.close()
    # Cut the follower's file inside the batch, as a crash mid-write would.
    data_file = sorted((tmp_path / "follower" / "default").glob("*.log"))[-1]
    content = data_file.read_bytes()
    batch_start = content.index(b'{"batch"') - 4
    data_file.write_bytes(content[: batch_start + 200])
    follower = Database(tmp_path / "follower", database_id=leader.database_id)
    assert list(follower.replay()) == []  # all or nothing
    follower.append_shipment(shipment.frames)  # and it can be shipped again
    assert [orjson.loads(b)["key"] for _, b in follower.replay_wire()] == [
        f"k{j}" for j in range(10)
    ]
    leader.close()
    follower.close()


LEADER_ID = "0f1e2d3c-4b5a-4978-8877-665544332211"


def _framed(*bodies: bytes) -> bytes:
    return b"".join(encode_frame(body) for body in bodies)


@pytest.fixture
def shipped(tmp_path: Path) -> list[bytes]:
    """The bodies of a leader's first shipment (database id ``LEADER_ID``): two single
    facts, then a batch of two."""
    leader = Database(tmp_path / "leader", database_id=LEADER_ID)
    leader.store("s").write("a", 1)
    leader.store("s").write("b", 2, id="own-id")
    leader.write_many([Write("s", "c", 3), Write("s", "d", 4)])
    shipment = leader.log_reader(0).next()
    assert shipment is not None
    leader.close()
    decoder = _core.FrameDecoder()
    decoder.feed(shipment.frames)
    return list(iter(decoder.next_frame, None))


def test_the_native_and_python_parsers_refuse_the_same_shipments(shipped: list[bytes]) -> None:
    one, two, batch, three, four = shipped
    frames = _framed(*shipped)
    cases = {
        "frame CRC mismatch": frames[:-1] + bytes([frames[-1] ^ 1]),
        "ends inside a frame": frames[:-2],
        "ends inside a batch": _framed(one, two, batch, three),
        "a batch header inside a batch": _framed(batch, three, batch),
        "facts and batch headers only": _framed(one, file_header(2, 9, "x")),
        "position 1 does not follow 1": _framed(one, one),
        "batch at 3 does not follow 4": _framed(one, two, four, batch, three, four),
    }
    for message, bad in cases.items():
        for parse in (_core.parse_shipment, parse_shipment):
            with pytest.raises(ProtocolError, match=message):
                parse(bad, 0)
    indexed = _core.parse_shipment(frames, 0)
    assert indexed is not None
    python = [fact for _, fact in parse_shipment(frames, 0) if fact is not None]
    native = [(f[2], f[3], f[4], f[5], f[6], f[7], f[8]) for f in indexed.facts()]
    assert native == [
        (p, s, k, seq, deleted, ttime, i) for p, s, k, seq, deleted, ttime, i, _ in python
    ]


def test_a_record_in_a_layout_of_its_own_is_appended_through_the_python_parser(
    tmp_path: Path, shipped: list[bytes]
) -> None:
    # A space after each comma: still a fact record, but not KilnDB's own layout.
    spaced = [
        encode_frame(json.dumps(orjson.loads(b), separators=(", ", ":")).encode()) for b in shipped
    ]
    frames = b"".join(spaced)
    assert _core.parse_shipment(frames, 0) is None
    follower = Database(tmp_path / "follower", database_id=LEADER_ID)
    assert follower.append_shipment(frames) == 4
    assert [f.value for f in follower.replay()] == [1, 2, 3, 4]
    read = follower.store("s").read("b")
    assert read is not None and read.id == "own-id"
    follower.close()
    reopened = Database(tmp_path / "follower", database_id=LEADER_ID)
    assert [f.key for f in reopened.replay()] == ["a", "b", "c", "d"]
    reopened.close()


@pytest.mark.parametrize("max_records, max_bytes", [(1, 1 << 20), (7, 1 << 20), (256, 900)])
def test_the_native_and_python_readers_cut_the_same_shipments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_records: int, max_bytes: int
) -> None:
    leader = Database(tmp_path / "leader", config=kilndb.DatabaseConfig(max_file_size=8192))
    _fill(leader, 0, 120)

    def shipments(after: int) -> list[tuple[bytes, int, int, int]]:
        reader = leader.log_reader(after)
        found = []
        while (shipment := reader.next(max_records, max_bytes)) is not None:
            found.append((shipment.frames, shipment.first, shipment.last, shipment.count))
        return found

    native = [shipments(after) for after in (0, 9, 40)]
    reader = leader.log_reader(0)
    reader._seek()
    assert reader._native_units(120, 10, 1 << 20) is not None  # the core read these
    monkeypatch.setattr(LogReader, "_native_units", lambda *_: None)
    assert native == [shipments(after) for after in (0, 9, 40)]
    assert len(native[0]) > 3
    leader.close()

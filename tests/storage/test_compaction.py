"""Compaction: the core copies the retained frames of sealed files, a chunk at a time."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import kilndb
from kilndb import _core
from kilndb.codec import encode_frame
from kilndb.errors import CorruptRecordError, InvalidArgumentError

PAD = "x" * 300


def _fill(db: kilndb.Database, keys: int, rounds: int) -> None:
    """Rounds of facts for ``keys`` keys of "s", each beside one fact kept for good
    (store "all"), so that every sealed file mixes live and dead frames."""
    for r in range(rounds):
        db.write_many(
            [kilndb.Write("s", f"k{i}", {"r": r, "pad": PAD}) for i in range(keys)]
            + [kilndb.Write("all", f"r{r}", r)]
        )


def test_compaction_keeps_the_latest_of_megabytes_of_facts_and_reopens_from_its_hint(
    tmp_path: Path,
) -> None:
    with kilndb.open(tmp_path, max_file_size=8 * 1024 * 1024, auto_compact=False) as db:
        db.set_retention("s", keep="latest")
        _fill(db, 2000, 8)  # several MiB a file: copies span many chunks
        db.store("s").write("ided", 1, id="cmd-1")
        before = db.stats()
        done = db.compact()
        after = db.stats()
        assert done["bytes_reclaimed"] > 0 and after["data_bytes"] < before["data_bytes"]
        latest = {f.key: f for f in db.replay(stores=["s"])}
        assert len(latest) == 2001
        assert all(f.value["r"] == 7 for k, f in latest.items() if k != "ided")
        assert [f.value for f in db.store("all").history("r0")] == [0]
        hints = sorted(p.name for p in db.path.glob("*.hint"))
    with kilndb.open(tmp_path, max_file_size=8 * 1024 * 1024) as db:
        assert sorted(p.name for p in db.path.glob("*.hint")) == hints or not hints
        assert {f.key: f for f in db.replay(stores=["s"])} == latest
        assert db.store("s").write("ided", 2, id="cmd-1") == latest["ided"]  # id kept
        assert db.stats()["dead_bytes"] == after["dead_bytes"]


def test_a_damaged_frame_stops_compaction_and_leaves_the_file_alone(tmp_path: Path) -> None:
    with kilndb.open(tmp_path, max_file_size=64 * 1024, auto_compact=False) as db:
        db.set_retention("s", keep="latest")
        _fill(db, 50, 6)
        db.store("other").write("k", "last")  # the active file moves on
        first = db.path / "00000001.log"
        data = bytearray(first.read_bytes())
        data[-20] ^= 0xFF  # inside the last frame of a sealed file (a retained fact)
        first.write_bytes(bytes(data))
        with pytest.raises(CorruptRecordError) as raised:
            db.compact()
        assert raised.value.path == str(first)
        assert first.read_bytes() == bytes(data)
        assert not list(db.path.glob("*.compact"))


def test_facts_dropped_while_the_copy_runs_are_dead_in_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kilndb.open(tmp_path, max_file_size=64 * 1024, auto_compact=False) as db:
        db.set_retention("s", keep="latest")
        _fill(db, 40, 5)
        active = db.stats()["active_file"]
        while db.stats()["active_file"] == active:  # k0's latest is now in a sealed file
            db.store("pad").write("p", PAD)
        k0 = db.store("s").read("k0")
        assert k0 is not None
        location = db._log.keydir.location(k0.position)
        assert location is not None
        sealed = location[0]
        real = _core.copy_frames
        copying = threading.Event()

        def copy_then_drop(*args: object) -> tuple[list[int], int, int]:
            result = real(*args)  # type: ignore[arg-type]
            copying.set()
            # A write that supersedes a fact already copied: dead in the copy.
            db.store("s").write("k0", {"r": 99})
            return result

        monkeypatch.setattr(_core, "copy_frames", copy_then_drop)
        db.compact()
        assert copying.is_set()
        assert db.store("s").read("k0").value == {"r": 99}  # type: ignore[union-attr]
        assert db._log.files[sealed].dead_bytes == location[2]  # the copied, dropped k0
        assert db.compacted_through_by_store["s"] < k0.position  # k0 is still on disk
    with kilndb.open(tmp_path, max_file_size=64 * 1024, auto_compact=False) as db:
        assert db.store("s").read("k0").value == {"r": 99}  # type: ignore[union-attr]
        assert len(db.store("s").history("k0")) == 1
        # Dropped before this open: its store is read from the file when it goes.
        db.compact()
        assert db.compacted_through_by_store["s"] >= k0.position


def test_store_watermarks_cover_facts_dropped_before_a_restart(tmp_path: Path) -> None:
    with kilndb.open(tmp_path, max_file_size=16 * 1024, auto_compact=False) as db:
        db.set_retention("s", keep="latest")
        _fill(db, 10, 6)  # s: 60 facts, 50 of them dropped; all: 6 kept
        last_dropped = max(
            p for p in range(1, db.last_position + 1) if not db._log.keydir.is_retained(p)
        )
    with kilndb.open(tmp_path, max_file_size=16 * 1024, auto_compact=False) as db:
        assert db.compacted_through_by_store == {}
        db.compact()
        assert db.compacted_through_by_store == {"s": last_dropped}
        db.subscribe(stores=["all"], after=1).close()
        with pytest.raises(kilndb.CursorTooOldError) as refused:
            db.subscribe(stores=["s", "all"], after=1)
        assert (refused.value.store, refused.value.oldest) == ("s", last_dropped)
    with kilndb.open(tmp_path) as db:
        assert db.compacted_through_by_store == {"s": last_dropped}
        assert db.compacted_through >= last_dropped


def test_copy_frames_checks_its_arguments_and_every_frame(tmp_path: Path) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    frames = [encode_frame(b'{"n":%d}' % n) for n in range(3)]
    source.write_bytes(b"".join(frames))
    src = os.open(source, os.O_RDONLY)
    dst = os.open(target, os.O_RDWR | os.O_CREAT)
    try:
        offsets = [0, len(frames[0]) + len(frames[1])]  # the first and the third
        sizes = [len(frames[0]), len(frames[2])]
        moved, end, _ = _core.copy_frames(src, "a", offsets, sizes, dst, "b", 0, 0)
        assert moved == [0, len(frames[0])] and end == len(frames[0]) + len(frames[2])
        assert target.read_bytes()[:end] == frames[0] + frames[2]
        with pytest.raises(InvalidArgumentError):
            _core.copy_frames(src, "a", [0], [], dst, "b", end, 0)
        with pytest.raises(CorruptRecordError) as raised:  # a size that is not a frame
            _core.copy_frames(src, "a", [0], [len(frames[0]) + 1], dst, "b", end, 0)
        assert (raised.value.path, raised.value.offset) == ("a", 0)
    finally:
        os.close(src)
        os.close(dst)

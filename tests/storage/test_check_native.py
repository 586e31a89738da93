"""``kiln check``'s native walk of an intact file: the same answer as the frame scan.

The native core (``_core.check_file``) may only ever answer "nothing wrong" faster: on
an intact file it must report what the frame-by-frame scan reports, and on anything
else it must step aside. Damage itself is covered by ``test_check.py``.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

import kilndb
from kilndb import _core
from kilndb.codec import encode_frame
from kilndb.storage.check import _hint_mismatch, check_database
from kilndb.storage.check_file import FileResult, FileScan, check_file
from kilndb.storage.datafile import data_path, list_data_files
from kilndb.storage.hint import TOMBSTONE, Hint, column_bytes, read_hint
from kilndb.storage.ids import IdCodec
from tests.storage.damage import frames

SMALL_FILES = 32 * 1024


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed database of several files: single writes, batches, client ids and
    tombstones, each sealed file with its hint."""
    data_dir = tmp_path_factory.mktemp("native") / "data"
    with kilndb.open(data_dir, max_file_size=SMALL_FILES, sync="none") as db:
        store = db.store("s")
        for i in range(300):
            store.write(f"k{i % 30}", {"i": i, "pad": "x" * 60}, id=f"own-{i}" if i % 7 else None)
            if i % 25 == 0:
                db.write_many(kilndb.Write("b", f"g{i}-{j}", [i, j]) for j in range(4))
            if i % 40 == 39:
                store.delete(f"k{i % 30}")
    return data_dir / "default"


def scans(db_dir: Path, file_id: int, last: int) -> tuple[FileResult, FileResult]:
    """The file checked natively (falling back as ``kiln check`` does) and frame by frame."""
    path = data_path(db_dir, file_id)
    database_id = orjson.loads((db_dir / "META").read_bytes())["database_id"]
    newest = file_id == list_data_files(db_dir)[-1]
    with path.open("rb") as handle:
        length = os.fstat(handle.fileno()).st_size
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            native = check_file(
                buf, handle.fileno(), FileResult(file_id, path, newest, length), last, database_id
            )
            framed = FileResult(file_id, path, newest, length)
            FileScan(buf, framed, last, database_id).run()
    return native, framed


def test_native_and_frame_scans_agree_on_every_intact_file(database: Path) -> None:
    last = 0
    files = list_data_files(database)
    assert len(files) > 3
    for file_id in files:
        native, framed = scans(database, file_id, last)
        assert native.indexed is not None and not framed.problems
        summary = [
            (r.header, r.first_position, r.records_ok, r.data_end, r.torn_at, r.problems)
            for r in (native, framed)
        ]
        assert summary[0] == summary[1]
        positions = [(r.highest_position, r.last_fact_position) for r in (native, framed)]
        assert positions[0] == positions[1]
        assert len(native.indexed) == len(framed.facts)
        last = native.last_fact_position


def test_a_record_in_a_layout_of_its_own_is_checked_frame_by_frame(tmp_path: Path) -> None:
    with kilndb.open(tmp_path / "data", sync="none") as db:
        for i in range(5):
            db.store("s").write("k", i)
    db_dir = tmp_path / "data" / "default"
    path = data_path(db_dir, 1)
    found = frames(path)
    # The third fact rewritten with spaces after the separators: valid, but not the
    # layout KilnDB writes, so the native walk must leave it to the frame scan.
    offset, size, record = found[3]
    data = path.read_bytes()
    spaced = encode_frame(json.dumps(record).encode())
    path.write_bytes(data[:offset] + spaced + data[offset + size :].rstrip(b"\0"))
    for hint in db_dir.glob("*.hint"):
        hint.unlink()
    header_end = found[0][1]
    with path.open("rb") as handle:
        end = os.fstat(handle.fileno()).st_size
        assert _core.check_file(handle.fileno(), str(path), header_end, end, 0) is None

    report = check_database(db_dir)

    assert report.ok and not report.problems
    assert report.records_ok == 6  # the header and five facts
    with kilndb.open(tmp_path / "data") as db:
        assert [f.value for f in db.store("s").history("k")] == [0, 1, 2, 3, 4]


def _swap_keys(hint: Hint) -> None:
    hint.keys[2], hint.keys[3] = hint.keys[3], hint.keys[2]


def _bump(column: str, index: int, by: float) -> Callable[[Hint], None]:
    def mutate(hint: Hint) -> None:
        values = getattr(hint, column)
        values[index] = type(values[index])(values[index] + by)

    return mutate


def _tombstone(hint: Hint) -> None:
    hint.seq[1] ^= TOMBSTONE


def _unknown_store(hint: Hint) -> None:
    hint.store[4] = len(hint.stores) + 3


def _other_id(hint: Hint) -> None:
    hint.ids[hint.position[0]] = "someone-else"


def _forgotten_id(hint: Hint) -> None:
    position = next(p for p in hint.position if p in hint.ids)
    del hint.ids[position]


def _positions_out_of_order(hint: Hint) -> None:
    hint.position[0], hint.position[1] = hint.position[1], hint.position[0]


MUTATIONS = {
    "unchanged": lambda hint: None,
    "keys swapped": _swap_keys,
    "offset off by one": _bump("offset", 3, 1),
    "size off by one": _bump("size", 2, 1),
    "seq off by one": _bump("seq", 5, 1),
    "tombstone bit": _tombstone,
    "transaction time": _bump("ttime", 6, 0.5),
    "unknown store": _unknown_store,
    "another id": _other_id,
    "client id forgotten": _forgotten_id,
    "positions out of order": _positions_out_of_order,
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_the_native_hint_comparison_says_what_the_python_one_says(
    database: Path, mutation: str
) -> None:
    file_id = list_data_files(database)[1]
    native, framed = scans(database, file_id, 0 if file_id == 1 else _before(database, file_id))
    assert native.indexed is not None
    hint = read_hint(database / f"{file_id:08d}.hint", file_id, native.length)
    assert hint is not None and len(hint) > 8 and hint.ids
    MUTATIONS[mutation](hint)
    codec = IdCodec(orjson.loads((database / "META").read_bytes())["database_id"])

    said = native.indexed.hint_mismatch(
        *column_bytes(hint), hint.stores, hint.keys, hint.ids, codec.prefix
    )

    try:
        expected = _hint_mismatch(hint, framed.facts, codec)
    except IndexError:
        expected = "hint names a store it does not list"
    assert said == expected
    assert (said is None) == (mutation == "unchanged")


def _before(db_dir: Path, file_id: int) -> int:
    """The last position of the files before ``file_id``."""
    last = 0
    for earlier in list_data_files(db_dir):
        if earlier == file_id:
            return last
        last = scans(db_dir, earlier, last)[0].last_fact_position
    raise AssertionError(file_id)

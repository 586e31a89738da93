"""``check_database``: what it finds in a damaged directory and what ``fix=True`` saves."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

import kilndb
from kilndb.storage.check import CheckReport, Problem, check_database
from kilndb.storage.hint import read_hint, write_hint
from tests.storage.damage import flip, frames

SMALL_FILES = 64 * 1024


def populate(data_dir: Path, singles: int = 600, batches: int = 20) -> dict[int, dict[str, Any]]:
    """Write facts over several data files, close cleanly; return {position: fact dict}."""
    written: dict[int, dict[str, Any]] = {}
    with kilndb.open(data_dir, max_file_size=SMALL_FILES, sync="none") as db:
        store = db.store("s")
        for i in range(singles):
            fact = store.write(f"k{i % 40}", {"i": i, "pad": "x" * 120})
            written[fact.position] = fact.to_dict()
            if i % (singles // batches) == 0:
                group = [kilndb.Write("b", f"g{i}-{j}", {"batch": i, "j": j}) for j in range(5)]
                for fact in db.write_many(group):
                    written[fact.position] = fact.to_dict()
    return written


def single_fact_in_middle(path: Path) -> tuple[int, int, dict[str, Any]]:
    """A fact written alone (not in a batch), from the middle of the file."""
    found = frames(path)
    alone = [
        found[i]
        for i in range(1, len(found))
        if "position" in found[i][2]
        and "batch" not in found[i - 1][2]
        and found[i][2]["store"] == "s"
    ]
    return alone[len(alone) // 2]


def surviving(data_dir: Path) -> dict[int, dict[str, Any]]:
    """Every fact of the reopened database, read by replay and again by history."""
    with kilndb.open(data_dir, max_file_size=SMALL_FILES) as db:
        replayed = {fact.position: fact.to_dict() for fact in db.replay()}
        by_history = {
            fact.position: fact.to_dict()
            for name in db.stores()
            for key in {f["key"] for f in replayed.values() if f["store"] == name}
            for fact in db.store(name).history(key)
        }
    assert by_history == replayed
    return replayed


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_a_clean_database_is_ok(data_dir: Path) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    files = sorted(db_dir.glob("*.log"))
    assert len(files) >= 4

    report = check_database(db_dir)

    assert report == CheckReport(
        files_checked=len(files),
        records_ok=len(written) + len(files) + 20,  # facts, file headers, batch headers
        problems=[],
        fixed=False,
        records_recovered=0,
        bytes_quarantined=0,
    )
    assert report.ok
    assert check_database(db_dir, fix=True).problems == []


def test_a_flipped_byte_in_a_sealed_file_is_found_and_fix_keeps_every_other_record(
    data_dir: Path,
) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    sealed = db_dir / "00000002.log"
    offset, size, damaged = single_fact_in_middle(sealed)
    original = sealed.read_bytes()
    flip(sealed, offset + size // 2)

    report = check_database(db_dir)

    assert report.problems == [Problem(str(sealed), offset, "frame", "CRC mismatch")]
    assert not report.ok
    assert report.records_ok == check_database(db_dir).records_ok  # checking changes nothing
    assert sealed.read_bytes() != original

    fixed = check_database(db_dir, fix=True)

    assert fixed.fixed and fixed.ok
    assert fixed.bytes_quarantined == size
    quarantine = db_dir / f"00000002.log.corrupt-{offset}"
    assert quarantine.read_bytes()[:4] == original[offset : offset + 4]
    assert len(quarantine.read_bytes()) == size
    assert fixed.records_recovered == sum(1 for *_, r in frames(sealed) if "position" in r)
    assert not (db_dir / "00000002.hint").exists()
    assert check_database(db_dir).problems == []
    del written[damaged["position"]]
    assert surviving(data_dir) == written


@pytest.mark.parametrize(
    ("byte", "mask"),
    [(0, 0x40), (3, 0x01), (3, 0x80)],
    ids=["length-huge", "length-off-by-one", "length-short-by-128"],
)
def test_a_damaged_length_field_is_resynchronised(data_dir: Path, byte: int, mask: int) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    sealed = db_dir / "00000003.log"
    offset, _, damaged = single_fact_in_middle(sealed)
    flip(sealed, offset + byte, mask)

    report = check_database(db_dir)

    assert [(p.path, p.offset, p.kind) for p in report.problems] == [(str(sealed), offset, "frame")]
    assert check_database(db_dir, fix=True).fixed
    del written[damaged["position"]]
    assert surviving(data_dir) == written


def test_a_damaged_fact_inside_a_batch_drops_the_whole_batch(data_dir: Path) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    sealed = db_dir / "00000002.log"
    found = frames(sealed)
    header_index = next(i for i, (*_, r) in enumerate(found) if "batch" in r)
    batch_offset, _, header = found[header_index]
    offset, size, _ = found[header_index + 3]  # the batch's third fact
    flip(sealed, offset + size - 2)

    report = check_database(db_dir)

    assert [(p.offset, p.kind) for p in report.problems] == [
        (offset, "frame"),
        (batch_offset, "batch"),
    ]
    fixed = check_database(db_dir, fix=True)
    assert fixed.fixed
    batch_size = found[header_index + 5][0] + found[header_index + 5][1] - batch_offset
    assert fixed.bytes_quarantined == batch_size
    for position in range(header["first"], header["first"] + header["batch"]):
        del written[position]
    assert surviving(data_dir) == written


def test_a_batch_whose_header_alone_is_damaged_keeps_its_facts(data_dir: Path) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    sealed = db_dir / "00000002.log"
    batch_offset, size, _ = next(f for f in frames(sealed) if "batch" in f[2])
    flip(sealed, batch_offset + size - 1)  # its CRC: length and text survive

    report = check_database(db_dir)

    assert [(p.offset, p.kind) for p in report.problems] == [(batch_offset, "frame")]
    fixed = check_database(db_dir, fix=True)
    assert fixed.fixed and fixed.bytes_quarantined == size
    assert surviving(data_dir) == written  # every fact of the batch arrived: all applied


def test_a_batch_with_a_damaged_header_and_a_damaged_fact_is_dropped(data_dir: Path) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    sealed = db_dir / "00000002.log"
    found = frames(sealed)
    index = next(i for i, (*_, r) in enumerate(found) if "batch" in r)
    batch_offset, size, header = found[index]
    flip(sealed, batch_offset + size - 1)
    fact_offset, fact_size, _ = found[index + 4]
    flip(sealed, fact_offset + fact_size // 2)

    report = check_database(db_dir)

    assert [(p.offset, p.kind) for p in report.problems] == [
        (batch_offset, "frame"),
        (fact_offset, "frame"),
        (batch_offset, "batch"),
    ]
    assert check_database(db_dir, fix=True).fixed
    for position in range(header["first"], header["first"] + header["batch"]):
        del written[position]
    assert surviving(data_dir) == written


def test_a_fact_out_of_position_order_is_found_and_dropped(data_dir: Path) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    first_file, sealed = db_dir / "00000001.log", db_dir / "00000002.log"
    offset, size, _ = next(f for f in frames(first_file) if "position" in f[2])
    stray = first_file.read_bytes()[offset : offset + size]  # intact, but position 1 again
    end = sealed.stat().st_size
    with sealed.open("ab") as handle:
        handle.write(stray)

    report = check_database(db_dir)

    assert [(p.path, p.offset, p.kind) for p in report.problems] == [(str(sealed), end, "order")]
    fixed = check_database(db_dir, fix=True)
    assert fixed.fixed and fixed.bytes_quarantined == size
    assert sealed.stat().st_size == end
    assert surviving(data_dir) == written


def test_a_stale_hint_is_found_and_removed(data_dir: Path) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    hint_file = db_dir / "00000002.hint"
    data_size = (db_dir / "00000002.log").stat().st_size
    hint = read_hint(hint_file, 2, data_size)
    assert hint is not None
    hint.keys[3], hint.keys[4] = hint.keys[4], hint.keys[3]  # wrong, but well formed
    write_hint(hint_file, hint)

    report = check_database(db_dir)

    assert [(p.path, p.kind) for p in report.problems] == [(str(hint_file), "hint")]
    assert str(hint.position[3]) in report.problems[0].detail
    fixed = check_database(db_dir, fix=True)
    assert fixed.fixed
    assert not hint_file.exists()
    assert surviving(data_dir) == written


def test_a_hint_without_its_data_file_and_leftovers_are_removed(data_dir: Path) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    (db_dir / "00000099.hint").write_bytes(b"KILNHNT1")
    (db_dir / "00000002.log.compact").write_bytes(b"half a compaction")
    (db_dir / "00000003.hint.tmp").write_bytes(b"half a hint")

    report = check_database(db_dir)

    assert sorted((Path(p.path).name, p.kind) for p in report.problems) == [
        ("00000002.log.compact", "leftover"),
        ("00000003.hint.tmp", "leftover"),
        ("00000099.hint", "hint"),
    ]
    assert check_database(db_dir, fix=True).fixed
    assert sorted(p.name for p in db_dir.iterdir() if not p.name.startswith("0000000")) == [
        "LOCK",
        "META",
    ]
    assert not (db_dir / "00000099.hint").exists()
    assert surviving(data_dir) == written


def test_a_torn_tail_of_the_newest_file_is_cut_as_recovery_would(data_dir: Path) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    newest = sorted(db_dir.glob("*.log"))[-1]
    offset, size, record = frames(newest)[-1]
    with newest.open("r+b") as handle:
        handle.truncate(offset + size - 3)
    torn = newest.read_bytes()[offset:].rstrip(b"\0")  # as recovery, zeros are not kept

    report = check_database(db_dir)

    assert [(p.path, p.offset, p.kind) for p in report.problems] == [
        (str(newest), offset, "torn-tail")
    ]
    fixed = check_database(db_dir, fix=True)
    assert fixed.fixed and fixed.bytes_quarantined == len(torn)
    assert (newest.parent / f"{newest.name}.torn-{offset}").read_bytes() == torn
    del written[record["position"]]
    assert surviving(data_dir) == written


def test_a_damaged_header_of_the_newest_file_is_rebuilt_keeping_its_facts(
    data_dir: Path,
) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    newest = sorted(db_dir.glob("*.log"))[-1]
    header_size = frames(newest)[0][1]
    flip(newest, 10)

    report = check_database(db_dir)

    assert [(p.offset, p.kind) for p in report.problems] == [(0, "header")]
    fixed = check_database(db_dir, fix=True)
    assert fixed.fixed and fixed.bytes_quarantined == header_size
    assert surviving(data_dir) == written


def test_a_damaged_header_of_a_sealed_file_blocks_open_until_fixed(data_dir: Path) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    sealed = db_dir / "00000002.log"
    (db_dir / "00000002.hint").unlink()
    flip(sealed, 12)
    with pytest.raises(kilndb.CorruptRecordError) as raised:
        kilndb.open(data_dir)
    assert (raised.value.path, raised.value.offset) == (str(sealed), 0)

    report = check_database(db_dir)

    assert [(p.path, p.offset, p.kind) for p in report.problems] == [(str(sealed), 0, "header")]
    assert check_database(db_dir, fix=True).fixed
    assert surviving(data_dir) == written


def test_a_missing_meta_is_rebuilt_with_the_same_database_id(data_dir: Path) -> None:
    written = populate(data_dir)
    db_dir = data_dir / "default"
    database_id = orjson.loads((db_dir / "META").read_bytes())["database_id"]
    (db_dir / "META").unlink()

    report = check_database(db_dir)

    assert [(Path(p.path).name, p.kind) for p in report.problems] == [("META", "meta")]
    assert check_database(db_dir, fix=True).fixed
    assert orjson.loads((db_dir / "META").read_bytes())["database_id"] == database_id
    assert surviving(data_dir) == written


def test_a_database_open_in_a_process_is_refused(data_dir: Path) -> None:
    populate(data_dir, singles=20, batches=2)
    with kilndb.open(data_dir), pytest.raises(kilndb.DatabaseLockedError):
        check_database(data_dir / "default")
    assert check_database(data_dir / "default").ok  # the lock is released again


def test_a_directory_without_a_database_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(kilndb.NotFoundError):
        check_database(tmp_path / "missing")
    with pytest.raises(kilndb.NotFoundError):
        check_database(tmp_path)
    assert not (tmp_path / "LOCK").exists()


# -- random damage -------------------------------------------------------------------


@dataclass
class Pristine:
    """A closed database, its facts, and the frames of each of its data files."""

    data_dir: Path
    written: dict[int, dict[str, Any]]
    layout: dict[str, list[tuple[int, int, dict[str, Any]]]]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    data_dir = tmp_path_factory.mktemp("pristine") / "data"
    written = populate(data_dir, singles=300, batches=30)
    files = sorted((data_dir / "default").glob("*.log"))
    return Pristine(data_dir, written, {path.name: frames(path) for path in files})


def damage_at_random(db_dir: Path, names: list[str], rng: random.Random) -> dict[str, list[range]]:
    """Flip bits, zero runs of bytes or cut the newest file; return the ranges hit."""
    hit: dict[str, list[range]] = {}
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(names)
        path = db_dir / name
        data = bytearray(path.read_bytes())
        offset = rng.randrange(len(data))
        how = rng.choice(["flip", "flip", "zero", "cut" if name == names[-1] else "zero"])
        if how == "flip":
            data[offset] ^= 1 << rng.randrange(8)
            hit.setdefault(name, []).append(range(offset, offset + 1))
        elif how == "zero":
            end = min(len(data), offset + rng.randint(1, 400))
            data[offset:end] = bytes(end - offset)
            hit.setdefault(name, []).append(range(offset, end))
        else:
            del data[offset:]
            hit.setdefault(name, []).append(range(offset, 1 << 40))
        path.write_bytes(bytes(data))
    return hit


def intact_facts(pristine: Pristine, hit: dict[str, list[range]]) -> set[int]:
    """Positions whose frames were not hit, nor any frame of their batch's facts."""
    intact = set()
    for name, found in pristine.layout.items():

        def untouched(index: int, name: str = name, found: Any = found) -> bool:
            offset, size, _ = found[index]
            return not any(r.start < offset + size and offset < r.stop for r in hit.get(name, []))

        index = 0
        while index < len(found):
            record = found[index][2]
            members = range(index + 1, index + 1 + record["batch"]) if "batch" in record else None
            if members is None:
                if "position" in record and untouched(index):
                    intact.add(record["position"])
                index += 1
                continue
            if all(untouched(i) for i in members):
                intact.update(found[i][2]["position"] for i in members)
            index = members.stop
    return intact


@pytest.mark.parametrize("seed", range(30))
def test_random_damage_loses_no_intact_record_and_no_batch_in_part(
    pristine: Pristine, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    shutil.copytree(pristine.data_dir, data_dir)
    hit = damage_at_random(data_dir / "default", sorted(pristine.layout), rng)

    report = check_database(data_dir / "default", fix=True)

    assert report.ok, report
    survivors = surviving(data_dir)
    assert all(pristine.written[p] == fact for p, fact in survivors.items())
    assert intact_facts(pristine, hit) <= set(survivors)
    ambiguous = any("cannot be told" in p.detail for p in report.problems)
    for _, _, record in (f for found in pristine.layout.values() for f in found):
        if "batch" in record:
            batch = range(record["first"], record["first"] + record["batch"])
            present = [p in survivors for p in batch]
            assert all(present) or not any(present) or ambiguous, (batch, present)

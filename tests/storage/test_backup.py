"""Backups of an open database while it is written and compacted, and their restore."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import kilndb
from kilndb.storage.backup import BackupReport, backup_database, install_database
from kilndb.storage.check import check_database


def _facts_through(db: kilndb.Database, position: int) -> list[dict[str, Any]]:
    return [f.to_dict() for f in db.replay() if f.position <= position]


def _assert_exact_copy(
    copy_dir: Path, report: BackupReport, expected: list[dict[str, Any]]
) -> None:
    """The copy checks clean and holds exactly ``expected`` (values, seqs, positions)."""
    check = check_database(copy_dir)
    assert check.ok and not check.problems, check.problems
    with kilndb.open(copy_dir.parent, copy_dir.name) as copy:
        copied = [f.to_dict() for f in copy.replay()]
        assert copy.last_position == report.position
    assert copied == expected
    assert report.facts == len(expected)


class _Writer:
    """Writes batches of facts from a thread until stopped."""

    def __init__(self, db: kilndb.Database, store: str = "tasks", keys: int = 1000) -> None:
        self.db = db
        self.store = store
        self.keys = keys
        self.written = threading.Event()
        #: Every fact written, in position order.
        self.facts: list[kilndb.Fact] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            self.facts += self.db.write_many(
                kilndb.Write(self.store, f"k{(n + i) % self.keys}", {"n": n + i}) for i in range(20)
            )
            n += 20
            if n >= 400:
                self.written.set()

    def __enter__(self) -> _Writer:
        self._thread.start()
        assert self.written.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_backup_while_writes_go_on_holds_exactly_the_facts_up_to_its_position(
    tmp_path: Path,
) -> None:
    with kilndb.open(tmp_path / "data", max_file_size=16 * 1024) as db:
        with _Writer(db):
            report = backup_database(db, tmp_path / "backup" / "default")
        assert report.files >= 3  # sealed files, the active one, META
        assert report.bytes > 0
        assert db.last_position > report.position  # the writer went on after it
        expected = _facts_through(db, report.position)
        _assert_exact_copy(tmp_path / "backup" / "default", report, expected)


def test_compaction_during_a_backup_waits_and_the_copy_stays_exact(tmp_path: Path) -> None:
    with kilndb.open(tmp_path / "data", max_file_size=16 * 1024, auto_compact=False) as db:
        db.set_retention("tasks", keep="latest")
        with _Writer(db, keys=50) as writer:
            compactions: list[dict[str, int]] = []
            compactor = threading.Thread(target=lambda: compactions.append(db.compact()))

            def midway(count: int) -> None:
                if not compactor.is_alive() and not compactions:
                    compactor.start()  # compaction starts while files are being copied

            report = backup_database(db, tmp_path / "backup" / "default", midway)
            compactor.join()
        assert compactions and db.stats()["compactions"] >= 1
    # Each key's latest fact as of the backup's position (the store keeps the latest).
    latest = {f.key: f for f in writer.facts if f.position <= report.position}
    expected = sorted((f.to_dict() for f in latest.values()), key=lambda d: d["position"])
    _assert_exact_copy(tmp_path / "backup" / "default", report, expected)


def test_a_backup_copies_the_hints_of_sealed_files(tmp_path: Path) -> None:
    with kilndb.open(tmp_path / "data", max_file_size=8 * 1024) as db:
        for n in range(300):
            db.store("tasks").write(f"k{n}", {"n": n})
        db._log.wait_for_maintenance(10)
        report = backup_database(db, tmp_path / "backup" / "default")
    copy = tmp_path / "backup" / "default"
    assert list(copy.glob("*.hint")), sorted(p.name for p in copy.iterdir())
    assert report.position == 300


def test_restore_checks_the_copy_and_refuses_a_damaged_one(tmp_path: Path) -> None:
    with kilndb.open(tmp_path / "data") as db:
        db.store("tasks").write("a", {"n": 1})
        db.store("tasks").write("b", {"n": 2})
        backup_database(db, tmp_path / "backup" / "default")
    log = tmp_path / "backup" / "default" / "00000001.log"
    damaged = bytearray(log.read_bytes())
    first_fact = int.from_bytes(damaged[:4], "big") + 8  # right after the file header
    damaged[first_fact + 20] ^= 0xFF  # inside the first fact's body: its CRC fails
    log.write_bytes(bytes(damaged))
    check, report = install_database(
        tmp_path / "backup" / "default", tmp_path / "restored", "default", replace=False
    )
    assert report is None and not check.ok
    assert [p.kind for p in check.problems] == ["frame"]
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == []


def test_restore_refuses_an_existing_database_unless_replacing(tmp_path: Path) -> None:
    with kilndb.open(tmp_path / "data") as db:
        db.store("tasks").write("a", {"n": 1})
        backup_database(db, tmp_path / "backup" / "default")
    with kilndb.open(tmp_path / "restored") as other:
        other.store("tasks").write("z", {"n": 9})
    with pytest.raises(FileExistsError):
        install_database(
            tmp_path / "backup" / "default", tmp_path / "restored", "default", replace=False
        )
    _, report = install_database(
        tmp_path / "backup" / "default", tmp_path / "restored", "default", replace=True
    )
    assert report is not None and report.position == 1
    with kilndb.open(tmp_path / "restored") as restored:
        assert restored.store("tasks").read("z") is None
        fact = restored.store("tasks").read("a")
        assert fact is not None and fact.value == {"n": 1}
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == ["default"]


def test_restore_refuses_a_database_open_elsewhere(tmp_path: Path) -> None:
    with kilndb.open(tmp_path / "data") as db:
        db.store("tasks").write("a", {"n": 1})
        backup_database(db, tmp_path / "backup" / "default")
    with kilndb.open(tmp_path / "restored"), pytest.raises(kilndb.DatabaseLockedError):
        install_database(
            tmp_path / "backup" / "default", tmp_path / "restored", "default", replace=True
        )

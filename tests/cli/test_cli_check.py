"""kiln check: the report it prints and its exit status.

The report rendering is tested against a stand-in for ``kilndb.storage.check``; the
end-to-end repair test runs against the real module when it is present.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import kilndb
from tests.cli.runner import assert_one_error_line, kiln


@dataclass
class FakeProblem:
    path: str
    offset: int
    kind: str
    detail: str


@dataclass
class FakeReport:
    files_checked: int
    records_ok: int
    problems: list[FakeProblem] = field(default_factory=list)
    fixed: bool = False
    records_recovered: int = 0
    bytes_quarantined: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems or self.fixed


@pytest.fixture
def fake_checker(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, bool]]:
    """Install a stand-in checker that reports damage until asked to fix it."""
    calls: list[tuple[Path, bool]] = []

    def check_database(directory: Path, fix: bool = False) -> FakeReport:
        calls.append((directory, fix))
        problem = FakeProblem(
            str(directory / "00000001.log"), 4096, "crc", "CRC mismatch in a fact record"
        )
        return FakeReport(
            2,
            99,
            [problem],
            fixed=fix,
            records_recovered=98 if fix else 0,
            bytes_quarantined=180 if fix else 0,
        )

    module = types.ModuleType("kilndb.storage.check")
    module.check_database = check_database  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kilndb.storage.check", module)
    return calls


def test_check_reports_problems_and_suggests_fix(
    tmp_path: Path, fake_checker: list[tuple[Path, bool]]
) -> None:
    kiln(tmp_path, "put", "tasks", "t1", "1")
    result = kiln(tmp_path, "check")
    assert fake_checker == [(tmp_path / "default", False)]
    assert "checked 2 files: 99 records ok, 1 problem" in result.stdout
    assert "crc" in result.stdout
    assert "00000001.log at offset 4,096: CRC mismatch" in result.stdout
    line = assert_one_error_line(result, 1, "1 problem found")
    assert f"kiln --data {tmp_path} check --fix" in line


def test_check_fix_repairs_and_exits_0(
    tmp_path: Path, fake_checker: list[tuple[Path, bool]]
) -> None:
    kiln(tmp_path, "put", "tasks", "t1", "1")
    result = kiln(tmp_path, "check", "--fix")
    assert result.exit_code == 0, result.stderr
    assert fake_checker == [(tmp_path / "default", True)]
    assert "repaired: 98 records recovered, 180 bytes quarantined" in result.stdout
    assert "database repaired" in result.stdout


def test_check_json_report(tmp_path: Path, fake_checker: list[tuple[Path, bool]]) -> None:
    kiln(tmp_path, "put", "tasks", "t1", "1")
    result = kiln(tmp_path, "check", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["problems"][0]["offset"] == 4096


def test_check_refuses_a_database_open_elsewhere(tmp_path: Path) -> None:
    pytest.importorskip("kilndb.storage.check")
    with kilndb.open(tmp_path):
        result = kiln(tmp_path, "check", "--fix")
    assert_one_error_line(result, 3, "already open in this process")


def test_check_of_a_sound_database_exits_0(tmp_path: Path) -> None:
    pytest.importorskip("kilndb.storage.check")
    with kilndb.open(tmp_path, max_file_size=4096) as db:
        for n in range(40):
            db.store("tasks").write(f"k{n}", {"n": n, "pad": "p" * 40})
    result = kiln(tmp_path, "check")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "0 problems" in result.stdout
    assert "database is sound" in result.stdout
    assert result.stderr == ""


def test_check_works_on_a_database_that_lost_its_meta(tmp_path: Path) -> None:
    pytest.importorskip("kilndb.storage.check")
    with kilndb.open(tmp_path) as db:
        db.store("tasks").write("k", 1)
    (tmp_path / "default" / "META").unlink()
    found = kiln(tmp_path, "check")
    assert found.exit_code == 1
    assert "meta" in found.stdout
    assert kiln(tmp_path, "check", "--fix").exit_code == 0
    assert kiln(tmp_path, "get", "tasks", "k", "--value").stdout == "1\n"


def test_check_and_fix_recover_every_intact_record(tmp_path: Path) -> None:
    pytest.importorskip("kilndb.storage.check")
    with kilndb.open(tmp_path, max_file_size=4096) as db:
        facts = [db.store("tasks").write(f"k{n}", {"n": n, "pad": "p" * 40}) for n in range(120)]
        assert db.stats()["files"] >= 3
    first = tmp_path / "default" / "00000001.log"
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    (tmp_path / "default" / "00000001.hint").unlink(missing_ok=True)

    found = kiln(tmp_path, "check")
    assert found.exit_code == 1
    assert "check --fix" in found.stderr
    assert "Traceback" not in found.stderr

    fixed = kiln(tmp_path, "check", "--fix")
    assert fixed.exit_code == 0, fixed.stdout + fixed.stderr
    assert kiln(tmp_path, "check").exit_code == 0

    with kilndb.open(tmp_path) as db:
        survivors = {f.id for f in db.replay()}
    lost = [f for f in facts if f.id not in survivors]
    assert len(lost) == 1, [f.position for f in lost]

"""Every failure of kiln is one ``error: ...`` line on stderr and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

import kilndb
from kilndb.cli import errors
from tests.cli.runner import assert_one_error_line, kiln


def test_bad_json_is_a_usage_error_with_a_hint(tmp_path: Path) -> None:
    result = kiln(tmp_path, "put", "tasks", "t1", "hello")
    line = assert_one_error_line(result, 2, "is not valid JSON")
    assert "quote it" in line
    assert not (tmp_path / "default").exists()  # nothing was opened, nothing written
    broken = kiln(tmp_path, "put", "tasks", "t1", '{"a": ')
    assert_one_error_line(broken, 2, "is not valid JSON")


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        (["--sync", "sometimes", "stats"], "'sometimes' is not one of"),
        (["put", "tasks", "t1", "1", "--expected-seq", "-1"], "--expected-seq"),
        (["put", "tasks", "t1", "1", "--expected-seq", "one"], "--expected-seq"),
        (["put", "tasks", "t1", "1", "--meta", "novalue"], "name=value"),
        (["put", "tasks", "t1", "1", "--valid-time", "soon"], "ISO 8601"),
        (["get", "tasks", "t1", "--as-of", "nan"], "finite"),
        (["put", "tasks"], "Missing argument"),
        (["history", "tasks", "t1", "--limit", "-5"], "--limit"),
        (["retention", "tasks", "--keep", "some"], "'some' is not one of"),
        (["retention", "tasks", "--max-age", "0"], "--max-age"),
        (["no-such-command"], "No such command"),
        (["put", "--no-such-option", "s", "k", "1"], "No such option"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], contains: str) -> None:
    line = assert_one_error_line(kiln(tmp_path, *args), 2, contains)
    assert "--help" in line


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        (["put", "bad store", "k", "1"], "invalid store name"),
        (["put", "tasks", "", "1"], "key must not be empty"),
        (["put", "tasks", "k", "1", "--id", ""], "id must not be empty"),
    ],
)
def test_invalid_arguments_from_the_engine_exit_1(
    tmp_path: Path, args: list[str], contains: str
) -> None:
    assert_one_error_line(kiln(tmp_path, *args), 1, contains)


@pytest.mark.parametrize(
    "args",
    [
        ["--database", "../escape", "put", "tasks", "k", "1"],
        ["db", "create", "bad/name"],
        ["db", "remove", "bad/name", "--delete"],
    ],
)
def test_a_bad_database_name_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    assert_one_error_line(kiln(tmp_path, *args), 2, "invalid database name")


def test_a_database_held_by_another_opener_is_a_clear_error(tmp_path: Path) -> None:
    with kilndb.open(tmp_path):
        result = kiln(tmp_path, "put", "tasks", "t1", "1")
        assert_one_error_line(result, 3, "is already open in this process")
        assert_one_error_line(kiln(tmp_path, "stats"), 3, "already open")
    assert kiln(tmp_path, "put", "tasks", "t1", "1").exit_code == 0


@pytest.mark.parametrize(
    "args",
    [
        ["get", "tasks", "t1"],
        ["history", "tasks", "t1"],
        ["keys", "tasks"],
        ["replay"],
        ["stats"],
        ["stores"],
        ["compact"],
        ["delete", "tasks", "t1"],
        ["retention", "tasks"],
        ["check"],
    ],
)
def test_read_commands_do_not_create_a_missing_database(tmp_path: Path, args: list[str]) -> None:
    data = tmp_path / "typo"
    assert_one_error_line(kiln(data, *args), 1, f"no database 'default' in {data}")
    assert not data.exists()


def test_an_unexpected_exception_is_still_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: kilndb.Database) -> dict[str, int]:
        raise RuntimeError("boom")

    kiln(tmp_path, "put", "tasks", "t1", "1")
    monkeypatch.setattr(kilndb.Database, "compact", explode)
    result = kiln(tmp_path, "compact")
    line = assert_one_error_line(result, 1, "unexpected RuntimeError: boom")
    assert "KILN_DEBUG" in line


def test_kiln_debug_shows_the_real_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: kilndb.Database) -> dict[str, int]:
        raise RuntimeError("boom")

    kiln(tmp_path, "put", "tasks", "t1", "1")
    monkeypatch.setattr(kilndb.Database, "compact", explode)
    result = kiln(tmp_path, "compact", KILN_DEBUG="1")
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)


def test_the_database_is_closed_after_a_failed_command(tmp_path: Path) -> None:
    kiln(tmp_path, "put", "tasks", "t1", "1")
    assert kiln(tmp_path, "put", "tasks", "t1", "2", "--expected-seq", "0").exit_code == 1
    # The lock was released: the database opens again in this process.
    with kilndb.open(tmp_path) as db:
        fact = db.store("tasks").read("t1")
        assert fact is not None
        assert fact.value == 1


def test_one_line_joins_multi_line_messages() -> None:
    assert errors.one_line("first\n\n  second  \nthird") == "first second third"


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: kilndb.Database) -> list[str]:
        raise KeyboardInterrupt

    kiln(tmp_path, "put", "tasks", "t1", "1")
    monkeypatch.setattr(kilndb.Database, "stores", interrupted)
    assert_one_error_line(kiln(tmp_path, "stores"), 130, "error: interrupted")


def test_a_corrupt_record_names_the_file_offset_and_the_repair(tmp_path: Path) -> None:
    with kilndb.open(tmp_path, max_file_size=4096) as db:
        for n in range(60):
            db.store("tasks").write(f"k{n}", {"n": n, "pad": "p" * 40})
    first = tmp_path / "default" / "00000001.log"
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    result = kiln(tmp_path, "replay")
    line = assert_one_error_line(result, 1, f"corrupt record in {first} at offset ")
    assert f"run 'kiln --data {tmp_path} check --fix' to repair" in line

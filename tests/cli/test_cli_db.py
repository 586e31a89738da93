"""``kiln db list``, ``create`` and ``remove``, on a data directory and through a server."""

from __future__ import annotations

from pathlib import Path

import pytest

import kilndb
from kilndb.server import Server
from tests.cli.runner import assert_one_error_line, json_lines, kiln


def _make(data: Path, *names: str) -> None:
    for name in names:
        with kilndb.open(data, name) as db:
            db.store("s").write("k", name)


def test_list_and_remove_on_a_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _make(data, "a", "b")
    listed = kiln(data, "db", "list")
    assert [row["database"] for row in json_lines(listed.stdout)] == ["a", "b"]
    refused = kiln(data, "db", "remove", "a", "--delete", input="n\n")
    assert refused.exit_code == 1 and (data / "a").is_dir()  # the user said no
    assert_one_error_line(kiln(data, "db", "remove", "a"), 1, "--delete")
    removed = kiln(data, "db", "remove", "a", "--delete", "--yes")
    assert removed.exit_code == 0, removed.stderr
    assert json_lines(removed.stdout) == [{"database": "a", "deleted": True}]
    assert not (data / "a").exists() and (data / "b").is_dir()
    assert_one_error_line(kiln(data, "db", "remove", "a", "--delete", "--yes"), 1, "no database")


def test_remove_refuses_a_database_in_use(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with kilndb.open(data, "busy"):
        result = kiln(data, "db", "remove", "busy", "--delete", "--yes")
        assert_one_error_line(result, 3, "already open")
    assert (data / "busy").is_dir()


def test_list_and_remove_through_a_server(tmp_path: Path) -> None:
    data = tmp_path / "served"
    with Server(data=data, port=0) as server:
        with kilndb.connect(server.url, "t1") as db:
            db.store("s").write("k", 1)
        url = ("--url", server.url)
        listed = json_lines(kiln(tmp_path, *url, "db", "list").stdout)
        assert [row["database"] for row in listed] == ["default", "t1"]
        removed = kiln(tmp_path, *url, "db", "remove", "t1", "--delete", "--yes")
        assert removed.exit_code == 0, removed.stderr
        assert not (data / "t1").exists()
        left = json_lines(kiln(tmp_path, *url, "db", "list").stdout)
        assert [row["database"] for row in left] == ["default"]


def test_create_on_a_data_directory_and_through_a_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = kiln(data, "db", "create", "billing")
    assert created.exit_code == 0, created.stderr
    assert json_lines(created.stdout) == [{"database": "billing", "created": True}]
    again = kiln(data, "db", "create", "billing")
    assert json_lines(again.stdout) == [{"database": "billing", "created": False}]
    assert_one_error_line(kiln(data, "db", "create", "bad/name"), 2, "invalid database name")
    with Server(data=tmp_path / "served", port=0) as server:
        url = ("--url", server.url)
        with kilndb.connect(server.url, "reports") as db:
            with pytest.raises(kilndb.NotFoundError):
                db.stats()  # reads never create it...
            made = kiln(tmp_path, *url, "db", "create", "reports")
            assert json_lines(made.stdout) == [{"database": "reports", "created": True}]
            assert db.stats()["last_position"] == 0  # ...an explicit create does

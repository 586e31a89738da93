"""kiln stores / stats / compact / retention."""

from __future__ import annotations

import json
from pathlib import Path

import kilndb
from tests.cli.runner import kiln


def _populate(data: Path) -> None:
    with kilndb.open(data) as db:
        for n in range(3):
            db.store("tasks").write(f"t{n}", {"n": n})
        db.store("tasks").write("t0", {"n": 10})
        db.store("events").write("e1", "x")


def test_stores_prints_json_when_not_a_terminal(tmp_path: Path) -> None:
    _populate(tmp_path)
    result = kiln(tmp_path, "stores")
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"store": "events", "keys": 1, "retention": {"keep": "all", "max_age": None}},
        {"store": "tasks", "keys": 3, "retention": {"keep": "all", "max_age": None}},
    ]


def test_stores_table_is_readable(tmp_path: Path) -> None:
    _populate(tmp_path)
    kiln(tmp_path, "retention", "tasks", "--keep", "latest", "--max-age", "60")
    result = kiln(tmp_path, "stores", "--table")
    assert result.exit_code == 0, result.stderr
    assert "tasks" in result.stdout
    assert "keep latest, max age 60 s" in result.stdout
    assert "{" not in result.stdout


def test_stats_is_one_json_object_and_a_table_on_request(tmp_path: Path) -> None:
    _populate(tmp_path)
    result = kiln(tmp_path, "stats")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1
    stats = json.loads(result.stdout)
    assert stats["database"] == "default"
    assert stats["last_position"] == 5
    assert stats["keys"] == 4
    assert stats["stores"] == 2
    table = kiln(tmp_path, "stats", "--table")
    assert "last position" in table.stdout
    assert "database 'default'" in table.stdout
    forced = kiln(tmp_path, "stats", "--json")
    assert json.loads(forced.stdout)["last_position"] == 5


def test_retention_shows_sets_and_resets_the_policy(tmp_path: Path) -> None:
    _populate(tmp_path)
    shown = kiln(tmp_path, "retention", "tasks")
    assert json.loads(shown.stdout) == {"store": "tasks", "keep": "all", "max_age": None}
    set_ = kiln(tmp_path, "retention", "tasks", "--keep", "latest")
    assert json.loads(set_.stdout) == {"store": "tasks", "keep": "latest", "max_age": None}
    with kilndb.open(tmp_path) as db:
        assert [f.value for f in db.store("tasks").history("t0")] == [{"n": 10}]
    aged = kiln(tmp_path, "retention", "tasks", "--max-age", "3600")
    assert json.loads(aged.stdout) == {"store": "tasks", "keep": "all", "max_age": 3600.0}


def test_compact_reclaims_the_space_retention_dropped(tmp_path: Path) -> None:
    with kilndb.open(tmp_path) as db:
        for n in range(50):
            db.store("tasks").write("counter", {"n": n, "padding": "x" * 100})
    kiln(tmp_path, "retention", "tasks", "--keep", "latest")
    before = json.loads(kiln(tmp_path, "stats").stdout)
    assert before["dead_bytes"] > 0
    result = kiln(tmp_path, "compact")
    assert result.exit_code == 0, result.stderr
    done = json.loads(result.stdout)
    assert done["bytes_reclaimed"] > 0
    after = json.loads(kiln(tmp_path, "stats").stdout)
    assert after["data_bytes"] < before["data_bytes"]
    latest = json.loads(kiln(tmp_path, "get", "tasks", "counter", "--value").stdout)
    assert latest["n"] == 49

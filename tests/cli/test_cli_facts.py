"""kiln put / get / history / delete / keys / replay, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import kilndb
from kilndb.model import FACT_FIELDS
from tests.cli.runner import assert_one_error_line, json_lines, kiln


def test_put_prints_the_durable_fact_as_one_json_line(tmp_path: Path) -> None:
    result = kiln(tmp_path, "put", "tasks", "t1", '{"title": "Hello"}')
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1
    fact = json.loads(result.stdout)
    assert tuple(fact) == FACT_FIELDS
    assert fact["store"] == "tasks"
    assert fact["key"] == "t1"
    assert fact["seq"] == 1
    assert fact["position"] == 1
    assert fact["value"] == {"title": "Hello"}
    assert fact["deleted"] is False
    with kilndb.open(tmp_path) as db:
        stored = db.store("tasks").read("t1")
    assert stored is not None
    assert stored.to_dict() == fact


def test_put_passes_every_option_through(tmp_path: Path) -> None:
    result = kiln(
        tmp_path,
        "put",
        "tasks",
        "t1",
        "[1, 2.5, null]",
        "--expected-seq",
        "0",
        "--id",
        "cmd-1",
        "--causation",
        "cmd-0",
        "--valid-time",
        "2024-06-01T10:00:00Z",
        "--meta",
        "by=ann",
        "--meta",
        "query=a=b",
        "--schema-version",
        "3",
        "--producer",
        '{"app": "cli-test"}',
        "--derivation",
        '["rule-7"]',
    )
    assert result.exit_code == 0, result.stderr
    fact = json.loads(result.stdout)
    assert fact["value"] == [1, 2.5, None]
    assert fact["id"] == "cmd-1"
    assert fact["causation"] == "cmd-0"
    assert fact["valid_time"] == 1717236000.0
    assert fact["metadata"] == {"by": "ann", "query": "a=b"}
    assert fact["schema_version"] == 3
    assert fact["producer"] == {"app": "cli-test"}
    assert fact["derivation"] == ["rule-7"]


def test_put_with_a_known_id_returns_the_stored_fact(tmp_path: Path) -> None:
    first = json.loads(kiln(tmp_path, "put", "tasks", "t1", "1", "--id", "cmd-1").stdout)
    again = kiln(tmp_path, "put", "tasks", "t1", "2", "--id", "cmd-1")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout) == first


def test_put_reads_json_from_stdin_with_a_dash(tmp_path: Path) -> None:
    result = kiln(tmp_path, "put", "tasks", "t1", "-", input='{"from": "stdin"}\n')
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["value"] == {"from": "stdin"}


def test_put_accepts_epoch_seconds_as_valid_time(tmp_path: Path) -> None:
    result = kiln(tmp_path, "put", "tasks", "t1", "1", "--valid-time", "1700000000.25")
    assert json.loads(result.stdout)["valid_time"] == 1700000000.25


def test_put_with_a_stale_expected_seq_is_a_conflict(tmp_path: Path) -> None:
    kiln(tmp_path, "put", "tasks", "t1", "1")
    kiln(tmp_path, "put", "tasks", "t1", "2", "--expected-seq", "1")
    result = kiln(tmp_path, "put", "tasks", "t1", "3", "--expected-seq", "1")
    assert_one_error_line(result, 1, "conflict on tasks/t1: expected seq 1, actual seq 2")
    assert result.stdout == ""


def test_get_prints_the_latest_fact_and_travels_in_time(tmp_path: Path) -> None:
    first = json.loads(kiln(tmp_path, "put", "tasks", "t1", '"one"').stdout)
    second = json.loads(kiln(tmp_path, "put", "tasks", "t1", '"two"').stdout)
    latest = kiln(tmp_path, "get", "tasks", "t1")
    assert latest.exit_code == 0, latest.stderr
    assert json.loads(latest.stdout) == second
    then = kiln(tmp_path, "get", "tasks", "t1", "--as-of", repr(first["transaction_time"]))
    assert json.loads(then.stdout) == first
    value = kiln(tmp_path, "get", "tasks", "t1", "--value")
    assert value.stdout == '"two"\n'


def test_get_of_an_absent_key_fails_with_a_message(tmp_path: Path) -> None:
    kiln(tmp_path, "put", "tasks", "t1", "1")
    result = kiln(tmp_path, "get", "tasks", "missing")
    assert_one_error_line(result, 1, "tasks/missing has no value")
    assert result.stdout == ""
    before_anything = kiln(tmp_path, "get", "tasks", "t1", "--as-of", "0")
    assert_one_error_line(before_anything, 1, "as of 1970-01-01T00:00:00.000Z")


def test_history_prints_facts_by_seq_with_bounds(tmp_path: Path) -> None:
    for n in range(1, 6):
        kiln(tmp_path, "put", "tasks", "t1", str(n))
    kiln(tmp_path, "put", "tasks", "other", "0")
    every = json_lines(kiln(tmp_path, "history", "tasks", "t1").stdout)
    assert [f["seq"] for f in every] == [1, 2, 3, 4, 5]
    assert [f["value"] for f in every] == [1, 2, 3, 4, 5]
    some = kiln(tmp_path, "history", "tasks", "t1", "--since-seq", "2", "--until-seq", "4")
    assert [f["seq"] for f in json_lines(some.stdout)] == [2, 3, 4]
    limited = kiln(tmp_path, "history", "tasks", "t1", "--since-seq", "2", "--limit", "2")
    assert [f["seq"] for f in json_lines(limited.stdout)] == [2, 3]
    none = kiln(tmp_path, "history", "tasks", "unknown")
    assert none.exit_code == 0
    assert none.stdout == ""


def test_delete_writes_a_tombstone_and_keeps_history(tmp_path: Path) -> None:
    kiln(tmp_path, "put", "tasks", "t1", "1")
    result = kiln(tmp_path, "delete", "tasks", "t1", "--expected-seq", "1", "--meta", "why=done")
    assert result.exit_code == 0, result.stderr
    tombstone = json.loads(result.stdout)
    assert tombstone["deleted"] is True
    assert tombstone["seq"] == 2
    assert tombstone["metadata"] == {"why": "done"}
    assert_one_error_line(kiln(tmp_path, "get", "tasks", "t1"), 1, "has no value")
    history = json_lines(kiln(tmp_path, "history", "tasks", "t1").stdout)
    assert [f["deleted"] for f in history] == [False, True]
    again = kiln(tmp_path, "delete", "tasks", "t1")
    assert_one_error_line(again, 1, "tasks/t1 has no value to delete")


def test_keys_lists_live_keys_sorted_with_prefix_and_limit(tmp_path: Path) -> None:
    for key in ("b2", "a1", "b1", "c1"):
        kiln(tmp_path, "put", "tasks", key, "1")
    kiln(tmp_path, "delete", "tasks", "c1")
    assert kiln(tmp_path, "keys", "tasks").stdout == '"a1"\n"b1"\n"b2"\n'
    assert json_lines(kiln(tmp_path, "keys", "tasks", "--prefix", "b").stdout) == ["b1", "b2"]
    assert json_lines(kiln(tmp_path, "keys", "tasks", "--limit", "1").stdout) == ["a1"]
    assert kiln(tmp_path, "keys", "empty-store").stdout == ""
    table = kiln(tmp_path, "keys", "tasks", "--table").stdout
    assert "a1" in table and "b2" in table and '"' not in table


def test_replay_prints_facts_in_position_order_with_filters(tmp_path: Path) -> None:
    with kilndb.open(tmp_path) as db:
        db.write_many(
            [kilndb.Write("a" if n % 2 else "b", f"k{n}", {"n": n}) for n in range(1, 11)]
        )
    everything = json_lines(kiln(tmp_path, "replay").stdout)
    assert [f["position"] for f in everything] == list(range(1, 11))
    after = json_lines(kiln(tmp_path, "replay", "--after", "7").stdout)
    assert [f["position"] for f in after] == [8, 9, 10]
    only_a = json_lines(kiln(tmp_path, "replay", "--store", "a", "--limit", "3").stdout)
    assert [f["position"] for f in only_a] == [1, 3, 5]
    both = json_lines(kiln(tmp_path, "replay", "--store", "a", "--store", "b").stdout)
    assert len(both) == 10
    with kilndb.open(tmp_path) as db:
        assert everything == [f.to_dict() for f in db.replay()]


def test_unicode_values_round_trip(tmp_path: Path) -> None:
    value = {"name": "Zoë", "city": "東京", "emoji": "🔥"}
    kiln(tmp_path, "put", "people", "p1", json.dumps(value, ensure_ascii=False))
    result = kiln(tmp_path, "get", "people", "p1", "--value")
    assert json.loads(result.stdout) == value


def test_database_and_sync_options_select_the_database(tmp_path: Path) -> None:
    result = kiln(tmp_path, "--database", "billing", "--sync", "none", "put", "inv", "i1", "1")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "billing" / "META").is_file()
    assert not (tmp_path / "default").exists()
    env = kiln(tmp_path, "get", "inv", "i1", KILN_DATABASE="billing")
    assert json.loads(env.stdout)["value"] == 1


def test_kiln_data_environment_variable_sets_the_data_directory(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kilndb.cli import cli

    result = CliRunner().invoke(
        cli, ["put", "tasks", "t1", "1"], env={"KILN_DATA": str(tmp_path / "envdata")}
    )
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "envdata" / "default" / "META").is_file()


def test_put_replicas_needs_a_server(tmp_path: Path) -> None:
    result = kiln(tmp_path, "put", "s", "k", "1", "--replicas", "1")
    assert_one_error_line(result, 2, "--replicas waits for a server's followers: give --url")
    assert not (tmp_path / "default").exists()  # refused before anything was written

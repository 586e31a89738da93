"""``kiln --url``: the CLI as a client of a running server."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import kilndb
from kilndb.server import Server
from tests.cli.runner import assert_one_error_line, json_lines, kiln
from tests.processes import KILN, reap


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(data=tmp_path / "served", port=0) as running:
        yield running


def test_fact_commands_through_a_server(server: Server, tmp_path: Path) -> None:
    unused = tmp_path / "not-used"
    url = ("--url", server.url)
    put = kiln(unused, *url, "put", "tasks", "t1", '{"title": "Hello"}')
    assert put.exit_code == 0, put.stderr
    assert json_lines(put.stdout)[0]["position"] == 1
    kiln(unused, *url, "put", "tasks", "t1", '{"title": "Hi"}', "--expected-seq", "1")
    got = json_lines(kiln(unused, *url, "get", "tasks", "t1").stdout)
    assert got[0]["value"] == {"title": "Hi"}
    assert [f["seq"] for f in json_lines(kiln(unused, *url, "history", "tasks", "t1").stdout)] == [
        1,
        2,
    ]
    assert len(json_lines(kiln(unused, *url, "replay", "--after", "1").stdout)) == 1
    assert kiln(unused, *url, "delete", "tasks", "t1").exit_code == 0
    stores = json_lines(kiln(unused, *url, "stores", "--json").stdout)
    assert stores[0]["store"] == "tasks"
    assert not unused.exists()  # nothing was opened locally
    with kilndb.connect(server.url) as db:
        assert db.stats()["last_position"] == 3


def test_status_shows_the_server(server: Server, tmp_path: Path) -> None:
    result = kiln(tmp_path, "--url", server.url, "status", "--json")
    assert result.exit_code == 0, result.stderr
    (status,) = json_lines(result.stdout)
    assert status["status"] == "ready" and server.url in status["addresses"]


def test_errors_through_a_server_are_one_line(server: Server, tmp_path: Path) -> None:
    kiln(tmp_path, "--url", server.url, "put", "tasks", "t1", "1")
    conflict = kiln(tmp_path, "--url", server.url, "put", "tasks", "t1", "2", "--expected-seq", "0")
    assert_one_error_line(conflict, 1, "conflict")
    gone = kiln(tmp_path, "--url", "tcp://127.0.0.1:9", "get", "tasks", "t1")
    assert_one_error_line(gone, 3, "cannot connect")
    assert_one_error_line(kiln(tmp_path, "status"), 1, "--url")


@pytest.mark.integration
def test_tail_follows_other_clients_writes(server: Server) -> None:
    process = subprocess.Popen(
        [str(KILN), "--url", server.url, "tail", "--after", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with kilndb.connect(server.url) as db:
            for i in range(3):
                db.store("tasks").write(f"t{i}", i)
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        assert [json_lines(line)[0]["key"] for line in lines] == ["t0", "t1", "t2"]
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        reap(process)

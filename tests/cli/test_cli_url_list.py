"""``kiln --url`` with several servers: the first that will do, writes to the leader."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

import kilndb
from kilndb.server import Server
from tests.cli.runner import assert_one_error_line, json_lines, kiln
from tests.replication.test_follower import _follower, _free_port

DOCS = Path(__file__).parents[2] / "docs" / "cli.md"


@pytest.fixture
def leader(tmp_path: Path) -> Iterator[Server]:
    with Server(data=tmp_path / "leader", port=0) as running:
        running.databases.get("default")
        yield running


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _documented_commands() -> list[str]:
    text = DOCS.read_text()
    section = text[text.index("### Several servers") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return block.group(1).strip().splitlines()


def _run(line: str, data: Path) -> tuple[str, list[object]]:
    """Run one documented shell line (``[NAME=VALUE ...] kiln ARGS``) in-process."""
    words = shlex.split(line)
    env = {}
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    assert words.pop(0) == "kiln", line
    result = kiln(data, *words, **env)
    assert result.exit_code == 0, (line, result.stderr)
    return line, json_lines(result.stdout)


def test_the_documented_commands_run_with_the_first_server_down(
    leader: Server, tmp_path: Path
) -> None:
    commands = _documented_commands()
    assert len(commands) == 3
    dead, live = str(_free_port()), str(_port(leader))
    ran = [
        _run(line.replace("7400", dead).replace("7401", live), tmp_path / "unused")
        for line in commands
    ]
    (put,), (got,), (status,) = (output for _, output in ran)
    assert isinstance(put, dict) and isinstance(got, dict) and isinstance(status, dict)
    assert (put["id"], put["value"]) == ("cmd-1", "hello")
    assert got == put
    assert any(address.endswith(f":{live}") for address in status["addresses"])
    assert not (tmp_path / "unused").exists()


def test_a_list_of_a_dead_port_and_a_follower_writes_to_the_leader(
    leader: Server, tmp_path: Path
) -> None:
    follower = _follower(tmp_path, leader)
    try:
        url = f"tcp://127.0.0.1:{_free_port()},{follower.url}"
        put = kiln(tmp_path, "--url", url, "put", "tasks", "t1", "1", "--id", "w-1")
        assert put.exit_code == 0, put.stderr
        with kilndb.connect(leader.url) as db:
            fact = db.store("tasks").read("t1")
            assert fact is not None and fact.id == "w-1"
        # Commands about one server take the first that answers: the follower.
        status = kiln(tmp_path, "--url", url, "status", "--json")
        assert status.exit_code == 0, status.stderr
        (shown,) = json_lines(status.stdout)
        assert f"127.0.0.1:{_port(follower)}" in " ".join(shown["addresses"])
    finally:
        follower.stop()


def test_every_server_down_is_one_error_line_naming_them(tmp_path: Path) -> None:
    first, second = _free_port(), _free_port()
    url = f"tcp://127.0.0.1:{first},127.0.0.1:{second}"
    for command in (("get", "tasks", "t1"), ("status",)):
        result = kiln(tmp_path, "--url", url, *command)
        line = assert_one_error_line(result, 3, "cannot connect to any of the servers")
        assert f":{first}" in line and f":{second}" in line


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("tcp://127.0.0.1:1,,127.0.0.1:2", "server 2 of 'tcp://127.0.0.1:1,,127.0.0.1:2': empty"),
        ("tcp://127.0.0.1:1,127.0.0.1:x", "port 'x' is not a number from 1 to 65535"),
        ("tcp://127.0.0.1:1,tls://127.0.0.1:2", "a list uses one scheme (tcp://), not tls://"),
        ("tcp://127.0.0.1:1,:2", "':2' has no host"),
    ],
)
def test_a_bad_list_is_one_error_line(tmp_path: Path, url: str, says: str) -> None:
    assert_one_error_line(kiln(tmp_path, "--url", url, "get", "tasks", "t1"), 2, says)
    assert_one_error_line(kiln(tmp_path, "get", "tasks", "t1", KILN_URL=url), 2, says)

"""``kiln`` as a good Unix tool: exit codes, pipes, output forms, URLs, config, start-up."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import kilndb
from kilndb.cli import errors
from kilndb.cli.main import COMMANDS, cli, load_command
from kilndb.errors import error_classes
from kilndb.server import Server
from kilndb.server.socket_streams import peer_address
from tests.cli.runner import assert_one_error_line, json_lines, kiln
from tests.processes import KILN, reap

TIMEOUT = 60
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("KILN_")}, **extra}


def _wait(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(data=tmp_path / "served", port=0) as running:
        yield running


# -- exit codes ----------------------------------------------------------------------


def test_every_error_code_has_an_exit_status() -> None:
    codes = {cls.error_code for cls in error_classes()}
    assert codes <= set(errors.EXIT_CODES), codes - set(errors.EXIT_CODES)
    assert set(errors.EXIT_CODES.values()) == {errors.EXIT_FAILED, errors.EXIT_UNAVAILABLE}


def test_not_found_and_conflict_exit_1_usage_2_cannot_connect_3(tmp_path: Path) -> None:
    kiln(tmp_path, "put", "tasks", "t1", "1")
    assert_one_error_line(kiln(tmp_path, "get", "tasks", "nope"), 1, "has no value")
    conflict = kiln(tmp_path, "put", "tasks", "t1", "2", "--expected-seq", "0")
    assert_one_error_line(conflict, 1, "conflict")
    assert_one_error_line(kiln(tmp_path, "get", "tasks"), 2, "Missing argument")
    assert_one_error_line(kiln(tmp_path, "--url", "h:x", "get", "tasks", "t1"), 2, "--url: bad")
    refused = kiln(tmp_path, "--url", "127.0.0.1:9", "get", "tasks", "t1")
    assert_one_error_line(refused, 3, "cannot connect to tcp://127.0.0.1:9")
    with kilndb.open(tmp_path):
        assert_one_error_line(kiln(tmp_path, "get", "tasks", "t1"), 3, "already open")


def test_a_held_lease_exits_1_and_says_until_when_in_iso_8601(tmp_path: Path) -> None:
    taken = kiln(tmp_path, "lease", "acquire", "job", "--holder", "ann", "--ttl", "60")
    assert taken.exit_code == 0, taken.stderr
    held = kiln(tmp_path, "lease", "acquire", "job", "--holder", "bob")
    line = assert_one_error_line(held, 1, "lease 'job' is held by 'ann' until ")
    assert ISO.search(line), line


def test_iso_time_is_utc_with_milliseconds() -> None:
    assert errors.iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert errors.iso_time(1796411451.1234) == "2026-12-04T19:10:51.123Z"


# -- pipes ---------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("command", ["replay", "keys s"])
def test_a_closed_pipe_ends_the_command_quietly_with_status_0(tmp_path: Path, command: str) -> None:
    with kilndb.open(tmp_path, sync="none") as db:
        db.write_many([kilndb.Write("s", f"key-{n:06d}-{'k' * 40}", n) for n in range(6000)])
    pipeline = f"set -o pipefail; '{KILN}' --data '{tmp_path}' {command} | head -1"
    result = subprocess.run(
        ["bash", "-c", pipeline],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 1


# -- output --------------------------------------------------------------------------


def test_listings_are_json_lines_when_piped_and_tables_on_request(tmp_path: Path) -> None:
    kiln(tmp_path, "put", "tasks", "t1", '{"title": "Hello"}')
    kiln(tmp_path, "put", "tasks", "t1", '{"title": "Hi"}')
    kiln(tmp_path, "lease", "acquire", "job", "--holder", "ann", "--ttl", "60")
    kiln(tmp_path, "stream", "produce", "orders", "o-1", '"placed"')
    piped = {
        "history": kiln(tmp_path, "history", "tasks", "t1"),
        "replay": kiln(tmp_path, "replay", "--store", "tasks"),
        "keys": kiln(tmp_path, "keys", "tasks"),
        "stores": kiln(tmp_path, "stores"),
        "lease list": kiln(tmp_path, "lease", "list"),
        "db list": kiln(tmp_path, "db", "list"),
        "stream consume": kiln(tmp_path, "stream", "consume", "orders", "o-1"),
        "stream status": kiln(tmp_path, "stream", "status", "orders"),
    }
    for name, result in piped.items():
        assert result.exit_code == 0, (name, result.stderr)
        assert json_lines(result.stdout), name  # every line is one JSON document
    assert [f["seq"] for f in json_lines(piped["history"].stdout)] == [1, 2]
    assert json_lines(piped["keys"].stdout) == ["t1"]
    assert json_lines(piped["db list"].stdout) == [{"database": "default", "state": "on disk"}]
    assert isinstance(json_lines(piped["replay"].stdout)[0]["transaction_time"], float)
    tables = {
        "history": kiln(tmp_path, "history", "tasks", "t1", "--table"),
        "replay": kiln(tmp_path, "replay", "--table"),
        "lease list": kiln(tmp_path, "lease", "list", "--table"),
        "stream consume": kiln(tmp_path, "stream", "consume", "orders", "o-1", "--table"),
    }
    for name, result in tables.items():
        assert result.exit_code == 0, (name, result.stderr)
        assert ISO.search(result.stdout), (name, result.stdout)
        assert not result.stdout.lstrip().startswith("{"), name
    assert '{"title":"Hi"}' in tables["history"].stdout
    assert "ann" in tables["lease list"].stdout
    json_anyway = kiln(tmp_path, "history", "tasks", "t1", "--json")
    assert [f["seq"] for f in json_lines(json_anyway.stdout)] == [1, 2]


def test_peers_are_host_port() -> None:
    assert peer_address(("127.0.0.1", 57230)) == "127.0.0.1:57230"
    assert peer_address(("::1", 7400, 0, 0)) == "[::1]:7400"
    assert peer_address("/run/kiln.sock") == "/run/kiln.sock"
    assert peer_address("") == "unix"


def test_a_leader_shows_its_follower_as_host_port(tmp_path: Path) -> None:
    with Server(data=tmp_path / "leader", port=0) as leader:
        follower = Server(
            data=tmp_path / "follower",
            port=0,
            replica_of=leader.url.removeprefix("tcp://"),
            replicate=("default",),
            replication_backoff=(0.05, 0.3),
        ).start()
        try:
            _wait(lambda: bool(leader.status()["replication"]["followers"]))
            result = kiln(tmp_path, "--url", leader.url, "status", "--json")
            assert result.exit_code == 0, result.stderr
            (status,) = json_lines(result.stdout)
            (shown,) = status["replication"]["followers"]
            assert re.fullmatch(r"127\.0\.0\.1:\d+", shown["peer"]), shown
        finally:
            follower.stop()


def _read_serve_banner(process: subprocess.Popen[str]) -> str:
    """What ``kiln serve`` printed up to its "… stops it." line, checking that it names
    the demo to run against it."""
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or "stops it" not in lines[-1]:
        lines.append(process.stdout.readline())
        assert lines[-1], lines
    text = "".join(lines)
    served = re.search(r"listening on (tcp://\S+)", text)
    assert served is not None, text
    assert f"--url {served.group(1)} demo" in text
    return text


@pytest.mark.integration
def test_warnings_are_printed_once_and_serve_says_how_to_run_the_demo(tmp_path: Path) -> None:
    data = tmp_path / "data"
    kiln(data, "put", "tasks", "t1", "1")
    with (data / "default" / "00000002.log").open("ab") as log:
        log.write(b"\x00\x00\x01\x00torn")  # a torn tail: cut, with a warning, on open
    process = subprocess.Popen(
        [str(KILN), "--data", str(data), "serve", "--port", "0", "--http-port", "-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_env(),
    )
    try:
        _read_serve_banner(process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        reap(process)
    assert stderr.count("torn tail cut") == 1, stderr
    # And a command that is not a server: one warning line too.
    with (data / "default" / "00000003.log").open("ab") as log:
        log.write(b"\x00\x00\x01\x00torn")
    result = kiln(data, "stats")
    assert result.stderr.count("torn tail cut") == 1, result.stderr


# -- --url ---------------------------------------------------------------------------


def test_url_takes_host_port_and_a_list_without_a_scheme(server: Server, tmp_path: Path) -> None:
    address = server.url.removeprefix("tcp://")
    put = kiln(tmp_path, "--url", address, "put", "tasks", "t1", "1")
    assert put.exit_code == 0, put.stderr
    listed = kiln(tmp_path, "get", "tasks", "t1", KILN_URL=f"127.0.0.1:9,{address}")
    assert listed.exit_code == 0, listed.stderr
    assert json_lines(listed.stdout)[0]["value"] == 1


def test_url_takes_a_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "kiln.sock"
    with Server(data=tmp_path / "served", port=0, unix=socket_path):
        put = kiln(tmp_path, "--url", f"unix://{socket_path}", "put", "tasks", "t1", "7")
        assert put.exit_code == 0, put.stderr
        assert json_lines(put.stdout)[0]["value"] == 7


@pytest.mark.parametrize("url", ["http://127.0.0.1:7300", "https://h:443", "ws://h:1"])
def test_an_http_url_is_refused_naming_the_schemes(tmp_path: Path, url: str) -> None:
    line = assert_one_error_line(kiln(tmp_path, "--url", url, "get", "tasks", "t1"), 2, url)
    assert "tcp://, tls://, unix://" in line


def test_check_refuses_url_instead_of_checking_a_local_directory(tmp_path: Path) -> None:
    kiln(tmp_path, "put", "tasks", "t1", "1")
    result = kiln(tmp_path, "--url", "127.0.0.1:7400", "check")
    line = assert_one_error_line(result, 2, "cannot check through --url")
    assert "--data" in line


# -- the config file -----------------------------------------------------------------


def test_an_unknown_config_key_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "kiln.toml"
    config.write_text("max_conections = 8\n")
    result = kiln(tmp_path / "data", "serve", "--config", str(config))
    line = assert_one_error_line(result, 2, f"unknown key 'max_conections' in {config}")
    assert "did you mean 'max_connections'?" in line
    from_env = kiln(tmp_path / "data", "serve", KILN_CONFIG=str(config))
    assert_one_error_line(from_env, 2, "unknown key 'max_conections'")
    config.write_text("completely_different = 1\n")
    result = kiln(tmp_path / "data", "serve", "--config", str(config))
    assert "did you mean" not in assert_one_error_line(result, 2, "unknown key")
    assert not (tmp_path / "data").exists()  # refused before anything started


# -- leases --------------------------------------------------------------------------


def _expires_in(result_stdout: str) -> float:
    return float(json_lines(result_stdout)[0]["expires_at"]) - time.time()


def test_lease_renew_keeps_the_lease_ttl_unless_told(tmp_path: Path) -> None:
    taken = kiln(tmp_path, "lease", "acquire", "job", "--holder", "ann", "--ttl", "600")
    token = str(json_lines(taken.stdout)[0]["token"])
    held = ("job", "--holder", "ann", "--token", token)
    renewed = kiln(tmp_path, "lease", "renew", *held)  # a new process: the TTL was stored
    assert renewed.exit_code == 0, renewed.stderr
    assert 590 < _expires_in(renewed.stdout) <= 600
    shorter = kiln(tmp_path, "lease", "renew", *held, "--ttl", "5")
    assert 0 < _expires_in(shorter.stdout) <= 5
    again = kiln(tmp_path, "lease", "renew", *held)  # now 5 s is its TTL
    assert 0 < _expires_in(again.stdout) <= 5


def test_lease_renew_keeps_the_ttl_through_a_server(server: Server, tmp_path: Path) -> None:
    url = ("--url", server.url)
    taken = kiln(tmp_path, *url, "lease", "acquire", "job", "--holder", "ann", "--ttl", "300")
    token = str(json_lines(taken.stdout)[0]["token"])
    renewed = kiln(tmp_path, *url, "lease", "renew", "job", "--holder", "ann", "--token", token)
    assert renewed.exit_code == 0, renewed.stderr
    assert 290 < _expires_in(renewed.stdout) <= 300


# -- start-up ------------------------------------------------------------------------


def test_help_lists_every_command_without_importing_the_heavy_parts() -> None:
    probe = (
        "import sys\n"
        "from kilndb.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('kilndb.server', 'kilndb.engine', 'kilndb.client', 'aiohttp', 'rich')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or\n"
        "             any(m.startswith(h + '.') or m == h for h in heavy)), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert result.stderr.strip() == "[]"
    for name in COMMANDS:
        assert re.search(rf"^  {name}\s", result.stdout, re.MULTILINE), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_command_table_holds_each_command_and_its_own_short_help(name: str) -> None:
    target, short_help = COMMANDS[name]
    command = load_command(target)
    assert command.get_short_help_str(1000) == short_help
    assert cli.get_command(None, name) is command  # type: ignore[arg-type]


# -- the demo beside a server --------------------------------------------------------


def test_the_demo_on_a_served_directory_says_how_to_reach_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Server(data=data, port=0) as running:
        result = kiln(data, "demo")
        line = assert_one_error_line(result, 3, f"a kiln server (pid {os.getpid()}) holds")
        assert "--url tcp://127.0.0.1:7400 demo" in line and "make demo" in line
        remote = kiln(data, "--url", running.url, "demo")
        assert remote.exit_code == 0, remote.stderr
        assert f"on {running.url}" in remote.stdout and "Done." in remote.stdout
        assert f"--url {running.url} get demo_tasks" in remote.stdout


def _make(target: str, *variables: str) -> list[str]:
    """``make TARGET`` with this test run's virtual environment, installed already."""
    venv = Path(sys.executable).parent.parent
    return [
        "make",
        "--no-print-directory",
        "-o",
        f"{venv}/.installed",
        target,
        f"VENV={venv}",
        *variables,
    ]


@pytest.mark.integration
def test_make_demo_runs_against_the_server_of_make_run(server: Server, tmp_path: Path) -> None:
    result = subprocess.run(
        _make("demo", f"URL={server.url}", f"DATA={tmp_path / 'unused'}"),
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"against the server at {server.url}" in result.stdout
    assert "Done." in result.stdout
    assert not (tmp_path / "unused").exists()


# -- progress ------------------------------------------------------------------------


def test_replicate_wait_returns_once_the_follower_caught_up(tmp_path: Path) -> None:
    with (
        Server(data=tmp_path / "leader", port=0) as leader,
        Server(data=tmp_path / "other", port=0) as other,
    ):
        with kilndb.connect(leader.url, "orders") as db:
            db.write_many([kilndb.Write("s", f"k{n}", n) for n in range(500)])
        args = ["--url", other.url, "replicate", "--from", leader.url.removeprefix("tcp://")]
        result = kiln(tmp_path, *args, "--database", "orders", "--wait")
        assert result.exit_code == 0, result.stderr
        assert json_lines(result.stdout)  # the server's answer, once caught up
        (following,) = other.status()["replication"]["following"]
        assert (following["database"], following["position"]) == ("orders", 500)
        assert following["state"] == "streaming"
        # "default" exists on both sides as two different databases: it cannot follow.
        refused = kiln(tmp_path, *args, "--wait")
        assert refused.exit_code == 3
        assert refused.stderr.splitlines()[-1].startswith("error: default stopped following")


def test_replicate_wait_gives_up_with_exit_3(tmp_path: Path) -> None:
    with Server(data=tmp_path / "other", port=0) as other:
        result = kiln(
            tmp_path,
            "--url",
            other.url,
            "replicate",
            "--from",
            "127.0.0.1:9",
            "--wait",
            "--timeout",
            "0.5",
        )
        assert result.exit_code == 3
        # (the in-process server's own warnings show on the same stderr here)
        assert result.stderr.splitlines()[-1].startswith("error: not caught up within 0.5 s")


def _with_terminal_stderr(
    args: list[str], sink: Path, until: Callable[[], bool] | None = None
) -> tuple[int, bytes]:
    """Run ``kiln ARGS`` with stdout to ``sink`` and stderr on a pseudo-terminal; with
    ``until``, stop it with SIGTERM once that holds. Its status and what it drew."""
    leader_fd, follower_fd = pty.openpty()
    drawn = b""
    try:
        with sink.open("wb") as out:
            process = subprocess.Popen(
                [str(KILN), *args], stdout=out, stderr=follower_fd, env=_clean_env()
            )
        os.close(follower_fd)
        if until is not None:
            _wait(until)
            process.send_signal(signal.SIGTERM)
        status = process.wait(TIMEOUT)
        while select.select([leader_fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(leader_fd, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader_fd)
    return status, drawn


@pytest.mark.integration
def test_progress_shows_on_a_terminal_stderr_only(tmp_path: Path) -> None:
    with kilndb.open(tmp_path, sync="none") as db:
        db.write_many([kilndb.Write("s", f"k{n}", n) for n in range(2000)])
    out = tmp_path / "facts.jsonl"
    status, drawn = _with_terminal_stderr(["--data", str(tmp_path), "replay"], out)
    assert status == 0
    assert b"replaying" in drawn
    piped = kiln(tmp_path, "replay")
    assert out.read_text() == piped.stdout  # the facts alone, as without a terminal
    assert piped.stderr == ""
    assert json.loads(out.read_text().splitlines()[-1])["position"] == 2000
    followed = tmp_path / "followed.jsonl"

    def caught_up() -> bool:
        return followed.read_text().count("\n") >= 2000

    status, drawn = _with_terminal_stderr(
        ["--data", str(tmp_path), "tail", "--after", "0"], followed, until=caught_up
    )
    assert status == 0
    assert b"catching up" in drawn
    assert followed.read_text() == out.read_text()
    compacted = tmp_path / "compact.out"
    status, drawn = _with_terminal_stderr(["--data", str(tmp_path), "compact"], compacted)
    assert status == 0 and b"compacting" in drawn
    (done,) = json_lines(compacted.read_text())  # stdout holds the report alone
    assert "files_compacted" in done
    checked = tmp_path / "check.out"
    status, drawn = _with_terminal_stderr(["--data", str(tmp_path), "check"], checked)
    assert status == 0 and b"checking" in drawn
    assert checked.read_text() == kiln(tmp_path, "check").stdout


# -- what the docs show --------------------------------------------------------------


def _doc_block(path: Path, heading: str) -> str:
    """The first ``sh`` block after ``heading`` in ``path``."""
    text = path.read_text()
    after = text[text.index(heading) :]
    return after[after.index("```sh\n") + 6 : after.index("\n```", after.index("```sh\n"))]


@pytest.mark.integration
def test_the_exit_codes_example_of_the_docs(tmp_path: Path) -> None:
    block = _doc_block(Path(__file__).parents[2] / "docs" / "cli.md", "## Exit codes")
    result = subprocess.run(
        ["bash", "-c", block],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_clean_env(PATH=f"{KILN.parent}:{os.environ['PATH']}"),
        timeout=TIMEOUT,
        check=False,
    )
    assert result.stdout.splitlines() == ["exit 1", "exit 2", "exit 3"], result.stderr
    assert [line.split(":")[0] for line in result.stderr.splitlines()] == ["error"] * 3


def test_the_embedded_database_raises_the_lease_errors(tmp_path: Path) -> None:
    with kilndb.open(tmp_path) as db:
        held = db.acquire_lease("job", "ann", 60)
        with pytest.raises(kilndb.LeaseHeldError) as taken:
            db.acquire_lease("job", "bob", 60)
        assert taken.value.holder == "ann"
        assert db.release_lease(held)
        with pytest.raises(kilndb.LeaseLostError):
            db.renew_lease(held)
        db.acquire_lease("job", "bob", 60)  # a newer token fences ann's writes
        with pytest.raises(kilndb.LeaseLostError):
            db.store("tasks").write("t1", 1, fence=held)


@pytest.mark.integration
def test_make_run_prints_how_to_run_the_demo_against_it(tmp_path: Path) -> None:
    process = subprocess.Popen(
        _make("run", f"DATA={tmp_path / 'data'}", "PORT=0"),
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_clean_env(),
        start_new_session=True,  # make and its kiln serve: one group to stop
    )
    try:
        assert "make demo" in _read_serve_banner(process)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(TIMEOUT)
        reap(process)

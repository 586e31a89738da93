"""``kiln serve`` as a real process: reachable, writes land, SIGTERM and SIGQUIT stop it
cleanly, its pid file and its alert thresholds."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

import kilndb
from kilndb.codec import FrameDecoder, encode_frame
from tests.cli.runner import assert_one_error_line, kiln
from tests.processes import reap, start_server, stop


@pytest.mark.integration
def test_serve_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "kiln.pid"
    config = tmp_path / "kiln.toml"
    config.write_text('max_connections = 8\nlog_level = "warning"\n')
    process, url = start_server(
        tmp_path / "data", "--http-port", "0", "--pid-file", str(pid_file), "--config", str(config)
    )
    try:
        assert pid_file.read_text().strip() == str(process.pid)
        with kilndb.connect(url) as db:
            fact = db.store("tasks").write("t1", {"title": "Hello"})
            assert fact.position == 1
            status = db._call("server_status")
        http_url = next(a for a in status["addresses"] if a.startswith("http://"))
        with urllib.request.urlopen(http_url + "/v1/ready", timeout=10) as response:
            assert response.status == 200
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(30) == 0
        assert not pid_file.exists()
    finally:
        reap(process)
    with kilndb.open(tmp_path / "data") as db:
        latest = db.store("tasks").read("t1")
        assert latest is not None and latest.value == {"title": "Hello"}


@pytest.mark.integration
def test_sigterm_drains_in_flight_writes_and_refuses_new_connections(tmp_path: Path) -> None:
    pid_file = tmp_path / "kiln.pid"
    process, url = start_server(
        tmp_path / "data", "--http-port", "-1", "--pid-file", str(pid_file), "--drain-timeout", "20"
    )
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    total = 20_000
    try:
        client = socket.create_connection((host, int(port)), timeout=30)
        frames = b"".join(
            encode_frame(
                orjson.dumps(
                    {"op": "write", "store": "s", "key": f"k{i % 50}", "value": i, "request_id": i}
                )
            )
            for i in range(total)
        )
        sender = threading.Thread(target=client.sendall, args=(frames,), daemon=True)
        sender.start()
        decoder = FrameDecoder()
        acknowledged: list[int] = []

        def read_until(count: int) -> bool:
            while len(acknowledged) < count:
                while (body := decoder.next_frame()) is not None:
                    reply = orjson.loads(body)
                    assert reply["ok"], reply
                    acknowledged.append(reply["request_id"])
                if len(acknowledged) >= count:
                    break
                data = client.recv(1 << 20)
                if not data:
                    return False
                decoder.feed(data)
            return True

        assert read_until(100)  # writes are in flight
        os.kill(process.pid, signal.SIGTERM)
        refused = False
        deadline = time.monotonic() + 10
        while not refused and time.monotonic() < deadline:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                time.sleep(0.01)
            except OSError:
                refused = True
        assert refused, "new connections were still accepted while draining"
        read_until(total)  # the server answers what it took in, then closes
        client.close()
        assert process.wait(60) == 0
        assert not pid_file.exists()
    finally:
        reap(process)
    assert acknowledged == list(range(len(acknowledged)))  # in order, none skipped
    assert len(acknowledged) > 100
    with kilndb.open(tmp_path / "data") as db:
        stored = [f.value for f in db.replay()]
    assert stored[: len(acknowledged)] == acknowledged  # every acknowledged write is there


@pytest.mark.integration
def test_sigquit_stops_serve_gracefully_and_acknowledged_writes_survive(tmp_path: Path) -> None:
    pid_file = tmp_path / "kiln.pid"
    process, url = start_server(tmp_path / "data", "--http-port", "-1", "--pid-file", str(pid_file))
    try:
        assert pid_file.read_text().strip() == str(process.pid)
        with kilndb.connect(url) as db:
            acknowledged = db.store("tasks").write("t1", {"title": "kept"})
        os.kill(process.pid, signal.SIGQUIT)  # a graceful stop, as SIGTERM and SIGINT
        assert process.wait(30) == 0
        assert process.stdout is not None and "kiln serve: stopped" in process.stdout.read()
        assert not pid_file.exists()
    finally:
        reap(process)
    # Restarted on the same data directory and pid file: the write is there.
    process, url = start_server(tmp_path / "data", "--http-port", "-1", "--pid-file", str(pid_file))
    try:
        with kilndb.connect(url) as db:
            fact = db.store("tasks").read("t1")
            assert fact is not None and fact.id == acknowledged.id
        os.kill(process.pid, signal.SIGQUIT)
        assert process.wait(30) == 0
    finally:
        reap(process)


@pytest.mark.integration
def test_a_pid_file_left_by_a_killed_server_does_not_block_a_restart(tmp_path: Path) -> None:
    pid_file = tmp_path / "kiln.pid"
    process, _ = start_server(tmp_path / "data", "--http-port", "-1", "--pid-file", str(pid_file))
    os.kill(process.pid, signal.SIGKILL)
    reap(process)
    assert pid_file.read_text().strip() == str(process.pid)  # stale: its process is gone
    process, url = start_server(tmp_path / "data", "--http-port", "-1", "--pid-file", str(pid_file))
    try:
        assert pid_file.read_text().strip() == str(process.pid)
        with kilndb.connect(url) as db:
            assert db.store("tasks").write("t1", 1).position == 1
    finally:
        stop(process)
    assert not pid_file.exists()


def test_serve_refuses_a_pid_file_naming_another_running_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "kiln.pid"
    pid_file.write_text(f"{os.getppid()}\n")
    result = kiln(tmp_path / "data", "serve", "--port", "0", "--pid-file", str(pid_file))
    assert_one_error_line(result, 1, f"names process {os.getppid()}, which is running")
    assert pid_file.read_text() == f"{os.getppid()}\n"


@pytest.mark.integration
def test_serve_metrics_threshold_sets_the_alerts(tmp_path: Path) -> None:
    process, url = start_server(
        tmp_path / "data",
        "--http-port",
        "-1",
        "--metrics-threshold",
        "active_connections=0",
        "--metrics-threshold",
        "error_rate=0.5",
    )
    try:
        with kilndb.connect(url) as db:
            status = db._call("server_status")
        (alert,) = status["alerts"]
        assert alert["type"] == "threshold" and alert["metric"] == "active_connections"
        assert alert["value"] >= 1 and alert["threshold"] == 0
        shown = kiln(tmp_path / "data", "--url", url, "status", "--table")
        assert shown.exit_code == 0, shown.stderr
        assert "threshold active_connections 1 > 0" in shown.stdout
    finally:
        stop(process)


@pytest.mark.parametrize(
    ("given", "says"),
    [("nope=1", "nope=1"), ("error_rate", "NAME=VALUE"), ("error_rate=x", "a number")],
)
def test_serve_refuses_a_bad_metrics_threshold(tmp_path: Path, given: str, says: str) -> None:
    result = kiln(tmp_path / "data", "serve", "--port", "0", "--metrics-threshold", given)
    assert result.exit_code == 2 and says in result.stderr, result.stderr

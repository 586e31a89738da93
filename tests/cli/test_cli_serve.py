"""``kiln serve`` as a real process: reachable, writes land, SIGTERM stops it cleanly."""

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
from tests.processes import reap, start_server


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

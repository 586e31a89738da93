"""Replication between real ``kiln serve`` processes: a follower SIGKILLed and restarted
under writes converges to exactly the leader's log."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import kilndb
from tests.processes import reap, start_server
from tests.replication.test_follower import _digest, _eventually


@pytest.mark.integration
def test_a_killed_follower_process_converges(tmp_path: Path) -> None:
    leader, leader_url = start_server(tmp_path / "leader", "--http-port", "-1")
    address = leader_url.removeprefix("tcp://")
    follower_args = ("--http-port", "0", "--replica-of", address, "--log-level", "warning")
    follower, follower_url = start_server(tmp_path / "follower", *follower_args)
    stop = threading.Event()
    written = [0]

    def write() -> None:
        with kilndb.connect(leader_url) as db:
            while not stop.is_set():
                db.store("s").write(f"k{written[0] % 17}", written[0])
                written[0] += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(3):
            time.sleep(0.5)
            os.kill(follower.pid, signal.SIGKILL)
            follower.wait(10)
            reap(follower)
            follower, follower_url = start_server(tmp_path / "follower", *follower_args)
        stop.set()
        writer.join(30)
        assert written[0] > 100
        _eventually(lambda: _digest(follower_url) == _digest(leader_url), timeout=60)
        with kilndb.connect(follower_url) as db:
            status = db._call("server_status")
        http = next(a for a in status["addresses"] if a.startswith("http"))
        with urllib.request.urlopen(http + "/v1/replication", timeout=10) as reply:
            replication = json.loads(reply.read())
        assert replication["role"] == "follower"
        assert replication["following"][0]["state"] == "streaming"
    finally:
        stop.set()
        writer.join(30)
        for process in (follower, leader):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
            reap(process)

"""``kiln serve`` as a real process: reachable, writes land, SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import kilndb

KILN = Path(sys.executable).with_name("kiln")


@pytest.mark.integration
def test_serve_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "kiln.pid"
    config = tmp_path / "kiln.toml"
    config.write_text('max_connections = 8\nlog_level = "warning"\n')
    process = subprocess.Popen(
        [
            str(KILN),
            "--data",
            str(tmp_path / "data"),
            "serve",
            "--port",
            "0",
            "--http-port",
            "0",
            "--pid-file",
            str(pid_file),
            "--config",
            str(config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            found = re.search(r"tcp://[0-9.]+:\d+", line)
            url = found.group(0) if found else None
        assert url, "kiln serve printed no address"
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
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    with kilndb.open(tmp_path / "data") as db:
        latest = db.store("tasks").read("t1")
        assert latest is not None and latest.value == {"title": "Hello"}

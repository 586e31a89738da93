"""One data directory, one server: a second ``kiln serve`` on it exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import kilndb
from kilndb.errors import DatabaseLockedError, InvalidArgumentError
from kilndb.server import Server
from kilndb.storage.lockfile import SERVER_LOCK
from tests.processes import KILN, reap, start_server


def test_a_second_server_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Server(data=data, port=0) as first:
        second = Server(data=data, port=0)
        with pytest.raises(DatabaseLockedError, match="already served by this process"):
            second.start()
        second.stop()  # nothing started: nothing to stop
        with kilndb.connect(first.url) as db:  # the first one is untouched
            assert db.store("s").write("k", 1).position == 1
    with (
        Server(data=data, port=0) as again,  # released when it stopped
        kilndb.connect(again.url) as db,
    ):
        assert db.store("s").read("k") is not None


def test_kiln_serve_exits_at_once_naming_the_holders_pid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    holder, _ = start_server(data, "--http-port", "-1")
    try:
        started = time.monotonic()
        second = subprocess.run(
            [str(KILN), "--data", str(data), "serve", "--port", "0", "--http-port", "-1"],
            capture_output=True,
            check=False,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert second.returncode == 3  # database_locked: the data directory is busy
        assert time.monotonic() - started < 10
        assert f"already served by another process (pid {holder.pid})" in second.stderr
    finally:
        reap(holder)


def test_a_killed_servers_lock_does_not_outlive_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    holder, _ = start_server(data, "--http-port", "-1")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    reap(holder)
    assert (data / SERVER_LOCK).read_text().strip() == str(holder.pid)  # stale file
    successor, url = start_server(data, "--http-port", "-1")
    try:
        with kilndb.connect(url) as db:
            assert db.store("s").write("k", 1).position == 1
    finally:
        reap(successor)


def test_the_lock_file_is_no_database(tmp_path: Path) -> None:
    with Server(data=tmp_path, port=0) as server:
        with pytest.raises(InvalidArgumentError, match="lock file"):
            server.databases.get(SERVER_LOCK)
        assert server.databases.on_disk() == ["default"]

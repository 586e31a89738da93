"""``kiln serve --memory`` / ``ServerConfig(memory=True)``: every database in memory.

Databases live in a private directory in RAM for as long as the server runs; nothing is
written under ``data`` and nothing survives a stop. Replication works both ways.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

import kilndb
from kilndb.server import Server
from kilndb.server.nodes import NodeConfig
from kilndb.storage.memory import MEMORY_DIR_ENV
from tests.cli.runner import assert_one_error_line, kiln
from tests.engine import test_memory
from tests.processes import KILN, reap
from tests.server.test_leadership import wait_for

#: Memory databases under the test's own directory (``KILN_MEMORY_DIR``).
ram = test_memory.ram


def _serve_memory(cwd: Path, ram: Path, *options: str) -> tuple[subprocess.Popen[str], str, str]:
    """``kiln serve --memory``, without ``--data``: the process, what it first printed
    and its tcp:// address."""
    process = subprocess.Popen(
        [str(KILN), "serve", "--memory", "--port", "0", "--http-port", "-1", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=cwd,
        env={**os.environ, MEMORY_DIR_ENV: str(ram), "KILN_DATA": str(cwd / "env-data")},
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    address = process.stdout.readline().strip().removeprefix("listening on ")
    if not address.startswith("tcp://"):
        reap(process)
        raise AssertionError(f"kiln serve --memory printed {first!r}, {address!r}")
    return process, first, address


def _leader_address(server: Server) -> str:
    return server.url.removeprefix("tcp://")


@pytest.mark.integration
def test_nothing_survives_a_restart_and_a_killed_servers_leftover_goes(
    tmp_path: Path, ram: Path
) -> None:
    pid_file = tmp_path / "kiln.pid"
    process, first, url = _serve_memory(tmp_path, ram, "--pid-file", str(pid_file))
    try:
        assert "databases in memory" in first and "data will not survive" in first
        (directory,) = ram.iterdir()
        assert str(directory) in first
        assert pid_file.read_text().strip() == str(process.pid)
        lock = directory / "kiln-server.lock"
        assert lock.read_text().strip() == str(process.pid)
        with kilndb.connect(url) as db:
            db.store("tasks").write("t1", {"title": "Hello"})
            assert db.store("tasks").read("t1") is not None
        with kilndb.connect(url, "billing") as billing:
            billing.store("invoices").write("i1", 100)
        assert (directory / "billing" / "META").is_file()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        reap(process)
    assert list(ram.iterdir()) == []
    assert not pid_file.exists()
    # Neither KILN_DATA nor ./data was written to.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ram"]

    process, _, url = _serve_memory(tmp_path, ram)
    try:
        with kilndb.connect(url) as db:
            assert db.store("tasks").read("t1") is None
            assert db.stores() == []
        (leftover,) = ram.iterdir()
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        reap(process)
    assert leftover.is_dir()  # killed: it could not delete its databases
    with kilndb.open(":memory:") as db:  # the next memory open of any process does
        assert list(ram.iterdir()) == [db.data_dir]


def test_memory_with_an_explicit_data_directory_is_refused(tmp_path: Path) -> None:
    result = kiln(tmp_path / "data", "serve", "--memory", "--port", "0")
    assert_one_error_line(result, 1, "--memory keeps the databases in memory")
    assert not (tmp_path / "data").exists()


def test_memory_with_a_coordinator_is_refused(tmp_path: Path, ram: Path) -> None:
    server = Server(
        data=tmp_path / "data",
        memory=True,
        port=0,
        coordinator="etcd://127.0.0.1:2379",
        node_name="n1",
    )
    with pytest.raises(kilndb.InvalidArgumentError, match="memory and a coordinator"):
        server.start()
    assert list(ram.iterdir()) == [] and not (tmp_path / "data").exists()


def test_memory_servers_are_private_and_keep_data_while_they_run(tmp_path: Path, ram: Path) -> None:
    unused = tmp_path / "data"
    one = Server(data=unused, memory=True, port=0, nodes=NodeConfig(idle_evict_after=60))
    two = Server(data=unused, memory=True, port=0)  # the same data: no lock conflict
    with one, two:
        assert one.databases.in_memory and not unused.exists()
        assert one.databases.data_dir != two.databases.data_dir
        assert {one.databases.data_dir.parent, two.databases.data_dir.parent} == {ram}
        with kilndb.connect(one.url) as db, kilndb.connect(two.url) as other:
            db.store("s").write("k", 1)
            assert other.store("s").read("k") is None
        held = one.databases.get("default")
        assert held.config.sync == "none"  # nothing of it outlives the server
        assert not held.in_memory  # the server, not the database, owns the directory
        # Evicted while idle and reopened: still there, as long as the server runs.
        assert one.databases.evict_idle(now=float("inf")) == ["default"]
        with kilndb.connect(one.url) as db:
            fact = db.store("s").read("k")
            assert fact is not None and fact.value == 1
        directories = [one.databases.data_dir, two.databases.data_dir]
    assert not any(d.exists() for d in directories)
    assert list(ram.iterdir()) == []


def test_replication_from_and_into_memory(tmp_path: Path, ram: Path) -> None:
    with Server(memory=True, port=0) as leader:
        with kilndb.connect(leader.url) as db:
            for i in range(20):
                db.store("s").write(f"k{i % 3}", i)
        to_disk = Server(
            data=tmp_path / "follower",
            port=0,
            replica_of=_leader_address(leader),
            replication_backoff=(0.05, 0.3),
        )
        to_memory = Server(
            memory=True,
            port=0,
            replica_of=_leader_address(leader),
            replication_backoff=(0.05, 0.3),
        )
        with to_disk, to_memory:
            with kilndb.connect(leader.url) as db:
                db.store("s").write("live", "after the followers joined")
                expected = [f.to_dict() for f in db.replay()]

            def caught_up(url: str) -> bool:
                try:
                    with kilndb.connect(url) as copy:
                        return [f.to_dict() for f in copy.replay()] == expected
                except kilndb.UnavailableError:
                    return False  # its copy is not made yet

            wait_for(lambda: caught_up(to_disk.url))
            wait_for(lambda: caught_up(to_memory.url))
            assert to_memory.databases.in_memory
        assert (tmp_path / "follower" / "default" / "META").is_file()
    assert list(ram.iterdir()) == []

"""kiln backup and kiln restore: from a data directory and from a running server."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import kilndb
from kilndb.storage.lockfile import ServerLock
from tests.cli.runner import assert_one_error_line, json_lines, kiln
from tests.processes import KILN, reap, start_server, stop


def _fill(data: Path, count: int = 3) -> None:
    with kilndb.open(data) as db:
        for n in range(count):
            db.store("tasks").write(f"t{n}", {"n": n})


def _replay(data: Path, database: str = "default") -> list[dict[str, object]]:
    with kilndb.open(data, database) as db:
        return [f.to_dict() for f in db.replay()]


DOCS = Path(__file__).parents[2] / "docs" / "cli.md"


def _documented_commands() -> list[str]:
    """The shell block of docs/cli.md's ``kiln backup`` section."""
    section = DOCS.read_text().split("### `kiln backup PATH")[1]
    block = section.split("```sh\n")[1].split("```")[0]
    return block.strip().splitlines()


def test_the_shell_block_of_the_docs_runs(tmp_path: Path) -> None:
    _fill(tmp_path / "data")
    for line in _documented_commands():
        words = line.split()
        assert words[0] == "kiln", line
        done = subprocess.run(
            [str(KILN), *words[1:]], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, (line, done.stdout, done.stderr)
    assert _replay(tmp_path / "restored") == _replay(tmp_path / "data")


def test_the_documented_backup_check_and_restore(tmp_path: Path) -> None:
    data, path, other = tmp_path / "data", tmp_path / "backup", tmp_path / "other"
    _fill(data)
    # docs/cli.md, "Backup and restore"
    done = kiln(data, "backup", str(path))
    assert done.exit_code == 0, done.output
    assert "backed up database default at position 3: 3 facts" in done.stdout
    assert done.stderr == ""  # no progress bar when stderr is not a terminal
    assert sorted(p.name for p in path.iterdir()) == ["default", "kiln-backup.json"]
    checked = kiln(path, "check")
    assert checked.exit_code == 0 and "database is sound" in checked.stdout
    restored = kiln(other, "restore", str(path), "--json")
    assert restored.exit_code == 0, restored.output
    [report] = json_lines(restored.stdout)
    assert report["database"] == "default" and report["position"] == 3 and report["facts"] == 3
    assert _replay(other) == _replay(data)
    renamed = kiln(data, "--database", "yesterday", "restore", str(path))
    assert renamed.exit_code == 0, renamed.output
    assert _replay(data, "yesterday") == _replay(data)


def test_backup_json_report_and_every_database(tmp_path: Path) -> None:
    data, path = tmp_path / "data", tmp_path / "backup"
    _fill(data)
    with kilndb.open(data, "orders") as db:
        db.store("orders").write("o1", {"total": 5})
    done = kiln(data, "backup", "--all", "--json", str(path))
    assert done.exit_code == 0, done.output
    reports = json_lines(done.stdout)
    assert [(r["database"], r["position"], r["facts"]) for r in reports] == [
        ("default", 3, 3),
        ("orders", 1, 1),
    ]
    assert {"bytes", "files", "seconds", "mb_per_second", "path"} <= set(reports[0])
    named = kiln(tmp_path / "restored", "restore", str(path))  # --database's: default
    assert named.exit_code == 0 and _replay(tmp_path / "restored") == _replay(data)
    several = kiln(tmp_path / "restored", "--database", "zzz", "restore", str(path))
    assert_one_error_line(several, 2, "--from")
    chosen = kiln(tmp_path / "restored", "restore", "--from", "orders", str(path))
    assert chosen.exit_code == 0, chosen.output
    assert _replay(tmp_path / "restored", "orders") == _replay(data, "orders")


def test_backup_refuses_a_path_that_is_not_empty_unless_forced(tmp_path: Path) -> None:
    data, path = tmp_path / "data", tmp_path / "backup"
    _fill(data)
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    assert_one_error_line(kiln(data, "backup", str(path)), 1, "pass --force")
    assert (path / "notes.txt").read_text() == "keep me"
    forced = kiln(data, "backup", "--force", str(path))
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in path.iterdir()) == ["default", "kiln-backup.json"]
    assert not (tmp_path / "backup.partial").exists()


def test_restore_refuses_an_existing_database_and_force_replaces_it(tmp_path: Path) -> None:
    data, path = tmp_path / "data", tmp_path / "backup"
    _fill(data)
    assert kiln(data, "backup", str(path)).exit_code == 0
    with kilndb.open(data) as db:
        db.store("tasks").write("later", {"n": 99})
    assert_one_error_line(kiln(data, "restore", str(path)), 1, "already exists")
    assert len(_replay(data)) == 4
    forced = kiln(data, "restore", "--force", str(path))
    assert forced.exit_code == 0, forced.output
    assert [f["key"] for f in _replay(data)] == ["t0", "t1", "t2"]
    assert sorted(p.name for p in data.iterdir() if "~" in p.name) == []


def test_restore_refuses_a_damaged_backup_with_the_checks_finding(tmp_path: Path) -> None:
    data, path = tmp_path / "data", tmp_path / "backup"
    _fill(data)
    assert kiln(data, "backup", str(path)).exit_code == 0
    log = path / "default" / "00000001.log"
    damaged = bytearray(log.read_bytes())
    damaged[int.from_bytes(damaged[:4], "big") + 8 + 20] ^= 0xFF
    log.write_bytes(bytes(damaged))
    line = assert_one_error_line(kiln(tmp_path / "new", "restore", str(path)), 1, "check")
    assert "frame in 00000001.log" in line and "nothing was restored" in line
    assert not (tmp_path / "new" / "default").exists()
    assert kiln(path, "check").exit_code == 1  # the same finding, from kiln check


def test_restore_of_something_that_is_not_a_backup(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_error_line(
        kiln(tmp_path / "data", "restore", str(tmp_path / "empty")), 1, "kiln-backup.json"
    )


def test_a_served_data_directory_is_refused_with_advice(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _fill(data)
    lock = ServerLock(data)  # as a running kiln serve holds it
    try:
        assert_one_error_line(kiln(data, "backup", str(tmp_path / "b")), 1, "--url URL backup")
        assert kiln(tmp_path / "d2", "backup", str(tmp_path / "b")).exit_code == 1  # no db
        assert kiln(tmp_path / "ok", "restore", str(tmp_path / "b")).exit_code == 2  # no PATH
        _fill(tmp_path / "src")
        assert kiln(tmp_path / "src", "backup", str(tmp_path / "b")).exit_code == 0
        assert_one_error_line(
            kiln(data, "--database", "copy", "restore", str(tmp_path / "b")), 1, "stop it first"
        )
    finally:
        lock.release()


def test_restore_through_a_server_is_a_usage_error(tmp_path: Path) -> None:
    _fill(tmp_path / "data")
    assert kiln(tmp_path / "data", "backup", str(tmp_path / "b")).exit_code == 0
    result = kiln(tmp_path / "data", "--url", "tcp://127.0.0.1:1", "restore", str(tmp_path / "b"))
    assert_one_error_line(result, 2, "stop the server")


def test_backup_from_a_server_that_cannot_be_reached_exits_3(tmp_path: Path) -> None:
    result = kiln(tmp_path / "data", "--url", "tcp://127.0.0.1:1", "backup", str(tmp_path / "b"))
    assert_one_error_line(result, 3, "cannot connect")
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()


def test_online_backup_of_a_live_server_while_a_writer_runs(tmp_path: Path) -> None:
    process, url = start_server(tmp_path / "served")
    stop_writing, wrote = threading.Event(), threading.Event()
    try:
        with kilndb.connect(url) as client:
            client.store("tasks").write("first", {"n": 0})

            def write() -> None:
                n = 0
                while not stop_writing.is_set():
                    client.write_many(
                        kilndb.Write("tasks", f"k{n % 50}", {"n": n + i}) for i in range(10)
                    )
                    n += 10
                    if n >= 100:
                        wrote.set()

            writer = threading.Thread(target=write)
            writer.start()
            assert wrote.wait(10)
            try:
                # docs/cli.md, "Backup and restore"
                done = kiln(tmp_path, "--url", url, "backup", "--json", str(tmp_path / "b"))
            finally:
                stop_writing.set()
                writer.join()
            assert done.exit_code == 0, done.output
            [report] = json_lines(done.stdout)
            expected = [f.to_dict() for f in client.replay() if f.position <= report["position"]]
            assert client.stats()["last_position"] > report["position"] > 1
        assert kiln(tmp_path / "b", "check").exit_code == 0
        assert _replay(tmp_path / "b") == expected
        assert report["facts"] == len(expected)
        missing = kiln(tmp_path, "--url", url, "--database", "nope", "backup", str(tmp_path / "c"))
        assert_one_error_line(missing, 1, "no database 'nope'")
    finally:
        stop(process)
        reap(process)


def _kill_when(process: subprocess.Popen[str], appears: Path) -> None:
    deadline = time.monotonic() + 20
    while not appears.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)  # a poll with a deadline: the path is what we wait for
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("replace", [False, True])
def test_an_interrupted_backup_or_restore_leaves_nothing_half_done(
    tmp_path: Path, replace: bool
) -> None:
    data, path = tmp_path / "data", tmp_path / "backup"
    with kilndb.open(data, max_file_size=1 << 20) as db:
        for _ in range(20):
            db.write_many(kilndb.Write("tasks", f"k{n}", {"pad": "x" * 200}) for n in range(500))
    partial = tmp_path / "backup.partial"
    killed = subprocess.Popen(
        [str(KILN), "--data", str(data), "backup", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    _kill_when(killed, partial / "default")
    assert not path.exists() or (path / "kiln-backup.json").exists()
    assert kiln(data, "backup", "--force", str(path)).exit_code == 0
    assert not partial.exists()

    target = tmp_path / "restored"
    if replace:
        _fill(target, 1)
    before = _replay(target) if replace else None
    killed = subprocess.Popen(
        [str(KILN), "--data", str(target), "restore", "--force", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    _kill_when(killed, target / "default~restoring")
    # The database is the old one or the whole restored one, never a mix.
    if (target / "default" / "META").exists():
        assert _replay(target) in (before, _replay(data))
    rerun = kiln(target, "restore", "--force", str(path))
    assert rerun.exit_code == 0, rerun.output
    assert _replay(target) == _replay(data)
    assert sorted(p.name for p in target.iterdir() if "~" in p.name) == []

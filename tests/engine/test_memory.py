"""``kilndb.open(":memory:")``: a private database that lives only while it is open.

The conformance suite runs the whole API on it (the ``memory`` backend of
tests/conformance); these tests cover what only a database in memory does: where its
bytes are, that nothing is left once it is closed (or its process exits, or is killed),
and that durability options have no effect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

import kilndb
from kilndb.storage import memory
from kilndb.storage.memory import MEMORY_DIR_ENV, MemoryDirectory, memory_root, sweep_stale


@pytest.fixture
def ram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of this test's own for memory databases (``KILN_MEMORY_DIR``)."""
    root = tmp_path / "ram"
    root.mkdir()
    monkeypatch.setenv(MEMORY_DIR_ENV, str(root))
    return root


def _child(code: str, root: Path) -> subprocess.Popen[str]:
    """A Python process running ``code`` with memory databases made under ``root``."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, MEMORY_DIR_ENV: str(root)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_nothing_is_written_under_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with kilndb.open(":memory:") as db:
        tasks = db.store("tasks")
        first = tasks.write("t1", {"title": "Hello"})
        tasks.write("t1", {"title": "Hi"})
        assert tasks.read("t1", as_of=first.transaction_time) == first
        assert [f.value for f in db.replay()] == [{"title": "Hello"}, {"title": "Hi"}]
        assert db.data_dir.parent == memory_root()
    assert list(tmp_path.iterdir()) == []


def test_where_the_bytes_live_and_what_the_attributes_report(ram: Path) -> None:
    db = kilndb.open(":memory:", "billing")
    try:
        assert db.in_memory and db.name == "billing"
        assert repr(db) == "<kilndb.Database 'billing' in memory>"
        assert db.data_dir.parent == ram
        assert db.data_dir.name.startswith(f"kilndb-memory-{os.getpid()}-")
        assert db.path == db.data_dir / "billing"
        db.store("s").write("k", 1)
        assert db.stats()["path"] == str(db.path)
        assert (db.path / "META").is_file()
    finally:
        db.close()
    assert list(ram.iterdir()) == []


def test_a_database_on_disk_is_not_in_memory(tmp_path: Path) -> None:
    with kilndb.open(tmp_path / "data") as db:
        assert not db.in_memory
        assert repr(db) == f"<kilndb.Database 'default' at {str(tmp_path / 'data')!r}>"


def test_every_open_is_a_new_independent_database(ram: Path) -> None:
    with kilndb.open(":memory:") as one, kilndb.open(Path(":memory:")) as two:
        assert one.data_dir != two.data_dir
        assert one.database_id != two.database_id
        one.store("s").write("k", "one")
        assert two.store("s").read("k") is None
        assert two.stores() == []
        assert len(list(ram.iterdir())) == 2


def test_nothing_survives_close_and_close_is_idempotent(ram: Path) -> None:
    with kilndb.open(":memory:") as db:
        db.store("s").write("k", 1)
        directory = db.data_dir
    assert not directory.exists()
    assert db.closed
    db.close()  # again: nothing to do
    with pytest.raises(kilndb.ClosedError):
        db.store("s").read("k")
    with kilndb.open(":memory:") as again:
        assert again.stores() == [] and again.store("s").read("k") is None
        assert again.stats()["last_position"] == 0


def test_a_sweep_by_another_thread_spares_a_directory_being_made(
    ram: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweeps: list[threading.Thread] = []
    make = tempfile.mkdtemp

    def mkdtemp_then_sweep(**kwargs: str) -> str:
        made = make(**kwargs)
        # Another thread opening :memory: now sweeps before this one has registered it.
        sweep = threading.Thread(target=sweep_stale, args=(ram,))
        sweep.start()
        sweep.join(0.2)  # with the registry locked it waits; without, it would delete
        sweeps.append(sweep)
        return made

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_then_sweep)
    made = MemoryDirectory()
    monkeypatch.undo()
    sweeps[0].join()
    assert made.path.is_dir()
    made.remove()


def test_durability_options_are_accepted_and_have_no_effect(ram: Path) -> None:
    for sync in ("always", "interval", "none"):
        with kilndb.open(":memory:", sync=sync, sync_interval_ms=5) as db:
            for i in range(20):
                db.store("s").write("k", i)
            stats = db.stats()
            assert db.config.sync == stats["sync"] == "none"
            assert stats["fsyncs"] == 0, sync
            db.sync()  # asked for explicitly: accepted
    # Refused as on disk: a mode that does not exist, an unknown option.
    with pytest.raises(kilndb.InvalidArgumentError, match="sync must be one of"):
        kilndb.open(":memory:", sync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(kilndb.InvalidArgumentError):
        kilndb.open(":memory:", fsync=True)
    assert list(ram.iterdir()) == []


def test_other_options_apply_as_on_disk(ram: Path) -> None:
    with kilndb.open(":memory:", max_file_size=4096, auto_compact=False) as db:
        db.set_retention("s", keep="latest")
        for i in range(200):
            db.store("s").write(f"k{i % 5}", {"i": i, "pad": "x" * 40})
        assert db.stats()["files"] > 1  # rotated at max_file_size
        db.compact()
        assert db.stats()["dead_bytes"] == 0
        assert [f.value["i"] for f in db.replay()] == list(range(195, 200))
        with pytest.raises(kilndb.InvalidArgumentError, match="max_record_bytes"):
            kilndb.open(":memory:", max_record_bytes=1)
    assert list(ram.iterdir()) == []


def test_a_bad_name_or_a_failed_open_leaves_nothing(
    ram: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(kilndb.InvalidArgumentError):
        kilndb.open(":memory:", "no/slashes")

    def broken(*args: object, **kwargs: object) -> None:
        raise kilndb.StorageError("the disk said no")

    monkeypatch.setattr("kilndb.engine.database.FactLog", broken)
    with pytest.raises(kilndb.StorageError, match="the disk said no"):
        kilndb.open(":memory:")
    assert list(ram.iterdir()) == []


def test_memory_root_prefers_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MEMORY_DIR_ENV, raising=False)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        assert memory_root() == shm
    monkeypatch.setattr(memory, "SHARED_MEMORY", Path("/nonexistent/shm"))
    assert memory_root() == Path(tempfile.gettempdir())
    monkeypatch.setenv(MEMORY_DIR_ENV, "/somewhere/else")
    assert memory_root() == Path("/somewhere/else")


def test_a_root_that_cannot_hold_it_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MEMORY_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(kilndb.StorageError, match="cannot make a memory database"):
        kilndb.open(":memory:")


def test_a_database_never_closed_is_removed_at_exit(ram: Path) -> None:
    child = _child(
        """
        import kilndb
        db = kilndb.open(":memory:")
        db.store("s").write("k", 1)
        print(db.data_dir, flush=True)
        """,
        ram,
    )
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert Path(out.strip()).parent == ram
    assert list(ram.iterdir()) == []


def test_the_leftover_of_a_killed_process_is_removed_by_the_next_open(ram: Path) -> None:
    child = _child(
        """
        import sys, kilndb
        db = kilndb.open(":memory:")
        db.store("s").write("k", 1)
        print(db.data_dir, flush=True)
        sys.stdin.read()
        """,
        ram,
    )
    assert child.stdout is not None
    leftover = Path(child.stdout.readline().strip())
    try:
        # While its process lives, another open leaves it alone.
        with kilndb.open(":memory:") as db:
            assert leftover.is_dir() and db.data_dir != leftover
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        child.kill()
        child.communicate()
    assert (leftover / "default" / "META").is_file()  # killed: it could not clean up
    with kilndb.open(":memory:") as db:
        assert not leftover.exists()
        assert list(ram.iterdir()) == [db.data_dir]


def test_the_sweep_spares_live_directories_and_others(ram: Path) -> None:
    mine = MemoryDirectory()
    reused_pid = ram / f"kilndb-memory-{os.getpid()}-left-by-an-earlier-process"
    unrelated = ram / "kilndb-memory-notapid"
    other_file = ram / "notes.txt"
    for directory in (reused_pid, unrelated):
        directory.mkdir()
    other_file.write_text("keep")
    try:
        assert sweep_stale(ram) == [reused_pid]
        assert mine.path.is_dir() and unrelated.is_dir() and other_file.is_file()
        assert sweep_stale(ram / "missing") == []
    finally:
        mine.remove()
        mine.remove()
    assert not mine.path.exists()

"""kiln tail: the follow loop (live, in-process) and the command (a real process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import kilndb
from kilndb.cli.tail import follow
from kilndb.model import Fact

DEADLINE = 20.0


class Collector:
    """Collects emitted facts; lets the test wait for a count with a deadline."""

    def __init__(self) -> None:
        self.facts: list[Fact] = []
        self._cond = threading.Condition()

    def __call__(self, fact: Fact) -> None:
        with self._cond:
            self.facts.append(fact)
            self._cond.notify_all()

    def wait_for(self, count: int) -> list[Fact]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.facts) >= count, timeout=DEADLINE), (
                f"got {len(self.facts)} of {count} facts"
            )
            return list(self.facts)


def test_follow_catches_up_then_delivers_live_writes_in_order(tmp_path: Path) -> None:
    with kilndb.open(tmp_path, sync="none") as db:
        tasks = db.store("tasks")
        old = [tasks.write(f"old{n}", n) for n in range(3)]
        got = Collector()
        stop = threading.Event()
        follower = threading.Thread(
            target=follow, args=(db, got), kwargs={"after": 0, "stop": stop, "poll_seconds": 0.05}
        )
        follower.start()
        try:
            assert [f.id for f in got.wait_for(3)] == [f.id for f in old]
            new = [tasks.write(f"new{n}", n) for n in range(5)]
            new += db.write_many([kilndb.Write("tasks", "batch", n) for n in range(3)])
            facts = got.wait_for(11)
        finally:
            stop.set()
            follower.join(DEADLINE)
        assert not follower.is_alive()
        assert [f.position for f in facts] == list(range(1, 12))
        assert [f.id for f in facts[3:]] == [f.id for f in new]


def test_follow_filters_stores_and_starts_after_the_cursor(tmp_path: Path) -> None:
    with kilndb.open(tmp_path, sync="none") as db:
        for n in range(4):
            db.store("a").write(f"k{n}", n)
            db.store("b").write(f"k{n}", n)
        got = Collector()
        stop = threading.Event()
        follower = threading.Thread(
            target=follow,
            args=(db, got),
            kwargs={"after": 4, "stores": ["b"], "stop": stop, "poll_seconds": 0.05},
        )
        follower.start()
        try:
            db.store("a").write("live", "ignored")
            db.store("b").write("live", "wanted")
            facts = got.wait_for(3)
        finally:
            stop.set()
            follower.join(DEADLINE)
        assert [(f.store, f.position) for f in facts] == [("b", 6), ("b", 8), ("b", 10)]
        assert facts[-1].value == "wanted"


def test_follow_ends_when_the_database_closes(tmp_path: Path) -> None:
    db = kilndb.open(tmp_path, sync="none")
    got = Collector()
    result: list[int] = []
    follower = threading.Thread(
        target=lambda: result.append(follow(db, got, after=0, poll_seconds=0.05))
    )
    follower.start()
    db.store("tasks").write("k", 1)
    got.wait_for(1)
    db.close()
    follower.join(DEADLINE)
    assert not follower.is_alive()
    assert result == [1]


def _kiln_script() -> Path:
    script = Path(sys.executable).with_name("kiln")
    assert script.exists(), f"console script missing: {script} (pip install -e .)"
    return script


def _read_lines(stream: object, count: int) -> list[str]:
    """Read ``count`` lines from a pipe on a helper thread, with a deadline."""
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        for _ in range(count):
            line = stream.readline()  # type: ignore[attr-defined]
            if not line:
                break
            lines.append(line)
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(DEADLINE), f"read {len(lines)} of {count} lines"
    return lines


@pytest.mark.integration
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_tail_process_prints_json_lines_and_stops_cleanly(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    with kilndb.open(tmp_path) as db:
        written = [db.store("tasks").write(f"k{n}", {"n": n}) for n in range(3)]
        db.store("other").write("x", 0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    process = subprocess.Popen(
        [str(_kiln_script()), "--data", str(tmp_path), "tail", "--after", "0", "--store", "tasks"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = _read_lines(process.stdout, 3)
        assert [json.loads(line)["id"] for line in lines] == [f.id for f in written]
        started = time.monotonic()
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr == ""
    assert time.monotonic() - started < DEADLINE
    # The database was closed cleanly: it opens again at once.
    with kilndb.open(tmp_path) as db:
        assert db.stats()["last_position"] == 4

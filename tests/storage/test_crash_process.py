"""Real crashes: SIGKILL a writing process at random moments, reopen, check everything.

The child (``crash_child.py``) writes single facts and five-fact ``write_many`` batches
with ``sync="always"`` and prints each acknowledgement. After every kill the parent
checks the directory offline (only a torn tail or leftovers may be found), reopens it
and asserts that every acknowledged fact is there with its value, that no batch is half
applied, and that positions run 1, 2, 3 … without a gap.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

import kilndb
from kilndb.storage.check import check_database

CHILD = Path(__file__).with_name("crash_child.py")
CYCLES = 25
BATCH_SIZE = 5
PAD = "p" * 100
MAX_FILE_SIZE = 16 * 1024
START_TIMEOUT = 20.0

pytestmark = pytest.mark.integration


@dataclass
class Acknowledged:
    """What children announced: fact id -> value, batch id -> its fact ids."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, list[str]] = field(default_factory=dict)

    def take(self, run: int, line: str) -> None:
        kind, name, *rest = line.split()
        if kind == "F":
            self.values[name] = {"run": run, "n": int(rest[0]), "pad": PAD}
        else:
            assert kind == "B" and len(rest) == BATCH_SIZE, line
            self.batches[name] = rest
            for i, fact_id in enumerate(rest):
                self.values[fact_id] = {"run": run, "batch": name, "i": i, "pad": PAD}


def pump(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    """Forward complete lines; a line cut short by the kill was not acknowledged."""
    for raw in stream:
        if raw.endswith(b"\n"):
            lines.put(raw.decode().rstrip("\n"))
    lines.put(None)


def run_and_kill(data_dir: Path, run: int, rng: random.Random) -> list[str]:
    """Start a child, SIGKILL it at a random moment, return the lines it completed."""
    argv = [sys.executable, str(CHILD), str(data_dir), str(run), str(rng.randrange(1 << 32))]
    received: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        assert child.stdout is not None and child.stderr is not None
        reader = threading.Thread(target=pump, args=(child.stdout, lines), daemon=True)
        reader.start()
        try:
            if rng.random() < 0.15:
                time.sleep(rng.uniform(0.0, 0.25))  # may land in start-up and recovery
            else:
                deadline = time.monotonic() + START_TIMEOUT
                while "ready" not in received:
                    try:
                        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        pytest.fail(f"child did not open the database in {START_TIMEOUT} s")
                    if line is None:
                        pytest.fail(f"child exited early: {child.stderr.read().decode()}")
                    received.append(line)
                time.sleep(rng.uniform(0.0, 0.15))  # the random moment of the kill
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            reader.join(timeout=30)
        assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()
    while (line := lines.get_nowait()) is not None:
        received.append(line)
    return [line for line in received if line != "ready"]


def verify(data_dir: Path, acknowledged: Acknowledged) -> int:
    """Reopen and check every promise; return the number of facts in the database."""
    with kilndb.open(data_dir, max_file_size=MAX_FILE_SIZE) as db:
        facts = list(db.replay())
        torn = db.stats()["torn_tails_cut"]
        assert torn <= 1
    positions = [fact.position for fact in facts]
    assert positions == list(range(1, len(facts) + 1)), "positions must be gap-free"
    by_id = {fact.id: fact for fact in facts}
    assert len(by_id) == len(facts)
    missing = [i for i in acknowledged.values if i not in by_id]
    assert not missing, f"{len(missing)} acknowledged facts lost, e.g. {missing[:3]}"
    for fact_id, value in acknowledged.values.items():
        assert by_id[fact_id].value == value
    groups: dict[str, list[int]] = {}
    for fact in facts:
        if "batch" in fact.value:
            groups.setdefault(fact.value["batch"], []).append(fact.value["i"])
    for batch, members in groups.items():
        assert members == list(range(BATCH_SIZE)), f"batch {batch} half applied: {members}"
    for batch, ids in acknowledged.batches.items():
        assert [by_id[i].value["batch"] for i in ids] == [batch] * BATCH_SIZE
    return len(facts)


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    db_dir = data_dir / "default"
    acknowledged = Acknowledged()
    stored = 0
    for run in range(CYCLES):
        for line in run_and_kill(data_dir, run, rng):
            acknowledged.take(run, line)
        if db_dir.exists():
            found = check_database(db_dir)
            kinds = {p.kind for p in found.problems}
            assert kinds <= {"torn-tail", "leftover"}, (seed, found.problems)
        stored = verify(data_dir, acknowledged)
        assert stored >= len(acknowledged.values), seed

    assert len(acknowledged.values) > 500, "the children hardly wrote anything"
    assert len(acknowledged.batches) > 20
    assert len(list(db_dir.glob("*.log"))) > 5, "no file rotation was exercised"
    assert check_database(db_dir).problems == []

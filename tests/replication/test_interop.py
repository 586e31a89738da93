"""Replicas of the pure-Python engine that preceded the native core and of the current
code interoperate, in both directions, as real ``kiln serve`` processes.

The older version is KilnDB 0.1.0 (commit 5cb28ea), whose source is kept as
``tests/fixtures/kilndb-0.1.0-src.tar.gz``. A follower appends its leader's frames
verbatim, so each side also reads the other's records: the follower's replay must equal
the leader's, field for field, and the current client reads both versions' servers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kilndb
from tests.processes import reap, start_server
from tests.replication.test_follower import _eventually

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def old_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory holding KilnDB 0.1.0's ``kilndb`` package."""
    root = tmp_path_factory.mktemp("kilndb-0.1.0")
    with tarfile.open(FIXTURES / "kilndb-0.1.0-src.tar.gz") as archive:
        archive.extractall(root, filter="data")
    source = root / "kilndb-0.1.0" / "src"
    assert not (source / "kilndb" / "_core.pyi").exists()  # it predates the core
    # What start_server(source=…) runs is this package, not the installed one.
    probe = (
        "import importlib.util, kilndb;"
        " print(kilndb.__file__, importlib.util.find_spec('kilndb._core'))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(source)},
        cwd=source,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found == [str(source / "kilndb" / "__init__.py"), "None"]
    return source


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in reversed(started):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
        reap(process)


def _log(url: str) -> list[dict[str, Any]]:
    """Every retained fact of ``url``'s default database, every field."""
    with kilndb.connect(url) as db:
        return [f.to_dict() for f in db.replay()]


def _write_history(url: str, start: int) -> None:
    """A mix of what a log holds: single writes, an atomic batch, a delete, a client
    id, a keep-latest store, unicode, big integers and floats."""
    with kilndb.connect(url) as db:
        tasks = db.store("tasks")
        for i in range(start, start + 50):
            tasks.write(f"t{i % 7}", {"i": i, "name": f"tâche {i}", "big": 2**63 - i, "f": i / 3})
        db.write_many(
            [kilndb.Write("tasks", f"b{start}-{n}", n) for n in range(20)]
            + [kilndb.Write("audit", f"a{start}", {"batch": start})]
        )
        tasks.write(f"t{start % 7}", "by id", id=f"cmd-{start}", metadata={"by": "interop"})
        tasks.delete(f"t{(start + 3) % 7}")
        db.set_retention("latest", keep="latest")
        db.store("latest").write("k", start)


def _follow(leader_url: str, follower_url: str, written: int) -> None:
    def caught_up() -> bool:
        follower = _log(follower_url)
        return len(follower) >= written and follower == _log(leader_url)

    _eventually(caught_up, timeout=60)


@pytest.mark.integration
@pytest.mark.parametrize("leader_version", ["0.1.0", "current"])
def test_old_and_new_replicas_interoperate(
    leader_version: str,
    old_source: Path,
    processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    old_leads = leader_version == "0.1.0"
    leader, leader_url = start_server(
        tmp_path / "leader", "--http-port", "-1", source=old_source if old_leads else None
    )
    processes.append(leader)

    def start_follower() -> tuple[subprocess.Popen[str], str]:
        follower, url = start_server(
            tmp_path / "follower",
            "--http-port",
            "-1",
            "--replica-of",
            leader_url.removeprefix("tcp://"),
            source=None if old_leads else old_source,
        )
        processes.append(follower)
        return follower, url

    # History that exists before the follower first connects (its catch-up)…
    _write_history(leader_url, 0)
    before = len(_log(leader_url))
    follower, follower_url = start_follower()
    _follow(leader_url, follower_url, before)
    # …then live writes streamed while it follows, and a follower restart that resumes
    # from its own log.
    _write_history(leader_url, 100)
    _follow(leader_url, follower_url, before + 1)
    follower.send_signal(signal.SIGTERM)
    follower.wait(30)
    reap(follower)
    _write_history(leader_url, 200)
    follower, follower_url = start_follower()
    _follow(leader_url, follower_url, before + 2)
    with kilndb.connect(follower_url) as db:
        assert db.store("tasks").read("t1") is not None
        assert db.store("tasks").read("t0") is None  # deleted by the last round
        assert db.store("latest").history("k")[-1].value == 200
        with pytest.raises(kilndb.ReadOnlyReplicaError):
            db.store("tasks").write("x", 1)

"""The installed ``kiln`` console script, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kilndb

pytestmark = pytest.mark.integration

TIMEOUT = 60


def run_kiln(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("kiln")
    assert script.exists(), f"console script missing: {script} (pip install -e .)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=TIMEOUT,
        check=False,
    )


def test_put_then_get_round_trip(tmp_path: Path) -> None:
    put = run_kiln("--data", str(tmp_path), "put", "tasks", "t1", '{"title": "Hello"}')
    assert put.returncode == 0, put.stderr
    written = json.loads(put.stdout)
    get = run_kiln("get", "tasks", "t1", env={"KILN_DATA": str(tmp_path)})
    assert get.returncode == 0, get.stderr
    assert json.loads(get.stdout) == written


def test_locked_database_is_one_error_line_and_exit_3(tmp_path: Path) -> None:
    with kilndb.open(tmp_path):
        result = run_kiln("--data", str(tmp_path), "put", "tasks", "t1", "1")
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: database ")
    assert "already open in another process" in result.stderr


def test_usage_error_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run_kiln("--data", str(tmp_path), "put", "tasks", "t1", "{not json")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_missing_fact_exits_1(tmp_path: Path) -> None:
    run_kiln("--data", str(tmp_path), "put", "tasks", "t1", "1")
    result = run_kiln("--data", str(tmp_path), "get", "tasks", "nope")
    assert result.returncode == 1
    assert result.stderr == "error: tasks/nope has no value\n"


def test_version(tmp_path: Path) -> None:
    result = run_kiln("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"kiln (KilnDB) {kilndb.__version__}"


def test_python_dash_m_runs_the_same_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kilndb.cli", "--data", str(tmp_path), "put", "s", "k", "7"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["value"] == 7


def test_replay_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    with kilndb.open(tmp_path, sync="none") as db:
        db.write_many([kilndb.Write("s", f"k{n}", {"n": n, "pad": "x" * 200}) for n in range(5000)])
    script = Path(sys.executable).with_name("kiln")
    reader = subprocess.Popen(
        [str(script), "--data", str(tmp_path), "replay"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None
    first = reader.stdout.readline()
    reader.stdout.close()  # like `kiln replay | head -1`
    _, stderr = reader.communicate(timeout=TIMEOUT)
    assert reader.returncode == 0
    assert json.loads(first)["position"] == 1
    assert b"Traceback" not in stderr
    assert stderr == b""
    with kilndb.open(tmp_path) as db:  # and the database was closed properly
        assert db.stats()["last_position"] == 5000


def test_demo_runs_on_a_data_directory(tmp_path: Path) -> None:
    result = run_kiln("--data", str(tmp_path / "data"), "demo")
    assert result.returncode == 0, result.stderr
    assert "Done." in result.stdout
    assert "Traceback" not in result.stderr

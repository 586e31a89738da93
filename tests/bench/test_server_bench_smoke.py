"""Smoke run of ``bench/server.py``: every KilnDB row is measured and the run is clean.

Not a timed test: it runs the server benchmark end to end with ``--smoke`` (tiny sizes)
in a child process. Redis and NATS are optional here: with ``--smoke`` the bench never
installs anything, which is checked with a fake ``apt-get`` first on PATH, and one run
hides redis-py so that the "skipped" path is exercised whatever this machine has.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "server.py"

#: The start of each KilnDB row, in table order.
ROWS = (
    "pipelined durable writes, 1 conn, 1,000 in flight",
    "pipelined durable writes, 16 conns",
    "one-at-a-time write latency p50",
    "one-at-a-time write latency p99",
    "replay of 2,000 facts",
    "fan-out lag p50",
    "fan-out lag p99",
    "server RSS holding 2,000 keys",
    "server memory per key, 2,000 keys",
)


def run_smoke(tmp: Path, *, hide_redis: bool) -> str:
    fake_bin = tmp / "bin"
    fake_bin.mkdir()
    marker = tmp / "apt-was-run"
    for name in ("apt-get", "apt"):
        fake = fake_bin / name
        fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n", encoding="utf-8")
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    if hide_redis:
        code = (
            "import runpy, sys\n"
            "sys.modules['redis'] = None\n"
            f"sys.argv = [{str(BENCH)!r}, '--smoke']\n"
            f"runpy.run_path({str(BENCH)!r}, run_name='__main__')\n"
        )
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, str(BENCH), "--smoke"]
    proc = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists(), "--smoke must never run apt"
    return proc.stdout


def check_kiln_rows(stdout: str) -> None:
    where = [stdout.find("\n" + label) for label in ROWS]
    missing = [label for label, i in zip(ROWS, where, strict=True) if i < 0]
    assert not missing, stdout
    assert where == sorted(where)
    for label in ROWS:
        line = next(ln for ln in stdout.splitlines() if ln.startswith(label))
        kiln = line.split("|")[1]
        number = re.search(r"[\d,.]+", kiln)
        assert number is not None and float(number.group().replace(",", "")) > 0, line
    assert "KilnDB/peer" in stdout
    assert "Targets (issue 13)" in stdout
    assert "NATS" in stdout
    targets = stdout.split("Targets (issue 13)")[1]
    assert "16 conns >= 6x NATS JetStream" in targets
    info = [ln for ln in targets.splitlines() if "server RSS with 2,000 keys" in ln]
    assert len(info) == 1 and info[0].strip().startswith("info"), info


def test_smoke_without_redis(tmp_path: Path) -> None:
    stdout = run_smoke(tmp_path, hide_redis=True)
    check_kiln_rows(stdout)
    assert "skipped: redis-py not installed" in stdout


def test_smoke_as_is(tmp_path: Path) -> None:
    """With whatever this machine has: redis rows are measured or say why not."""
    stdout = run_smoke(tmp_path, hide_redis=False)
    check_kiln_rows(stdout)
    redis_lines = [ln for ln in stdout.splitlines() if "redis-py" in ln]
    assert redis_lines
    for line in redis_lines:
        assert "skipped" in line or re.search(r"\d+\.\d\dx", line), line

"""Running a benchmark script with ``--smoke`` in a child process, for the smoke tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, rows: tuple[str, ...]) -> str:
    """Run ``bench/SCRIPT --smoke``; check it ends cleanly and prints every row."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    for row in rows:
        assert row in done.stdout, (row, done.stdout)
    assert "Traceback" not in done.stderr
    return done.stdout

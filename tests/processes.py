"""``kiln serve`` as a real process, for tests that signal or kill it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

KILN = Path(sys.executable).with_name("kiln")


def start_server(
    data: Path, *options: str, source: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    """``kiln --data DATA serve --port 0 OPTIONS…``; the process and its tcp:// address.

    ``source``: a directory holding another version's ``kilndb`` package, run instead of
    the installed one (``python -m kilndb.cli`` with it first on the path).
    """
    command = [str(KILN)]
    env = None
    if source is not None:
        command = [sys.executable, "-m", "kilndb.cli"]
        env = {**os.environ, "PYTHONPATH": str(source)}
    process = subprocess.Popen(
        [*command, "--data", str(data), "serve", "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # never read: a full pipe would block the server
        text=True,
        env=env,
        cwd=None if source is None else source,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if found := re.search(r"tcp://[0-9.]+:\d+", line):
            return process, found.group(0)
        if not line:
            break
    reap(process)
    raise AssertionError("kiln serve printed no address")


def reap(process: subprocess.Popen[str]) -> None:
    """Kill the process if it still runs, wait for it and close its pipes."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM (a graceful stop: a cluster member says goodbye), then reap."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
    reap(process)

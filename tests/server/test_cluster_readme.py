"""The README's cluster walk-through, run command by command against real processes: three
members, a leader killed, a promotion by hand, and the old leader back — fenced."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import stop

README = Path(__file__).parents[2] / "README.md"
#: Each command may take this long to succeed (gossip spreading, a copy catching up).
DEADLINE_SECONDS = 30.0


def walk_through() -> list[str]:
    """The shell block of the "Cluster (gossip membership)" section, one command (or
    comment) a line."""
    text = README.read_text()
    section = text[text.index("### Cluster (gossip membership)") :]
    start = section.index("```sh\n") + len("```sh\n")
    block = section[start : section.index("\n```", start)]
    return [line.strip() for line in re.sub(r"\\\n\s*", "", block).splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


class Shell:
    """Runs the walk-through's lines with its ports and directories made private."""

    def __init__(self, tmp_path: Path, lines: list[str]) -> None:
        self.tmp_path = tmp_path
        ports = sorted({int(p) for p in re.findall(r"(?::|port )(\d{4})\b", "\n".join(lines))})
        self.ports = {port: _free_port() for port in ports}
        self.env = {
            **os.environ,
            "KEY": "readme-walk-through-key-0123456789",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        self.members: dict[str, subprocess.Popen[str]] = {}

    def local(self, line: str) -> str:
        line = line.replace("./c", f"{self.tmp_path}/c")
        for old, new in self.ports.items():
            line = re.sub(rf"\b{old}\b", str(new), line)
        return line

    def serve(self, line: str) -> None:
        name = re.search(r"--node-name (\S+)", line)
        port = re.search(r"--port (\d+)", line)
        assert name and port, line
        process = subprocess.Popen(
            ["bash", "-c", f"exec {line}"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.members[name.group(1)] = process
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not _accepts(int(port.group(1))):
            assert process.poll() is None, f"{line} exited with {process.returncode}"
            assert time.monotonic() < deadline, f"{line} did not start listening"
            time.sleep(0.05)

    def run(self, line: str) -> str:
        """Run ``line`` until it succeeds; its output."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            done = subprocess.run(
                ["bash", "-c", line],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode == 0:
                return done.stdout
            assert time.monotonic() < deadline, (line, done.stdout, done.stderr)
            time.sleep(0.2)

    def kill(self, name: str) -> None:
        process = self.members[name]
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for process in self.members.values():
            stop(process)


@pytest.mark.integration
def test_the_cluster_walk_through_runs_and_fences_the_old_leader(tmp_path: Path) -> None:
    lines = walk_through()
    assert any("--join 127.0.0.1:7947" in line and "c1" in line for line in lines)
    shell = Shell(tmp_path, lines)
    try:
        for line in lines:
            if line.startswith("#"):
                if "c1 dies" in line:
                    shell.kill("c1")
                continue
            if line.startswith("sleep "):
                continue  # each command is retried until it succeeds instead
            command = shell.local(line)
            if " serve " in command:
                shell.serve(command)
            else:
                shell.run(command)
        # t4, sent to the restarted c1, was written on c2 (else c2's `get` never found
        # it): c1 was fenced, and says so in its recent events.
        events = shell.run(f"curl -s http://127.0.0.1:{shell.ports[7300]}/v1/events/recent")
        assert '"fenced"' in events
    finally:
        shell.stop()

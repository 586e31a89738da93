"""The README's automatic-failover walk-through, run command by command as a reader would
paste it — on free ports, in a temporary directory: three nodes on a real etcd, a
write, kill -9 of the leader, and after its lease runs out a write sent through another
node and the first write read back."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
PORTS = ("2379", "2380", "7400", "7401", "7402", "7300", "7301", "7302")


def walkthrough() -> list[str]:
    """The commands of the README's block, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Automatic failover (etcd)") :]
    block = section[section.index("```sh\n") + 6 : section.index("```\n", 10)]
    commands, current = [], ""
    for line in block.splitlines():
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            commands.append(current.strip())
        current = ""
    return commands


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def prepare(line: str, ports: dict[str, str]) -> str:
    """A README command as the test runs it: on free ports, the script by its path,
    etcd's peer port set (so it clashes with no other etcd), and a first ``kiln``
    command waiting for the nodes that start in the background."""
    command = re.sub(r"\s{2,}#.*$", "", line)  # the comment
    command = re.sub(r"\b(" + "|".join(PORTS) + r")\b", lambda m: ports[m[1]], command)
    command = command.replace("scripts/", f"{ROOT}/scripts/")
    if command.startswith("etcd "):
        peer = f"http://127.0.0.1:{ports['2380']}"
        command = command.replace(
            " &",
            f" --listen-peer-urls {peer} --initial-advertise-peer-urls {peer}"
            f" --initial-cluster default={peer} &",
        )
    if command.startswith("kiln") and " put " in command and "t1" in command:
        command = f"for i in $(seq 100); do {command} && break; sleep 0.2; done"
    return command


def test_the_readme_failover_walkthrough_works_by_copy_and_paste(tmp_path: Path) -> None:
    ports = dict(zip(PORTS, map(str, free_ports(len(PORTS))), strict=True))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    background: list[subprocess.Popen[bytes]] = []
    outputs: list[str] = []
    try:
        for line in walkthrough():
            command = prepare(line, ports)
            if command.endswith("&"):
                background.append(
                    subprocess.Popen(
                        ["bash", "-c", f"exec {command[:-1]}"],
                        cwd=tmp_path,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                continue
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            outputs.append(done.stdout)
        assert '"value":"hello"' in outputs[-2].replace(" ", "")  # read after the failover
        assert '"leader":"n1"' not in outputs[-1].replace(" ", "")  # another node leads
    finally:
        for process in background:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in background:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

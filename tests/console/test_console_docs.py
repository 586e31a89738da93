"""The shell command of docs/console.md runs as written (its ports made free ones), and
``kiln serve`` prints the console's address, which serves the page."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.processes import reap, stop

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_kiln_serve_prints_the_console_address_and_serves_it(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "console.md").read_text()
    (block,) = re.findall(r"```sh\n(.*?)```", text, re.S)
    (command,) = block.strip().splitlines()
    assert command == "kiln --data ./data serve --http-port 7300"
    http_port = free_port()
    args = shlex.split(command.replace("7300", str(http_port)))
    assert args[0] == "kiln"
    kiln = str(Path(sys.executable).with_name("kiln"))
    process = subprocess.Popen(
        [kiln, *args[1:], "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        console = None
        for line in process.stdout:
            if found := re.fullmatch(r"  console: (http://\S+/)\n", line):
                console = found.group(1)
                break
        assert console == f"http://127.0.0.1:{http_port}/"
        with urllib.request.urlopen(console, timeout=10) as response:
            assert b"<title>KilnDB console</title>" in response.read()
        assert (tmp_path / "data").is_dir()
    finally:
        stop(process)
        reap(process)

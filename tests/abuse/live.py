"""A ``kiln serve`` process on loopback for the abuse suite.

:class:`LiveServer` starts the server with TCP, HTTP and (optionally) a Unix socket on
free ports, reads the addresses it prints, stops it with SIGTERM and starts it again on
the same data directory. :class:`Ledger` remembers every write a server acknowledged, so
that a test can read each one back — on the running server or after a restart.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

import kilndb

KILN = Path(sys.executable).with_name("kiln")

#: Every test here is finished or failed long before this; it only prevents hangs.
DEADLINE_SECONDS = 30.0


def raise_fd_limit(wanted: int = 8192) -> None:
    """Raise this process's soft file-descriptor limit to ``wanted`` (at most the hard
    limit): a crowd of 700 subscribers needs a descriptor per socket on each side, and a
    server started afterwards inherits the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class LiveServer:
    """``kiln --data DATA serve --port 0 --http-port 0 [--unix SOCK] OPTIONS…``."""

    def __init__(
        self,
        data: Path,
        *options: str,
        unix: Path | None = None,
        argv: list[str] | None = None,
    ) -> None:
        """``argv``: the whole command instead (its ``kiln`` the installed one), which
        must use ``data`` and ``unix``."""
        self.data = data
        self.options = options
        self.unix = unix
        self.argv = argv
        self.process: subprocess.Popen[bytes] | None = None
        self.tcp_url = ""
        self.http_url = ""
        self._log = data.parent / f"{data.name}.stdout"

    def command(self) -> list[str]:
        if self.argv is not None:
            return [str(KILN), *self.argv[1:]]
        unix = ["--unix", str(self.unix)] if self.unix is not None else []
        serve = ["serve", "--port", "0", "--http-port", "0", *unix, *self.options]
        return [str(KILN), "--data", str(self.data), *serve]

    def start(self) -> LiveServer:
        """Start the process and wait until it prints the addresses it listens on."""
        raise_fd_limit()
        # stdout goes to a file: a pipe nobody reads could fill up and stall the server.
        with self._log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            text = self._log.read_text()
            tcp = re.search(r"listening on (tcp://[0-9.]+:\d+)", text)
            http = re.search(r"listening on (http://[0-9.]+:\d+)", text)
            if tcp and http:
                self.tcp_url, self.http_url = tcp.group(1), http.group(1)
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"kiln serve printed no addresses: {self._log.read_text()!r}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def tcp_address(self) -> tuple[str, int]:
        host, port = self.tcp_url.removeprefix("tcp://").rsplit(":", 1)
        return host, int(port)

    @property
    def http_address(self) -> tuple[str, int]:
        host, port = self.http_url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    @property
    def unix_url(self) -> str:
        assert self.unix is not None
        return f"unix://{self.unix}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int:
        """SIGTERM (a drain), then wait for the exit; its status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(DEADLINE_SECONDS)
        finally:
            self.kill()

    def kill(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``."""
        with urllib.request.urlopen(self.http_url + "/v1/status", timeout=10) as response:
            body: dict[str, Any] = orjson.loads(response.read())
        return body

    def metric(self, name: str) -> int:
        value: int = self.status()["metrics"][name]
        return value

    def wait_for_metric(self, name: str, wanted: int) -> None:
        """Wait until the server's metric ``name`` is ``wanted``."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        while (got := self.metric(name)) != wanted:
            assert time.monotonic() < deadline, f"{name} stayed {got}, expected {wanted}"
            time.sleep(0.05)

    def rss_bytes(self) -> int:
        """The server process's resident memory."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")


@dataclass
class Ledger:
    """Every write a server acknowledged: (store, key) → the value of its latest write."""

    values: dict[tuple[str, str], Any] = field(default_factory=dict)

    def acknowledged(self, store: str, key: str, value: Any) -> None:
        self.values[(store, key)] = value

    def __len__(self) -> int:
        return len(self.values)

    def missing(self, url: str) -> list[tuple[str, str, Any, Any]]:
        """The acknowledged writes a server at ``url`` does not return: (store, key,
        acknowledged value, value read or None)."""
        lost = []
        with kilndb.connect(url, timeout=DEADLINE_SECONDS) as db:
            for (store, key), value in sorted(self.values.items()):
                fact = db.store(store).read(key)
                if fact is None or fact.value != value:
                    lost.append((store, key, value, None if fact is None else fact.value))
        return lost


def cleanup(server: LiveServer) -> None:
    """Kill the server if it still runs (a fixture's teardown)."""
    server.kill()
    if server.unix is not None and server.unix.exists():
        os.unlink(server.unix)

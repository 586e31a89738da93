"""``kiln stream produce|consume|status|tail``."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
from pathlib import Path

from kilndb.server import Server
from tests.cli.runner import assert_one_error_line, json_lines, kiln
from tests.processes import KILN, reap


def test_produce_consume_and_status(tmp_path: Path) -> None:
    data = tmp_path / "data"
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)))
    produced = kiln(
        data,
        "stream",
        "produce",
        "orders",
        "o-1",
        '{"qty": 1}',
        '"two"',
        "--file",
        str(blob),
        "--meta",
        "by=ann",
        "--expected-seq",
        "0",
    )
    assert produced.exit_code == 0, produced.stderr
    entries = json_lines(produced.stdout)
    assert [e["sequence"] for e in entries] == [1, 2, 3]
    assert base64.b64decode(entries[2]["payload_base64"]) == bytes(range(256))
    assert entries[0]["metadata"] == {"by": "ann"}
    consumed = json_lines(kiln(data, "stream", "consume", "orders", "o-1", "--min-seq", "2").stdout)
    assert [e["sequence"] for e in consumed] == [2, 3]
    (status,) = json_lines(kiln(data, "stream", "status", "orders", "o-1").stdout)
    assert status["last_sequence"] == 3
    everything = json_lines(kiln(data, "stream", "status", "orders").stdout)
    assert [s["segment"] for s in everything] == ["o-1"]
    conflict = kiln(data, "stream", "produce", "orders", "o-1", "1", "--expected-seq", "0")
    assert_one_error_line(conflict, 1, "expected sequence 0, actual sequence 3")
    assert_one_error_line(kiln(data, "stream", "produce", "orders", "o-1"), 1, "nothing")


def test_tail_prints_status_and_changes_until_sigterm(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0) as server:
        kiln(tmp_path, "--url", server.url, "stream", "produce", "jobs", "a", "1")
        process = subprocess.Popen(
            [str(KILN), "--url", server.url, "stream", "tail", "jobs"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            first = json_lines(process.stdout.readline())[0]
            assert (first["type"], first["segment"], first["last_sequence"]) == ("status", "a", 1)
            kiln(tmp_path, "--url", server.url, "stream", "produce", "jobs", "a", "2")
            change = json_lines(process.stdout.readline())[0]
            assert (change["type"], change["last_sequence"]) == ("change", 2)
            os.kill(process.pid, signal.SIGTERM)
            assert process.wait(20) == 0
        finally:
            reap(process)

"""Leases contested by 10 processes: one valid holder at a time, fencing always current."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kilndb
from kilndb.server import Server

SECONDS = float(os.environ.get("KILN_LEASE_CONTENTION_SECONDS", "12"))


@pytest.mark.integration
def test_ten_processes_contending_for_one_lease(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0) as server:
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.server.lease_worker",
                    server.url,
                    f"w{n}",
                    str(SECONDS),
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parents[2],
            )
            for n in range(10)
        ]
        reports = []
        for worker in workers:
            out, _ = worker.communicate(timeout=SECONDS + 60)
            assert worker.returncode == 0
            reports.append(json.loads(out))
        with kilndb.connect(server.url) as db:
            writes = [f.value for f in db.store("work").history("log")]
    held = sorted((h for r in reports for h in r["held"]), key=lambda h: h["token"])
    tokens = [h["token"] for h in held]
    assert tokens == list(range(1, len(tokens) + 1))  # every grant a new, larger token
    assert len({r["name"] for r in reports if r["held"]}) > 1  # it really was contended
    for previous, following in itertools.pairwise(held):
        assert following["acquired"] >= previous["until"] - 0.005, (previous, following)
    # Every fenced write carried the newest token: in commit order they never go back.
    written_tokens = [w["token"] for w in writes]
    assert written_tokens == sorted(written_tokens)
    assert set(written_tokens) <= set(tokens)

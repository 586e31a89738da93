"""Smoke run of ``bench/embedded.py``: the table has every row and the run has no errors.

Not a timed test: it only checks that the benchmark runs end to end (tiny sizes,
``--smoke``) and prints what it promises. lmdb and rocksdict are optional here (``make
test`` installs only ``.[dev]``); without them their rows must say "not installed".
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "embedded.py"

#: The start of each row's description, in table order.
ROWS = (
    ("write_none", "write, sync=none, 1 thread"),
    ("write_always_1", "write, sync=always, 1 thread"),
    ("raw_fsync", "raw append 200 B + fdatasync, 1 thread"),
    ("write_always_8", "write, sync=always, 8 threads"),
    ("write_many", "write_many(1,000), sync=always"),
    ("load", "bulk load"),
    ("read", "read latest, random keys"),
    ("history", "history of a key with"),
    ("replay", "full replay of"),
    ("reopen", "reopen 3,000 facts (open + first read)"),
    ("reopen_cold", "reopen without hint files"),
    ("keydir", "keydir memory per key"),
)
TARGETS = 11

#: The peers each row must show: SQLite always, LMDB and rocksdict when installed.
PEERS = {
    "write_none": ("sqlite_normal_row", "lmdb_nosync_txn", "rocks_put"),
    "write_always_1": ("sqlite_full_row_1", "lmdb_sync_txn_1", "rocks_sync_put_1"),
    "write_always_8": ("sqlite_full_row_8", "lmdb_sync_txn_8", "rocks_sync_put_8"),
    "write_many": ("sqlite_full_1000", "lmdb_sync_1000", "rocks_batch_1000"),
    "load": ("sqlite_load", "lmdb_load", "rocks_load"),
    "read": ("sqlite_read", "lmdb_read", "rocks_read"),
    "history": ("sqlite_history", "lmdb_history", "rocks_history"),
    "replay": ("sqlite_replay", "lmdb_replay", "rocks_replay"),
    "reopen": ("sqlite_reopen", "lmdb_reopen", "rocks_reopen"),
}

Results = tuple[str, dict[str, Any]]


def run_smoke(tmp: Path, *, hide: tuple[str, ...] = ()) -> Results:
    """Run the smoke benchmark in a child process; ``hide`` modules fail to import."""
    out = tmp / "results.json"
    args = ["--smoke", "--quiet", "--facts", "3000", "--dir", str(tmp / "data"), "--json", str(out)]
    if hide:
        # Importing a module whose sys.modules entry is None raises ImportError.
        code = (
            "import runpy, sys\n"
            f"for name in {hide!r}: sys.modules[name] = None\n"
            f"sys.path.insert(0, {str(BENCH.parent)!r})\n"
            f"sys.argv = [{str(BENCH)!r}, *{args!r}]\n"
            f"runpy.run_path({str(BENCH)!r}, run_name='__main__')\n"
        )
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, str(BENCH), *args]
    proc = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp / "data").exists(), "the benchmark left its data directory behind"
    return proc.stdout, json.loads(out.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Results:
    return run_smoke(tmp_path_factory.mktemp("bench"))


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_table_has_every_row_in_order(smoke: Results) -> None:
    stdout, _ = smoke
    where = [stdout.find("\n" + label) for _, label in ROWS]
    missing = [label for (_, label), i in zip(ROWS, where, strict=True) if i < 0]
    assert not missing
    assert where == sorted(where)
    assert "KilnDB/peer" in stdout


def test_every_peer_is_measured_or_not_installed(smoke: Results) -> None:
    _, results = smoke
    lines = {(row["row"], row["peer_id"]): row for row in results["rows"]}
    for row, peer_ids in PEERS.items():
        for peer_id in peer_ids:
            line = lines[(row, peer_id)]
            module = {"sqlite": "sqlite3", "lmdb": "lmdb", "rocks": "rocksdict"}[
                peer_id.split("_")[0]
            ]
            if installed(module):
                assert line["measure"]["value"] > 0, line
                assert line["ratio"] > 0, line
            else:
                assert line["skipped"].startswith("not installed"), line
    for row, _ in ROWS:
        assert any(line["row"] == row and line["kiln"]["value"] > 0 for line in results["rows"])


def test_sync_always_rows_report_fsyncs(smoke: Results) -> None:
    _, results = smoke
    for row in ("write_always_1", "write_always_8"):
        note = next(line["kiln"]["note"] for line in results["rows"] if line["row"] == row)
        assert "fsyncs" in note and "writes/fsync" in note


def test_every_target_is_judged(smoke: Results) -> None:
    stdout, results = smoke
    verdicts = [line for line in stdout.splitlines() if line.strip()[:4] in ("PASS", "MISS")]
    assert len(verdicts) == TARGETS
    assert len(results["targets"]) == TARGETS
    assert all("not measured" not in line for line in verdicts)


def test_runs_without_the_bench_extra(tmp_path: Path) -> None:
    stdout, results = run_smoke(tmp_path, hide=("lmdb", "rocksdict"))
    assert "not installed" in stdout
    skipped = [row for row in results["rows"] if row["skipped"]]
    assert skipped
    assert all(row["peer_id"].startswith(("lmdb", "rocks")) for row in skipped)
    assert len(results["targets"]) == TARGETS


def test_raw_fsync_row_measures_both_variants(smoke: Results) -> None:
    stdout, results = smoke
    raw = results["meta"]["raw_fsync"]
    assert raw["record_bytes"] == 200
    assert raw["ops_per_s"]["plain append"] > 0
    assert raw["limit"] in raw["ops_per_s"]
    assert "Targets (issue 13)" in stdout
    assert "90% of raw 200 B append + fdatasync" in stdout


def test_keydir_reports_rss_and_tracemalloc(smoke: Results) -> None:
    _, results = smoke
    note = next(line["kiln"]["note"] for line in results["rows"] if line["row"] == "keydir")
    assert "RSS" in note and "tracemalloc" in note

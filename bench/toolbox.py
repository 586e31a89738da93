#!/usr/bin/env python3
"""Operator's toolbox benchmark: backup, restore, export and import beside SQLite.

Each KilnDB row runs the ``kiln`` command a user would run, as a child process, so its
time includes the command's start (about 0.2 to 0.4 s here); the peers run in this
process. The same facts (``N`` ~100-byte JSON documents under 10,000 keys) are loaded
into a KilnDB database and into an SQLite table (WAL, ``synchronous=FULL``) first. Rows:

1. ``kiln --data D backup P`` (a consistent copy of a database no one else has open)
   beside SQLite's online backup API (``Connection.backup``) and a raw ``cp -r`` of the
   data directory followed by ``sync`` of the copies (the disk's own speed, durable as a
   backup is, with no consistency);
2. ``kiln --url U backup P`` from a running ``kiln serve`` (the replication stream)
   beside SQLite's backup API;
3. ``kiln restore`` (check, install, swap in) beside ``cp -r`` and ``sync``;
4. ``kiln export`` to a JSON Lines file beside SQLite ``SELECT`` to JSON Lines (orjson);
5. ``kiln import`` of that file into an empty database (batches of 1,000, each durable)
   beside SQLite ``executemany`` of the same rows, 1,000 per transaction, built in
   memory, and beside SQLite loading the same file (each line parsed with orjson).

Facts per second throughout: higher is better. No target is set for these rows.

    python bench/toolbox.py            # full run (``make bench``)
    python bench/toolbox.py --smoke    # tiny sizes, a few seconds
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

import kilndb
from server import Cell, Processes, Report, log, payload, render, start_kiln_process

#: The issue whose rows this benchmark adds.
ISSUE = "17"
BATCH = 1000
KEYS = 10_000


def kiln_command() -> list[str]:
    kiln = Path(sys.executable).with_name("kiln")
    return [str(kiln)] if kiln.exists() else [sys.executable, "-m", "kilndb.cli"]


def timed(args: list[str]) -> float:
    """Run one ``kiln`` command; the seconds it took (it must succeed)."""
    started = time.perf_counter()
    subprocess.run(kiln_command() + args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def load_kiln(data: Path, n: int) -> None:
    with kilndb.open(data) as db:
        for start in range(0, n, BATCH):
            db.write_many(
                kilndb.Write("events", f"k{i % KEYS}", payload(i))
                for i in range(start, min(n, start + BATCH))
            )


def sqlite_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS facts (position INTEGER PRIMARY KEY, store TEXT,"
        " key TEXT, seq INTEGER, value TEXT)"
    )
    return conn


def sqlite_rows(start: int, stop: int) -> list[tuple[int, str, str, int, str]]:
    return [
        (i + 1, "events", f"k{i % KEYS}", i // KEYS + 1, orjson.dumps(payload(i)).decode())
        for i in range(start, stop)
    ]


def sqlite_insert(conn: sqlite3.Connection, n: int) -> float:
    """Insert ``n`` rows, 1,000 per transaction; the seconds it took."""
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO facts VALUES (?, ?, ?, ?, ?)", sqlite_rows(start, min(n, start + BATCH))
        )
        conn.execute("COMMIT")
    return time.perf_counter() - started


def sqlite_import(conn: sqlite3.Connection, source: Path) -> float:
    """Load an exported JSON Lines file (one orjson.loads per line, the value stored as
    JSON text), 1,000 rows per transaction; the seconds it took."""
    started = time.perf_counter()
    with source.open("rb") as lines:
        rows: list[tuple[int, str, str, int, str]] = []
        for line in lines:
            fact = orjson.loads(line)
            value = orjson.dumps(fact["value"]).decode()
            rows.append((fact["position"], fact["store"], fact["key"], fact["seq"], value))
            if len(rows) == BATCH:
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO facts VALUES (?, ?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
                rows = []
        if rows:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO facts VALUES (?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
    return time.perf_counter() - started


def sqlite_backup(source: Path, target: Path) -> float:
    started = time.perf_counter()
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return time.perf_counter() - started


def sqlite_export(source: Path, target: Path) -> float:
    started = time.perf_counter()
    with sqlite3.connect(source) as conn, target.open("wb") as out:
        rows = conn.execute("SELECT position, store, key, seq, value FROM facts ORDER BY position")
        for position, store, key, seq, value in rows:
            fact = {"position": position, "store": store, "key": key, "seq": seq}
            out.write(orjson.dumps({**fact, "value": orjson.loads(value)}) + b"\n")
    return time.perf_counter() - started


def copy_tree(source: Path, target: Path) -> float:
    """``cp -r``, then ``sync`` of the copied files (made durable, as a backup and a
    restore make theirs); the seconds it took."""
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(source), str(target)], check=True)
    copied = [str(path) for path in target.rglob("*") if path.is_file()]
    subprocess.run(["sync", *copied], check=True)
    return time.perf_counter() - started


def rate(n: int, seconds: float) -> Cell:
    return Cell(n / seconds, "facts/s")


def run(n: int, root: Path, procs: Processes) -> Report:
    report = Report()
    data, lite = root / "data", root / "facts.sqlite"
    log(f"loading {n:,} facts into KilnDB and SQLite")
    load_kiln(data, n)
    sqlite_insert(sqlite_connect(lite), n)

    log("row 1: backup of a database no one has open")
    kiln = timed(["--data", str(data), "backup", str(root / "backup")])
    copied = rate(n, copy_tree(data, root / "cp"))
    report.add(
        f"backup of {n:,} facts (kiln backup --data)",
        rate(n, kiln),
        [
            ("sqlite3 backup API (Connection.backup)", rate(n, sqlite_backup(lite, root / "b1"))),
            ("cp -r and sync of the data directory (no consistency)", copied),
        ],
    )

    log("row 2: online backup from a running server")
    shutil.copytree(root / "backup", root / "served")  # a backup is a data directory
    url, _, server = start_kiln_process(procs, root / "served")
    kiln = timed(["--url", url, "backup", str(root / "online")])
    report.add(
        f"online backup of {n:,} facts (kiln backup --url)",
        rate(n, kiln),
        [("sqlite3 backup API (Connection.backup)", rate(n, sqlite_backup(lite, root / "b2")))],
    )
    server.terminate()
    server.wait(30)

    log("row 3: restore")
    kiln = timed(["--data", str(root / "restored"), "restore", str(root / "backup")])
    copied = rate(n, copy_tree(data, root / "cp2"))
    report.add(
        f"restore of {n:,} facts (kiln restore: check, install)",
        rate(n, kiln),
        [("cp -r and sync of the data directory (no check)", copied)],
    )

    log("row 4: export to JSON Lines")
    exported = root / "facts.jsonl"
    kiln = timed(["--data", str(data), "export", "--output", str(exported)])
    report.add(
        f"export of {n:,} facts to JSON Lines (kiln export)",
        rate(n, kiln),
        [("sqlite3 SELECT to JSON Lines (orjson)", rate(n, sqlite_export(lite, root / "s.jsonl")))],
    )

    log("row 5: import of JSON Lines")
    kiln = timed(["--data", str(root / "imported"), "import", str(exported)])
    report.add(
        f"import of {n:,} facts, {BATCH:,} per durable batch (kiln import)",
        rate(n, kiln),
        [
            (
                f"sqlite3 executemany, {BATCH:,} per transaction, synchronous=FULL",
                rate(n, sqlite_insert(sqlite_connect(root / "i.sqlite"), n)),
            ),
            (
                "sqlite3 loading the same JSON Lines file (orjson per line), same batches",
                rate(n, sqlite_import(sqlite_connect(root / "j.sqlite"), exported)),
            ),
        ],
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--facts", type=int, help="facts per row (default 500,000)")
    options = parser.parse_args(argv)
    n = options.facts or (2_000 if options.smoke else 500_000)
    procs = Processes()
    root = Path(tempfile.mkdtemp(prefix="kiln-toolbox-bench-"))
    try:
        report = run(n, root, procs)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    print(render(report, issue=ISSUE))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Embedded benchmark: KilnDB beside SQLite, LMDB and rocksdict, printed as one table.

Every engine runs in this process, on this machine, in data directories on the same
filesystem (``--dir``), with 16-byte keys and ~100-byte JSON values that each engine
serialises (orjson) on write and decodes on read, as an application would. See
``bench/README.md`` for what each row measures, how to read the ratios and the targets
of issue 13, which are checked (PASS/MISS) below the table. One row has no engine: the
disk's own rate of a 200-byte append + fdatasync, the limit of a durable single write.

    python bench/embedded.py                 # full run (``make bench``), ~1M facts
    python bench/embedded.py --smoke         # tiny sizes, a few seconds (CI)
    python bench/embedded.py --facts 200000 --json results.json

lmdb and rocksdict come from the ``bench`` extra; when one is missing its rows say
"not installed" and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

import kilndb
from engines import (
    BATCH,
    RAW_RECORD,
    Engine,
    Kiln,
    Lmdb,
    Rocks,
    Sqlite,
    items,
    key_of,
    lmdb,
    rate,
    rocksdict,
    time_batches,
    time_call,
    time_raw_appends,
    time_reads,
    time_reopen,
    time_writes,
    value_of,
)
from table import LOWER_IS_BETTER, Measure, Report, Target, fmt, render, render_targets

KEY_BYTES = 16
THREADS = 8
#: The size of the big database the reopen target is set for.
TARGET_FACTS = 1_000_000


# -- sizes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much work each row does; the full run takes about 4 minutes on 2 cores."""

    facts: int  # facts (= distinct keys) in the big database
    single_none: int  # single writes, sync="none"
    single_always: int  # single writes, sync="always", 1 thread
    per_thread: int  # single writes per thread, sync="always", 8 threads
    batches: int  # write_many batches of BATCH facts, sync="always"
    reads: int  # random reads of the big database
    history: int  # facts of the history key
    history_repeats: int  # full history reads timed

    @classmethod
    def full(cls, facts: int) -> Sizes:
        return cls(
            facts=facts,
            single_none=20_000,
            single_always=2_000,
            per_thread=500,
            batches=50,
            reads=50_000,
            history=10_000,
            history_repeats=10,
        )

    @classmethod
    def smoke(cls, facts: int) -> Sizes:
        return cls(
            facts=facts,
            single_none=300,
            single_always=20,
            per_thread=5,
            batches=3,
            reads=300,
            history=1_000,
            history_repeats=2,
        )


# -- the run -------------------------------------------------------------------------

E = TypeVar("E", bound=Engine)


def best(measures: Sequence[Measure]) -> Measure:
    """The best of several rounds: the highest rate, or the lowest time or size."""
    if len(measures) == 1:
        return measures[0]
    lower = measures[0].unit in LOWER_IS_BETTER
    chosen = min(measures, key=lambda m: m.value if lower else -m.value)
    return Measure(chosen.value, chosen.unit, chosen.note)


PeerFactory = Callable[[Path], Engine]


@dataclass(frozen=True)
class PeerSpec:
    id: str
    label: str
    factory: PeerFactory | None  # None: module not installed
    missing: str = ""


class Bench:
    """Runs every row against KilnDB and each peer, adding the results to a Report."""

    def __init__(
        self, workdir: Path, sizes: Sizes, rounds: int, progress: Callable[[str], None]
    ) -> None:
        self.workdir = workdir
        self.sizes = sizes
        #: Every timed row is the best of this many rounds (bulk load and keydir: one).
        self.rounds = rounds
        self.progress = progress
        #: LMDB's map: virtual address space, so generous is free.
        self.map_size = max(1 << 30, sizes.facts * 2048)
        self._dirs = 0

    def fresh(self, name: str) -> Path:
        self._dirs += 1
        path = self.workdir / f"{self._dirs:02d}-{name}"
        path.mkdir()
        return path

    # peer specifications ---------------------------------------------------------

    def sqlite(self, pid: str, label: str, synchronous: str) -> PeerSpec:
        return PeerSpec(pid, label, lambda p: Sqlite(p / "facts.sqlite", synchronous))

    def lmdb(self, pid: str, label: str, sync: bool) -> PeerSpec:
        if lmdb is None:
            return PeerSpec(pid, label, None, "not installed (pip install lmdb)")
        return PeerSpec(pid, label, lambda p: Lmdb(p, sync, self.map_size))

    def rocks(self, pid: str, label: str, sync: bool) -> PeerSpec:
        if rocksdict is None:
            return PeerSpec(pid, label, None, "not installed (pip install rocksdict)")
        return PeerSpec(pid, label, lambda p: Rocks(p, sync))

    def each_peer(
        self, specs: Sequence[PeerSpec], measure: Callable[[Engine], Measure]
    ) -> list[tuple[str, str, Measure | str]]:
        """Run ``measure`` on a fresh instance of each peer; drop its data afterwards."""
        results: list[tuple[str, str, Measure | str]] = []
        for spec in specs:
            if spec.factory is None:
                results.append((spec.id, spec.label, spec.missing))
                continue
            self.progress(f"  {spec.label}")
            results.append((spec.id, spec.label, self.rounds_of(spec.id, spec.factory, measure)))
        return results

    def kiln(self, sync: kilndb.SyncMode, measure: Callable[[Kiln], Measure]) -> Measure:
        self.progress(f"  KilnDB sync={sync}")
        return self.rounds_of(f"kiln-{sync}", lambda path: Kiln(path, sync), measure)

    def rounds_of(
        self, name: str, factory: Callable[[Path], E], measure: Callable[[E], Measure]
    ) -> Measure:
        """The best of ``rounds`` runs of ``measure``, each on a fresh engine."""
        found = []
        for _ in range(self.rounds):
            path = self.fresh(name)
            engine = factory(path)
            try:
                found.append(measure(engine))
            finally:
                engine.close()
                shutil.rmtree(path, ignore_errors=True)
        return best(found)

    def repeat(self, measure: Callable[[], Measure]) -> Measure:
        """The best of ``rounds`` runs of ``measure`` on the same engine."""
        return best([measure() for _ in range(self.rounds)])

    # rows ------------------------------------------------------------------------

    def run(self, report: Report) -> None:
        self.single_writes(report)
        self.write_many(report)
        self.big_database(report)
        self.history(report)

    def single_writes(self, report: Report) -> None:
        s = self.sizes
        work = items(0, s.single_none, salt=1)
        self.progress("write, sync=none, 1 thread")
        kiln = self.kiln("none", lambda e: Measure(time_writes(e, work), "ops/s"))
        peers = self.each_peer(
            [
                self.sqlite("sqlite_normal_row", "SQLite WAL NORMAL, commit/row", "NORMAL"),
                self.lmdb("lmdb_nosync_txn", "LMDB sync=False, txn/put", sync=False),
                self.rocks("rocks_put", "rocksdict put (WAL, no sync)", sync=False),
            ],
            lambda e: Measure(time_writes(e, work), "ops/s"),
        )
        report.add("write_none", "write, sync=none, 1 thread", kiln, peers)

        self.sync_always_writes(report, 1, s.single_always)
        self.raw_fsync(report, s.single_always)
        self.sync_always_writes(report, THREADS, s.per_thread * THREADS)

    def sync_always_writes(self, report: Report, threads: int, count: int) -> None:
        work = items(0, count, salt=2)
        label = f"write, sync=always, {threads} thread{'s' if threads > 1 else ''}"
        self.progress(label)

        def kiln_always(engine: Kiln) -> Measure:
            before = engine.fsyncs()
            ops = time_writes(engine, work, threads)
            fsyncs = engine.fsyncs() - before
            per = len(work) / fsyncs if fsyncs else float("inf")
            note = f"{len(work):,} writes, {fsyncs:,} fsyncs, {per:.1f} writes/fsync"
            return Measure(ops, "ops/s", note)

        kiln = self.kiln("always", kiln_always)
        connections = f", {threads} connections" if threads > 1 else ""
        peers = self.each_peer(
            [
                self.sqlite(
                    f"sqlite_full_row_{threads}",
                    f"SQLite WAL FULL, commit/row{connections}",
                    "FULL",
                ),
                self.lmdb(f"lmdb_sync_txn_{threads}", "LMDB sync=True, txn/put", sync=True),
                self.rocks(f"rocks_sync_put_{threads}", "rocksdict put, sync=True", sync=True),
            ],
            lambda e: Measure(time_writes(e, work, threads), "ops/s"),
        )
        report.add(f"write_always_{threads}", label, kiln, peers)

    def raw_fsync(self, report: Report, count: int) -> None:
        """The disk's limit for a durable single write: 200 bytes + fdatasync, no engine.

        Measured both as a plain ``O_APPEND`` write and as KilnDB writes its active data
        file (preallocated 4 MiB ahead, ``pwrite`` at increasing offsets); the faster is
        the limit the sync="always" row is judged against.
        """
        label = f"raw append {RAW_RECORD} B + fdatasync, 1 thread"
        self.progress(label)
        variants = {"plain append": False, "preallocated overwrite": True}
        found: dict[str, Measure | None] = {}
        for name, preallocate in variants.items():
            self.progress(f"  {name}")
            rounds: list[Measure] = []
            for _ in range(self.rounds):
                path = self.fresh("raw-fsync")
                try:
                    ops = time_raw_appends(path / "raw.log", count, preallocate=preallocate)
                finally:
                    shutil.rmtree(path, ignore_errors=True)
                if ops is None:  # the filesystem cannot preallocate
                    break
                rounds.append(Measure(ops, "ops/s"))
            found[name] = best(rounds) if rounds else None
        measured = {name: m for name, m in found.items() if m is not None}
        limit_name = max(measured, key=lambda name: measured[name].value)
        limit = measured[limit_name]

        def text(name: str) -> str:
            m = found[name]
            return f"{name} {fmt(m)}" if m is not None else f"{name}: not supported here"

        note = (
            f"the physical limit: one fdatasync per write; {text('plain append')},"
            f" {text('preallocated overwrite')} (fallocate 4 MiB + pwrite); limit: {limit_name}"
        )
        report.add("raw_fsync", label, Measure(limit.value, "ops/s", note))
        report.meta["raw_fsync"] = {
            "writes": count,
            "record_bytes": RAW_RECORD,
            "ops_per_s": {name: None if m is None else m.value for name, m in found.items()},
            "limit": limit_name,
        }

    def write_many(self, report: Report) -> None:
        s = self.sizes
        batches = [items(b * BATCH, BATCH, salt=3) for b in range(s.batches)]
        label = f"write_many({BATCH:,}), sync=always"
        self.progress(label)

        def kiln_many(engine: Kiln) -> Measure:
            before = engine.fsyncs()
            facts = time_batches(engine, batches)
            fsyncs = engine.fsyncs() - before
            return Measure(facts, "facts/s", f"{len(batches)} batches, {fsyncs} fsyncs")

        kiln = self.kiln("always", kiln_many)
        peers = self.each_peer(
            [
                self.sqlite("sqlite_full_1000", f"SQLite WAL FULL, {BATCH:,} rows/commit", "FULL"),
                self.lmdb("lmdb_sync_1000", f"LMDB sync=True, {BATCH:,} puts/txn", sync=True),
                self.rocks("rocks_batch_1000", f"rocksdict WriteBatch({BATCH:,}), sync", sync=True),
            ],
            lambda e: Measure(time_batches(e, batches), "facts/s"),
        )
        report.add("write_many", label, kiln, peers)

    def big_database(self, report: Report) -> None:
        """Load ``facts`` facts into each engine, then read, replay and reopen them."""
        s = self.sizes
        n = s.facts
        rng = random.Random(42)
        read_index = [rng.randrange(n) for _ in range(s.reads)]
        read_keys = [key_of(i) for i in read_index]
        probe = key_of(n // 2)

        def load(engine: Engine) -> Measure:
            gc.collect()
            start = time.perf_counter()
            for first in range(0, n, BATCH):
                engine.put_batch(items(first, min(BATCH, n - first)))
            return Measure(rate(n, time.perf_counter() - start), "facts/s")

        specs: list[tuple[str, str, Callable[[Path], Engine] | None, str]] = [
            ("kiln", "KilnDB", lambda p: Kiln(p, "none"), ""),
        ]
        for spec in (
            self.sqlite("sqlite", "SQLite WAL NORMAL", "NORMAL"),
            self.lmdb("lmdb", "LMDB sync=False", sync=False),
            self.rocks("rocks", "rocksdict (no sync)", sync=False),
        ):
            specs.append((spec.id, spec.label, spec.factory, spec.missing))

        results: dict[str, dict[str, Measure | str]] = {}
        kiln_memory: Measure | None = None
        kiln_cold: Measure | None = None
        for pid, name, factory, missing in specs:
            got = results.setdefault(pid, {})
            if factory is None:
                for row in ("load", "read", "replay", "reopen"):
                    got[row] = missing
                continue
            self.progress(f"{n:,}-fact database: {name}")
            path = self.fresh(f"big-{pid}")
            engine = factory(path)
            try:
                got["load"] = load(engine)
                self.measure_loaded(engine, got, read_keys, read_index, probe)
                if isinstance(engine, Kiln):
                    engine.close()
                    kiln_memory = self.keydir_memory(engine, n)
                    kiln_cold = self.reopen_without_hints(engine, probe)
            finally:
                engine.close()
                shutil.rmtree(path, ignore_errors=True)

        def peers_of(row: str, labels: dict[str, str]) -> list[tuple[str, str, Measure | str]]:
            return [(f"{pid}_{row}", label, results[pid][row]) for pid, label in labels.items()]

        def kiln_of(row: str) -> Measure:
            found = results["kiln"][row]
            assert isinstance(found, Measure)
            return found

        report.add(
            "load",
            f"bulk load {n:,} facts, batches of {BATCH:,}, sync=none",
            kiln_of("load"),
            peers_of(
                "load",
                {
                    "sqlite": "SQLite WAL NORMAL, 1,000 rows/commit",
                    "lmdb": "LMDB sync=False, 1,000 puts/txn",
                    "rocks": "rocksdict WriteBatch(1,000)",
                },
            ),
        )
        report.add(
            "read",
            f"read latest, random keys of {n:,}",
            kiln_of("read"),
            peers_of(
                "read",
                {
                    "sqlite": "SQLite SELECT by primary key",
                    "lmdb": "LMDB get (read txn/get)",
                    "rocks": "rocksdict get",
                },
            ),
        )
        report.add(
            "replay",
            f"full replay of {n:,} facts",
            kiln_of("replay"),
            peers_of(
                "replay",
                {
                    "sqlite": "SQLite table scan ORDER BY rowid",
                    "lmdb": "LMDB cursor scan (key order)",
                    "rocks": "rocksdict iteration (key order)",
                },
            ),
        )
        report.add(
            "reopen",
            f"reopen {n:,} facts (open + first read)",
            kiln_of("reopen"),
            peers_of(
                "reopen",
                {
                    "sqlite": "SQLite connect + first SELECT",
                    "lmdb": "LMDB open + first get",
                    "rocks": "rocksdict open + first get",
                },
            ),
        )
        if kiln_cold is not None:
            report.add("reopen_cold", "reopen without hint files (log scan)", kiln_cold)
        if kiln_memory is not None:
            report.add("keydir", f"keydir memory per key, {n:,} keys", kiln_memory)

    def measure_loaded(
        self,
        engine: Engine,
        got: dict[str, Measure | str],
        read_keys: Sequence[str],
        read_index: Sequence[int],
        probe: str,
    ) -> None:
        """Reopen, read and replay a loaded big database, each the best of ``rounds``."""
        closes: list[float] = []

        def reopen() -> Measure:
            # Measure the database as a restart finds it: after a clean close.
            start = time.perf_counter()
            engine.close()
            closes.append(time.perf_counter() - start)
            return Measure(time_reopen(engine, probe), "s")

        got["reopen"] = reopened = self.repeat(reopen)
        if isinstance(engine, Kiln):
            reopened.note = f"the clean close before it: {min(closes):.2f} s"
        got["read"] = self.repeat(
            lambda: Measure(time_reads(engine, read_keys, read_index), "ops/s")
        )
        got["replay"] = self.repeat(
            lambda: Measure(time_call(engine.scan, self.sizes.facts), "facts/s")
        )

    def keydir_memory(self, engine: Kiln, keys: int) -> Measure:
        """Bytes per key that an open database holds (opened untimed, twice).

        The keydir lives in the Rust core's memory, which tracemalloc cannot see, so the
        open is measured both ways: the growth of the resident set across an open
        (``/proc/self/statm`` of a fresh child process, see :func:`rss_of_open`), and
        tracemalloc's Python allocations in this process. The larger is the figure.
        """
        self.progress("  keydir memory (resident set growth, tracemalloc)")
        rss = rss_growth_of_open(engine.path, keys)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            engine.reopen()
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        stats = engine.db.stats()
        if stats["keys"] != keys:
            raise RuntimeError(f"KilnDB holds {stats['keys']} keys, not {keys}")
        engine.close()
        mib = 2**20
        rss_text = "RSS growth not measurable here" if rss is None else f"RSS +{rss / mib:,.1f} MiB"
        note = (
            f"open of {keys:,} keys: {rss_text} (/proc/self/statm),"
            f" tracemalloc {held / mib:,.1f} MiB; per key: the larger"
        )
        return Measure(max(held, rss or 0) / keys, "B/key", note)

    def reopen_without_hints(self, engine: Kiln, probe: str) -> Measure:
        """Open + first read after deleting the hint files: recovery reads every record."""
        self.progress("  reopen without hint files")
        removed = 0
        for hint in engine.path.rglob("*.hint"):
            hint.unlink()
            removed += 1
        seconds = time_reopen(engine, probe)
        return Measure(seconds, "s", f"{removed} hint files removed")

    def history(self, report: Report) -> None:
        s = self.sizes
        key = "h" + "0" * (KEY_BYTES - 2) + "1"
        values = [value_of(i) for i in range(s.history)]
        label = f"history of a key with {s.history:,} facts"
        self.progress(label)

        def measure(engine: Engine) -> Measure:
            for first in range(0, len(values), BATCH):
                engine.append_history(key, values[first : first + BATCH])
            count = engine.history(key)
            if count != len(values):
                raise RuntimeError(f"{type(engine).__name__} history has {count} facts")
            return Measure(
                time_call(lambda: engine.history(key), len(values), s.history_repeats), "facts/s"
            )

        kiln = self.kiln("none", measure)
        peers = self.each_peer(
            [
                self.sqlite("sqlite_history", "SQLite WHERE key=? ORDER BY seq", "NORMAL"),
                self.lmdb("lmdb_history", "LMDB prefix range scan", sync=False),
                self.rocks("rocks_history", "rocksdict prefix range scan", sync=False),
            ],
            measure,
        )
        report.add("history", label, kiln, peers)


# -- resident memory of an open ------------------------------------------------------

RSS_OF_OPEN = "--rss-of-open"


def resident_bytes() -> int | None:
    """This process's resident set size (``/proc/self/statm``), or None off Linux."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def trim_heap() -> None:
    """Collect garbage and hand free heap memory back to the OS (glibc ``malloc_trim``)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_of_open(path: Path) -> dict[str, int] | None:
    """In this (fresh) process: resident bytes before and after ``kilndb.open(path)``.

    A fresh process, so that the open cannot reuse heap memory an earlier open freed.
    One tiny database is opened and closed first, so that lazy imports and one-time
    allocations are not counted, and freed heap memory is handed back to the OS before
    each reading, so that the open's transient buffers are not counted either.
    """
    with tempfile.TemporaryDirectory(dir=path.parent) as warm:
        kilndb.open(Path(warm) / "warm", sync="none").close()
    trim_heap()
    before = resident_bytes()
    db = kilndb.open(path, sync="none")
    trim_heap()
    after = resident_bytes()
    keys = int(db.stats()["keys"])
    db.close()
    if before is None or after is None:
        return None
    return {"before": before, "after": after, "keys": keys}


def rss_growth_of_open(path: Path, keys: int) -> int | None:
    """Bytes the resident set grows by when a fresh process opens ``path`` (closed)."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), RSS_OF_OPEN, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring the RSS of an open failed:\n{done.stderr}")
    found = orjson.loads(done.stdout.strip().splitlines()[-1])
    if found is None:
        return None
    if found["keys"] != keys:
        raise RuntimeError(f"KilnDB holds {found['keys']} keys, not {keys}")
    return max(0, int(found["after"]) - int(found["before"]))


# -- targets -------------------------------------------------------------------------


def check_targets(report: Report) -> list[Target]:
    """The targets of issue 13, each judged from this run's table."""
    targets: list[Target] = []

    def ratio(row: str, peer_id: str, minimum: float, text: str) -> None:
        line = report.find(row, peer_id)
        value = None if line is None else line.ratio
        if value is None:
            targets.append(Target(False, text, "not measured"))
        else:
            targets.append(Target(value >= minimum, text, f"{value:.2f}x (target {minimum:g}x)"))

    def absolute(
        row: str, ok: Callable[[float], bool], text: str, goal: float, aside: str = ""
    ) -> None:
        """A target on KilnDB's own number; ``goal`` in the row's unit."""
        line = report.find(row)
        if line is None:
            targets.append(Target(False, text, "not measured"))
            return
        got = line.kiln.value
        goal_text = fmt(Measure(goal, line.kiln.unit))
        targets.append(Target(ok(got), text, f"{fmt(line.kiln)} (target {goal_text}){aside}"))

    def of_limit(row: str, limit_row: str, minimum: float, text: str) -> None:
        """KilnDB's row as a share of another row's KilnDB column (a physical limit)."""
        line, limit = report.find(row), report.find(limit_row)
        if line is None or limit is None or not limit.kiln.value:
            targets.append(Target(False, text, "not measured"))
            return
        share = line.kiln.value / limit.kiln.value
        targets.append(
            Target(
                share >= minimum,
                text,
                f"{share:.0%} of {fmt(limit.kiln)} (target {minimum:.0%})",
            )
        )

    ratio(
        "write_none",
        "sqlite_normal_row",
        3.0,
        "write sync=none >= 3x SQLite NORMAL commit/row",
    )
    ratio(
        "write_always_1",
        "sqlite_full_row_1",
        1.0,
        "write sync=always (1 thread) >= 1x SQLite FULL commit/row",
    )
    of_limit(
        "write_always_1",
        "raw_fsync",
        0.9,
        f"write sync=always (1 thread) >= 90% of raw {RAW_RECORD} B append + fdatasync",
    )
    ratio(
        "write_many",
        "sqlite_full_1000",
        1.5,
        "write_many(1000) durable >= 1.5x SQLite FULL 1,000 rows/commit",
    )
    absolute(
        "write_many",
        lambda v: v >= 500_000,
        "write_many(1000) durable >= 500,000 facts/s",
        500_000,
    )
    ratio("read", "sqlite_read", 2.0, "read latest >= 2x SQLite SELECT by primary key")
    ratio("history", "sqlite_history", 1.0, "history >= 1x SQLite WHERE key=? ORDER BY seq")
    ratio("replay", "sqlite_replay", 2.0, "replay >= 2x SQLite full table scan")
    absolute("replay", lambda v: v >= 1_000_000, "replay >= 1,000,000 facts/s", 1_000_000)
    reopened = report.find("reopen")
    facts = int(report.meta.get("sizes", {}).get("facts", 0))
    aside = ""
    if reopened is not None and facts != TARGET_FACTS:
        aside = f"; {facts:,} facts here, the target is set for {TARGET_FACTS:,}"
    absolute(
        "reopen",
        lambda v: v <= 1.0,
        f"reopen of {TARGET_FACTS:,} facts <= 1 s",
        1.0,
        aside,
    )
    absolute("keydir", lambda v: v <= 100, "keydir <= 100 bytes per key", 100)
    return targets


# -- entry point ---------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    """``device (fstype) on mountpoint`` of the mount holding ``path``, best effort."""
    resolved = str(path.resolve())
    best = ("?", "?", "/")
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for entry in mounts:
                device, mount, fstype, *_ = entry.split()
                inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[2]):
                    best = (device, fstype, mount)
    except OSError:
        return "unknown filesystem"
    return f"{best[0]} ({best[1]}) on {best[2]}"


def version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def default_dir() -> Path:
    """``bench/.data`` in the repository: the disk a user's ``./data`` would be on."""
    return Path(__file__).resolve().parent / ".data"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (CI)")
    parser.add_argument(
        "--facts", type=int, default=None, help="facts in the big database (default 1,000,000)"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="parent of the temporary data directories (default: bench/.data)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="also dump the results as JSON to PATH (or stdout with no PATH)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="report the best of this many rounds per measure (default 3; --smoke: 1)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.facts is not None and args.facts < BATCH:
        parser.error(f"--facts must be at least {BATCH}")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == [RSS_OF_OPEN]:  # the child process of rss_growth_of_open
        print(orjson.dumps(rss_of_open(Path(raw[1]))).decode())
        return 0
    args = parse_args(raw)
    facts = args.facts or (3_000 if args.smoke else 1_000_000)
    sizes = Sizes.smoke(facts) if args.smoke else Sizes.full(facts)
    rounds = args.rounds or (1 if args.smoke else 3)
    parent: Path = args.dir or default_dir()
    created_parent = not parent.exists()
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="kiln-bench-", dir=parent))

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    sample = orjson.dumps(value_of(facts // 2))
    meta: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "sizes": asdict(sizes),
        "rounds": rounds,
        "key_bytes": len(key_of(facts // 2)),
        "value_bytes": len(sample),
        "directory": str(workdir),
        "filesystem": filesystem_of(workdir),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "kilndb": kilndb.__version__,
        "sqlite": sqlite3.sqlite_version,
        "lmdb": version_of("lmdb"),
        "rocksdict": version_of("rocksdict"),
    }
    report = Report(meta)
    started = time.perf_counter()
    try:
        Bench(workdir, sizes, rounds, progress).run(report)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
            if created_parent:
                with contextlib.suppress(OSError):
                    parent.rmdir()
    meta["seconds"] = round(time.perf_counter() - started, 1)
    report.targets = check_targets(report)

    print(
        f"KilnDB {meta['kilndb']} embedded benchmark ({meta['mode']} run, {meta['seconds']} s):"
        f" {meta['key_bytes']}-byte keys, ~{meta['value_bytes']}-byte JSON values,"
        f" big database {facts:,} facts"
    )
    print(
        f"Python {meta['python']}, {meta['machine']}; data on {meta['filesystem']};"
        f" SQLite {meta['sqlite']}, lmdb {meta['lmdb']}, rocksdict {meta['rocksdict']}"
    )
    print()
    print(render(report))
    print()
    print(
        "KilnDB/peer: how many times better KilnDB is (> 1 = KilnDB ahead): KilnDB/peer"
        " for throughput, peer/KilnDB for times. Every engine encodes values with orjson"
        " on write and decodes them on read."
        f" Each number is the best of {rounds} round{'s' if rounds > 1 else ''}"
        " (bulk load, reopen without hints and keydir: one)."
    )
    print()
    print(render_targets(report.targets))
    if args.json is not None:
        dumped = orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode()
        if args.json == "-":
            print(dumped)
        else:
            Path(args.json).write_text(dumped + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

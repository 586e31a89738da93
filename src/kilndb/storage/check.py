"""Offline check and repair of one database directory: what ``kiln check [--fix]`` runs.

Theory of operation
-------------------
:func:`check_database` works on a database that no process has open: it takes the
directory's ``LOCK`` (:class:`~kilndb.DatabaseLockedError` while anyone holds it) and
reads every file itself, independently of :mod:`kilndb.storage.recovery`, so that it can
say *what* is wrong and *where* instead of stopping at the first damage.

A frame (layout in :mod:`kilndb.codec`) is *intact* when its length fits in the file and
the CRC-32 of its body matches; a record (kinds in :mod:`kilndb.storage.records`) is
*valid* when its body is a JSON object of a known kind carrying the fields recovery
relies on. The checker verifies, and reports each finding as a :class:`Problem` whose
``kind`` is one of:

``meta``       META is missing or unreadable.
``header``     a data file's first frame is not its intact header, or the header names
               another file or database, or a ``first_position`` not above every
               position of the earlier files.
``frame``      a frame is short, announces an impossible length or fails its CRC.
``json``       an intact frame whose body is not a JSON object.
``record``     a JSON body of an unknown kind or without the fields of its kind.
``order``      a fact whose position is not above every earlier position of the log.
``batch``      a ``write_many`` batch header not followed by exactly its ``n`` facts,
               numbered ``first … first+n-1``; or facts kept after damage that may
               have swallowed a batch's header (see below).
``torn-tail``  the newest file ends in a write a crash interrupted.
``hint``       a hint file that is unreadable, does not match its data file's length or
               contents, or has no data file.
``leftover``   a ``.tmp`` or ``.compact`` file left by an interrupted write.

*The native walk.* A data file with nothing wrong is the common case, so each file is
first handed to the native core (:func:`kilndb.storage.check_file.check_file`), which
applies all the rules above in one pass and indexes the file when it is intact; the
hint is then compared with that index natively too. These walks run ahead of the
checker, several files at once, each from its own header's first position; a file's
walk is used when its turn shows that header right. At the first thing the core's rules
do not cover, whether damage or only a record in a layout of its own, the file is read
again frame by frame as below. So the core can only answer "nothing wrong" faster.

*Resynchronisation.* After a damaged frame the reader searches forward for the next
offset where an intact frame holding a valid-looking record starts: a length that fits,
``{"`` right after it, a matching CRC and a JSON object with a ``position``, ``batch``
or ``file`` key. JSON text never holds the raw bytes of a plausible length field (each of
its bytes is printable, so it would announce at least 0x20202020 bytes), so a match
inside an intact record body is impossible in files under 512 MiB; inside random
garbage it also needs a CRC-32 collision. Everything between the records kept is the
damaged range. In the newest file, damage after which no intact frame follows is a torn
tail and is treated as recovery treats it: cut, and kept as ``NNNNNNNN.log.torn-OFFSET``.

*Batches are all or nothing.* A batch that lost a frame, whose facts are out of
sequence, or that a sealed file ends inside, is dropped as a whole, and so are facts that
resynchronisation finds inside the position range of a dropped batch (its later facts).
A batch header that failed its CRC but whose length field and text survive still counts
if the facts after it fit its numbers: if all of them follow intact they are kept (as
single facts, the header being lost), else all are dropped. A batch whose header was
destroyed beyond recognition cannot be told from single writes (the format marks batch
membership only in the header): its surviving facts are kept, and when positions vanished
in a damaged range of more than one frame a ``batch`` problem says that they may be the
rest of a batch.

*Repair* (``fix=True``) rewrites every data file with a problem so that it holds its
header (the original, or a fresh one with the same file number and the highest
``first_position`` its facts allow) followed by every record kept, in the
original order. The damaged ranges are first written, fsynced, to
``NNNNNNNN.log.corrupt-OFFSET`` beside the file (``OFFSET`` in the file as it was), the
file's hint is deleted (a scan at the next open replaces it), and the new contents go to
a temporary file that is fsynced, renamed over the old file, and the directory fsynced.
So a crash during a repair leaves either the old file or the new one, never a mix, and
no damaged byte is ever destroyed. Stale hints and leftovers are deleted; a missing or
unreadable META is rebuilt from the database id in the file headers. Finally the whole
directory is checked again, and :attr:`CheckReport.fixed` says whether it came out clean.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from kilndb.codec import FRAME_HEADER_SIZE, encode_frame
from kilndb.errors import NotFoundError, StorageError
from kilndb.storage.check_file import Ahead, FileResult, Problem, check_file, walk_ahead
from kilndb.storage.datafile import (
    HINT_SUFFIX,
    LEFTOVER_SUFFIXES,
    data_path,
    free_name,
    fsync_directory,
    hint_path,
    list_data_files,
    write_durably,
)
from kilndb.storage.hint import TOMBSTONE, Hint, column_bytes, read_hint
from kilndb.storage.ids import IdCodec
from kilndb.storage.lockfile import DatabaseLock
from kilndb.storage.meta import FORMAT_VERSION, write_meta
from kilndb.storage.records import file_header
from kilndb.storage.resync import Buffer

__all__ = ["CheckReport", "Problem", "check_database"]

log = logging.getLogger("kilndb.storage")

_REPAIR_SUFFIX = ".repair.tmp"
#: Data files walked at once by the native core (each holds its file in memory).
_WALKERS = 4


@dataclass(slots=True)
class CheckReport:
    """What :func:`check_database` found and, with ``fix``, what it repaired."""

    files_checked: int
    records_ok: int
    problems: list[Problem]
    fixed: bool = False
    records_recovered: int = 0
    bytes_quarantined: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was wrong, or everything wrong was repaired."""
        return not self.problems or self.fixed


def check_database(directory: Path, fix: bool = False) -> CheckReport:
    """Check the database in ``directory`` (``DATA_DIR/<database>``); repair it if ``fix``.

    ``records_ok`` counts the intact, valid records found (headers, batch headers and
    facts); ``records_recovered`` the facts carried over into repaired files;
    ``bytes_quarantined`` the bytes moved aside into ``.corrupt-*`` and ``.torn-*`` files.

    Raises NotFoundError if ``directory`` holds no database, DatabaseLockedError if a
    process has it open, StorageError if its META names a format this version cannot read
    or an I/O operation fails.
    """
    directory = Path(directory)
    if not directory.is_dir() or not ((directory / "META").exists() or list_data_files(directory)):
        raise NotFoundError(f"no database in {directory}")
    lock = DatabaseLock(directory)
    try:
        checker = _Checker(directory)
        report = checker.run()
        if fix and report.problems:
            recovered, quarantined = checker.repair()
            report.records_recovered = recovered
            report.bytes_quarantined = quarantined
            report.fixed = not _Checker(directory).run().problems
        return report
    except OSError as exc:
        raise StorageError(f"could not check {directory}: {exc}") from exc
    finally:
        lock.release()


# -- the whole directory -------------------------------------------------------------


class _Checker:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.problems: list[Problem] = []
        self.meta: dict[str, Any] | None = None
        self.files: list[FileResult] = []
        self.stale_hints: list[Path] = []
        self.leftovers: list[Path] = []
        self.database_id: str | None = None

    def problem(self, path: Path, offset: int, kind: str, detail: str) -> None:
        self.problems.append(Problem(str(path), offset, kind, detail))

    def run(self) -> CheckReport:
        directory = self.directory
        self.read_meta()
        file_ids = list_data_files(directory)
        last = 0
        workers = min(_WALKERS, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers, thread_name_prefix="kiln-check") as pool:
            ahead = [pool.submit(walk_ahead, data_path(directory, f)) for f in file_ids]
            for index, file_id in enumerate(file_ids):
                newest = index == len(file_ids) - 1
                result = self.check_data_file(file_id, newest, last, ahead[index].result())
                last = max(last, result.first_position - 1, result.last_fact_position)
        present = set(file_ids)
        for entry in sorted(directory.iterdir()):
            name = entry.name
            if name.endswith(LEFTOVER_SUFFIXES):
                self.leftovers.append(entry)
                self.problem(entry, 0, "leftover", "temporary file of an interrupted write")
            elif _hint_file_id(name) not in present | {None}:
                self.stale_hints.append(entry)
                self.problem(entry, 0, "hint", "hint without a data file")
        return CheckReport(
            files_checked=len(file_ids),
            records_ok=sum(r.records_ok for r in self.files),
            problems=self.problems,
        )

    def read_meta(self) -> None:
        path = self.directory / "META"
        try:
            meta = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            self.problem(path, 0, "meta", "META is missing")
            return
        except orjson.JSONDecodeError as exc:
            self.problem(path, 0, "meta", f"META is not JSON: {exc}")
            return
        if not isinstance(meta, dict) or not isinstance(meta.get("database_id"), str):
            self.problem(path, 0, "meta", "META has no database_id")
            return
        if meta.get("format") != FORMAT_VERSION:
            raise StorageError(
                f"{path}: on-disk format {meta.get('format')!r} is not supported"
                f" (this KilnDB reads format {FORMAT_VERSION})"
            )
        self.meta = meta
        self.database_id = meta["database_id"]

    def check_data_file(
        self, file_id: int, newest: bool, last: int, ahead: Ahead | None = None
    ) -> FileResult:
        path = data_path(self.directory, file_id)
        with path.open("rb") as handle:
            length = os.fstat(handle.fileno()).st_size
            result = FileResult(file_id, path, newest, length)
            buf: Buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if length else b""
            try:
                result = check_file(buf, handle.fileno(), result, last, self.database_id, ahead)
                if self.database_id is None and result.header is not None:
                    header = orjson.loads(buf[FRAME_HEADER_SIZE : result.header[1] - 4])
                    if isinstance(header.get("database_id"), str):
                        self.database_id = header["database_id"]
            finally:
                if isinstance(buf, mmap.mmap):
                    buf.close()
        self.files.append(result)
        self.problems.extend(result.problems)
        if not result.problems:
            self.check_hint(result)
        return result

    def check_hint(self, result: FileResult) -> None:
        path = hint_path(self.directory, result.file_id)
        if not path.exists():
            return
        hint = read_hint(path, result.file_id, result.length)
        if hint is None:
            error: str | None = "hint is damaged or does not match the length of its data file"
        else:
            codec = IdCodec(self.database_id) if self.database_id else None
            if result.indexed is not None:
                error = result.indexed.hint_mismatch(
                    *column_bytes(hint),
                    hint.stores,
                    hint.keys,
                    hint.ids,
                    None if codec is None else codec.prefix,
                )
            else:
                try:
                    error = _hint_mismatch(hint, result.facts, codec)
                except IndexError:
                    error = "hint names a store it does not list"
        if error is not None:
            self.stale_hints.append(path)
            self.problem(path, 0, "hint", error)

    # -- repair ----------------------------------------------------------------------

    def repair(self) -> tuple[int, int]:
        """Fix what :meth:`run` found; return (facts recovered, bytes quarantined)."""
        directory = self.directory
        recovered = quarantined = 0
        for path in [*self.leftovers, *self.stale_hints]:
            path.unlink(missing_ok=True)
            log.warning("check: removed %s", path, extra={"path": str(path)})
        if self.meta is None and self.database_id is not None:
            first = min((r.first_position for r in self.files), default=1)
            self.meta = {
                "format": FORMAT_VERSION,
                "database_id": self.database_id,
                "created_at": time.time(),
                "epochs": [{"epoch": 0, "start_position": 1}],
                "retention": {},
                "compacted_through": first - 1,
            }
            write_meta(directory, self.meta)
            log.warning("check: rebuilt %s", directory / "META")
        for result in self.files:
            if result.problems and self.database_id is not None:
                moved = _rewrite(result, self.database_id)
                recovered += len(result.facts)
                quarantined += moved
        # Positions of dropped facts were acknowledged once: keep them from ever being
        # handed out again, even if a later crash cuts everything after them.
        floor = max((r.highest_position for r in self.files if r.problems), default=0)
        meta = self.meta
        if meta is not None and floor > int(meta.get("position_floor", 0)):
            meta["position_floor"] = floor
            write_meta(directory, meta)
        fsync_directory(directory)
        return recovered, quarantined


def _hint_mismatch(
    hint: Hint, facts: dict[int, tuple[int, dict[str, Any]]], codec: IdCodec | None
) -> str | None:
    """How a readable hint disagrees with the facts of its data file, if it does."""
    previous = 0
    for i in range(len(hint)):
        offset, position = hint.offset[i], hint.position[i]
        found = facts.get(offset)
        if found is None:
            return f"hint names a fact at offset {offset} where there is none"
        size, record = found
        explicit = hint.ids.get(position)
        if explicit is not None:
            same_id = explicit == record["id"]
        else:  # not in the hint's id list: must be an id the database generated
            same_id = codec is not None and codec.position_of(record["id"]) == position
        if not (
            previous < position == record["position"]
            and size == hint.size[i]
            and hint.seq[i] == record["seq"] | (TOMBSTONE if record["deleted"] else 0)
            and hint.ttime[i] == record["transaction_time"]
            and hint.stores[hint.store[i]] == record["store"]
            and hint.keys[i] == record["key"]
            and same_id
        ):
            return f"hint entry for position {position} does not match the data file"
        previous = position
    return None


def _hint_file_id(name: str) -> int | None:
    stem = name[: -len(HINT_SUFFIX)]
    return int(stem) if name.endswith(HINT_SUFFIX) and stem.isdigit() else None


def _runs(frames: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent ``(start, end)`` ranges merged."""
    runs: list[tuple[int, int]] = []
    for start, end in frames:
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def _rewrite(result: FileResult, database_id: str) -> int:
    """Rewrite one damaged data file as described in the module docstring.

    Returns the number of bytes moved into quarantine files.
    """
    path, directory = result.path, result.path.parent
    data = path.read_bytes()
    kept = ([result.header] if result.header else []) + result.kept
    gaps, cursor = [], 0
    for start, end in _runs(kept):
        if start > cursor:
            gaps.append((cursor, start))
        cursor = end
    if result.data_end > cursor:
        gaps.append((cursor, result.data_end))
    moved = 0
    for start, end in gaps:
        target = free_name(path.with_name(f"{path.name}.corrupt-{start}"))
        write_durably(target, [data[start:end]])
        moved += end - start
        log.warning(
            "check: %d damaged bytes of %s at offset %d moved to %s",
            end - start,
            path,
            start,
            target.name,
            extra={"path": str(path), "offset": start, "quarantine": str(target)},
        )
    if result.torn_at is not None:
        tail = data[result.torn_at :].rstrip(b"\0")
        if tail:
            target = free_name(path.with_name(f"{path.name}.torn-{result.torn_at}"))
            write_durably(target, [tail])
            moved += len(tail)
    fsync_directory(directory)
    hint_path(directory, result.file_id).unlink(missing_ok=True)
    fsync_directory(directory)
    if result.header is not None:
        header = data[result.header[0] : result.header[1]]
    else:
        header = encode_frame(file_header(result.file_id, result.first_position, database_id))
    temporary = path.with_name(path.name + _REPAIR_SUFFIX)
    write_durably(temporary, [header, *(data[s:e] for s, e in _runs(result.kept))])
    os.replace(temporary, path)
    fsync_directory(directory)
    log.warning(
        "check: rewrote %s keeping %d facts",
        path,
        len(result.facts),
        extra={"path": str(path), "facts": len(result.facts)},
    )
    return moved

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
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kilndb.codec import FRAME_HEADER_SIZE, FRAME_OVERHEAD, encode_frame
from kilndb.errors import NotFoundError, StorageError
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
from kilndb.storage.hint import Hint, read_hint
from kilndb.storage.ids import IdCodec
from kilndb.storage.keydir import TOMBSTONE
from kilndb.storage.lockfile import DatabaseLock
from kilndb.storage.meta import FORMAT_VERSION, write_meta
from kilndb.storage.records import BATCH_PREFIX, FACT_PREFIX, FILE_PREFIX, file_header
from kilndb.storage.resync import Buffer, frame_at, nonzero_end, parse_record, resync

__all__ = ["CheckReport", "Problem", "check_database"]

log = logging.getLogger("kilndb.storage")

_REPAIR_SUFFIX = ".repair.tmp"
_BATCH_TEXT = re.compile(rb'\{"batch":(\d+),"first":(\d+)\}')
_unpack_u32 = struct.Struct(">I").unpack_from
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: the file, the byte offset in it (0 for a whole file), what and why."""

    path: str
    offset: int
    kind: str
    detail: str


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


# -- reading frames ------------------------------------------------------------------


def _positive(value: object) -> int | None:
    """``value`` if it is a positive int (not a bool), else None."""
    return value if type(value) is int and value >= 1 else None


def _fact_error(record: dict[str, Any]) -> str | None:
    """Why a fact record could not be indexed by recovery, or None if it can."""
    for name in ("id", "store", "key"):
        if not isinstance(record.get(name), str):
            return f"fact field {name!r} missing or not a string"
    if _positive(record.get("position")) is None:
        return "fact position missing or not a positive integer"
    seq = _positive(record.get("seq"))
    if seq is None or seq >= TOMBSTONE:
        return "fact seq missing or out of range"
    if not isinstance(record.get("deleted"), bool):
        return "fact field 'deleted' missing or not a boolean"
    ttime = record.get("transaction_time")
    if isinstance(ttime, bool) or not isinstance(ttime, int | float):
        return "fact transaction_time missing or not a number"
    return None


# -- one data file -------------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    """An open batch: its header's offset, count and first position, frames so far."""

    offset: int
    count: int
    first: int
    frames: list[tuple[int, int]] = field(default_factory=list)
    facts: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    #: Known only from the text of a damaged header, so less trusted (see record()).
    header_lost: bool = False


@dataclass
class _FileResult:
    file_id: int
    path: Path
    newest: bool
    length: int
    #: ``(start, end)`` of the intact header frame, or None if a new one is needed.
    header: tuple[int, int] | None = None
    first_position: int = 1
    #: ``(start, end)`` of every other frame kept, in file order.
    kept: list[tuple[int, int]] = field(default_factory=list)
    #: frame offset -> (frame size, record) of every fact kept.
    facts: dict[int, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    #: Where the data ends: the end marker, the file end or the start of a torn tail.
    data_end: int = 0
    torn_at: int | None = None
    problems: list[Problem] = field(default_factory=list)
    records_ok: int = 0
    #: Highest position seen in the file, kept or dropped: a repair records it so that
    #: no position an acknowledged fact ever had is handed out again.
    highest_position: int = 0


class _FileScan:
    """Walk one data file's frames, resynchronising after damage (see module docstring)."""

    def __init__(
        self, buf: Buffer, result: _FileResult, last: int, database_id: str | None
    ) -> None:
        self.buf = buf
        self.result = result
        #: Highest position of the log so far (facts and headers of earlier files).
        self.last = last
        self.database_id = database_id
        self.batch: _Batch | None = None
        #: Facts below this position belong to a dropped batch.
        self.drop_below = 0
        #: Offset of a damaged range of several frames that the last resync skipped.
        self.skipped: int | None = None
        self.first_fact: int | None = None

    def problem(self, offset: int, kind: str, detail: str) -> None:
        self.result.problems.append(Problem(str(self.result.path), offset, kind, detail))

    def run(self) -> None:
        result, buf, end = self.result, self.buf, self.result.length
        result.data_end = end
        pos = self.read_header()
        while pos is not None and pos < end:
            found = frame_at(buf, pos, end)
            if isinstance(found, str):
                if found in ("end-marker", "short") and nonzero_end(buf, pos, end) == pos:
                    result.data_end = pos  # zeros to the end: the end of the data
                    break
                detail = {
                    "end-marker": "zero length header before more data",
                    "short": "frame cut short by the end of the file",
                    "length": "frame length runs past the end of the file",
                    "crc": "CRC mismatch",
                }[found]
                pos = self.damaged(pos, "frame", detail)
                continue
            frame_end, body = found
            record = parse_record(body)
            if record is None:
                pos = self.damaged(pos, "json", "body is not a JSON object")
                continue
            error = self.record(pos, frame_end, body, record)
            if error is not None:
                pos = self.damaged(pos, "record", error)
                continue
            pos = frame_end
        batch = self.batch
        if batch is not None and result.torn_at is None:
            if result.newest:
                self.tear(batch.offset, f"incomplete batch of {batch.count} facts at the end")
            else:
                self.drop_batch(f"file ends after {len(batch.facts)} of its facts")
        if result.header is None:
            self.choose_first_position()
        result.highest_position = max(self.last, self.drop_below - 1)

    def read_header(self) -> int | None:
        result, buf = self.result, self.buf
        found = frame_at(buf, 0, result.length)
        record = None if isinstance(found, str) else parse_record(found[1])
        if isinstance(found, str) or record is None:
            if result.length == 0 or nonzero_end(buf, 0, result.length) == 0:
                if result.newest:
                    self.tear(0, "file holds no header")  # as recovery: nothing to keep
                    return None
                self.problem(0, "header", "file holds no header")
                return None
            why = "damaged" if isinstance(found, str) else "not a JSON object"
            return self.damaged(0, "header", f"file header {why}")
        if not found[1].startswith(FILE_PREFIX):
            self.problem(0, "header", "first record is not a file header")
            return 0
        first = _positive(record.get("first_position"))
        error = None
        if record.get("file") != result.file_id:
            error = f"header names file {record.get('file')!r}"
        elif self.database_id is not None and record.get("database_id") != self.database_id:
            error = f"header names database {record.get('database_id')!r}, META another"
        elif first is None:
            error = "header first_position missing or not a positive integer"
        elif first <= self.last:
            error = f"header first_position {first} is not above position {self.last}"
        if error is not None:
            self.problem(0, "header", error)
            return found[0]
        assert first is not None
        result.header = (0, found[0])
        result.first_position = first
        result.records_ok += 1
        self.last = first - 1
        return found[0]

    def record(self, offset: int, end: int, body: bytes, record: dict[str, Any]) -> str | None:
        """Account for one intact record; return why it is invalid, if it is."""
        if body.startswith(BATCH_PREFIX):
            count, first = _positive(record.get("batch")), _positive(record.get("first"))
            if count is None or first is None:
                return "batch header without a positive count and first position"
            if self.batch is not None:
                self.drop_batch("another batch header follows before its last fact")
            self.batch = _Batch(offset, count, first, [(offset, end)])
            return None
        if not body.startswith(FACT_PREFIX):
            kind = "file header" if body.startswith(FILE_PREFIX) else "record of unknown kind"
            return f"{kind} in the middle of the file"
        error = _fact_error(record)
        if error is not None:
            return error
        position = record["position"]
        skipped, self.skipped = self.skipped, None
        if skipped is not None and self.batch is None and position > self.last + 1:
            self.problem(
                offset,
                "batch",
                f"positions {self.last + 1}..{position - 1} were lost in the damage at offset"
                f" {skipped}; if they began a write_many batch, the rest of it cannot be told"
                " from single writes and is kept",
            )
        if position < self.drop_below:
            return None  # the tail of a dropped batch: left out, reported with the batch
        batch = self.batch
        if batch is not None:
            expected = batch.first + len(batch.facts)
            if position == expected:
                batch.frames.append((offset, end))
                batch.facts.append((offset, end, record))
                if len(batch.facts) == batch.count:
                    self.batch = None
                    self.keep(batch.frames, batch.facts, batch.offset)
                return None
            if batch.header_lost and not batch.first <= position < batch.first + batch.count:
                self.batch = None  # the damaged header's numbers were wrong, or all lost
            else:
                self.drop_batch(f"fact {expected} expected, position {position} found")
                if position < self.drop_below:
                    return None
        self.keep([(offset, end)], [(offset, end, record)], offset)
        return None

    def keep(
        self,
        frames: list[tuple[int, int]],
        facts: list[tuple[int, int, dict[str, Any]]],
        offset: int,
    ) -> None:
        first = facts[0][2]["position"]
        if first <= self.last:
            self.problem(offset, "order", f"position {first} is not above position {self.last}")
            return
        result = self.result
        result.kept.extend(frames)
        result.records_ok += len(frames)
        for start, end, record in facts:
            result.facts[start] = (end - start, record)
        self.last = facts[-1][2]["position"]
        if self.first_fact is None:
            self.first_fact = first

    def drop_batch(self, why: str) -> None:
        batch = self.batch
        assert batch is not None
        self.batch = None
        self.drop_below = max(self.drop_below, batch.first + batch.count)
        self.problem(
            batch.offset,
            "batch",
            f"batch of {batch.count} facts from position {batch.first} dropped: {why}",
        )

    def damaged(self, offset: int, kind: str, detail: str) -> int | None:
        """Handle damage at ``offset``; return where to go on reading (None: stop)."""
        result, buf = self.result, self.buf
        resume = resync(buf, offset + 1, result.length)
        if resume is None and result.newest:
            batch = self.batch
            self.batch = None
            self.tear(offset if batch is None else batch.offset, f"{detail} at offset {offset}")
            return None
        self.problem(offset, kind, detail)
        if self.batch is not None:
            self.drop_batch(f"its frame at offset {offset} is damaged")
        stop = result.length if resume is None else resume
        if stop - offset < FRAME_HEADER_SIZE or (
            _unpack_u32(buf, offset)[0] + FRAME_OVERHEAD != stop - offset
        ):
            self.skipped = offset  # not just one frame: a batch header may be among them
        for match in _BATCH_TEXT.finditer(buf[offset:stop]):
            # A batch header whose text and length field survived (its CRC or a
            # neighbour took the hit): its facts follow, so the batch is still whole or
            # still droppable as a whole. The length field rules out JSON inside a value.
            start = offset + match.start() - FRAME_HEADER_SIZE
            count, first = int(match[1]), int(match[2])
            if start < offset or _unpack_u32(buf, start)[0] != len(match[0]):
                continue
            if count > 0 and first > self.last:
                if self.batch is not None:
                    self.drop_batch(f"its frames end in the damage at offset {offset}")
                self.batch = _Batch(start, count, first, header_lost=True)
        return resume

    def tear(self, offset: int, detail: str) -> None:
        self.result.torn_at = self.result.data_end = offset
        self.problem(offset, "torn-tail", detail)

    def choose_first_position(self) -> None:
        """The ``first_position`` for a replacement header: as high as the facts allow."""
        result = self.result
        result.first_position = self.first_fact if self.first_fact is not None else self.last + 1


# -- the whole directory -------------------------------------------------------------


class _Checker:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.problems: list[Problem] = []
        self.meta: dict[str, Any] | None = None
        self.files: list[_FileResult] = []
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
        for index, file_id in enumerate(file_ids):
            result = self.check_data_file(file_id, index == len(file_ids) - 1, last)
            last = max(last, result.first_position - 1, *self.fact_positions(result))
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

    @staticmethod
    def fact_positions(result: _FileResult) -> list[int]:
        return [record["position"] for _, record in result.facts.values()] or [0]

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

    def check_data_file(self, file_id: int, newest: bool, last: int) -> _FileResult:
        path = data_path(self.directory, file_id)
        with path.open("rb") as handle:
            length = os.fstat(handle.fileno()).st_size
            result = _FileResult(file_id, path, newest, length)
            buf: Buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if length else b""
            try:
                scan = _FileScan(buf, result, last, self.database_id)
                scan.run()
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

    def check_hint(self, result: _FileResult) -> None:
        path = hint_path(self.directory, result.file_id)
        if not path.exists():
            return
        hint = read_hint(path, result.file_id, result.length)
        if hint is None:
            error: str | None = "hint is damaged or does not match the length of its data file"
        else:
            codec = IdCodec(self.database_id) if self.database_id else None
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


def _rewrite(result: _FileResult, database_id: str) -> int:
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

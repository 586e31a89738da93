"""One data file, frame by frame, for ``kiln check``: what is intact, what is damaged.

:func:`check_file` reads a data file's header here and hands the rest to the native core
(``_core.check_file``), which indexes it at the speed of the disk when it is intact and
gives up at the first thing that is not. Then :class:`FileScan` walks the file's frames,
resynchronising after damage, and fills a :class:`FileResult` with the records to keep
and the :class:`Problem` found; the theory of operation (resynchronisation, batches all
or nothing, repair) is in :mod:`kilndb.storage.check`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kilndb import _core
from kilndb.codec import FRAME_HEADER_SIZE, FRAME_OVERHEAD, read_u32
from kilndb.errors import KilnError
from kilndb.storage.hint import TOMBSTONE
from kilndb.storage.records import BATCH_PREFIX, FACT_PREFIX, FILE_PREFIX
from kilndb.storage.resync import Buffer, frame_at, nonzero_end, parse_record, resync

__all__ = ["FileResult", "FileScan", "Problem", "check_file", "walk_ahead"]

_BATCH_TEXT = re.compile(rb'\{"batch":(\d+),"first":(\d+)\}')


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: the file, the byte offset in it (0 for a whole file), what and why."""

    path: str
    offset: int
    kind: str
    detail: str


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
class Batch:
    """An open batch: its header's offset, count and first position, frames so far."""

    offset: int
    count: int
    first: int
    frames: list[tuple[int, int]] = field(default_factory=list)
    facts: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    #: Known only from the text of a damaged header, so less trusted (see record()).
    header_lost: bool = False


@dataclass
class FileResult:
    file_id: int
    path: Path
    newest: bool
    length: int
    #: ``(start, end)`` of the intact header frame, or None if a new one is needed.
    header: tuple[int, int] | None = None
    first_position: int = 1
    #: ``(start, end)`` of every other frame kept, in file order (by the frame scan).
    kept: list[tuple[int, int]] = field(default_factory=list)
    #: frame offset -> (frame size, record) of every fact kept (by the frame scan).
    facts: dict[int, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    #: The native core's index of a file it found intact; then ``kept`` and ``facts``
    #: stay empty, as nothing is to be repaired.
    indexed: _core.IndexedFile | None = None
    #: Where the data ends: the end marker, the file end or the start of a torn tail.
    data_end: int = 0
    torn_at: int | None = None
    problems: list[Problem] = field(default_factory=list)
    records_ok: int = 0
    #: Highest position seen in the file, kept or dropped: a repair records it so that
    #: no position an acknowledged fact ever had is handed out again.
    highest_position: int = 0

    @property
    def last_fact_position(self) -> int:
        """The position of the last fact kept (0 if none)."""
        if self.indexed is not None:
            return self.indexed.last_position
        return max((record["position"] for _, record in self.facts.values()), default=0)


#: The native walk of a file begun before its turn: (its header's first position, the
#: file's length, the walk's result).
Ahead = tuple[int, int, "_core.IndexedFile | None"]

#: The largest header frame read ahead; anything longer is left to its turn.
_HEADER_LIMIT = 1 << 20


def walk_ahead(path: Path) -> Ahead | None:
    """The native walk of the data file at ``path`` from its own header's first position,
    done ahead of its turn (the walks of several files run in parallel, the core
    releasing the GIL), for :func:`check_file` to use once the file's turn shows that
    header right; None if the header cannot be read here."""
    try:
        with path.open("rb") as handle:
            fd = handle.fileno()
            length = os.fstat(fd).st_size
            head = os.pread(fd, FRAME_HEADER_SIZE, 0)
            if len(head) < FRAME_HEADER_SIZE:
                return None
            size = read_u32(head, 0) + FRAME_OVERHEAD
            if size > min(length, _HEADER_LIMIT):
                return None
            found = frame_at(os.pread(fd, size, 0), 0, size)
            record = None if isinstance(found, str) else parse_record(found[1])
            first = None if record is None else _positive(record.get("first_position"))
            if isinstance(found, str) or first is None:
                return None
            return first, length, _core.check_file(fd, str(path), found[0], length, first - 1)
    except (OSError, KilnError):
        return None  # its turn will meet the same trouble and say what it is


def check_file(
    buf: Buffer,
    fd: int,
    result: FileResult,
    last: int,
    database_id: str | None,
    ahead: Ahead | None = None,
) -> FileResult:
    """Check the data file open as ``fd`` (also mapped as ``buf``), whose positions must
    be above ``last``: ``result`` filled, or a fresh one from the frame-by-frame scan
    when the native core found anything to look into. ``ahead``: the file's
    :func:`walk_ahead`, used if its header proves right."""
    scan = FileScan(buf, result, last, database_id)
    start = scan.read_header()
    if start is not None and result.header is not None and not result.problems:
        if ahead is not None and ahead[:2] == (result.first_position, result.length):
            indexed = ahead[2]
        else:
            indexed = _core.check_file(fd, str(result.path), start, result.length, scan.last)
        if indexed is not None:
            result.indexed = indexed
            result.records_ok += indexed.records
            result.data_end = indexed.good_end
            result.highest_position = max(scan.last, indexed.last_position)
            return result
    result = FileResult(result.file_id, result.path, result.newest, result.length)
    FileScan(buf, result, last, database_id).run()
    return result


class FileScan:
    """Walk one data file's frames, resynchronising after damage (see module docstring)."""

    def __init__(self, buf: Buffer, result: FileResult, last: int, database_id: str | None) -> None:
        self.buf = buf
        self.result = result
        #: Highest position of the log so far (facts and headers of earlier files).
        self.last = last
        self.database_id = database_id
        self.batch: Batch | None = None
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
            self.batch = Batch(offset, count, first, [(offset, end)])
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
            read_u32(buf, offset) + FRAME_OVERHEAD != stop - offset
        ):
            self.skipped = offset  # not just one frame: a batch header may be among them
        for match in _BATCH_TEXT.finditer(buf[offset:stop]):
            # A batch header whose text and length field survived (its CRC or a
            # neighbour took the hit): its facts follow, so the batch is still whole or
            # still droppable as a whole. The length field rules out JSON inside a value.
            start = offset + match.start() - FRAME_HEADER_SIZE
            count, first = int(match[1]), int(match[2])
            if start < offset or read_u32(buf, start) != len(match[0]):
                continue
            if count > 0 and first > self.last:
                if self.batch is not None:
                    self.drop_batch(f"its frames end in the damage at offset {offset}")
                self.batch = Batch(start, count, first, header_lost=True)
        return resume

    def tear(self, offset: int, detail: str) -> None:
        self.result.torn_at = self.result.data_end = offset
        self.problem(offset, "torn-tail", detail)

    def choose_first_position(self) -> None:
        """The ``first_position`` for a replacement header: as high as the facts allow."""
        result = self.result
        result.first_position = self.first_fact if self.first_fact is not None else self.last + 1

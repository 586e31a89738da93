"""Log shipping: the leader's side reads its log as verbatim frames, the follower's side
appends them unchanged.

Theory of operation
-------------------
Replication copies a database's log record for record, so that a follower ends up with
the leader's facts at the leader's positions and can serve reads, replay and changefeeds
from them. A :class:`LogReader` walks the leader's data files from a position, and hands
out :class:`Shipment` s: the CRC-framed records — facts and the batch headers that make
a ``write_many`` atomic — exactly as they are stored (a frame is its body, its length
and its CRC, so re-framing a body gives the same bytes), never a file header (each node
has its own files), never part of a batch, and only up to the leader's *durable*
position: a follower never holds what a leader crash could take back (a leader whose
sync mode leaves writes to the OS fsyncs for its followers). A shipment stops
at about ``max_records`` records or ``max_bytes`` bytes, but a batch is never split.

:func:`parse_shipment` checks a received shipment — every CRC, positions that only grow,
batches complete — before :meth:`kilndb.storage.log.Log.append_shipment` appends the
bytes as they are and indexes the facts.

Both sides run in the native core (``_core.ship_units`` reads the units of a file,
``_core.parse_shipment`` checks and indexes a shipment) for records laid out as KilnDB
writes them; the Python code here reads and checks any other record, and is the
reference for what the core does. Positions need not be contiguous: compaction
leaves holes in a leader's log, and the follower keeps the same holes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from kilndb import _core
from kilndb.codec import FrameDecoder, encode_frame
from kilndb.errors import CursorTooOldError, ProtocolError
from kilndb.storage.records import BATCH_PREFIX, FACT_PREFIX, FILE_PREFIX

if TYPE_CHECKING:
    from kilndb.storage.log import Log

__all__ = ["LogReader", "ParsedFact", "Shipment", "parse_shipment"]


#: (position, store, key, seq, deleted, transaction_time, id, body)
ParsedFact = tuple[int, str, str, int, bool, float, str, bytes]


@dataclass(frozen=True, slots=True)
class Shipment:
    """Verbatim frames of records ``first … last`` (``count`` facts)."""

    frames: bytes
    first: int
    last: int
    count: int


class LogReader:
    """Reads a leader's log after a position, a shipment at a time (one follower each)."""

    def __init__(self, log: Log, after: int, holds_through: int = 0) -> None:
        """``holds_through``: the follower's copy was made from this log already
        compacted through that position, so it lacks nothing compaction removed there.
        Raises CursorTooOldError if compaction removed records after ``after`` that the
        follower cannot have."""
        self.log = log
        #: The last position shipped.
        self.after = after
        compacted = int(log.meta.get("compacted_through", 0))
        if 0 < after < compacted and holds_through < compacted:
            raise CursorTooOldError(after, compacted)
        self._file_id: int | None = None
        #: The file read; compaction replaces a file under the same id, and then the
        #: offset means nothing any more: the reader seeks again by position.
        self._datafile: Any = None
        self._offset = 0
        self._exhausted = False

    def next(self, max_records: int = 256, max_bytes: int = 64 * 1024) -> Shipment | None:
        """The next shipment of durable records, or None if there is nothing new."""
        log = self.log
        durable = log.group_commit.durable
        if durable <= self.after:
            return None
        if self._file_id is not None and log.files.get(self._file_id) is not self._datafile:
            self._file_id = None  # compacted (or gone) under us
        if self._file_id is None:
            self._seek()
        parts: list[bytes] = []
        size = count = 0
        first = last = 0
        while self._file_id is not None:
            full = False
            self._exhausted = False
            native = self._native_units(durable, max_records - count, max_bytes - size)
            if native is not None:
                frames, unit_first, unit_last, units, self._offset, full, self._exhausted = native
                if units:
                    parts.append(frames)
                    size += len(frames)
                    count += units
                    first = first or unit_first
                    last = self.after = unit_last
            else:
                for unit, positions, end in self._units(durable):
                    parts += unit
                    size += sum(len(f) for f in unit)
                    count += len(positions)
                    first = first or positions[0]
                    last = positions[-1]
                    self._offset = end
                    self.after = last
                    if count >= max_records or size >= max_bytes:
                        full = True
                        break
            # Full, or stopped before a record not durable yet, or at the end of the
            # newest file: done for now. At the end of an older file: on to the next.
            if full or not self._exhausted or not self._next_file():
                break
        if not parts:
            return None
        return Shipment(b"".join(parts), first, last, count)

    # -- walking the files -----------------------------------------------------------

    def _seek(self) -> None:
        """Find the file and offset of the first record after ``self.after``."""
        log = self.log
        with log.lock:
            log.check_open()
            candidates = [f for f, p in log.first_positions.items() if p <= self.after + 1]
            file_id = max(candidates) if candidates else min(log.files)
        self._file_id = file_id
        self._offset = 0
        datafile = self._datafile = log.files[file_id]
        for offset, body in datafile.frames(0, datafile.size):
            if body.startswith(FILE_PREFIX):
                continue
            position = _first_position(body)
            if position > self.after:
                self._offset = offset
                return
            if body.startswith(BATCH_PREFIX):
                header = orjson.loads(body)
                if header["first"] + header["batch"] - 1 > self.after:
                    raise ProtocolError(
                        f"position {self.after} is inside a batch; ship from a batch boundary"
                    )
        self._offset = datafile.size  # everything in this file is shipped already

    def _next_file(self) -> bool:
        log = self.log
        with log.lock:
            later = [f for f in log.files if self._file_id is not None and f > self._file_id]
        if not later:
            return False
        self._file_id = min(later)
        self._datafile = self.log.files.get(self._file_id)
        self._offset = 0
        return True

    def _native_units(
        self, durable: int, max_records: int, max_bytes: int
    ) -> tuple[bytes, int, int, int, int, bool, bool] | None:
        """The units from the current offset, read by the native core (see
        ``_core.ship_units``); None if the file was replaced meanwhile (then the reader
        seeks again) or holds a record only :meth:`_units` can read."""
        assert self._file_id is not None
        datafile = self.log.files.get(self._file_id)
        if datafile is None or datafile is not self._datafile:
            return None  # _units notices it too, and seeks again
        return _core.ship_units(
            datafile.fd, datafile.name, self._offset, datafile.size, durable, max_records, max_bytes
        )

    def _units(self, durable: int) -> Iterator[tuple[list[bytes], list[int], int]]:
        """The durable facts and whole batches from the current offset, each as
        (frames, positions, end offset); sets ``_exhausted`` at the end of the data."""
        assert self._file_id is not None
        datafile = self.log.files.get(self._file_id)
        if datafile is None or datafile is not self._datafile:
            self._exhausted = False  # replaced meanwhile: seek again on the next call
            self._file_id = None
            return
        frames: list[bytes] = []
        positions: list[int] = []
        expected = 0
        for offset, body in datafile.frames(self._offset, datafile.size):
            end = offset + len(body) + 8
            if body.startswith(FILE_PREFIX):
                self._offset = end
                continue
            if body.startswith(BATCH_PREFIX):
                header = orjson.loads(body)
                if header["first"] + header["batch"] - 1 > durable:
                    return
                expected = header["batch"]
                frames.append(encode_frame(body))
                continue
            if not body.startswith(FACT_PREFIX):
                raise ProtocolError(f"unknown record at offset {offset} of {datafile.path}")
            position = orjson.loads(body)["position"]
            if position > durable:
                return
            frames.append(encode_frame(body))
            positions.append(position)
            if len(positions) >= expected:
                yield frames, positions, end
                frames, positions, expected = [], [], 0
        self._exhausted = not frames  # not in the middle of a batch still being written


def _first_position(body: bytes) -> int:
    record: dict[str, Any] = orjson.loads(body)
    return int(record["first"] if "batch" in record else record["position"])


def parse_shipment(frames: bytes, after: int) -> list[tuple[bytes, ParsedFact | None]]:
    """Check a shipment received after position ``after``.

    Returns each frame with its fact (None for a batch header). Raises ProtocolError for
    a bad CRC, a truncated frame, a file header, positions that do not grow or a batch
    that is not complete.
    """
    decoder = FrameDecoder(max_frame_bytes=max(len(frames), 1))
    decoder.feed(frames)
    out: list[tuple[bytes, ParsedFact | None]] = []
    last = after
    owed = 0
    while (body := decoder.next_frame()) is not None:
        frame = encode_frame(body)
        if body.startswith(BATCH_PREFIX):
            if owed:
                raise ProtocolError("a batch header inside a batch")
            header = orjson.loads(body)
            owed = int(header["batch"])
            if header["first"] <= last:
                raise ProtocolError(f"batch at {header['first']} does not follow {last}")
            out.append((frame, None))
            continue
        if not body.startswith(FACT_PREFIX):
            raise ProtocolError("a shipment carries facts and batch headers only")
        record = orjson.loads(body)
        position = record["position"]
        if position <= last:
            raise ProtocolError(f"position {position} does not follow {last}")
        last = position
        owed = max(owed - 1, 0)
        fact: ParsedFact = (
            position,
            record["store"],
            record["key"],
            record["seq"],
            record["deleted"],
            record["transaction_time"],
            record["id"],
            body,
        )
        out.append((frame, fact))
    if decoder.buffered:
        raise ProtocolError("a shipment ends inside a frame")
    if owed:
        raise ProtocolError("a shipment ends inside a batch")
    return out

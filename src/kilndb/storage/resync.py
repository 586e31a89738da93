"""Finding intact frames in damaged bytes: shared by recovery and ``kiln check``.

After a damaged frame, :func:`resync` searches forward for the next offset where an
intact frame holding a record-like body starts: a length that fits, ``{"`` right after
it, a matching CRC-32 and a JSON object with a ``position``, ``batch`` or ``file`` key.
JSON text never holds the raw bytes of a plausible length field (each of its bytes is
printable, so it would announce at least 0x20202020 bytes), so a false match inside an
intact record body is impossible in files under 512 MiB; inside random garbage it also
needs a CRC-32 collision.

Recovery uses it to tell a torn tail (nothing intact follows the damage: cut it) from
damage in the middle of the log (intact records follow: refuse to open, so that nothing
acknowledged is dropped without the operator running ``kiln check --fix``).
"""

from __future__ import annotations

import mmap
import zlib
from typing import Any

import orjson

from kilndb.codec import FRAME_HEADER_SIZE, FRAME_OVERHEAD, read_u32

__all__ = ["Buffer", "frame_at", "nonzero_end", "parse_record", "resync"]

Buffer = bytes | mmap.mmap
_CHUNK = 1 << 20


def frame_at(buf: Buffer, offset: int, end: int) -> tuple[int, bytes] | str:
    """``(frame_end, body)`` of the intact frame at ``offset``, else why not."""
    if end - offset < FRAME_HEADER_SIZE:
        return "short"
    length = read_u32(buf, offset)
    if length == 0:
        return "end-marker"
    frame_end = offset + FRAME_OVERHEAD + length
    if frame_end > end:
        return "length"
    body = buf[offset + FRAME_HEADER_SIZE : frame_end - 4]
    if zlib.crc32(body) != read_u32(buf, frame_end - 4):
        return "crc"
    return frame_end, body


def parse_record(body: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def resync(buf: Buffer, start: int, end: int) -> int | None:
    """The first offset ``>= start`` where an intact frame with a record-like body starts."""
    search = start + FRAME_HEADER_SIZE
    while True:
        brace = buf.find(b'{"', search, end)
        if brace < 0:
            return None
        offset = brace - FRAME_HEADER_SIZE
        found = frame_at(buf, offset, end)
        if not isinstance(found, str):
            record = parse_record(found[1])
            if record is not None and (
                "position" in record or "batch" in record or "file" in record
            ):
                return offset
        search = brace + 1


def nonzero_end(buf: Buffer, start: int, end: int) -> int:
    """The offset just past the last non-zero byte of ``[start, end)`` (``start`` if none)."""
    while end > start:
        low = max(start, end - _CHUNK)
        stripped = buf[low:end].rstrip(b"\0")
        if stripped:
            return low + len(stripped)
        end = low
    return start

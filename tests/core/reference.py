"""A small pure-Python reference of KilnDB's byte formats: the oracle the native core
(``kilndb._core``) is checked against by the property tests.

Frames (``rust/src/frame.rs``)::

    offset  size  field
    0       4     body_len   u32 big-endian
    4       n     body
    4+n     4     crc        u32 big-endian, zlib CRC-32 of the body

Records (``rust/src/record.rs``, ``rust/src/stage.rs``): a fact's body is the JSON
object of its fields in ``FACT_FIELDS`` order, exactly as orjson writes the record dict.

Deliberately written for clarity, not speed: one frame at a time, straight from the
definition.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import orjson

U32 = struct.Struct(">I")


def encode_frame(body: bytes) -> bytes:
    return U32.pack(len(body)) + body + U32.pack(zlib.crc32(body))


def read_frames(
    data: bytes, start: int, end: int
) -> tuple[list[tuple[int, bytes]], int, str | None]:
    """The intact frames of ``data[start:end]`` as a data-file reader sees them:
    ``(frames, stop_offset, stop_reason)``."""
    frames: list[tuple[int, bytes]] = []
    offset = start
    data = data[:end]
    while True:
        if offset >= end:
            return frames, end, None
        if len(data) - offset < 4:
            return frames, offset, "short"
        (length,) = U32.unpack_from(data, offset)
        if length == 0:
            return frames, offset, "end-marker"
        if offset + 8 + length > end:
            return frames, offset, "length"
        if len(data) < offset + 8 + length:
            return frames, offset, "short"
        body = data[offset + 4 : offset + 4 + length]
        if zlib.crc32(body) != U32.unpack_from(data, offset + 4 + length)[0]:
            return frames, offset, "crc"
        frames.append((offset, body))
        offset += 8 + length


class StreamError(Exception):
    pass


def decode_stream(data: bytes, max_frame_bytes: int) -> tuple[list[bytes], str | None]:
    """Bodies of a byte stream and what stopped it: None (clean or incomplete tail),
    "too-large" or "crc"."""
    bodies: list[bytes] = []
    offset = 0
    while len(data) - offset >= 4:
        (length,) = U32.unpack_from(data, offset)
        if length > max_frame_bytes:
            return bodies, "too-large"
        if len(data) - offset < 8 + length:
            break
        body = data[offset + 4 : offset + 4 + length]
        if zlib.crc32(body) != U32.unpack_from(data, offset + 4 + length)[0]:
            return bodies, "crc"
        bodies.append(body)
        offset += 8 + length
    return bodies, None


def fact_record(
    write: Any, fact_id: str, seq: int, position: int, transaction_time: float
) -> bytes:
    """A fact's record body as the pure-Python engine encoded it: the fields of
    ``kilndb.model.FACT_FIELDS`` in order, the value as canonical JSON, orjson."""
    from kilndb.engine.database import _prepare

    prepared = _prepare(write)
    return orjson.dumps(prepared.record(fact_id, seq, position, transaction_time))


def batch_header(count: int, first: int) -> bytes:
    return orjson.dumps({"batch": count, "first": first})

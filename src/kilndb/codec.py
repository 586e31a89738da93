"""Frame codec: the one framing KilnDB uses on disk and on the wire.

Theory of operation
-------------------
A frame wraps one body (a JSON document) so that a reader can find where it ends and
tell whether it arrived intact. The layout is byte-compatible with Igniter's
``WireProtocol``::

    offset  size  field
    0       4     body_len   u32, big-endian (struct ">I"), length of body in bytes
    4       n     body       the body bytes (UTF-8 JSON)
    4+n     4     crc        u32, big-endian, zlib/IEEE CRC-32 of the body bytes only

So a frame is ``8 + body_len`` bytes. The CRC covers the body, not the length field: a
damaged length shows up as a CRC mismatch (or an oversize frame) at that offset.

:class:`FrameDecoder` is sans-I/O in the h11 style: ``feed(data)`` appends bytes,
``next_frame()`` returns the next complete body or ``None`` when more bytes are needed.
It never blocks, never reads a socket and raises :class:`FrameTooLargeError` as soon as a
header announces more than ``max_frame_bytes`` (before buffering the body) and
:class:`ProtocolError` on a CRC mismatch, after which the stream cannot be trusted.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from kilndb.errors import FrameTooLargeError, ProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "FRAME_CRC_SIZE",
    "FRAME_HEADER_SIZE",
    "FRAME_OVERHEAD",
    "FrameDecoder",
    "decode_frame",
    "encode_frame",
]

FRAME_HEADER_SIZE = 4
FRAME_CRC_SIZE = 4
FRAME_OVERHEAD = FRAME_HEADER_SIZE + FRAME_CRC_SIZE
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024

_U32 = struct.Struct(">I")
assert _U32.size == FRAME_HEADER_SIZE == FRAME_CRC_SIZE

_pack_u32 = _U32.pack
_unpack_u32 = _U32.unpack_from
_crc32 = zlib.crc32


def encode_frame(body: bytes) -> bytes:
    """Wrap ``body`` in a frame: length, body, CRC-32 of the body."""
    return _pack_u32(len(body)) + body + _pack_u32(_crc32(body))


def decode_frame(frame: bytes) -> bytes:
    """Return the body of exactly one complete frame.

    Raises :class:`ProtocolError` if ``frame`` is short, has trailing bytes or fails its CRC.
    """
    if len(frame) < FRAME_OVERHEAD:
        raise ProtocolError(f"short frame: {len(frame)} bytes")
    (length,) = _unpack_u32(frame, 0)
    if len(frame) != length + FRAME_OVERHEAD:
        raise ProtocolError(
            f"frame length field says {length} body bytes but {len(frame) - FRAME_OVERHEAD} follow"
        )
    body = frame[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + length]
    (crc,) = _unpack_u32(frame, FRAME_HEADER_SIZE + length)
    if _crc32(body) != crc:
        raise ProtocolError("frame CRC mismatch")
    return body


class FrameDecoder:
    """Incremental frame decoder: feed bytes, take complete frame bodies.

    >>> d = FrameDecoder()
    >>> d.feed(encode_frame(b'{"op":"ping"}'))
    >>> d.next_frame()
    b'{"op":"ping"}'
    >>> d.next_frame() is None
    True
    """

    __slots__ = ("_buffer", "_failed", "_start", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._start = 0
        self._failed: ProtocolError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. Never blocks and never parses."""
        if self._failed is not None:
            raise self._failed
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer) - self._start

    def next_frame(self) -> bytes | None:
        """Return the next complete body, or ``None`` if more bytes are needed.

        Raises :class:`FrameTooLargeError` or :class:`ProtocolError` (CRC mismatch); after
        either, the decoder stays failed because the byte stream has lost its framing.
        """
        if self._failed is not None:
            raise self._failed
        buffer = self._buffer
        start = self._start
        available = len(buffer) - start
        if available < FRAME_HEADER_SIZE:
            self._compact()
            return None
        (length,) = _unpack_u32(buffer, start)
        if length > self.max_frame_bytes:
            self._failed = FrameTooLargeError(length, self.max_frame_bytes)
            raise self._failed
        end = start + FRAME_OVERHEAD + length
        if len(buffer) < end:
            self._compact()
            return None
        body = bytes(buffer[start + FRAME_HEADER_SIZE : end - FRAME_CRC_SIZE])
        (crc,) = _unpack_u32(buffer, end - FRAME_CRC_SIZE)
        if _crc32(body) != crc:
            self._failed = ProtocolError("frame CRC mismatch")
            raise self._failed
        self._start = end
        return body

    def frames(self) -> Iterator[bytes]:
        """Yield every complete body currently buffered."""
        while (body := self.next_frame()) is not None:
            yield body

    def _compact(self) -> None:
        # Drop consumed bytes only when waiting for more, so a run of small frames in one
        # feed() costs one memmove, not one per frame.
        if self._start:
            del self._buffer[: self._start]
            self._start = 0

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

The codec is implemented by the native core (``kilndb._core``, ``rust/src/frame.rs``,
where the layout is declared beside the code that reads it); this module is its Python
view. :class:`FrameDecoder` is sans-I/O in the h11 style: ``feed(data)`` appends bytes,
``next_frame()`` returns the next complete body or ``None`` when more bytes are needed.
It never blocks, never reads a socket and raises :class:`FrameTooLargeError` as soon as a
header announces more than ``max_frame_bytes`` (before buffering the body) and
:class:`ProtocolError` on a CRC mismatch, after which the stream cannot be trusted.
With ``skip_oversize=True`` (a server's side) an oversize frame is raised once and
skipped: its body and CRC are discarded as they arrive, and the frames after it decode.
"""

from __future__ import annotations

import mmap
import struct
import zlib

from kilndb import _core
from kilndb.errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "FRAME_CRC_SIZE",
    "FRAME_HEADER_SIZE",
    "FRAME_OVERHEAD",
    "FrameDecoder",
    "decode_frame",
    "encode_frame",
    "encode_frames",
    "read_u32",
]

FRAME_HEADER_SIZE = 4
FRAME_CRC_SIZE = 4
FRAME_OVERHEAD = FRAME_HEADER_SIZE + FRAME_CRC_SIZE
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024

_U32 = struct.Struct(">I")
assert _U32.size == FRAME_HEADER_SIZE == FRAME_CRC_SIZE

_unpack_u32 = _U32.unpack_from
_crc32 = zlib.crc32


def read_u32(buffer: bytes | bytearray | memoryview | mmap.mmap, offset: int) -> int:
    """The big-endian u32 at ``offset``: a frame's length or CRC field."""
    return int(_unpack_u32(buffer, offset)[0])


encode_frame = _core.encode_frame
encode_frames = _core.encode_frames
#: Incremental decoder (native): ``feed(data)``, ``next_frame()`` (a body or None),
#: ``frames()`` (every complete body buffered now), ``buffered``. Raises
#: FrameTooLargeError as soon as a header announces more than ``max_frame_bytes``
#: (before buffering the body) and ProtocolError on a CRC mismatch; it then stays failed,
#: except after an oversize frame with ``skip_oversize=True``, which it skips.
FrameDecoder = _core.FrameDecoder


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

"""Type stub of ``kilndb._core``, the native core (Rust, ``rust/src``).

Every function raises the ``kilndb.errors`` classes; a bug inside the core (a Rust panic)
is raised as ``kilndb.KilnError``, never aborting the process.
"""

from typing import final

__version__: str

def crc32(data: bytes) -> int:
    """CRC-32 (zlib, IEEE) of ``data``."""

def encode_frame(body: bytes) -> bytes:
    """Wrap ``body`` in a frame: u32 BE length, body, u32 BE CRC-32 of the body."""

def encode_frames(bodies: list[bytes]) -> bytes:
    """The frames of ``bodies``, back to back."""

@final
class FrameDecoder:
    """Incremental frame decoder of a byte stream (sans-I/O)."""

    def __init__(self, max_frame_bytes: int = 16777216) -> None: ...
    @property
    def max_frame_bytes(self) -> int: ...
    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; raises the decoder's failure if it has failed."""
    def next_frame(self) -> bytes | None:
        """The next complete body, or None if more bytes are needed.

        Raises FrameTooLargeError or ProtocolError (CRC mismatch); the decoder then
        stays failed because the stream has lost its framing."""
    def frames(self) -> list[bytes]:
        """Every complete body buffered now (an error after good frames is raised by
        the next call)."""

@final
class FrameReader:
    """Sequential reader of the frames in ``[start, end)`` of an open file descriptor."""

    def __init__(self, fd: int, start: int, end: int, path: str = "") -> None: ...
    @property
    def stop_offset(self) -> int:
        """Where reading stopped (or has got to)."""
    @property
    def stop_reason(self) -> str | None:
        """None (clean end), "end-marker", "short", "length" or "crc"."""
    def next_batch(
        self, with_offsets: bool = False
    ) -> list[bytes] | list[tuple[int, bytes]] | None:
        """The next read chunk's frames (bodies, or ``(offset, body)``); None when done."""

def _panic_for_tests(message: str) -> None:
    """Panics inside the core: raises KilnError (tests prove panics never abort)."""

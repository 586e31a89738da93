"""Type stub of ``kilndb._core``, the native core (Rust, ``rust/src``).

Every function raises the ``kilndb.errors`` classes; a bug inside the core (a Rust panic)
is raised as ``kilndb.KilnError``, never aborting the process.
"""

from collections.abc import Callable, Iterable
from typing import Any, final

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

@final
class Staged:
    """A staged batch of writes: its frames, ready to append, and what to index."""

    @property
    def data(self) -> bytes:
        """The frames to append to the active file (a batch header first, if any)."""
    @property
    def header_len(self) -> int: ...
    @property
    def last(self) -> int:
        """The last position the batch writes (0 if it writes nothing)."""
    @property
    def must_be_durable(self) -> int:
        """The highest position that must be durable before any outcome is acknowledged."""
    @property
    def results(self) -> list[Any]:
        """One outcome per write: its Fact (or wire JSON), the fact already stored under
        its id, or the KilnError that refused it."""
    @property
    def count(self) -> int:
        """Facts the batch writes."""
    def apply(
        self,
        keydir: Any,
        ids: dict[str, int],
        file_id: int,
        offset: int,
        ttime: float,
        latest_only: set[str],
    ) -> list[tuple[int, int]]:
        """Index the batch, appended at ``offset`` of ``file_id``; returns the
        ``(file_id, size)`` of frames that retention ``keep="latest"`` made dead."""

@final
class Stager:
    """Prepares, checks and encodes batches of writes for one database."""

    def __init__(
        self,
        write_type: type[Any],
        fact_type: type[Any],
        prepare: Callable[[Any, bool], Any],
        id_prefix: str,
    ) -> None: ...
    def stage(
        self,
        writes: Iterable[Any],
        log: Any,
        next_position: int,
        ttime: float,
        atomic: bool,
        trusted: bool,
        max_record_bytes: int,
        wire: bool = False,
    ) -> Staged:
        """Prepare and stage ``writes`` at positions from ``next_position`` (hold the
        log lock); raises the first refusal of an atomic batch."""

@final
class FactScanner:
    """The facts of one data file after ``last`` up to ``until``, a read chunk per call."""

    def __init__(
        self,
        fd: int,
        path: str,
        start: int,
        end: int,
        last: int,
        until: int,
        stores: list[str] | None,
        raw: bool,
        fact_type: type[Any],
    ) -> None: ...
    @property
    def last(self) -> int:
        """The highest position read so far (kept or not)."""
    @property
    def reached_until(self) -> bool:
        """Whether a fact beyond ``until`` was reached: the scan is over."""
    @property
    def stop_offset(self) -> int: ...
    @property
    def stop_reason(self) -> str | None:
        """None (clean end), "end-marker", "short", "length" or "crc"."""
    def next_batch(self, keydir: Any) -> list[Any] | None:
        """The kept facts (or ``(position, body)`` pairs) of the next chunk; None when
        the file is done. ``keydir.is_retained(position)`` says what is retained."""

def read_records(
    files: list[tuple[int, str]],
    reads: list[tuple[int, int, int]],
    fact_type: type[Any] | None = None,
) -> list[Any]:
    """The records at ``reads`` (``(file index, offset, frame size)`` into ``files``, given
    as ``(fd, path)``), in order: bodies, or ``fact_type`` instances when given. Frames
    back to back are read with one ``pread`` per run, the GIL released; damage raises
    CorruptRecordError(path, offset)."""

@final
class IndexedFile:
    """The facts of one data file, as recovery and hint files index them."""

    @property
    def good_end(self) -> int:
        """Where the intact prefix of indexed records ends."""
    @property
    def bad_offset(self) -> int | None:
        """Where to cut a torn tail (a torn batch at its header); None if clean."""
    @property
    def damage(self) -> int:
        """Where the unreadable bytes begin."""
    @property
    def stop_reason(self) -> str | None:
        """How the frames ended: None, "end-marker", "short", "length" or "crc"."""
    def __len__(self) -> int: ...
    def facts(self) -> list[tuple[int, int, int, str, str, int, bool, float, str]]:
        """``(offset, size, position, store, key, seq, deleted, transaction_time, id)``
        of each indexed fact, in file order."""

def index_file(fd: int, path: str, start: int, end: int, after: int) -> IndexedFile:
    """Index the facts of ``[start, end)`` of a data file; positions must be above
    ``after``. Batches are indexed whole or not at all."""

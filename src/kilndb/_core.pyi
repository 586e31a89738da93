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

def facts_from_dicts(dicts: list[dict[str, Any]], fact_type: type[Any]) -> list[Any]:
    """``[fact_from_dict(d) for d in dicts]`` in one call: each dict (every field of a
    fact) becomes the ``__dict__`` of a new ``fact_type`` instance, uncopied."""

def plain_write_run(bodies: list[bytes], start: int) -> tuple[list[dict[str, Any]], int]:
    """The run of plain write requests in ``bodies`` from ``start`` (``{"op": "write",
    "store": str, "key": str, "value": …}`` with at most a ``request_id`` and options
    set to ``null`` besides): their parsed envelopes, each its own checked params, and
    the index just after the run."""

def write_replies(envelopes: list[dict[str, Any]], outcomes: list[Any]) -> bytes | None:
    """The reply frames of a run of plain writes whose outcomes are their facts' stored
    JSON (bytes), back to back, each echoing its request id; None if an outcome is
    anything else (its replies are built one by one)."""

def produce_records(records: list[Any], record_type: type[Any]) -> bytes | None:
    """The ``records`` array of a ``produce`` request, as ``orjson.dumps([record_to_wire(r)
    for r in records])`` writes it, for records that ``record_write`` and
    ``prepare_write`` accept; None if any record needs the Python path."""

def produced_entries(
    space: str, segment: str, records: list[Any], produced: list[Any], entry_type: type[Any]
) -> list[Any]:
    """``[entry_from_produced(space, segment, r, w) for r, w in zip(records, produced,
    strict=True)]`` in one call (ValueError if the lengths differ)."""

def produce_writes(
    space: str, segment: str, records: list[Any], expected_seq: int | None
) -> list[Any] | None:
    """The write params (``store``, ``key``, ``value``, ``metadata`` and, on the first,
    ``expected_seq``) of a ``produce`` request's records, as ``record_write(space,
    segment, record_from_wire(wire))`` makes them; None if any record needs the Python
    path."""

def produced_wire(bodies: list[bytes]) -> bytes | None:
    """The ``produced`` array of a ``produce`` reply (``produced_to_wire`` of each entry,
    as orjson writes it) from the stored records of the batch; None if a record is not
    laid out as KilnDB writes them."""

def entries_wire(bodies: list[bytes], fallback: Callable[[bytes], bytes]) -> bytes:
    """The ``entries`` array of a ``consume`` reply (``fact_to_entry_wire`` of each fact,
    as orjson writes it) from the stored records; ``fallback(body)`` gives the entry
    JSON of a record holding a bytes payload or not laid out as KilnDB writes them."""

def entries_from_wire(
    entries: list[Any], entry_type: type[Any], b64decode: Callable[[Any], bytes]
) -> list[Any]:
    """``[entry_from_wire(wire) for wire in entries]`` in one call."""

def consume_entries(body: bytes, entry_type: type[Any]) -> list[Any] | None:
    """The entries of a successful ``consume`` reply's body, each parsed straight into an
    ``entry_type`` instance: ``[entry_from_wire(w) for w in loads(body)["entries"]]``.
    None for any other reply (an error, a bytes payload, another layout)."""

def dumps(value: object, sort_keys: bool = False) -> bytes | None:
    """``orjson.dumps(value, option=OPT_PASSTHROUGH_DATETIME | OPT_PASSTHROUGH_DATACLASS
    [| OPT_SORT_KEYS])``, byte for byte, for plain JSON values: None, bool, int, float,
    str, list, tuple, dict with str keys (all of exact type) and orjson.Fragment.

    Returns None when the value holds any other type (subclasses included): the caller
    then hands it to orjson. Raises InvalidArgumentError ("value is not
    JSON-serialisable: <reason>", orjson's reason) where orjson raises (integers beyond
    64 bits, lone surrogates, non-str keys, nesting deeper than 254; the first error in
    orjson's order), and for NaN and infinities, which orjson would write as null. A
    NaN only counts once the walk is over: with another type as well, the result is
    None, and the orjson path must check for non-finite floats (canonical_json does)."""

def canonical_json(value: object) -> bytes:
    """Canonical JSON (sorted keys, no spaces, UTF-8), as ``kilndb.model.canonical_json``:
    ``dumps(value, sort_keys=True)``, or orjson for the values it returns None for.
    Raises InvalidArgumentError for anything that is not plain JSON."""

def value_hash(canonical: bytes) -> str:
    """SHA-256 of a value's canonical JSON, in lowercase hex."""

def hash_value(value: object) -> tuple[bytes, str]:
    """``(canonical_json(value), value_hash(canonical_json(value)))`` in one call."""

def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """``orjson.loads(data)``: the same values, and orjson.JSONDecodeError (a
    ValueError) for every input orjson refuses."""

def loads_many(bodies: list[bytes]) -> list[Any]:
    """``[loads(body) for body in bodies]``; raises at the first bad body."""

@final
class FrameDecoder:
    """Incremental frame decoder of a byte stream (sans-I/O)."""

    def __init__(self, max_frame_bytes: int = 16777216, *, skip_oversize: bool = False) -> None:
        """``skip_oversize``: raise FrameTooLargeError once for an oversize frame, then
        discard its body and CRC as they arrive and go on with the frames after it
        (otherwise the decoder stays failed)."""
    @property
    def max_frame_bytes(self) -> int: ...
    @property
    def skip_oversize(self) -> bool: ...
    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
    @property
    def skipping(self) -> int:
        """Bytes of a refused oversize frame still to be discarded."""
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; raises the decoder's failure if it has failed."""
    def next_frame(self) -> bytes | None:
        """The next complete body, or None if more bytes are needed.

        Raises FrameTooLargeError or ProtocolError (CRC mismatch); the decoder then
        stays failed because the stream has lost its framing (except after an oversize
        frame it skips)."""
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

#: The active data file grows in steps of this many bytes.
PREALLOCATE_STEP: int

def append(fd: int, path: str, data: bytes, offset: int, allocated: int) -> int:
    """Append ``data`` at ``offset`` of the active data file ``fd``, preallocating past
    ``allocated`` when needed; the new physical length. A write that fails half way is
    cut off again; raises DiskFullError or StorageError naming ``path``."""

def copy_frames(
    source_fd: int,
    source_path: str,
    offsets: list[int],
    sizes: list[int],
    target_fd: int,
    target_path: str,
    end: int,
    allocated: int,
) -> tuple[list[int], int, int]:
    """Copy the frames at ``offsets`` (of ``sizes`` bytes) of ``source_fd`` to the end
    ``end`` of ``target_fd`` (physical length ``allocated``), checking each frame's CRC:
    their new offsets, the target's new end and physical length. Raises
    CorruptRecordError(source_path, offset), DiskFullError or StorageError."""

def sync_file(fd: int, path: str, metadata: bool = False) -> None:
    """``fdatasync`` (``fsync`` with ``metadata``) ``fd``; StorageError naming ``path``."""

def truncate_file(fd: int, path: str, length: int) -> None:
    """Cut ``fd`` to ``length`` bytes; StorageError naming ``path``."""

def set_io_hook(hook: object | None) -> None:
    """Route the core's file-changing system calls to ``hook``'s methods ``pwrite``,
    ``fdatasync``, ``fsync``, ``posix_fallocate``, ``ftruncate`` (the signatures of the
    ``os`` functions); None restores the kernel. For fault injection in tests."""

@final
class IdIndex:
    """Client-supplied fact id -> position, compact (an arena and a hash table)."""

    def __init__(self) -> None: ...
    def get(self, id: str, default: int | None = None) -> int | None: ...
    def __getitem__(self, id: str) -> int: ...
    def __setitem__(self, id: str, position: int) -> None: ...
    def __contains__(self, id: str) -> bool: ...
    def __len__(self) -> int: ...
    def load_hint(self, ids: dict[int, str]) -> None:
        """Index the ``{position: id}`` of a hint file."""
    @property
    def memory(self) -> int:
        """Bytes held by the index."""

@final
class GroupCommit:
    """Group commit over the active data file: concurrent writers share one fdatasync."""

    def __init__(self, durable: int) -> None: ...
    def set_file(self, fd: int, path: str) -> None:
        """Sync the file open as ``fd`` from now on (a duplicate descriptor is kept)."""
    def note_written(self, position: int) -> None:
        """The active file holds everything up to ``position`` (hold the log lock)."""
    def wait_durable(self, position: int) -> None:
        """Return once ``position`` is durable, syncing as the group's leader if needed."""
    def sync_now(self) -> None:
        """Sync whatever has been written."""
    def mark_durable(self, position: int) -> None:
        """Record durability achieved by other means (a file seal)."""
    def poison(self, message: str) -> None:
        """Fail every waiter and every later write with StorageError(``message``)."""
    def close(self, message: str) -> None:
        """Start no more syncs: later leaders raise ClosedError(``message``)."""
    @property
    def failure(self) -> BaseException | None:
        """The StorageError that poisoned the log, or None."""
    @property
    def durable(self) -> int: ...
    @property
    def fsyncs(self) -> int: ...

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
    @property
    def last_ttime(self) -> float | None:
        """The transaction time of the last fact the batch writes (None if none)."""
    @property
    def written(self) -> list[int]:
        """The index among the writes staged of each fact the batch writes, in position
        order (a write left out was refused, or named an id stored already)."""
    def apply(
        self,
        keydir: KeyDir,
        ids: IdIndex,
        file_id: int,
        offset: int,
        latest_only: set[str],
    ) -> list[tuple[int, int]]:
        """Index the batch, each fact with its transaction time, appended at ``offset``
        of ``file_id``; returns the ``(file_id, size)`` of frames that retention
        ``keep="latest"`` made dead."""

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
        keydir: KeyDir,
        next_position: int,
        ttime: float,
        atomic: bool,
        trusted: bool,
        max_record_bytes: int,
        wire: bool = False,
        raw: bool = False,
        *,
        ttimes: list[float] | None = None,
        hashes: list[str | None] | None = None,
        outcomes: bool = True,
    ) -> Staged:
        """Prepare and stage ``writes`` at positions from ``next_position`` (hold the
        log lock) against the keys' state in ``keydir``; ``log`` answers
        ``_stored_position(id)`` and ``_stored_fact(position)`` (its ``ids``, an
        IdIndex, if it has one, is consulted directly). Raises the first refusal of an
        atomic batch. ``wire``: a written fact's outcome is its stored JSON, as an
        ``orjson.Fragment`` (with ``raw``, as bytes). ``ttimes``: each write's own
        transaction time, instead of ``ttime``. ``hashes``: each write's claimed value
        hash or None; a write whose value hashes otherwise is refused
        (InvalidArgumentError). Both have one entry per write. Without ``outcomes``,
        ``results`` is left empty and a fact stored already is not read."""

    def stage_import(
        self,
        lines: ImportLines,
        log: Any,
        keydir: KeyDir,
        next_position: int,
        floor: float,
        now: float,
        max_record_bytes: int,
    ) -> Staged | None:
        """Stage a batch read by :func:`read_import_lines` (hold the log lock) as
        ``FactLog.commit_imported`` stages the same lines: atomically, for the wire,
        without outcomes, ids stored or repeated skipped, each fact with its own
        transaction time where it lies between the previous fact's (``floor`` for the
        first) and ``now``, else ``max(now, floor)`` and its own time in its metadata.
        Consumes the batch. None if the batch is refused (nothing staged): the Python
        path raises the precise error."""

@final
class ImportLines:
    """A batch of an import read natively: one whole fact per line that is not blank."""

    @property
    def count(self) -> int:
        """Facts read (lines that are not blank)."""
    @property
    def idless(self) -> int:
        """Facts without an id."""

def read_import_lines(lines: list[bytes]) -> ImportLines | None:
    """Read JSON Lines lines as whole facts as exported, with the interpreter released;
    None if any line is neither blank nor such a fact of a form the native path reads
    (the Python path then reads the batch, with its precise errors)."""

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
    def next_batch(self, keydir: KeyDir) -> list[Any] | None:
        """The kept facts (or ``(position, body)`` pairs) of the next chunk, those
        ``keydir`` retains; None when the file is done."""

def read_fact(fd: int, path: str, offset: int, size: int, fact_type: type[Any]) -> Any:
    """The fact whose frame of ``size`` bytes is at ``offset`` of the data file open as
    ``fd`` (read with the GIL released, CRC checked: CorruptRecordError(path, offset))."""

def read_planned(
    files: list[tuple[int, str]], plan: bytes, fact_type: type[Any] | None = None
) -> list[Any]:
    """:func:`read_records` for a plan made by ``KeyDir.plan``."""

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
    @property
    def records(self) -> int:
        """Records taken: facts and batch headers."""
    @property
    def first_position(self) -> int:
        """The position of the first fact indexed (0 if none)."""
    @property
    def last_position(self) -> int:
        """The position of the last fact indexed (0 if none)."""
    def __len__(self) -> int: ...
    def hint_mismatch(
        self,
        positions: bytes,
        offsets: bytes,
        sizes: bytes,
        seqs: bytes,
        ttimes: bytes,
        store_index: bytes,
        stores: list[str],
        keys: list[str],
        ids: dict[int, str],
        id_prefix: str | None,
    ) -> str | None:
        """How a hint's columns (the numeric ones as little-endian bytes) disagree with
        these facts, or None if every entry names a fact here with the same fields.
        ``id_prefix``: the database's generated-id prefix (None: every id must be
        listed in ``ids``)."""
    def load_into(
        self, keydir: KeyDir, file_id: int, id_prefix: str, ids: IdIndex, base: int = 0
    ) -> float | None:
        """Index the facts into ``keydir`` (file ``file_id``, their offsets moved by
        ``base``) and their client-supplied ids into ``ids``; the last transaction time,
        or None if there was no fact."""
    def hint_columns(
        self, keydir: KeyDir, file_id: int, id_prefix: str
    ) -> tuple[tuple[bytes, ...], list[str], list[str], dict[int, str], int]:
        """The file's hint: the columns (little-endian position, offset, size, seq,
        ttime, store index) of the facts ``keydir`` retains here, the store names, the
        keys, ``{position: id}`` of client-supplied ids, and the dead bytes."""
    def dropped_by_store(self, keydir: KeyDir, file_id: int) -> dict[str, int]:
        """``{store: highest position}`` of the facts here that ``keydir`` no longer
        retains at their place in file ``file_id``."""
    def facts(self) -> list[tuple[int, int, int, str, str, int, bool, float, str]]:
        """``(offset, size, position, store, key, seq, deleted, transaction_time, id)``
        of each indexed fact, in file order."""

def index_file(fd: int, path: str, start: int, end: int, after: int) -> IndexedFile:
    """Index the facts of ``[start, end)`` of a data file; positions must be above
    ``after``. Batches are indexed whole or not at all."""

def ship_units(
    fd: int,
    path: str,
    start: int,
    end: int,
    durable: int,
    max_records: int,
    max_bytes: int,
) -> tuple[bytes, int, int, int, int, bool, bool] | None:
    """The whole units (single facts, complete batches) of ``[start, end)`` of a data
    file with positions up to ``durable``, until ``max_records`` facts or ``max_bytes``
    bytes: ``(frames, first, last, count, end offset, budget spent, data ended)``; None
    if a record needs the Python reader. ProtocolError for a record of unknown kind."""

def parse_shipment(frames: bytes, after: int) -> IndexedFile | None:
    """Check and index a replication shipment received after position ``after`` (fact
    offsets from the start of ``frames``); None if a record needs the Python parser.
    Raises ProtocolError as ``kilndb.storage.shipping.parse_shipment`` does."""

def check_file(fd: int, path: str, start: int, end: int, after: int) -> IndexedFile | None:
    """Index ``[start, end)`` of a data file (after its header) if it is intact by the
    rules of ``kiln check``; None if anything in it needs the frame-by-frame checker."""

@final
class KeyDir:
    """The in-memory index of every retained fact of a database (``rust/src/keydir.rs``).

    The model of the pure-Python reference ``tests/core/reference_keydir.py``: per
    position (the gap-free commit order from ``base``) a location ``file_id << 40 |
    offset`` (0 = not retained), a frame size, a seq (bit 31 = tombstone) and a
    non-decreasing transaction time (padding copies the previous one); per (store, key)
    the ascending positions of its retained facts, the newest being the key's latest.
    About 70 bytes per key with one fact each.

    Thread-safe (a read-write lock inside; ``load_columns``, ``drop_superseded`` and
    ``drop_older_than`` release the GIL). Positions are ints; a position in a query
    that is outside the indexed range simply matches nothing. Invalid arguments raise
    ``InvalidArgumentError`` (a ``ValueError``); running out of memory ``MemoryError``.
    """

    def __init__(self, base: int = 1) -> None:
        """An empty keydir whose first position is ``base`` (``0 <= base <= 2**62``)."""
    @property
    def base(self) -> int: ...
    @property
    def first_position(self) -> int:
        """The position of the first fact indexed (0 if none)."""
    @property
    def last_position(self) -> int:
        """``base + positions indexed - 1``."""
    @property
    def facts(self) -> int:
        """Retained facts."""
    @property
    def key_count(self) -> int:
        """(store, key) pairs with a retained fact."""
    @property
    def store_count(self) -> int:
        """Stores with a retained fact."""
    def memory_bytes(self) -> int:
        """Bytes allocated by the keydir, from the real capacities of its buffers."""

    # -- positions -------------------------------------------------------------------
    def add(
        self,
        store: str,
        key: str,
        position: int,
        file_id: int,
        offset: int,
        size: int,
        seq: int,
        deleted: bool,
        ttime: float,
    ) -> None:
        """Index one fact; ``position`` must be above ``last_position`` (the gap before
        it is padded unretained). ValueError if it is not, or if ``file_id``
        (0..2**24), ``offset`` (0..2**40, not 0 in file 0), ``size`` (u32) or ``seq``
        (0..2**31) is out of range."""
    def add_many(
        self, file_id: int, facts: list[tuple[str, str, int, int, int, int, bool, float]]
    ) -> None:
        """Index a batch of facts of file ``file_id``, each ``(store, key, position,
        offset, size, seq, deleted, ttime)``, positions ascending and above
        ``last_position``; validated whole before anything changes."""
    def load_columns(
        self,
        file_id: int,
        positions: bytes,
        offsets: bytes,
        sizes: bytes,
        seqs: bytes,
        ttimes: bytes,
        store_index: bytes,
        store_names: list[str],
        keys: list[str],
    ) -> None:
        """Index a hint file's columns, little-endian raw bytes: positions u64 (ascending,
        above ``last_position``), offsets u64, sizes u32, seqs u32 (tombstone bit
        included), ttimes f64 and store_index u32 (into ``store_names``), one of each
        per key. ValueError on a length mismatch or an out-of-range store index or
        position; validated whole before anything changes."""
    def pad_to(self, position: int) -> None:
        """Make ``position`` the last indexed position (unretained) if it is beyond it."""
    def location(self, position: int) -> tuple[int, int, int] | None:
        """``(file_id, offset, size)`` of a retained fact, else None."""
    def locations(self, positions: Iterable[int]) -> list[tuple[int, int, int] | None]:
        """``location`` of each position, in order."""
    def plan(self, positions: list[int]) -> tuple[list[int], bytes]:
        """A read plan for the retained facts among ``positions``: the ids of the files
        involved, and 16 bytes a fact (little-endian u32 index into those ids, u64
        offset, u32 frame size); positions not retained are skipped."""
    def live_in_file(
        self, file_id: int, first: int, end: int
    ) -> tuple[list[int], list[int], list[int], int]:
        """Positions, offsets and frame sizes of the retained facts of file ``file_id``
        among positions ``first..end``, and the highest dropped position there (or 0)."""
    def take_dropped(self, file_id: int) -> dict[str, int]:
        """``{store: highest position}`` of the facts retention freed in file ``file_id``
        since the last call for that file (what compacting it removes from each store);
        forgets them."""
    def relocate_many(
        self, file_id: int, positions: list[int], offsets: list[int], sizes: list[int]
    ) -> int:
        """Point the facts still in file ``file_id`` to ``offsets`` in its rewritten copy;
        the bytes (``sizes``) of those dropped meanwhile."""
    def relocate(self, position: int, file_id: int, offset: int) -> None:
        """Point a retained fact at its new place; ValueError if it is not retained."""
    def is_retained(self, position: int) -> bool: ...
    def seq_of(self, position: int) -> tuple[int, bool]:
        """``(seq, deleted)`` of an indexed position (still there once it is dropped; 0
        for padding); ValueError outside ``base..=last_position``."""
    def ttime_of(self, position: int) -> float:
        """Transaction time of an indexed position; ValueError outside the range."""
    def position_at_time(self, as_of: float) -> int:
        """The last position whose transaction time is ``<= as_of`` (``base - 1`` if
        none), by bisection."""
    def first_retained_at_or_after(self, position: int) -> int | None: ...

    # -- keys ------------------------------------------------------------------------
    def latest(self, store: str, key: str) -> int | None:
        """Position of the key's latest retained fact."""
    def latest_state(self, store: str, key: str) -> tuple[int, int, bool] | None:
        """``(position, seq, deleted)`` of the key's latest retained fact."""
    def positions(self, store: str, key: str) -> list[int]:
        """Positions of the key's retained facts, ascending."""
    def locate(
        self, store: str, key: str, as_of: float | None = None
    ) -> tuple[int, int, int, int] | None:
        """Where the key's latest retained fact (as of a transaction time, if given) is:
        ``(position, file_id, offset, size)``."""
    def position_as_of(self, store: str, key: str, as_of: float) -> int | None:
        """The key's last retained position whose transaction time is ``<= as_of``."""
    def history(
        self,
        store: str,
        key: str,
        since_seq: int = 0,
        until_seq: int | None = None,
        limit: int | None = None,
        visible: int | None = None,
    ) -> list[int]:
        """Positions of the key's retained facts with ``since_seq <= seq <= until_seq``,
        oldest first, at most ``limit`` (ValueError if negative), only those ``<=
        visible`` if given; by bisection (a key's seqs grow with its positions)."""
    def keys(
        self,
        store: str,
        prefix: str,
        limit: int | None = None,
        live_only: bool = True,
        after: str | None = None,
    ) -> list[str]:
        """The store's keys starting with ``prefix``, sorted, the first ``limit``; with
        ``live_only`` only those whose latest fact is not a tombstone; with ``after`` only
        those sorting after it."""
    def iter_keys(self, store: str) -> list[tuple[str, int]]:
        """``(key, latest position)`` of every key of ``store``, in no particular order."""
    def stores(self) -> list[str]:
        """Names of the stores holding retained facts, sorted."""
    def store_facts(self, store: str) -> int:
        """Retained facts of ``store``."""
    def drop(self, store: str, key: str, positions: Iterable[int]) -> list[tuple[int, int]]:
        """Stop retaining those of ``positions`` that are the key's retained facts (others
        are ignored); ``(file_id, size)`` of each, in position order. The key goes when
        none is left, the store when it has no key."""
    def drop_superseded(self, store: str) -> list[tuple[int, int]]:
        """Stop retaining all but each key's latest fact; ``(file_id, size)`` of each."""
    def drop_older_than(self, store: str, horizon: float) -> list[tuple[int, int]]:
        """Stop retaining every fact but each key's latest whose transaction time is
        ``< horizon``; ``(file_id, size)`` of each."""
    def _check_invariants(self) -> None:
        """Check every internal invariant (tests); KilnError names the first broken."""

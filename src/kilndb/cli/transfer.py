"""``kiln export`` and ``kiln import``: facts as JSON Lines, out and back in.

``export`` writes every field of each retained fact (:meth:`kilndb.Fact.to_dict`, one
per line) in position order, streaming replay a page at a time. ``import`` reads JSON
Lines — whole facts as exported, or plain writes ``{"store", "key", "value", ...}`` —
and commits them in atomic batches. Each line's shape is checked as it is read; the
rest of its checks come with its batch (:func:`~kilndb.engine.imports.import_batch`),
and a batch refused for a bad line is checked line by line to name it (with
``--skip-invalid``, the line is left out and the rest of the batch committed). Into an
embedded database, a batch of whole facts as exported is read by the native core
(:func:`~kilndb.engine.imports.read_lines`), which leaves any other batch to the reading
above; batches of a file are read one ahead, on a thread of their own, while the batch
before is committed.

Resuming an import
------------------
A fact or write carrying an ``id`` is never stored twice: the database skips ids it
holds. For the lines without one, an import of a FILE keeps a checkpoint beside it,
``FILE.kiln-import`` (JSON, replaced atomically): the last line committed, and, while a
batch with writes without an id is being committed, that batch's last line and the
database's position before it. It is saved before each such batch, and otherwise about
once a second (a batch whose lines all carry an id may simply be sent again). Run again
after an interruption, the import starts after the committed line; a batch that was in
flight is looked for in the database (its writes without an id, in order, after the
noted position) and skipped if it landed. The checkpoint is removed when the import
finishes. Standard input (``-``) has no checkpoint: only ids prevent duplicates there.
"""

from __future__ import annotations

import gc
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
import orjson

import kilndb
from kilndb.cli.context import CliSettings, open_database, pass_settings
from kilndb.cli.errors import CliError
from kilndb.cli.output import format_option, print_json, print_mapping_table, wants_json
from kilndb.client import RemoteDatabase
from kilndb.engine.imports import (
    ImportItem,
    ImportLines,
    first_invalid,
    import_batch,
    import_item,
    import_lines,
    read_lines,
)
from kilndb.errors import InvalidArgumentError, KilnError
from kilndb.model import canonical_json, value_hash

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["CHECKPOINT_SUFFIX", "export", "import_"]

#: The checkpoint of an import of FILE is FILE + this.
CHECKPOINT_SUFFIX = ".kiln-import"
#: Seconds between checkpoints while every batch's lines carry an id.
CHECKPOINT_EVERY = 1.0
_CHUNK = 1 << 20

_POSITION = click.IntRange(min=0)
AnyDatabase = kilndb.Database | RemoteDatabase


# -- progress ----------------------------------------------------------------------------


class _Meter:
    """A progress bar on stderr when stderr is a terminal; otherwise nothing."""

    def __init__(self, description: str, total: int | None, unit: str) -> None:
        self._progress: Progress | None = None
        self._task: Any = None
        if not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        self._task = self._progress.add_task(description, total=total)
        self._progress.start()

    def update(self, completed: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _report(title: str, report: dict[str, Any], as_json: bool | None) -> None:
    if wants_json(as_json):
        print_json(report)
    else:
        print_mapping_table(title, report)


# -- export ------------------------------------------------------------------------------


def _fact_lines(
    db: AnyDatabase, after: int, stores: list[str] | None
) -> Iterator[tuple[int, bytes]]:
    """``(position, JSON)`` of each retained fact after ``after``, streamed."""
    if isinstance(db, kilndb.Database):
        return db.replay_wire(after=after, stores=stores)
    return ((f.position, orjson.dumps(f.to_dict())) for f in db.replay(after, stores))


def _last_position(db: AnyDatabase) -> int:
    if isinstance(db, kilndb.Database):
        return db.last_position
    return int(db.stats()["last_position"])


@click.command()
@click.option("--store", "stores", multiple=True, help="Only this store (repeatable).")
@click.option("--after", type=_POSITION, default=0, show_default=True, help="Start after N.")
@click.option("--until", type=_POSITION, help="Stop at position N (included).")
@click.option(
    "--output",
    "-o",
    default="-",
    show_default=True,
    help="File to write ('-': standard output); written whole or not at all.",
)
@format_option
@pass_settings
def export(
    settings: CliSettings,
    stores: tuple[str, ...],
    after: int,
    until: int | None,
    output: str,
    as_json: bool | None,
) -> None:
    """Write facts as JSON Lines, every field, in position order.

    Each line is one fact as 'kiln replay' prints it; 'kiln import' reads it back.
    With --output FILE a report follows on standard output (facts, bytes, seconds).
    """
    started = time.monotonic()
    to_file = output != "-"
    with open_database(settings) as db:
        end = _last_position(db) if until is None else until
        meter = _Meter("export", max(end - after, 0), "positions") if to_file else None
        target = Path(output + ".partial") if to_file else None
        try:
            with target.open("wb", buffering=_CHUNK) if target else nullcontext() as sink:
                write = sink.write if sink is not None else _stdout_bytes()
                facts, size, last = _write_facts(db, after, until, list(stores), write, meter)
        except BaseException:  # a closed pipe included: the command group ends it quietly
            if target is not None:
                target.unlink(missing_ok=True)
            raise
        finally:
            if meter is not None:
                meter.close()
    if target is not None:
        target.replace(output)
        _report(
            "export",
            {
                "output": output,
                "facts": facts,
                "bytes": size,
                "last_position": last,
                "seconds": round(time.monotonic() - started, 3),
            },
            as_json,
        )


def _stdout_bytes() -> Callable[[bytes], Any]:
    stream = sys.stdout
    buffer: IO[bytes] | None = getattr(stream, "buffer", None)
    if buffer is not None:
        return buffer.write
    return lambda data: stream.write(data.decode())


def _write_facts(
    db: AnyDatabase,
    after: int,
    until: int | None,
    stores: list[str],
    write: Callable[[bytes], Any],
    meter: _Meter | None,
) -> tuple[int, int, int]:
    """Write the facts; return how many, their bytes and the last position written."""
    facts = size = last = 0
    chunk: list[bytes] = []
    pending = 0
    for position, body in _fact_lines(db, after, stores or None):
        if until is not None and position > until:
            break
        chunk.append(body)
        chunk.append(b"\n")
        pending += len(body) + 1
        facts += 1
        last = position
        if pending >= _CHUNK:
            write(b"".join(chunk))
            size += pending
            chunk, pending = [], 0
            if meter is not None:
                meter.update(position - after)
    if chunk:
        write(b"".join(chunk))
        size += pending
    stream = sys.stdout
    getattr(stream, "buffer", stream).flush()
    return facts, size, last


# -- import ------------------------------------------------------------------------------


@dataclass(slots=True)
class ImportReport:
    """What an import did, as its final report shows it."""

    lines: int = 0
    facts_written: int = 0
    skipped: int = 0
    invalid: int = 0
    batches: int = 0
    resumed_after: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where an import of a file got to (see the module docstring)."""

    path: Path
    target: str
    line: int = 0
    #: While a batch is committed: its last line and the position before it.
    pending: tuple[int, int] | None = None

    def save(self, line: int, pending: tuple[int, int] | None = None) -> Checkpoint:
        state = Checkpoint(self.path, self.target, line, pending)
        body = {"target": self.target, "line": line, "pending": pending}
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("wb") as out:
            out.write(orjson.dumps(body))
            out.flush()
            os.fsync(out.fileno())
        partial.replace(self.path)
        return state

    @classmethod
    def load(cls, path: Path, target: str) -> Checkpoint:
        """The checkpoint at ``path``, or a fresh one; CliError if it is another
        database's or unreadable."""
        try:
            body = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(path, target)
        except (OSError, orjson.JSONDecodeError) as exc:
            raise CliError(f"cannot read the checkpoint {path} ({exc}); remove it") from exc
        if body.get("target") != target:
            raise CliError(
                f"{path} is the checkpoint of an unfinished import into {body.get('target')};"
                " run that import again to finish it, or remove the file to start afresh"
            )
        pending = body.get("pending")
        at = None if pending is None else (int(pending[0]), int(pending[1]))
        return cls(path, target, int(body["line"]), at)


def _target(settings: CliSettings) -> str:
    if settings.url is not None:
        return f"{settings.url}#{settings.database}"
    return str(settings.directory.resolve())


class InvalidLine(CliError):
    """A line that is neither a fact nor a write."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number}: {reason}")
        self.number = number


def _skipped(line: InvalidLine, report: ImportReport) -> None:
    report.invalid += 1
    click.echo(f"warning: skipped {line.format_message()}", err=True)


@dataclass(slots=True)
class Batch:
    """The lines ``first_line`` to ``last_line``, as read. Their items are made by
    :meth:`parse` only when the batch takes the Python path; ``gaps``: the lines among
    them that give no item (blank, or skipped as invalid)."""

    lines: list[bytes]
    first_line: int
    items: list[ImportItem] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)
    parsed: bool = False

    @property
    def last_line(self) -> int:
        return self.first_line + len(self.lines) - 1

    def parse(self, report: ImportReport, skip: bool) -> list[ImportItem]:
        """The items of the lines, read once; a line that is neither a fact nor a write
        raises InvalidLine or, with ``skip``, is reported and left out."""
        if self.parsed:
            return self.items
        self.parsed = True
        loads = orjson.loads
        append = self.items.append
        for number, line in enumerate(self.lines, self.first_line):
            try:
                append(import_item(loads(line)))
            except (orjson.JSONDecodeError, InvalidArgumentError) as exc:
                self.gaps.append(number)
                if line.strip():
                    invalid = _invalid(exc, number)
                    if not skip:
                        raise invalid from exc
                    _skipped(invalid, report)
        return self.items

    def line_of(self, index: int) -> int:
        """The line number of item ``index``."""
        gaps = set(self.gaps)
        lines = (n for n in range(self.first_line, self.last_line + 1) if n not in gaps)
        return next(islice(lines, index, None))

    def drop(self, index: int) -> None:
        """Leave item ``index`` out."""
        self.gaps.append(self.line_of(index))
        del self.items[index]


def _batches(
    lines: Iterable[bytes], first: int, sizes: Iterator[int], report: ImportReport
) -> Iterator[Batch]:
    """The batches of lines from ``first`` on (those before it are passed over);
    ``sizes`` gives each batch's number of lines."""
    stream = iter(lines)
    last = sum(1 for _ in islice(stream, first - 1))
    for wanted in sizes:
        taken = list(islice(stream, wanted))
        if not taken:
            return
        report.lines += len(taken)
        yield Batch(taken, last + 1)
        last += len(taken)
        if len(taken) < wanted:
            return


#: A batch, and its lines as the native core read them (None: the Python path reads them).
ReadBatch = tuple[Batch, ImportLines | None]


@contextmanager
def _read_ahead(
    batches: Iterator[Batch], native: bool, background: bool
) -> Iterator[Iterator[ReadBatch]]:
    """The batches, each with its lines read natively when ``native`` (an embedded
    database) and they can be. With ``background``, they are read on a thread of their
    own, one batch ahead, while the caller commits the batch before: reading changes
    nothing in the database. Only for a file, whose reads always end (a thread waiting
    on a terminal or a pipe could not be stopped)."""

    def read(batch: Batch) -> ReadBatch:
        return batch, read_lines(batch.lines) if native else None

    if not background:
        yield map(read, batches)
        return
    ahead: queue.Queue[ReadBatch | BaseException | None] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def reader() -> None:
        try:
            for batch in batches:
                ahead.put(read(batch))
                if stop.is_set():
                    return
        except BaseException as exc:  # raised again on the caller's thread
            ahead.put(exc)
        else:
            ahead.put(None)

    def received() -> Iterator[ReadBatch]:
        while (item := ahead.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    thread = threading.Thread(target=reader, name="kiln-import-reader", daemon=True)
    thread.start()
    try:
        yield received()
    finally:
        stop.set()
        with suppress(queue.Empty):
            ahead.get_nowait()  # a batch waiting to be handed over: the reader then ends
        thread.join()


def _invalid(exc: Exception, number: int) -> InvalidLine:
    if isinstance(exc, InvalidArgumentError):
        return InvalidLine(number, exc.message)
    return InvalidLine(number, f"not JSON ({exc})")


def _stored_hash(item: ImportItem) -> str | None:
    """The value hash a write of ``item`` is stored with; None if its value is not JSON
    (such an item is refused: it never landed)."""
    write = item.write
    try:
        return value_hash(canonical_json(None if write.deleted else write.value))
    except InvalidArgumentError:
        return None


def _landed(db: AnyDatabase, items: list[ImportItem], after: int) -> bool:
    """Whether a batch committed after position ``after``: its writes without an id,
    in order, among the facts there (a batch with none of them is simply sent again,
    the database skipping the ids it holds)."""
    wanted = [(i.write.store, i.write.key, _stored_hash(i)) for i in items if i.write.id is None]
    if not wanted:
        return False
    found = 0
    for fact in db.replay(after=after):
        if (fact.store, fact.key, fact.value_hash) == wanted[found]:
            found += 1
            if found == len(wanted):
                return True
    return False


def _commit(db: AnyDatabase, items: list[ImportItem]) -> int:
    """Commit one batch atomically; return how many facts it wrote."""
    if isinstance(db, kilndb.Database):
        return import_batch(db, items).written
    # A server checks each write as it would any other, but not a fact's claimed
    # value_hash: the items are checked here first.
    refused = first_invalid(items)
    if refused is not None:
        raise InvalidArgumentError(refused[1])
    before = _last_position(db)
    stored = db.write_many([item.as_write() for item in items])
    return len({fact.position for fact in stored if fact.position > before})


def _commit_checked(db: AnyDatabase, batch: Batch, report: ImportReport, skip: bool) -> int | None:
    """Commit a batch; a line it was refused for stops the import (InvalidLine) or,
    with ``skip``, is left out and the rest committed. Returns how many facts were
    written, None if no line was left to commit."""
    items = batch.items
    while items:
        try:
            return _commit(db, items)
        except InvalidArgumentError as exc:
            refused = first_invalid(items)
            if refused is None:
                raise
            index, reason = refused
            invalid = InvalidLine(batch.line_of(index), reason)
            if not skip:
                raise invalid from exc
            _skipped(invalid, report)
            batch.drop(index)
    return None


def _commit_batch(
    db: AnyDatabase,
    batch: Batch,
    native: ImportLines | None,
    report: ImportReport,
    skip: bool,
) -> tuple[int, int] | None:
    """Commit a batch: the lines ``native`` read from it, if given, else (or if they are
    refused) its items (see :func:`_commit_checked`). Returns how many facts were
    written and skipped, None if no line was left to commit."""
    if native is not None and isinstance(db, kilndb.Database):
        outcome = import_lines(db, native)
        if outcome is not None:
            return outcome.written, outcome.skipped
    items = batch.parse(report, skip)
    written = _commit_checked(db, batch, report, skip)
    return None if written is None else (written, len(items) - written)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: an import's objects hold no cycles and are
    freed batch by batch, and collecting would only walk each batch's lines again."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _stopped(checkpoint: Checkpoint | None) -> str:
    if checkpoint is None:
        return "nothing of its batch was written"
    return (
        f"nothing of its batch was written; lines 1-{checkpoint.line} are imported,"
        " run again to go on from there"
    )


def _sizes(first: int | None, batch: int) -> Iterator[int]:
    if first is not None:
        yield first
    while True:
        yield batch


@click.command("import")
@click.argument("source", metavar="FILE")
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Lines per atomic batch.",
)
@click.option(
    "--skip-invalid", is_flag=True, help="Skip (and report) lines that are not facts or writes."
)
@format_option
@pass_settings
def import_(
    settings: CliSettings, source: str, batch: int, skip_invalid: bool, as_json: bool | None
) -> None:
    """Load JSON Lines from FILE ('-': standard input) in atomic batches.

    Each line is a whole fact as 'kiln export' writes it, or a write
    {"store": ..., "key": ..., "value": ...} with any of the options of 'kiln put'
    (id, expected_seq, causation, valid_time, metadata, ...). A line that is neither
    stops the import before its batch (exit status 1) unless --skip-invalid.
    Interrupted, run it again: it goes on where it stopped, writing nothing twice.
    """
    started = time.monotonic()
    report = ImportReport()
    path = None if source == "-" else Path(source)
    if path is not None and not path.is_file():
        raise CliError(f"no such file: {source}")
    checkpoint = None
    if path is not None:
        checkpoint = Checkpoint.load(
            path.with_name(path.name + CHECKPOINT_SUFFIX), _target(settings)
        )
        report.resumed_after = checkpoint.line
    total = path.stat().st_size if path is not None else None
    opener: AbstractContextManager[IO[bytes]] = (
        path.open("rb") if path is not None else nullcontext(sys.stdin.buffer)
    )
    with opener as stream, open_database(settings, create=True) as db:
        meter = _Meter("import", total, "bytes")
        done = report.resumed_after
        pending = checkpoint.pending if checkpoint else None
        sizes = _sizes(None if pending is None else pending[0] - done, batch)
        committed = done  # the last line of the last batch committed (or found landed)
        # An embedded database takes each batch's lines as the native core reads them.
        embedded = isinstance(db, kilndb.Database)
        saved_at = time.monotonic()
        try:
            batches = _batches(stream, done + 1, sizes, report)
            with _collector_paused(), _read_ahead(batches, embedded, path is not None) as read:
                for chunk, lines in read:
                    # A batch that was in flight is looked for among the facts first.
                    native = lines if pending is None else None
                    items = chunk.parse(report, skip_invalid) if native is None else []
                    if pending is not None and _landed(db, items, pending[1]):
                        report.skipped += len(items)
                    elif items or (native is not None and native.count):
                        if native is None:
                            idless = any(i.write.id is None for i in items)
                        else:
                            idless = native.idless > 0
                        if checkpoint is not None and idless:
                            checkpoint = checkpoint.save(
                                committed, (chunk.last_line, _last_position(db))
                            )
                            saved_at = time.monotonic()
                        outcome = _commit_batch(db, chunk, native, report, skip_invalid)
                        if outcome is not None:
                            report.facts_written += outcome[0]
                            report.skipped += outcome[1]
                            report.batches += 1
                    pending = None
                    committed = chunk.last_line
                    if checkpoint is not None and time.monotonic() - saved_at >= CHECKPOINT_EVERY:
                        checkpoint = checkpoint.save(committed)
                        saved_at = time.monotonic()
                    meter.update(stream.tell() if path is not None else 0)
        except (KilnError, InvalidLine) as exc:
            if checkpoint is not None and checkpoint.line != committed:
                checkpoint = checkpoint.save(committed)
            reason = exc.format_message() if isinstance(exc, InvalidLine) else exc.message
            raise CliError(f"{reason} ({_stopped(checkpoint)})") from exc
        finally:
            meter.close()
    if checkpoint is not None:
        checkpoint.path.unlink(missing_ok=True)
    report.seconds = round(time.monotonic() - started, 3)
    _report("import", asdict(report), as_json)

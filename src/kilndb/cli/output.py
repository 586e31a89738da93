"""What the ``kiln`` command prints: JSON Lines for machines, rich tables for people.

rich is imported only when something is drawn, which keeps ``kiln``'s start-up short.

JSON goes to standard output as UTF-8, one document per line (orjson, no spaces), so
``kiln replay | jq`` and friends work; facts are :meth:`kilndb.Fact.to_dict`. JSON keeps
times as numbers (epoch seconds) and sizes as plain integers.

Every listing command takes :func:`format_option` (``--json/--table``) and prints with
:func:`print_listing`: a rich table when standard output is a terminal, JSON Lines
otherwise. Tables show times as ISO 8601 UTC (:func:`~kilndb.cli.errors.iso_time`).
Long work shows a :func:`progress` bar on standard error, only when that is a terminal.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from typing import IO, TYPE_CHECKING, Any

import click
import orjson

from kilndb.cli.errors import iso_time

if TYPE_CHECKING:
    from rich.console import Console

    from kilndb.model import Fact

__all__ = [
    "LOG_LINES_META",
    "JsonLines",
    "LogLines",
    "Progress",
    "console",
    "fact_row",
    "format_option",
    "print_facts",
    "print_json",
    "print_listing",
    "print_mapping_table",
    "print_rows_table",
    "progress",
    "stderr_is_terminal",
    "stdout_is_terminal",
    "wants_json",
]

#: Rows per table when a listing is drawn: a long listing is several tables (the
#: header repeated) rather than all of it held in memory before anything is shown.
TABLE_ROWS = 1000
#: Widest JSON value shown in a table cell before it is cut with "…".
VALUE_WIDTH = 60
#: A time as :func:`~kilndb.cli.errors.iso_time` writes it (kept on one line in tables).
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _write_bytes_to_stdout() -> Callable[[bytes], Any]:
    """A function writing UTF-8 bytes to the current standard output."""
    stream = sys.stdout
    buffer: IO[bytes] | None = getattr(stream, "buffer", None)
    if buffer is not None:
        stream.flush()  # keep any text written before in order
        return buffer.write
    return lambda data: stream.write(data.decode())


class JsonLines:
    """Writes JSON documents to standard output, one per line.

    ``flush_each`` flushes after every line (for a live feed); otherwise output is
    buffered and flushed by :meth:`flush`.
    """

    __slots__ = ("_flush_each", "_write", "count")

    def __init__(self, flush_each: bool = False) -> None:
        self._write = _write_bytes_to_stdout()
        self._flush_each = flush_each
        #: Lines written so far.
        self.count = 0

    def write(self, document: Any) -> None:
        self._write(orjson.dumps(document) + b"\n")
        self.count += 1
        if self._flush_each:
            self.flush()

    def fact(self, fact: Fact) -> None:
        """Write one fact as its :meth:`~kilndb.Fact.to_dict`."""
        self.write(fact.to_dict())

    def facts(self, facts: Iterable[Fact]) -> int:
        """Write every fact; return how many."""
        before = self.count
        for fact in facts:
            self.write(fact.to_dict())
        self.flush()
        return self.count - before

    def flush(self) -> None:
        stream = sys.stdout
        getattr(stream, "buffer", stream).flush()


def print_json(document: Any) -> None:
    """Print one JSON document on one line."""
    out = JsonLines()
    out.write(document)
    out.flush()


def stdout_is_terminal() -> bool:
    """Whether standard output is a terminal (then tables beat JSON)."""
    stream = sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def stderr_is_terminal() -> bool:
    """Whether standard error is a terminal (then long work shows progress there)."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def console(stderr: bool = False, soft_wrap: bool = False) -> Console:
    """A rich console on the current standard output (or error).

    ``soft_wrap`` leaves long lines to the terminal instead of breaking them at its width
    (80 columns when the output is not a terminal).
    """
    from rich.console import Console

    return Console(file=sys.stderr if stderr else sys.stdout, highlight=False, soft_wrap=soft_wrap)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def print_mapping_table(title: str, mapping: Mapping[str, Any]) -> None:
    """Print a two-column table of names and values."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("value", justify="right")
    for name, value in mapping.items():
        table.add_row(name.replace("_", " "), _cell(value))
    console().print(table)


def format_option(f: Any) -> Any:
    """The ``--json/--table`` option of commands that print a table on a terminal."""
    return click.option(
        "--json/--table",
        "as_json",
        default=None,
        help="Force JSON Lines or a table (default: a table on a terminal, else JSON Lines).",
    )(f)


def wants_json(as_json: bool | None) -> bool:
    """JSON if ``--json``, a table if ``--table``, else JSON unless on a terminal."""
    return not stdout_is_terminal() if as_json is None else as_json


def print_rows_table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "(none)"
) -> int:
    """Print a table with a header row, :data:`TABLE_ROWS` rows at a time; ``empty``
    stands in for no rows. Returns the number of rows.

    Numbers are right-aligned and, like times, kept on one line; text is left-aligned
    and wraps."""
    from rich.table import Table

    out = console()
    count = 0
    rows = iter(rows)
    while chunk := list(islice(rows, TABLE_ROWS)):
        table = Table(title=title if not count else None, title_justify="left")
        for index, column in enumerate(columns):
            first = chunk[0][index]
            number = isinstance(first, int | float) and not isinstance(first, bool)
            time = isinstance(first, str) and _ISO_TIME.fullmatch(first) is not None
            table.add_column(
                column,
                justify="right" if number else "left",
                no_wrap=number or time,
                overflow="fold",
            )
        for row in chunk:
            table.add_row(*(_cell(value) for value in row))
        out.print(table)
        count += len(chunk)
    if not count:
        out.print(f"{title}: {empty}")
    return count


def print_listing(
    title: str,
    columns: Sequence[str],
    documents: Iterable[Any],
    row: Callable[[Any], Sequence[Any]],
    as_json: bool | None,
    empty: str = "(none)",
) -> int:
    """Print a listing: each document as a JSON line, or as a table row (``row`` turns a
    document into the cells of ``columns``), as :func:`wants_json` decides. Returns the
    number printed."""
    if not wants_json(as_json):
        return print_rows_table(title, columns, (row(document) for document in documents), empty)
    out = JsonLines()
    for document in documents:
        out.write(document)
    out.flush()
    return out.count


def short_json(value: Any, width: int = VALUE_WIDTH) -> str:
    """``value`` as compact JSON, cut to ``width`` characters with "…"."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def fact_row(fact: dict[str, Any]) -> tuple[Any, ...]:
    """A fact's cells in a table: position, store, key, seq, time, value."""
    value = "(deleted)" if fact["deleted"] else short_json(fact["value"])
    return (
        fact["position"],
        fact["store"],
        fact["key"],
        fact["seq"],
        iso_time(fact["transaction_time"]),
        value,
    )


#: The columns of :func:`fact_row`.
FACT_COLUMNS = ("position", "store", "key", "seq", "transaction time (UTC)", "value")


def print_facts(title: str, facts: Iterable[Fact], as_json: bool | None) -> int:
    """Print facts as JSON Lines (:meth:`~kilndb.Fact.to_dict`) or as a table."""
    return print_listing(
        title, FACT_COLUMNS, (fact.to_dict() for fact in facts), fact_row, as_json, "no facts"
    )


class Progress:
    """Reports the progress of long work; does nothing unless it draws on a terminal."""

    def advance(self, amount: float = 1) -> None:
        """``amount`` more units are done."""

    def describe(self, text: str) -> None:
        """Change what the bar says it is doing."""

    def update(self, completed: float, total: float) -> None:
        """``completed`` units of ``total`` are done (a total that moves, like a leader's
        position)."""


class _RichProgress(Progress):
    def __init__(self, bar: Any, task: Any) -> None:
        self._bar = bar
        self._task = task

    def advance(self, amount: float = 1) -> None:
        self._bar.advance(self._task, amount)

    def describe(self, text: str) -> None:
        self._bar.update(self._task, description=text)

    def update(self, completed: float, total: float) -> None:
        self._bar.update(self._task, completed=completed, total=total)


@contextmanager
def progress(
    description: str, total: float | None = None, *, show: bool = True
) -> Iterator[Progress]:
    """A progress bar on standard error while the block runs: of ``total`` units, or a
    spinner with the elapsed time when the total is unknown.

    Drawn only when standard error is a terminal (and ``show``), and removed when done,
    so piped or redirected output is byte for byte what it would be without it.
    """
    if not show or not stderr_is_terminal():
        yield Progress()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import Progress as RichProgress

    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns.append(TimeElapsedColumn())
    with RichProgress(*columns, console=console(stderr=True), transient=True) as bar:
        yield _RichProgress(bar, bar.add_task(description, total=total))


#: ``ctx.meta`` key (of the root context) of the function that detaches the command's
#: :class:`LogLines` (``kiln serve`` logs through its own handler instead).
LOG_LINES_META = "kilndb.cli.uninstall_log_lines"


class LogLines(logging.Handler):
    """Shows the library's log records on stderr as ``warning: ...`` lines.

    Without ``debug`` an attached exception is reduced to its message, so that a
    background failure logged by the engine does not print a traceback.
    """

    def __init__(self, debug: bool = False) -> None:
        super().__init__(logging.DEBUG if debug else logging.WARNING)
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            if self.debug:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            else:
                error = record.exc_info[1]
                text += f" ({type(error).__name__}: {error})"
        return text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Looked up at each record: the current stderr, not the one at install time.
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)

    def install(self, logger_name: str = "kilndb") -> Callable[[], None]:
        """Attach to ``logger_name``; return the function that detaches again."""
        logger = logging.getLogger(logger_name)
        logger.addHandler(self)
        if self.debug and logger.level in (logging.NOTSET, logging.WARNING):
            previous = logger.level
            logger.setLevel(logging.DEBUG)
        else:
            previous = None

        def uninstall() -> None:
            logger.removeHandler(self)
            if previous is not None:
                logger.setLevel(previous)

        return uninstall

"""What the ``kiln`` command prints: JSON lines for machines, rich tables for people.

rich is imported only when something is drawn, which keeps ``kiln``'s start-up short.

JSON goes to standard output as UTF-8, one document per line (orjson, no spaces), so
``kiln replay | jq`` and friends work; facts are :meth:`kilndb.Fact.to_dict`. Tables are
drawn with rich, and only when standard output is a terminal (or when asked for).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import click
import orjson

from kilndb.model import Fact

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "JsonLines",
    "LogLines",
    "console",
    "format_option",
    "print_json",
    "print_mapping_table",
    "print_rows_table",
    "stdout_is_terminal",
    "wants_json",
]


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
        help="Force JSON or a table (default: a table on a terminal, else JSON).",
    )(f)


def wants_json(as_json: bool | None) -> bool:
    """JSON if ``--json``, a table if ``--table``, else JSON unless on a terminal."""
    return not stdout_is_terminal() if as_json is None else as_json


def print_rows_table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "(none)"
) -> None:
    """Print a table with a header row; ``empty`` stands in for no rows."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    count = 0
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
        count += 1
    if not count:
        console().print(f"{title}: {empty}")
        return
    console().print(table)


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

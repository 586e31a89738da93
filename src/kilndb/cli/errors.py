"""How the ``kiln`` command reports failure: one line on stderr, never a traceback.

Every failure ends up as one of two :class:`click.ClickException` subclasses whose
``show()`` prints exactly one line, ``error: <message>``:

* :class:`CliUsageError` (exit status 2, as click uses for usage errors): a bad option
  value, a missing argument, JSON on the command line that does not parse;
* :class:`CliError` (exit status 1): everything else — any :class:`kilndb.KilnError`
  (a conflict, a database locked by another process, corruption …), a missing fact, an
  operating-system error, and even an unexpected exception (set ``KILN_DEBUG=1`` to get
  its traceback instead);
* :class:`Interrupted` (exit status 130): Ctrl-C in the middle of a command.

:func:`translate` maps an exception raised while a command runs to one of them.
"""

from __future__ import annotations

from typing import IO, Any

import click

from kilndb.errors import CorruptRecordError, KilnError

__all__ = ["CliError", "CliUsageError", "Interrupted", "one_line", "translate"]


def one_line(message: str) -> str:
    """``message`` with its lines joined, so that an error never spans several lines."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


class CliError(click.ClickException):
    """A failure that is not the user's typing: printed as ``error: ...``, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class Interrupted(CliError):
    """Ctrl-C stopped a command before it finished: ``error: interrupted``, exit 130."""

    exit_code = 130

    def __init__(self) -> None:
        super().__init__("interrupted")


class CliUsageError(click.UsageError):
    """A usage error (bad option, argument or JSON): ``error: ...``, exit status 2."""

    def show(self, file: IO[Any] | None = None) -> None:
        message = self.format_message()
        if self.ctx is not None:
            message = f"{message} (see '{self.ctx.command_path} --help')"
        click.echo(f"error: {message}", err=True, file=file)


# click >= 8.2 raises this for a group called without a subcommand; it shows the help
# page and must keep doing so.
_PASS_THROUGH: tuple[type[BaseException], ...] = tuple(
    cls for cls in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if isinstance(cls, type)
)


def translate(
    exc: BaseException, debug: bool = False, repair_command: str = "kiln check --fix"
) -> BaseException:
    """The exception to raise instead of ``exc`` so that click prints one clean line.

    Returns ``exc`` itself when it already prints cleanly or must pass through
    (``click.exceptions.Exit``, ``Abort``, ``SystemExit``). An
    unexpected exception (a bug) becomes one line too, unless ``debug`` asks for the
    traceback (``KILN_DEBUG=1``). A corrupt record names ``repair_command``.
    """
    if isinstance(
        exc, (CliError, CliUsageError, click.exceptions.Exit, click.Abort, *_PASS_THROUGH)
    ):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted()
    if isinstance(exc, click.UsageError):
        return CliUsageError(one_line(exc.format_message()), exc.ctx)
    if isinstance(exc, click.ClickException):
        return CliError(exc.format_message())
    if isinstance(exc, CorruptRecordError):
        return CliError(f"{exc.message} (run '{repair_command}' to repair)")
    if isinstance(exc, KilnError):
        return CliError(exc.message)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return CliError(f"{exc.strerror or exc}{where}")
    if isinstance(exc, Exception) and not debug:
        return CliError(
            f"unexpected {type(exc).__name__}: {exc} (set KILN_DEBUG=1 to see the traceback)"
        )
    return exc

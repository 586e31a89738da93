"""How the ``kiln`` command reports failure: one line on stderr and a documented status.

Every failure ends up as a :class:`click.ClickException` subclass whose ``show()`` prints
exactly one line, ``error: <message>``, and whose ``exit_code`` says what kind of
failure it was, so that a script can tell "not there" from "could not ask":

====  =======================  ==========================================================
code  name                     when
====  =======================  ==========================================================
0     :data:`EXIT_OK`          success
1     :data:`EXIT_FAILED`      the request was refused or found nothing: a missing fact,
                               a conflict (``expected_seq``), a lease held or lost, a
                               permission refused, an argument the database refuses
                               (``bad_request``: a bad store name, an empty key), a
                               corrupt record, damage ``kiln check`` did not repair, an
                               I/O error, an unexpected exception
2     :data:`EXIT_USAGE`       the command line is wrong: an unknown command or option, a
                               bad option value (a malformed ``--url``, a bad database
                               name), JSON that does not parse, an unknown key in the
                               ``--config`` file
3     :data:`EXIT_UNAVAILABLE` nothing answered, or it cannot serve now: connection
                               refused, lost or timed out, a server unavailable or
                               draining, a database locked by another process (a running
                               server), a write to a read-only replica, replicas that did
                               not confirm in time; a retry later (or elsewhere) may work
130   :data:`EXIT_INTERRUPTED` Ctrl-C stopped the command
====  =======================  ==========================================================

:data:`EXIT_CODES` maps each :class:`kilndb.KilnError` ``error_code`` to its status
(an error code missing from it is 1); :func:`exit_code_for` applies it to any exception.
:func:`translate` maps an exception raised while a command runs to the exception to
raise instead. A command that fails on its own raises :class:`CliError` with the status
it means (``CliError("...", EXIT_UNAVAILABLE)``), or lets a KilnError through.
"""

from __future__ import annotations

import errno
import socket
from datetime import UTC, datetime
from typing import IO, Any

import click

from kilndb.errors import CorruptRecordError, KilnError, LeaseHeldError

__all__ = [
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliError",
    "CliUsageError",
    "Interrupted",
    "exit_code_for",
    "iso_time",
    "one_line",
    "translate",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

#: The exit status of each KilnError, by its wire ``error_code`` (the same whether the
#: error was raised here or by a server). Codes not listed exit with EXIT_FAILED.
EXIT_CODES: dict[str, int] = {
    # Refused, or nothing there: the answer is definite; retrying the same call won't help.
    "not_found": EXIT_FAILED,
    "conflict": EXIT_FAILED,
    "cursor_too_old": EXIT_FAILED,
    "lease_held": EXIT_FAILED,
    "lease_lost": EXIT_FAILED,
    "stale_epoch": EXIT_FAILED,
    "unauthenticated": EXIT_FAILED,
    "permission_denied": EXIT_FAILED,
    "protocol_error": EXIT_FAILED,
    "frame_too_large": EXIT_FAILED,
    "unknown_op": EXIT_FAILED,
    "storage_error": EXIT_FAILED,
    "corrupt_record": EXIT_FAILED,
    "disk_full": EXIT_FAILED,
    "internal": EXIT_FAILED,
    "bad_request": EXIT_FAILED,
    # Could not ask, or it cannot answer now: a retry later, or elsewhere, may succeed.
    "connection_lost": EXIT_UNAVAILABLE,
    "outcome_unknown": EXIT_UNAVAILABLE,
    "unavailable": EXIT_UNAVAILABLE,
    "coordinator_unavailable": EXIT_UNAVAILABLE,
    "closed": EXIT_UNAVAILABLE,
    "database_locked": EXIT_UNAVAILABLE,
    "read_only_replica": EXIT_UNAVAILABLE,
    "replication_timeout": EXIT_UNAVAILABLE,
    "subscriber_overflow": EXIT_UNAVAILABLE,
}

#: errno values of an operating-system error that mean "nobody answered".
_UNREACHABLE = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.EPIPE,
    }
)


def iso_time(seconds: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds: ``2026-12-04T19:10:51.123Z``."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def exit_code_for(exc: BaseException) -> int:
    """The exit status :func:`translate` gives ``exc`` (see the table above)."""
    if isinstance(exc, KilnError):
        return EXIT_CODES.get(exc.error_code, EXIT_FAILED)
    if isinstance(exc, TimeoutError | socket.timeout | ConnectionError):
        return EXIT_UNAVAILABLE
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


def one_line(message: str) -> str:
    """``message`` with its lines joined, so that an error never spans several lines."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


class CliError(click.ClickException):
    """A failure that is not the user's typing: printed as ``error: ...``, exit
    status ``exit_code`` (1 unless told)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(one_line(message))
        # click declares exit_code on the class; each CliError carries its own status.
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class Interrupted(CliError):
    """Ctrl-C stopped a command before it finished: ``error: interrupted``, exit 130."""

    def __init__(self) -> None:
        super().__init__("interrupted", EXIT_INTERRUPTED)


class CliUsageError(click.UsageError):
    """A usage error (bad option, argument or JSON): ``error: ...``, exit status 2."""

    exit_code = EXIT_USAGE

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


def _message(exc: KilnError) -> str:
    """The error's message, with its times as ISO 8601 UTC rather than epoch seconds."""
    if isinstance(exc, LeaseHeldError):
        return f"lease {exc.key!r} is held by {exc.holder!r} until {iso_time(exc.expires_at)}"
    return exc.message


def translate(
    exc: BaseException, debug: bool = False, repair_command: str = "kiln check --fix"
) -> BaseException:
    """The exception to raise instead of ``exc`` so that click prints one clean line
    and exits with the status of the table above.

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
        return CliError(exc.format_message(), exc.exit_code)
    if isinstance(exc, CorruptRecordError):
        return CliError(f"{exc.message} (run '{repair_command}' to repair)", exit_code_for(exc))
    if isinstance(exc, KilnError):
        return CliError(_message(exc), exit_code_for(exc))
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return CliError(f"{exc.strerror or exc}{where}", exit_code_for(exc))
    if isinstance(exc, Exception) and not debug:
        return CliError(
            f"unexpected {type(exc).__name__}: {exc} (set KILN_DEBUG=1 to see the traceback)"
        )
    return exc

"""The ``kiln`` command group: global options, lazy commands, errors and the entry point.

``kiln [--data DIR] [--database NAME] [--sync MODE] [--url URL] COMMAND ...``.

Commands are loaded lazily: :data:`COMMANDS` names, for each, the ``module:attribute``
of its click command and its one-line help, so that ``kiln --help`` lists every command
without importing any of them (nor the engine, the client, the server, aiohttp or rich
they import). A command's module is imported when it runs (or its own ``--help`` is
asked for). Adding a command is one line in :data:`COMMANDS`; a test checks that the
help written there is the command's own short help.

:class:`KilnGroup` turns every failure into one ``error: ...`` line on stderr with the
exit status of :mod:`kilndb.cli.errors`, and a closed pipe (``kiln replay | head``) into
a quiet exit 0.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import click

import kilndb
from kilndb.cli.context import DEFAULT_DATA_DIR, CliSettings, database_name
from kilndb.cli.errors import EXIT_OK, translate
from kilndb.cli.output import LOG_LINES_META, LogLines
from kilndb.config import SyncMode

__all__ = ["COMMANDS", "KilnGroup", "cli", "main"]

#: Every ``kiln`` command: name → (``module:attribute`` of the click command, its short
#: help as ``kiln --help`` lists it).
COMMANDS: dict[str, tuple[str, str]] = {
    "put": ("kilndb.cli.facts:put", "Write JSON as the new value of KEY in STORE; print the fact."),
    "get": (
        "kilndb.cli.facts:get",
        "Print the latest fact of KEY in STORE (exit status 1 if it has no value).",
    ),
    "history": ("kilndb.cli.facts:history", "Print the retained facts of KEY in STORE by seq."),
    "delete": (
        "kilndb.cli.facts:delete",
        "Delete KEY in STORE by writing a tombstone fact; print it.",
    ),
    "keys": ("kilndb.cli.facts:keys", "Print the keys of STORE that have a value, sorted."),
    "replay": (
        "kilndb.cli.facts:replay",
        "Print retained facts with position > N in commit order.",
    ),
    "tail": (
        "kilndb.cli.tail:tail",
        "Follow the changefeed: print each fact as it commits, until Ctrl-C.",
    ),
    "stores": (
        "kilndb.cli.admin:stores",
        "List the stores with their live keys and retention policy.",
    ),
    "stats": ("kilndb.cli.admin:stats", "Show counters and sizes of the database."),
    "compact": (
        "kilndb.cli.admin:compact",
        "Apply retention and rewrite data files without dropped facts; print what was done.",
    ),
    "retention": ("kilndb.cli.admin:retention", "Show or set what compaction keeps of STORE."),
    "check": (
        "kilndb.cli.check:check",
        "Verify every record of the database (CRCs, framing, order); --fix repairs.",
    ),
    "demo": (
        "kilndb.cli.demo:demo",
        "A guided tour: write, read, history, time travel, batch, replay, live feed, delete.",
    ),
    "serve": (
        "kilndb.cli.serve:serve",
        "Serve every database under --data over TCP (and a Unix socket with --unix).",
    ),
    "status": (
        "kilndb.cli.admin:status",
        "Show a server's status: addresses, open databases, alerts and counters (needs --url).",
    ),
    "db": ("kilndb.cli.databases:db", "List, create and remove databases (tenants)."),
    "stream": (
        "kilndb.cli.stream:stream",
        "Ordered segments: a space is a store, a segment a key, an entry a fact.",
    ),
    "lease": (
        "kilndb.cli.lease:lease",
        "Named locks with a holder, a time to live and a fencing token.",
    ),
    "token": ("kilndb.cli.token:token", "Tokens for servers that require authentication."),
    "promote": (
        "kilndb.cli.replication:promote",
        "Make the follower at --url the leader of the databases it follows.",
    ),
    "replicate": (
        "kilndb.cli.replication:replicate",
        "Make the server at --url follow --from for these databases (default: default).",
    ),
    "cluster": (
        "kilndb.cli.cluster:cluster",
        "Cluster membership, as a member (--url) sees it.",
    ),
    "backup": (
        "kilndb.cli.backup:backup",
        "Write a consistent copy of the database to PATH while writes go on.",
    ),
    "restore": (
        "kilndb.cli.backup:restore",
        "Create the database from the backup at PATH (checked first).",
    ),
    "export": (
        "kilndb.cli.transfer:export",
        "Write facts as JSON Lines, every field, in position order.",
    ),
    "import": (
        "kilndb.cli.transfer:import_",
        "Load JSON Lines from FILE ('-': standard input) in atomic batches.",
    ),
}


def _debug() -> bool:
    return os.environ.get("KILN_DEBUG", "") not in ("", "0")


def _silence_broken_pipe() -> None:
    # The reader went away (``kiln replay | head``): point stdout at /dev/null so that the
    # interpreter's final flush does not complain, as the Python docs recommend.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a real file (tests): nothing to silence
    finally:
        os.close(devnull)


def load_command(target: str) -> click.Command:
    """The click command at ``module:attribute``."""
    module_name, _, attribute = target.partition(":")
    command = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"{target} is not a click command")
    return command


class KilnGroup(click.Group):
    """A click group with lazily imported commands (``lazy``: name → (``module:attr``,
    short help)) whose failures print one ``error: ...`` line, never a traceback."""

    def __init__(
        self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(load_command(self.lazy[cmd_name][0]), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, from the table: nothing is imported."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.commands:
                help_text = self.commands[name].get_short_help_str(limit)
            else:
                # A bare command carrying the help: click shortens it as it would the
                # real command's.
                help_text = click.Command(name, help=self.lazy[name][1]).get_short_help_str(limit)
            rows.append((name, help_text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except Exception as exc:
            replacement = translate(exc, _debug())
            if replacement is exc:
                raise
            raise replacement from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader has all it wanted (``kiln replay | head -1``): a success.
            _silence_broken_pipe()
            ctx.exit(EXIT_OK)
        except (Exception, KeyboardInterrupt) as exc:
            settings = ctx.find_object(CliSettings) or CliSettings(Path(DEFAULT_DATA_DIR))
            replacement = translate(
                exc, _debug(), settings.command_line("check", "--fix", local=True)
            )
            if replacement is exc:
                raise
            raise replacement from exc


@click.group(cls=KilnGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data",
    "data",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    envvar="KILN_DATA",
    show_envvar=True,
    help="Data directory holding the databases.",
)
@click.option(
    "--database",
    "database",
    default="default",
    show_default=True,
    callback=database_name,
    envvar="KILN_DATABASE",
    show_envvar=True,
    help="Database (tenant) inside the data directory.",
)
@click.option(
    "--sync",
    "sync",
    type=click.Choice(["always", "interval", "none"]),
    default="always",
    show_default=True,
    envvar="KILN_SYNC",
    show_envvar=True,
    help="Durability of writes: fsync before acknowledging (always), every "
    "sync_interval_ms (interval) or leave it to the OS (none).",
)
@click.option(
    "--url",
    "url",
    default=None,
    envvar="KILN_URL",
    show_envvar=True,
    help="Use the server at this URL (HOST:PORT, tcp://HOST:PORT, tls://HOST:PORT or"
    " unix:///PATH) instead of --data; several servers as H1:P1,H2:P2 (writes follow the"
    " leader, admin commands use the first that answers).",
)
@click.option(
    "--token",
    default=None,
    envvar="KILN_TOKEN",
    show_envvar=True,
    help="JWT for a server that requires authentication.",
)
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    envvar="KILN_CA_FILE",
    show_envvar=True,
    help="CA certificate that signed the server's TLS certificate.",
)
@click.option(
    "--cert-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    envvar="KILN_CERT_FILE",
    show_envvar=True,
    help="Client certificate (PEM) for mutual TLS.",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    envvar="KILN_KEY_FILE",
    show_envvar=True,
    help="Key of --cert-file.",
)
@click.version_option(
    kilndb.__version__, "-V", "--version", prog_name="kiln", message="%(prog)s (KilnDB) %(version)s"
)
@click.pass_context
def cli(
    ctx: click.Context,
    data: Path,
    database: str,
    sync: str,
    url: str | None,
    token: str | None,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
) -> None:
    """KilnDB: a durable fact store. Append facts, read them back (also as of a past
    time), replay them in commit order and follow the live changefeed.

    Every command works on DATA/DATABASE (./data/default unless told otherwise), or on
    a server with --url. Listings are tables on a terminal and JSON Lines otherwise
    (--json/--table choose). Errors are one line on stderr; exit status 0 ok, 1 not
    found or refused, 2 usage, 3 cannot connect or unavailable.
    """
    ctx.obj = CliSettings(
        data=data,
        database=database,
        sync=cast(SyncMode, sync),
        url=url,
        token=token,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    )
    # Warnings of the engine (a torn tail cut on open, a repair) as one line each.
    uninstall: Callable[[], None] = LogLines(debug=_debug()).install()
    ctx.meta[LOG_LINES_META] = uninstall
    ctx.call_on_close(uninstall)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``kiln`` console script; exits with the command's status."""
    try:
        cli.main(args=argv, prog_name="kiln")
    except SystemExit as done:
        status = done.code
    else:  # pragma: no cover - click's main always exits in standalone mode
        status = EXIT_OK
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # What was left in the buffer found no reader: as quiet as a pipe closed earlier.
        _silence_broken_pipe()
    sys.exit(status)

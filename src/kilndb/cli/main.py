"""The ``kiln`` command group: global options, error handling and the entry point.

``kiln [--data DIR] [--database NAME] [--sync MODE] COMMAND ...``. The commands live in
:mod:`kilndb.cli.facts` (put, get, history, delete, keys, replay), :mod:`kilndb.cli.tail`,
:mod:`kilndb.cli.admin` (stores, stats, compact, retention, check) and
:mod:`kilndb.cli.demo`. :class:`KilnGroup` turns every failure into one ``error: ...``
line on stderr (see :mod:`kilndb.cli.errors`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import click

import kilndb
from kilndb.cli.admin import check, compact, retention, stats, status, stores
from kilndb.cli.backup import backup, restore
from kilndb.cli.cluster import cluster
from kilndb.cli.context import DEFAULT_DATA_DIR, CliSettings
from kilndb.cli.databases import db
from kilndb.cli.demo import demo
from kilndb.cli.errors import translate
from kilndb.cli.facts import delete, get, history, keys, put, replay
from kilndb.cli.lease import lease
from kilndb.cli.output import LogLines
from kilndb.cli.replication import promote, replicate
from kilndb.cli.serve import serve
from kilndb.cli.stream import stream
from kilndb.cli.tail import tail
from kilndb.cli.token import token
from kilndb.cli.transfer import export, import_
from kilndb.config import SyncMode

__all__ = ["KilnGroup", "cli", "main"]


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


class KilnGroup(click.Group):
    """A click group whose failures print one ``error: ...`` line, never a traceback."""

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
            _silence_broken_pipe()
            ctx.exit(1)
        except (Exception, KeyboardInterrupt) as exc:
            settings = ctx.find_object(CliSettings) or CliSettings(Path(DEFAULT_DATA_DIR))
            replacement = translate(exc, _debug(), settings.command_line("check", "--fix"))
            if replacement is exc:
                raise
            raise replacement from exc


@click.group(cls=KilnGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    help="Use the server at this URL (tcp://HOST:PORT, tls://HOST:PORT or unix:///PATH)"
    " instead of --data; several servers as tcp://H1:P1,H2:P2 (writes follow the leader,"
    " admin commands use the first that answers).",
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

    Every command works on DATA/DATABASE (./data/default unless told otherwise).
    Facts are printed as JSON, one per line. Errors are one line on stderr.
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
    ctx.call_on_close(LogLines(debug=_debug()).install())


for _command in (
    put,
    get,
    history,
    delete,
    keys,
    replay,
    tail,
    stores,
    stats,
    compact,
    retention,
    check,
    demo,
    serve,
    status,
    db,
    stream,
    lease,
    token,
    promote,
    replicate,
    cluster,
    backup,
    restore,
    export,
    import_,
):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``kiln`` console script; exits with the command's status."""
    cli.main(args=argv, prog_name="kiln")

"""The global options of ``kiln`` and how a command opens the database they name.

``--data``, ``--database`` and ``--sync`` (or ``KILN_DATA``, ``KILN_DATABASE``,
``KILN_SYNC``) fill one :class:`CliSettings`, stored as the click context's ``obj``;
``--url`` (``KILN_URL``) names a server instead, or several (``tcp://h1:7400,h2:7400``):
commands on facts then follow the database's leader as :func:`kilndb.connect` does, and
admin commands talk to the first server that answers (:func:`server_connection`).
``--url`` also takes ``HOST:PORT`` (and ``H1:P1,H2:P2``) without a scheme, meaning
``tcp://`` (:func:`server_url`). Commands that only read refuse to create a database
that does not exist, so a mistyped ``--data`` is an error rather than an empty answer.

The client and the engine are imported when a command opens a database, not before:
``kiln --help`` must not pay for them.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click

from kilndb.cli.errors import EXIT_USAGE, CliError
from kilndb.config import SyncMode

if TYPE_CHECKING:
    import kilndb
    from kilndb.client import RemoteDatabase
    from kilndb.client.endpoint import Endpoint
    from kilndb.client.transport import Connection

__all__ = [
    "DEFAULT_DATA_DIR",
    "CliSettings",
    "open_database",
    "pass_settings",
    "program_name",
    "require_existing",
    "server_url",
]

DEFAULT_DATA_DIR = "./data"
#: How long a command waits for a server's reply, in seconds.
DEFAULT_TIMEOUT = 30.0

P = ParamSpec("P")
R = TypeVar("R")


#: The schemes of ``--url`` (the wire protocol's transports).
URL_SCHEMES = ("tcp", "tls", "unix")


def server_url(url: str) -> str:
    """``--url`` as :func:`kilndb.connect` takes it: ``HOST:PORT`` and ``H1:P1,H2:P2``
    without a scheme mean ``tcp://``; any other form passes as given (the client
    checks it). An ``http://``/``https://``/``ws://`` URL is refused with a CliError
    (exit 2) naming the schemes: the ``kiln`` command speaks the wire protocol, and
    the HTTP port of a server is for browsers, curl and SSE clients."""
    text = url.strip()
    scheme, sep, _ = text.partition("://")
    if not sep:
        return f"tcp://{text}"
    if scheme.lower() in ("http", "https", "ws", "wss"):
        raise CliError(
            f"--url {url}: the kiln command talks to a server's wire-protocol port, not"
            f" its HTTP port; use {', '.join(s + '://' for s in URL_SCHEMES)} or HOST:PORT"
            " (e.g. --url 127.0.0.1:7400)",
            EXIT_USAGE,
        )
    return text


def database_name(ctx: click.Context | None, param: click.Parameter | None, value: str) -> str:
    """Click callback: ``value`` if it is a valid database name, else a usage error."""
    from kilndb.errors import InvalidArgumentError
    from kilndb.model import validate_database_name

    try:
        return validate_database_name(value)
    except InvalidArgumentError as exc:
        raise click.BadParameter(exc.message, ctx, param) from exc


def program_name() -> str:
    """How to call ``kiln`` again: ``kiln``, or the script's path when it is not on PATH."""
    invoked = sys.argv[0] if sys.argv else ""
    if Path(invoked).name == "kiln" and shutil.which("kiln") is None:
        return invoked  # e.g. .venv/bin/kiln, as `make run` calls it
    return "kiln"


@dataclass(frozen=True, slots=True)
class CliSettings:
    """Where the database lives and how it syncs, from the global options."""

    data: Path
    database: str = "default"
    sync: SyncMode = "always"
    #: A server to use instead of the data directory (``--url``/``KILN_URL``).
    url: str | None = None
    #: How to reach it: token and TLS files.
    token: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def endpoint(self) -> Endpoint:
        """The server of ``--url`` with the token and TLS options; a malformed ``--url``
        is a CliError with the usage status."""
        from kilndb.client.endpoint import Endpoint
        from kilndb.errors import InvalidArgumentError

        if self.url is None:
            raise CliError("this command asks a server: give --url (or set KILN_URL)")
        try:
            return Endpoint.make(
                server_url(self.url),
                token=self.token,
                ca_file=self.ca_file,
                cert_file=self.cert_file,
                key_file=self.key_file,
            )
        except InvalidArgumentError as exc:
            raise CliError(f"--url: {exc.message}", EXIT_USAGE) from exc

    @property
    def directory(self) -> Path:
        """The database's own directory, ``DATA/<database>``."""
        return self.data / self.database

    def command_line(self, *words: str, local: bool = False) -> str:
        """A ``kiln`` command line for these settings, to suggest to the user (on the
        data directory even with ``--url`` if ``local``)."""
        parts = [program_name()]
        if self.url is not None and not local:
            parts += ["--url", self.url]
        elif self.data != Path(DEFAULT_DATA_DIR):
            parts += ["--data", str(self.data)]
        if self.database != "default":
            parts += ["--database", self.database]
        return shlex.join([*parts, *words])


def server_connection(settings: CliSettings) -> Connection:
    """A raw connection to the ``--url`` server, introduced with ``hello`` (token).

    When ``--url`` lists several servers, it is the first of them that answers, in the
    order given, whatever its role: the admin commands built on it (``status``,
    ``cluster status``, ``promote``, ``replicate``, ``databases``, ``create``, ``drop``)
    talk to one node, so the list is a fallback for them, not a choice of leader."""
    from kilndb.client.hosts import Hosts
    from kilndb.client.link import connect_first

    endpoint = settings.endpoint()
    hosts = Hosts(endpoint.hosts, settings.database, "any")
    connection, _ = connect_first(endpoint, settings.database, hosts, DEFAULT_TIMEOUT)
    return connection


def server_call(settings: CliSettings, op: str, **params: Any) -> dict[str, Any]:
    """Send one request to the ``--url`` server on a connection of its own; its reply
    without the ``ok`` flag (the server's error is raised)."""
    connection = server_connection(settings)
    try:
        reply = connection.call(op, **params)
    finally:
        connection.close()
    reply.pop("ok", None)
    return reply


def pass_settings(f: Callable[Concatenate[CliSettings, P], R]) -> Callable[P, R]:
    """Decorate a command so that it receives the :class:`CliSettings` first."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        settings = click.get_current_context().find_object(CliSettings)
        if settings is None:  # a command invoked without the group: use the defaults
            settings = CliSettings(Path(DEFAULT_DATA_DIR))
        return f(settings, *args, **kwargs)

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper


def require_existing(settings: CliSettings) -> None:
    """Raise CliError unless the database directory exists."""
    from kilndb.model import validate_database_name

    validate_database_name(settings.database)
    if not (settings.directory / "META").is_file():
        raise CliError(
            f"no database {settings.database!r} in {settings.data}"
            " (check --data/KILN_DATA and --database/KILN_DATABASE)"
        )


@contextmanager
def open_database(
    settings: CliSettings, create: bool = False, **options: Any
) -> Iterator[kilndb.Database | RemoteDatabase]:
    """Open the database for one command and close it afterwards, whatever happens.

    With ``--url`` it is the database on that server; otherwise the embedded one, where
    without ``create`` a database that does not exist yet is an error (CliError).
    KilnErrors propagate; the command group prints them as one line.
    """
    import kilndb
    from kilndb.client import RemoteDatabase

    db: kilndb.Database | RemoteDatabase
    if settings.url is not None:
        db = RemoteDatabase(settings.endpoint(), settings.database)
    else:
        if not create:
            require_existing(settings)
        db = kilndb.open(settings.data, settings.database, sync=settings.sync, **options)
    try:
        yield db
    finally:
        db.close()

"""``kiln backup PATH`` and ``kiln restore PATH``: consistent copies of a database.

``backup`` copies DATA/DATABASE (``--data``; every database with ``--all``) while the
process that runs it holds the database open, or a server's database over the
replication protocol (``--url``), into the backup layout of
:mod:`kilndb.storage.backup` — a data directory with a manifest — and reports the
position it is consistent at. ``restore`` checks a backup's database and swaps it into
DATA/DATABASE. Neither touches a data directory a running ``kiln serve`` holds: backup
then asks for ``--url``, restore for the server to be stopped.

Exit status: 0 done; 1 a conflict (PATH not empty, the database exists) or a failed
check; 2 a usage error; 3 the server cannot be reached.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from kilndb.cli.context import CliSettings, pass_settings, program_name, require_existing
from kilndb.cli.errors import EXIT_UNAVAILABLE, CliError, CliUsageError
from kilndb.cli.output import print_json
from kilndb.errors import ConnectionLostError, DatabaseLockedError, UnavailableError
from kilndb.model import validate_database_name
from kilndb.storage.backup import (
    BackupReport,
    backup_database,
    finish_backup,
    install_database,
    partial_path,
    read_manifest,
)
from kilndb.storage.lockfile import ServerLock

__all__ = ["backup", "restore"]


def _occupied(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


@contextmanager
def _no_server(data: Path, advice: str) -> Iterator[None]:
    """Hold ``data``'s server lock: no ``kiln serve`` starts on it meanwhile; a CliError
    (with ``advice``) when one serves it."""
    try:
        lock = ServerLock(data)
    except DatabaseLockedError as exc:
        raise CliError(f"{exc.message}: {advice}") from exc
    try:
        yield
    finally:
        lock.release()


class _Bar:
    """Progress of one copy: a rich bar on stderr when it is a terminal, else nothing."""

    def __init__(self, update: Callable[[int, int | None], None], total: int | None) -> None:
        self._update = update
        self.total = total
        self.done = 0

    def advance(self, count: int) -> None:
        """``count`` more bytes copied."""
        self.done += count
        if self.total is not None:
            self.total = max(self.total, self.done)
        self._update(self.done, self.total)

    def at(self, done: int, total: int | None) -> None:
        """``done`` of ``total`` copied."""
        self.done, self.total = done, total
        self._update(done, total)


@contextmanager
def _progress(label: str, total: int | None) -> Iterator[_Bar]:
    stream = sys.stderr
    if not stream.isatty():
        yield _Bar(lambda done, total: None, total)
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(file=stream), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield _Bar(lambda done, total: bar.update(task, completed=done, total=total), total)


def _report(reports: list[BackupReport], path: Path, verb: str, as_json: bool) -> None:
    for report in reports:
        if as_json:
            print_json({**report.to_dict(), "path": str(path)})
            continue
        click.echo(
            f"{verb} database {report.database} at position {report.position:,}:"
            f" {report.facts:,} facts, {report.files:,} files,"
            f" {report.bytes / 1e6:,.1f} MB in {report.seconds:.2f} s"
            f" ({report.mb_per_second:,.1f} MB/s) {'to' if verb == 'backed up' else 'from'}"
            f" {path}"
        )


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--all", "every", is_flag=True, help="Every database of --data, one directory each.")
@click.option("--force", is_flag=True, help="Replace PATH if it exists and is not empty.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_settings
def backup(settings: CliSettings, path: Path, every: bool, force: bool, as_json: bool) -> None:
    """Write a consistent copy of the database to PATH while writes go on.

    From --data (the database must not be open in another process) or, with --url,
    from a running server (its read scope). Check the copy with
    'kiln --data PATH check'."""
    if _occupied(path) and not force:
        raise CliError(f"{path} exists and is not empty: pass --force to replace it")
    staging = partial_path(path)
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted backup
    try:
        reports = _backup_online(settings, staging, every) if settings.url else None
        if reports is None:
            reports = _backup_embedded(settings, staging, every)
        finish_backup(staging, path, reports, replace=force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _report(reports, path, "backed up", as_json)


def _backup_online(settings: CliSettings, staging: Path, every: bool) -> list[BackupReport]:
    from kilndb.replication.backup import backup_from_server

    if every:
        raise CliUsageError("--all backs up a data directory: use --data, not --url")
    validate_database_name(settings.database)
    endpoint = settings.endpoint()
    staging.mkdir(parents=True)
    # The follower's warnings would repeat the one error line the backup ends with.
    quiet = logging.getLogger("kilndb.replication")
    quiet.addFilter(_drop_record)
    try:
        with _progress(f"backup {settings.database}", None) as bar:
            report = backup_from_server(endpoint, settings.database, staging, bar.at)
    except (UnavailableError, ConnectionLostError) as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from exc
    finally:
        quiet.removeFilter(_drop_record)
    return [report]


def _drop_record(record: logging.LogRecord) -> bool:
    return False


def _backup_embedded(settings: CliSettings, staging: Path, every: bool) -> list[BackupReport]:
    import kilndb

    if every:
        names = sorted(p.name for p in settings.data.iterdir() if (p / "META").is_file())
        if not names:
            raise CliError(f"no database in {settings.data}")
    else:
        require_existing(settings)
        names = [settings.database]
    advice = f"back it up through the server: {program_name()} --url URL backup PATH"
    reports = []
    with _no_server(settings.data, advice):
        for name in names:
            with kilndb.open(settings.data, name, sync=settings.sync) as db:
                total = int(db.stats()["data_bytes"])
                with _progress(f"backup {name}", total) as bar:
                    reports.append(backup_database(db, staging / name, bar.advance))
    return reports


def _chosen(names: list[str], source: str | None, settings: CliSettings) -> str:
    if source is not None:
        if source not in names:
            raise CliError(f"the backup holds no database {source!r} (it holds {', '.join(names)})")
        return source
    if len(names) == 1:
        return names[0]
    if settings.database in names:
        return settings.database
    raise CliUsageError(
        f"the backup holds several databases ({', '.join(names)}): pick one with --from"
    )


def _database_given(ctx: click.Context) -> bool:
    source = ctx.find_root().get_parameter_source("database")
    return source not in (None, click.core.ParameterSource.DEFAULT)


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--from", "source", default=None, help="Database of the backup (default: its only one)."
)
@click.option("--force", is_flag=True, help="Replace the database if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_settings
def restore(
    settings: CliSettings, path: Path, source: str | None, force: bool, as_json: bool
) -> None:
    """Create the database from the backup at PATH (checked first).

    The database is --database, or the backup's own name; an existing one is replaced
    only with --force, in one atomic swap. Works on --data only, with no server on it."""
    if settings.url is not None:
        raise CliUsageError(
            "restore writes a data directory, not through a server: stop the server and run"
            " restore with --data, or restore into another data directory and serve that"
        )
    names = list(read_manifest(path)["databases"])
    chosen = _chosen(names, source, settings)
    target = settings.database if _database_given(click.get_current_context()) else chosen
    validate_database_name(target)
    settings.data.mkdir(parents=True, exist_ok=True)
    advice = (
        "stop it first, or restore into another data directory"
        f" ({program_name()} --data OTHER --database {target} restore {path}) and serve that"
    )
    with _no_server(settings.data, advice), _progress(f"restore {target}", None) as bar:
        try:
            check, report = install_database(
                path / chosen, settings.data, target, force, bar.advance
            )
        except FileExistsError as exc:
            raise CliError(f"{exc.strerror}: pass --force to replace it") from exc
    if report is None:
        count = len(check.problems)
        first = check.problems[0] if check.problems else None
        where = (
            f": {first.kind} in {Path(first.path).name} at offset {first.offset:,}: {first.detail}"
            if first
            else ""
        )
        raise CliError(
            f"the backup's database {chosen} failed its check ({count} problem"
            f"{'' if count == 1 else 's'}{where}); nothing was restored"
        )
    _report([report], path, "restored", as_json)

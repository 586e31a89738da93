"""``kiln db``: the databases of a data directory or of a server — list, create and
remove."""

from __future__ import annotations

import shutil

import click

from kilndb.cli.context import CliSettings, database_name, pass_settings, server_call
from kilndb.cli.errors import CliError
from kilndb.cli.output import format_option, print_json, print_listing
from kilndb.engine import Database

__all__ = ["db"]


@click.group()
def db() -> None:
    """List, create and remove databases (tenants)."""


@db.command("list")
@format_option
@pass_settings
def list_databases(settings: CliSettings, as_json: bool | None) -> None:
    """The databases on disk (or, with --url, the ones the server has open): a table on
    a terminal, else one JSON line each."""
    if settings.url is not None:
        reply = server_call(settings, "server_status")
        nodes = reply.get("nodes", {})
        rows = [
            {"database": name, "state": "open", **info}
            for name, info in nodes.get("open", {}).items()
        ] + [
            {"database": name, "state": "failing", **info}
            for name, info in nodes.get("failing", {}).items()
        ]
    else:
        data = settings.data
        names = (
            sorted(p.name for p in data.iterdir() if (p / "META").is_file())
            if data.is_dir()
            else []
        )
        rows = [{"database": name, "state": "on disk"} for name in names]
    print_listing(
        "databases",
        ("database", "state"),
        rows,
        lambda row: (row["database"], row["state"]),
        as_json,
    )


@db.command()
@click.argument("name", callback=database_name)
@pass_settings
def create(settings: CliSettings, name: str) -> None:
    """Create database NAME (empty) in --data, or on the server at --url.

    Writes create a database by themselves; reads of one that does not exist fail with
    not_found, so a reader that starts first can create it explicitly. Prints whether it
    was created or already existed.
    """
    if settings.url is not None:
        reply = server_call(settings, "create_database", name=name)
        print_json(reply)
        return
    existed = (settings.data / name / "META").is_file()
    Database(settings.data, name).close()
    print_json({"database": name, "created": not existed})


@db.command()
@click.argument("name", callback=database_name)
@click.option("--delete", is_flag=True, help="Also delete its files (asks first).")
@click.option("--yes", is_flag=True, help="Do not ask before deleting.")
@pass_settings
def remove(settings: CliSettings, name: str, delete: bool, yes: bool) -> None:
    """Close and evict database NAME on a server (--url); --delete also removes its files.

    Without --url, removes the database from the data directory (--delete required),
    refusing while a process has it open.
    """
    if delete and not yes:
        where = settings.url or str(settings.data)
        click.confirm(
            f"Delete database {name!r} and all its facts from {where}?", abort=True, err=True
        )
    if settings.url is not None:
        reply = server_call(settings, "remove_database", name=name, delete=delete)
        print_json(reply)
        return
    if not delete:
        raise CliError("without --url there is nothing to close: give --delete to delete files")
    path = settings.data / name
    if not (path / "META").is_file():
        raise CliError(f"no database {name!r} in {settings.data}")
    Database(settings.data, name).close()  # refuses (database_locked) while it is in use
    shutil.rmtree(path)
    print_json({"database": name, "deleted": True})

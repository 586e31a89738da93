"""Commands that look after a database: stores, stats, compact, retention (and check).

``stores``, ``stats`` and ``status`` print a table when standard output is a terminal
and JSON Lines otherwise; ``--json`` and ``--table`` force either.
"""

from __future__ import annotations

from typing import Any

import click

from kilndb.cli.check import check
from kilndb.cli.context import CliSettings, open_database, pass_settings, server_call
from kilndb.cli.errors import CliError
from kilndb.cli.output import (
    format_option,
    print_json,
    print_listing,
    print_mapping_table,
    progress,
    wants_json,
)

__all__ = ["check", "compact", "retention", "stats", "stores"]


def _describe_retention(policy: dict[str, Any]) -> str:
    text = f"keep {policy['keep']}"
    if policy.get("max_age") is not None:
        text += f", max age {policy['max_age']:g} s"
    return text


@click.command()
@format_option
@pass_settings
def stores(settings: CliSettings, as_json: bool | None) -> None:
    """List the stores with their live keys and retention policy."""
    with open_database(settings) as db:
        rows = [
            {"store": name, "keys": len(db.store(name).keys()), "retention": db.retention(name)}
            for name in db.stores()
        ]
    print_listing(
        f"stores of {settings.database!r}",
        ("store", "live keys", "retention"),
        rows,
        lambda row: (row["store"], row["keys"], _describe_retention(row["retention"])),
        as_json,
    )


@click.command()
@format_option
@pass_settings
def stats(settings: CliSettings, as_json: bool | None) -> None:
    """Show counters and sizes of the database."""
    with open_database(settings) as db:
        counters = db.stats()
    if wants_json(as_json):
        print_json(counters)
    else:
        print_mapping_table(f"database {settings.database!r}", counters)


@click.command()
@pass_settings
def compact(settings: CliSettings) -> None:
    """Apply retention and rewrite data files without dropped facts; print what was done."""
    with open_database(settings) as db, progress("compacting"):
        done = db.compact()
    print_json(done)


@click.command()
@click.argument("store")
@click.option(
    "--keep",
    type=click.Choice(["all", "latest"]),
    help="Keep every fact (all) or only each key's newest one (latest).",
)
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    help="Also drop facts older than SECONDS (each key's newest fact always stays).",
)
@pass_settings
def retention(settings: CliSettings, store: str, keep: str | None, max_age: float | None) -> None:
    """Show or set what compaction keeps of STORE.

    With neither option, print the current policy. With --keep and/or --max-age, replace
    the whole policy (an option left out takes its default: keep all, no max age).
    """
    with open_database(settings, create=keep is not None or max_age is not None) as db:
        if keep is not None or max_age is not None:
            db.set_retention(store, keep=keep or "all", max_age=max_age)
        policy = db.retention(store)
    print_json({"store": store, **policy})


@click.command()
@format_option
@pass_settings
def status(settings: CliSettings, as_json: bool | None) -> None:
    """Show a server's status: addresses, open databases, alerts and counters (needs --url)."""
    if settings.url is None:
        raise CliError("kiln status asks a server: give --url (or set KILN_URL)")
    reply = server_call(settings, "server_status")
    if wants_json(as_json):
        print_json(reply)
        return
    print_mapping_table(
        f"server {settings.url}",
        {
            "status": reply.get("status"),
            "pid": reply.get("pid"),
            "addresses": ", ".join(reply.get("addresses", [])),
            "databases": ", ".join(reply.get("databases", [])) or "-",
            "alerts": "; ".join(
                f"{a['type']} {a['metric']} {a['value']:g} > {a['threshold']:g}"
                for a in reply.get("alerts", [])
            )
            or "-",
            **reply.get("metrics", {}),
        },
    )

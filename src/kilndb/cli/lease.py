"""``kiln lease``: take, renew, give up and list leases (named locks with fencing tokens).

Each prints the lease as one JSON line: ``{"key", "holder", "token", "expires_at"}``
(``expires_at`` in epoch seconds); ``list`` prints a table on a terminal (expiry in
ISO 8601 UTC) and JSON Lines otherwise.
"""

from __future__ import annotations

import time

import click

from kilndb.cli.context import CliSettings, open_database, pass_settings
from kilndb.cli.errors import iso_time
from kilndb.cli.output import format_option, print_json, print_listing
from kilndb.leases import Lease

__all__ = ["lease"]

_TTL = click.FloatRange(min=0, min_open=True)


@click.group()
def lease() -> None:
    """Named locks with a holder, a time to live and a fencing token."""


@lease.command()
@click.argument("key")
@click.option("--holder", required=True, help="Who takes it.")
@click.option("--ttl", type=_TTL, default=30.0, show_default=True, help="Seconds (max 24 h).")
@pass_settings
def acquire(settings: CliSettings, key: str, holder: str, ttl: float) -> None:
    """Take lease KEY (error lease_held if someone else holds it)."""
    with open_database(settings, create=True) as db:
        print_json(db.acquire_lease(key, holder, ttl).to_dict())


@lease.command()
@click.argument("key")
@click.option("--holder", required=True)
@click.option("--token", type=click.IntRange(min=1), required=True)
@click.option(
    "--ttl",
    type=_TTL,
    default=None,
    help="Seconds from now (max 24 h). Default: the lease's own time to live.",
)
@pass_settings
def renew(settings: CliSettings, key: str, holder: str, token: int, ttl: float | None) -> None:
    """Extend a held lease by its time to live, or --ttl (error lease_lost if it expired
    or was taken over)."""
    with open_database(settings) as db:
        print_json(db.renew_lease(Lease(key, holder, token, time.time()), ttl).to_dict())


@lease.command()
@click.argument("key")
@click.option("--holder", required=True)
@click.option("--token", type=click.IntRange(min=1), required=True)
@pass_settings
def release(settings: CliSettings, key: str, holder: str, token: int) -> None:
    """Give a lease up; prints whether it was still held."""
    with open_database(settings) as db:
        print_json({"released": db.release_lease(Lease(key, holder, token, time.time()))})


@lease.command("list")
@format_option
@pass_settings
def list_leases(settings: CliSettings, as_json: bool | None) -> None:
    """The leases held now: a table on a terminal, else one JSON line each."""
    with open_database(settings) as db:
        leases = db.leases()
    print_listing(
        "leases",
        ("key", "holder", "token", "expires at (UTC)"),
        (held.to_dict() for held in leases),
        lambda held: (held["key"], held["holder"], held["token"], iso_time(held["expires_at"])),
        as_json,
        "none held",
    )

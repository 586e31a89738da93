"""``kiln promote`` and ``kiln replicate``: failover by hand (admin, with ``--url``)."""

from __future__ import annotations

import click

from kilndb.cli.context import CliSettings, pass_settings, server_call
from kilndb.cli.output import print_json

__all__ = ["promote", "replicate"]


@click.command()
@click.option("--database", "only", default=None, help="Only this database (default: all).")
@click.option(
    "--to",
    "to",
    default=None,
    help="With a coordinator: the node the leader at --url hands the database to.",
)
@pass_settings
def promote(settings: CliSettings, only: str | None, to: str | None) -> None:
    """Make the follower at --url the leader of the databases it follows.

    Each gets a new leader epoch (in its META) and accepts writes from then on. Point
    the other followers at it with `kiln replicate`. In a cluster with a coordinator,
    send `--to NODE` to the leader instead: it stops taking writes, waits until NODE
    holds every one, and hands NODE the lead (a planned switchover, default database
    unless --database).
    """
    reply = server_call(settings, "promote", database=only, to=to)
    print_json(reply)


@click.command()
@click.option("--from", "leader", required=True, help="The leader to follow: HOST:PORT.")
@click.option("--database", "databases", multiple=True, help="A database to follow (repeatable).")
@pass_settings
def replicate(settings: CliSettings, leader: str, databases: tuple[str, ...]) -> None:
    """Make the server at --url follow --from for these databases (default: default).

    A former leader pointed at the new one drops the records it never shipped (they are
    kept beside its data files as *.divergent-*) and catches up.
    """
    reply = server_call(settings, "replicate", leader=leader, databases=list(databases) or None)
    print_json(reply)

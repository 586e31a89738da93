"""``kiln promote`` and ``kiln replicate``: failover by hand (admin, with ``--url``).

``kiln replicate --wait`` then watches the server's replication status until every
database it follows has caught up with the leader, with a progress bar on a terminal.
"""

from __future__ import annotations

import time
from typing import Any

import click

from kilndb.cli.context import CliSettings, pass_settings, server_call
from kilndb.cli.errors import EXIT_UNAVAILABLE, CliError
from kilndb.cli.output import print_json, progress

#: How often ``--wait`` asks the server how far it got.
WAIT_POLL_SECONDS = 0.2

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
@click.option(
    "--wait",
    is_flag=True,
    help="Return once every database followed has caught up with the leader.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=300.0,
    show_default=True,
    help="With --wait: give up (exit 3) after this many seconds.",
)
@pass_settings
def replicate(
    settings: CliSettings, leader: str, databases: tuple[str, ...], wait: bool, timeout: float
) -> None:
    """Make the server at --url follow --from for these databases (default: default).

    A former leader pointed at the new one drops the records it never shipped (they are
    kept beside its data files as *.divergent-*) and catches up; --wait returns once it
    has, with a progress bar on a terminal.
    """
    reply = server_call(settings, "replicate", leader=leader, databases=list(databases) or None)
    if wait:
        _wait_caught_up(settings, list(databases) or ["default"], timeout)
    print_json(reply)


def _wait_caught_up(settings: CliSettings, names: list[str], timeout: float) -> None:
    """Poll the server until every database of ``names`` streams with no lag.

    CliError (exit 3) if a follower stops on an error or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    with progress("catching up") as bar:
        while True:
            following = _following(settings, names)
            done = sum(entry.get("position") or 0 for entry in following.values())
            total = sum(entry.get("leader_position") or 0 for entry in following.values())
            bar.update(done, max(total, done))
            states = {entry.get("state") for entry in following.values()}
            if len(following) == len(names) and states == {"streaming"} and done >= total:
                return
            failed = [entry for entry in following.values() if entry.get("state") == "error"]
            if failed:
                entry = failed[0]
                raise CliError(
                    f"{entry['database']} stopped following: {entry.get('last_error')}",
                    EXIT_UNAVAILABLE,
                )
            if time.monotonic() >= deadline:
                raise CliError(
                    f"not caught up within {timeout:g} s ({done:,} of {total:,} records)",
                    EXIT_UNAVAILABLE,
                )
            time.sleep(WAIT_POLL_SECONDS)


def _following(settings: CliSettings, names: list[str]) -> dict[str, dict[str, Any]]:
    """The replication status of the databases ``names`` the server follows."""
    status = server_call(settings, "server_status")
    entries = status.get("replication", {}).get("following", [])
    return {entry["database"]: entry for entry in entries if entry.get("database") in names}

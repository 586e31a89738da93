"""``kiln cluster status``: the members of the cluster a server belongs to (``--url``)."""

from __future__ import annotations

from typing import Any

import click

from kilndb.cli.context import CliSettings, pass_settings, server_call
from kilndb.cli.errors import CliError
from kilndb.cli.output import format_option, print_json, print_rows_table, wants_json

__all__ = ["cluster"]


@click.group()
def cluster() -> None:
    """Cluster membership, as a member (--url) sees it."""


def _describe(databases: dict[str, Any]) -> str:
    """``default leader e1, orders follower e0 lag 3``."""
    parts = []
    for name, info in sorted(databases.items()):
        text = f"{name} {info.get('role', '?')} e{info.get('epoch', 0)}"
        if info.get("role") == "follower":
            text += f" lag {info.get('lag', 0)}"
        parts.append(text)
    return ", ".join(parts) or "-"


def _gossip(member: dict[str, Any]) -> str:
    """``HOST:PORT``, or ``HOST:UDP_PORT tcp HOST:TCP_PORT`` when the ports differ."""
    udp, tcp = member["gossip"], member.get("gossip_tcp") or member["gossip"]
    return udp if tcp == udp else f"{udp} tcp {tcp}"


def _lag(databases: dict[str, Any]) -> int | str:
    lags = [int(i.get("lag", 0)) for i in databases.values() if i.get("role") == "follower"]
    return max(lags) if lags else "-"


@cluster.command("status")
@format_option
@pass_settings
def status(settings: CliSettings, as_json: bool | None) -> None:
    """Members (role, state, incarnation, addresses, databases, lag) and each database's
    leader."""
    if settings.url is None:
        raise CliError("kiln cluster status needs --url (a member of the cluster)")
    reply = server_call(settings, "cluster")
    found, coordinated = reply["cluster"], reply.get("coordinator")
    if found is None and coordinated is None:
        raise CliError(
            f"{settings.url} is not a cluster member (kiln serve --gossip-port or --coordinator)"
        )
    if wants_json(as_json):
        print_json(found if coordinated is None else {"cluster": found, "coordinator": coordinated})
        return
    if coordinated is not None:
        _print_coordinated(coordinated)
    if found is None:
        return
    print_rows_table(
        f"cluster seen by {found['node']} ({_gossip(found)})",
        ("member", "role", "state", "incarnation", "tcp", "gossip", "databases", "lag"),
        (
            (
                m["name"],
                m.get("role", "peer"),
                m["state"],
                m["incarnation"],
                m["tcp"] or "-",
                _gossip(m),
                _describe(m["databases"]),
                _lag(m["databases"]),
            )
            for m in found["members"]
        ),
    )
    leaders = found["leaders"].items()
    print_rows_table(
        "leaders",
        ("database", "member", "epoch", "url"),
        ((name, lead["node"], lead["epoch"], lead["url"]) for name, lead in leaders),
        empty="none known",
    )


def _print_coordinated(seen: dict[str, Any]) -> None:
    """Leadership held through etcd, as one node sees it."""
    print_rows_table(
        f"leadership seen by {seen['node']} (lease valid for {seen['lease_valid_for']} s)",
        ("database", "leader", "epoch", "role here", "in sync", "followers (lag)"),
        (
            (
                name,
                info["leader"] or "-",
                info["epoch"] if info["epoch"] is not None else "-",
                info["role"],
                ", ".join(info.get("in_sync", [])) or "-",
                ", ".join(
                    f"{f.get('node') or f['peer']} ({f['lag_records']})"
                    for f in info.get("followers", [])
                )
                or "-",
            )
            for name, info in seen["databases"].items()
        ),
        empty="no database yet",
    )
    print_rows_table(
        "last elections",
        ("database", "winner", "epoch", "seconds"),
        ((e["database"], e["node"], e["epoch"], e["seconds"]) for e in seen["elections"]),
        empty="none seen",
    )

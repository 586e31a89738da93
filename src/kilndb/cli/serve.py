"""``kiln serve``: run a KilnDB server in the foreground until SIGTERM, SIGQUIT or Ctrl-C.

Every option also comes from a ``KILN_*`` environment variable or from a TOML file given
with ``--config`` (keys named like the options, with underscores: ``max_connections``);
the command line wins over the environment, which wins over the file. A key of the file
that names no option is a usage error (exit 2) naming the key and the file, with the
nearest option name as a suggestion.
"""

from __future__ import annotations

import difflib
import logging
import math
import tomllib
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from kilndb.cli.context import CliSettings, pass_settings, program_name
from kilndb.cli.errors import CliError
from kilndb.cli.output import LOG_LINES_META
from kilndb.config import DatabaseConfig
from kilndb.server import Server, ServerConfig
from kilndb.server.auth import AuthConfig
from kilndb.server.metrics import THRESHOLD_METRICS
from kilndb.server.nodes import NodeConfig

__all__ = ["serve"]


def _load_config(ctx: click.Context, _: click.Parameter, path: Path | None) -> Path | None:
    if path is None:
        return None
    try:
        with path.open("rb") as handle:
            values = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}") from exc
    _check_keys(ctx, path, values)
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return path


def _check_keys(ctx: click.Context, path: Path, values: dict[str, Any]) -> None:
    """Refuse a key of the TOML file that names no option of the command (a typo would
    otherwise be ignored), suggesting the nearest option name."""
    known = sorted(
        param.name
        for param in ctx.command.params
        if param.name is not None and param.expose_value and param.name != "config"
    )
    for key in values:
        if key in known:
            continue
        close = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise click.BadParameter(
            f"unknown key {key!r} in {path}{hint}; the keys are the options of"
            " 'kiln serve' with underscores (max_connections = 8)",
            ctx=ctx,
            param_hint="'--config'",
        )


def _thresholds(
    ctx: click.Context, _: click.Parameter, values: tuple[str, ...]
) -> dict[str, float]:
    """``("error_rate=0.05", …)`` → ``{"error_rate": 0.05}``."""
    thresholds: dict[str, float] = {}
    for item in values:
        name, equals, text = item.partition("=")
        name = name.strip()
        if not equals or name not in THRESHOLD_METRICS:
            raise click.BadParameter(
                f"{item!r}: expected NAME=VALUE, NAME one of {', '.join(THRESHOLD_METRICS)}"
            )
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise click.BadParameter(f"{item!r}: the threshold must be a number, 0 or more")
        thresholds[name] = value
    return thresholds


def _names(text: str | None) -> tuple[str, ...]:
    """``a, b,,c`` → ``("a", "b", "c")``."""
    return tuple(name.strip() for name in (text or "").split(",") if name.strip())


def _data_given() -> bool:
    """Whether ``--data`` was given on the command line (``KILN_DATA`` in the
    environment is not a request for a directory; ``--memory`` ignores it)."""
    group = click.get_current_context().parent
    return group is not None and (group.get_parameter_source("data") is ParameterSource.COMMANDLINE)


def _where(server: Server) -> str:
    """Where the databases are kept, for the first line ``kiln serve`` prints."""
    if server.databases.in_memory:
        return (
            f"databases in memory ({server.databases.data_dir});"
            " data will not survive this server stopping"
        )
    return f"data in {server.databases.data_dir.resolve()}"


@click.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    callback=_load_config,
    is_eager=True,
    expose_value=False,
    envvar="KILN_CONFIG",
    help="TOML file with defaults for these options.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="KILN_HOST",
    help="Address to listen on for TCP; '' to disable TCP.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=7400,
    show_default=True,
    envvar="KILN_PORT",
    help="TCP port (0 picks a free one).",
)
@click.option(
    "--http-port",
    type=click.IntRange(-1, 65535),
    default=7300,
    show_default=True,
    envvar="KILN_HTTP_PORT",
    help="HTTP/SSE/WebSocket port on --host (0 picks a free one, -1 turns HTTP off).",
)
@click.option(
    "--unix",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="KILN_UNIX",
    help="Also listen on this Unix socket.",
)
@click.option(
    "--memory",
    is_flag=True,
    default=False,
    envvar="KILN_MEMORY",
    help="Keep every database in memory (a private directory in RAM, deleted on stop):"
    " nothing survives the server stopping. Not with --data.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    default=1024,
    show_default=True,
    envvar="KILN_MAX_CONNECTIONS",
    help="Connections beyond this are refused.",
)
@click.option(
    "--max-frame-bytes",
    type=click.IntRange(1024),
    default=16 * 1024 * 1024,
    show_default=True,
    envvar="KILN_MAX_FRAME_BYTES",
    help="Largest request accepted.",
)
@click.option(
    "--max-subscriber-buffer",
    type=click.IntRange(1024),
    default=8 * 1024 * 1024,
    show_default=True,
    envvar="KILN_MAX_SUBSCRIBER_BUFFER",
    help="Bytes a subscriber may leave unread before it is cut off (subscriber_overflow).",
)
@click.option(
    "--frame-timeout",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    envvar="KILN_FRAME_TIMEOUT",
    help="Seconds a socket client has to finish a frame it began (0: no limit).",
)
@click.option(
    "--http-keepalive",
    type=click.FloatRange(0, min_open=True),
    default=75.0,
    show_default=True,
    envvar="KILN_HTTP_KEEPALIVE",
    help="Seconds an idle HTTP connection is kept open between requests.",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    envvar="KILN_WORKERS",
    help="Threads of the pool for blocking work (replays, compaction, opening databases).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    envvar="KILN_DRAIN_TIMEOUT",
    help="Seconds in-flight requests get to finish when stopping.",
)
@click.option(
    "--slow-op-ms",
    type=click.FloatRange(0),
    default=500.0,
    show_default=True,
    envvar="KILN_SLOW_OP_MS",
    help="Requests slower than this are counted and reported.",
)
@click.option(
    "--metrics-threshold",
    "metrics_thresholds",
    multiple=True,
    callback=_thresholds,
    envvar="KILN_METRICS_THRESHOLD",
    metavar="NAME=VALUE",
    help="Alert while the metric NAME is above VALUE (repeatable): "
    + ", ".join(THRESHOLD_METRICS)
    + ".",
)
@click.option(
    "--idle-evict-after",
    type=click.FloatRange(0, min_open=True),
    default=None,
    envvar="KILN_IDLE_EVICT_AFTER",
    help="Close a database unused (no request, no subscriber) for this many seconds;"
    " the next request reopens it. Default: never.",
)
@click.option(
    "--idle-check-interval",
    type=click.FloatRange(0, min_open=True),
    default=30.0,
    show_default=True,
    envvar="KILN_IDLE_CHECK_INTERVAL",
    help="Seconds between idle checks.",
)
@click.option(
    "--max-open-databases",
    type=click.IntRange(1),
    default=None,
    envvar="KILN_MAX_OPEN_DATABASES",
    help="Most databases open at once; opening another closes the least recently used"
    " idle one. Default: no cap.",
)
@click.option(
    "--auth-secret",
    default=None,
    envvar="KILN_AUTH_SECRET",
    help="Require JWTs signed with this HS256 secret on every transport.",
)
@click.option(
    "--auth-public-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    envvar="KILN_AUTH_PUBLIC_KEY",
    help="Require JWTs signed by the private half of this PEM key (RS256 or ES256).",
)
@click.option(
    "--insecure-bind",
    is_flag=True,
    default=False,
    envvar="KILN_INSECURE_BIND",
    help="Allow a non-loopback --host without authentication.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    envvar="KILN_TLS_CERT",
    help="TLS certificate chain (PEM) for TCP and HTTP.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    envvar="KILN_TLS_KEY",
    help="Key of --tls-cert.",
)
@click.option(
    "--tls-client-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    envvar="KILN_TLS_CLIENT_CA",
    help="Require client certificates signed by this CA (mutual TLS).",
)
@click.option(
    "--replica-of",
    default=None,
    envvar="KILN_REPLICA_OF",
    help="Follow the leader at HOST:PORT (or a tcp:// / tls:// URL): its databases here"
    " are read-only copies.",
)
@click.option(
    "--replicate",
    default=None,
    envvar="KILN_REPLICATE",
    help="With --replica-of: the databases to follow, comma-separated. Default: every"
    " database of the leader, new ones as they appear (the token needs kiln::admin).",
)
@click.option(
    "--replication-token",
    default=None,
    envvar="KILN_REPLICATION_TOKEN",
    help="JWT presented to a leader that requires authentication (read scope).",
)
@click.option(
    "--replication-connect-timeout",
    type=click.FloatRange(0, min_open=True),
    default=5.0,
    show_default=True,
    envvar="KILN_REPLICATION_CONNECT_TIMEOUT",
    help="Seconds a connection to the leader may take to open before a retry.",
)
@click.option(
    "--gossip-port",
    type=click.IntRange(0, 65535),
    default=None,
    envvar="KILN_GOSSIP_PORT",
    help="Join a cluster: gossip membership and metadata on this UDP and TCP port of"
    " --host (0 picks a free one).",
)
@click.option(
    "--gossip-tcp-port",
    type=click.IntRange(0, 65535),
    default=None,
    envvar="KILN_GOSSIP_TCP_PORT",
    help="With --gossip-port: take joins, push-pulls and goodbyes on this TCP port"
    " instead (0 picks a free one). Default: the --gossip-port.",
)
@click.option(
    "--gossip-interval",
    type=click.FloatRange(0.001, 60),
    default=None,
    envvar="KILN_GOSSIP_INTERVAL",
    help="With --gossip-port: seconds between gossip rounds (the same on every member)."
    " Default: --probe-interval / 5.",
)
@click.option(
    "--gossip-role",
    type=click.Choice(["seed", "peer"]),
    default=None,
    envvar="KILN_GOSSIP_ROLE",
    help="With --gossip-port: this member's role. Default: seed without --join, peer with it.",
)
@click.option(
    "--node-name",
    default=None,
    envvar="KILN_NODE_NAME",
    help="This node's name in the cluster (unique). Default: HOST:PORT.",
)
@click.option(
    "--join",
    default=None,
    envvar="KILN_JOIN",
    help="Cluster members to join through, HOST:GOSSIP_PORT, comma-separated.",
)
@click.option(
    "--cluster-key",
    default=None,
    envvar="KILN_CLUSTER_KEY",
    help="Secret every member shares: gossip packets are authenticated with HMAC-SHA256."
    " Without it anyone who can reach the gossip port can join.",
)
@click.option(
    "--probe-interval",
    type=click.FloatRange(0.01, 60),
    default=1.0,
    show_default=True,
    envvar="KILN_PROBE_INTERVAL",
    help="Seconds between failure-detection probes (the same on every member).",
)
@click.option(
    "--follow",
    is_flag=True,
    envvar="KILN_FOLLOW",
    help="With --gossip-port: follow every database of the cluster from the member that"
    " leads it, found through gossip (instead of --replica-of).",
)
@click.option(
    "--coordinator",
    envvar="KILN_COORDINATOR",
    help="etcd://HOST:PORT[,HOST:PORT...]: hold leadership through etcd (automatic"
    " failover); needs --node-name.",
)
@click.option(
    "--cluster-name",
    default="kiln",
    show_default=True,
    envvar="KILN_CLUSTER_NAME",
    help="With --coordinator: the cluster's keys live under /kiln/NAME/ in etcd.",
)
@click.option(
    "--advertise-url",
    envvar="KILN_ADVERTISE_URL",
    help="With --coordinator: the tcp:// URL other nodes and clients reach this one at,"
    " when it is not the address it listens on (a proxy, NAT).",
)
@click.option(
    "--leader-ttl",
    type=click.FloatRange(1),
    default=10.0,
    show_default=True,
    envvar="KILN_LEADER_TTL",
    help="With --coordinator: seconds a leader's lease lives without renewal.",
)
@click.option(
    "--min-insync-replicas",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    envvar="KILN_MIN_INSYNC_REPLICAS",
    help="Followers that must have a write durably before it is acknowledged (a request's"
    " replicas= overrides it).",
)
@click.option(
    "--replica-timeout",
    type=click.FloatRange(0, min_open=True),
    default=5.0,
    show_default=True,
    envvar="KILN_REPLICA_TIMEOUT",
    help="Seconds a write waits for its replicas before replication_timeout.",
)
@click.option(
    "--pid-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="KILN_PID_FILE",
    help="Write the server's pid here; removed on exit. Refused if it names another"
    " running process.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar="KILN_LOG_LEVEL",
)
@pass_settings
def serve(
    settings: CliSettings,
    host: str,
    port: int,
    http_port: int,
    unix: Path | None,
    memory: bool,
    max_connections: int,
    max_frame_bytes: int,
    max_subscriber_buffer: int,
    frame_timeout: float,
    http_keepalive: float,
    workers: int,
    drain_timeout: float,
    slow_op_ms: float,
    metrics_thresholds: dict[str, float],
    idle_evict_after: float | None,
    idle_check_interval: float,
    max_open_databases: int | None,
    auth_secret: str | None,
    auth_public_key: Path | None,
    insecure_bind: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    replica_of: str | None,
    replicate: str | None,
    replication_token: str | None,
    replication_connect_timeout: float,
    gossip_port: int | None,
    gossip_tcp_port: int | None,
    gossip_interval: float | None,
    gossip_role: str | None,
    node_name: str | None,
    join: str | None,
    cluster_key: str | None,
    probe_interval: float,
    follow: bool,
    coordinator: str | None,
    cluster_name: str,
    advertise_url: str | None,
    leader_ttl: float,
    min_insync_replicas: int,
    replica_timeout: float,
    pid_file: Path | None,
    log_level: str,
) -> None:
    """Serve every database under --data over TCP (and a Unix socket with --unix)."""
    # The server logs with timestamps through the root logger: the command's own warning
    # lines would show every warning a second time.
    detach = click.get_current_context().find_root().meta.get(LOG_LINES_META)
    if detach is not None:
        detach()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    if not host and unix is None:
        raise CliError("nothing to listen on: give --host or --unix")
    if gossip_port is None and (join or follow or cluster_key):
        raise CliError("--join, --follow and --cluster-key need --gossip-port")
    gossip_extras = (gossip_tcp_port, gossip_interval, gossip_role)
    if gossip_port is None and any(v is not None for v in gossip_extras):
        raise CliError("--gossip-tcp-port, --gossip-interval and --gossip-role need --gossip-port")
    if node_name and gossip_port is None and coordinator is None:
        raise CliError("--node-name needs --gossip-port or --coordinator")
    if coordinator is not None and not node_name:
        raise CliError("--coordinator needs --node-name (this node's name in the cluster)")
    if coordinator is not None and (follow or replica_of):
        raise CliError(
            "with --coordinator, etcd decides who leads and who follows: drop --follow"
            " and --replica-of"
        )
    if gossip_port is not None and (not host or host in ("0.0.0.0", "::")):
        raise CliError(
            "--gossip-port needs --host set to the address other members reach this one at"
            " (not a wildcard: it is published to the cluster)"
        )
    if follow and replica_of:
        raise CliError("--follow finds leaders through gossip: drop --replica-of")
    if memory and _data_given():
        raise CliError(
            "--memory keeps the databases in memory, not in a data directory: drop --data"
        )
    config = ServerConfig(
        data=settings.data,
        memory=memory,
        host=host or None,
        port=port,
        http_port=None if http_port < 0 or not host else http_port,
        unix=unix,
        max_connections=max_connections,
        max_frame_bytes=max_frame_bytes,
        max_subscriber_buffer=max_subscriber_buffer,
        frame_timeout=frame_timeout,
        http_keepalive=http_keepalive,
        workers=workers,
        drain_timeout=drain_timeout,
        slow_op_ms=slow_op_ms,
        metrics_thresholds=metrics_thresholds,
        pid_file=pid_file,
        database=DatabaseConfig(sync=settings.sync),
        nodes=NodeConfig(
            idle_evict_after=idle_evict_after,
            idle_check_interval=idle_check_interval,
            max_open_databases=max_open_databases,
        ),
        auth=AuthConfig.from_files(auth_secret, auth_public_key),
        insecure_bind=insecure_bind,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        replica_of=replica_of,
        replicate=None if replicate is None else _names(replicate),
        replication_token=replication_token,
        replication_connect_timeout=replication_connect_timeout,
        gossip_port=gossip_port,
        gossip_tcp_port=gossip_tcp_port,
        gossip_interval=gossip_interval,
        gossip_role=gossip_role,
        node_name=node_name,
        join=_names(join),
        cluster_key=cluster_key,
        probe_interval=probe_interval,
        follow=follow,
        coordinator=coordinator,
        cluster_name=cluster_name,
        advertise_url=advertise_url,
        leader_ttl=leader_ttl,
        min_insync_replicas=min_insync_replicas,
        replica_timeout=replica_timeout,
    )

    def started(server: Server) -> None:
        click.echo(f"kiln serve: {_where(server)}")
        for address in server.addresses:
            click.echo(f"  listening on {address}")
            if address.startswith("http"):
                click.echo(f"  console: {address}/")
        click.echo("  or in Python: kilndb.connect(" + repr(server.url) + ")")
        if server.url.startswith(("tcp://", "tls://")):
            click.echo(f"Try it from another terminal: {program_name()} --url {server.url} demo")
        click.echo("Ctrl-C, SIGTERM or SIGQUIT stops it.")

    # Signals, the pid file and the graceful stop are the server's own (Server.start_foreground).
    Server(config).start_foreground(started)
    click.echo("kiln serve: stopped")

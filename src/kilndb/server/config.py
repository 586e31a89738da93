"""How a server listens, whom it lets in, what it follows: :class:`ServerConfig`."""

from __future__ import annotations

import ipaddress
import math
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kilndb.codec import DEFAULT_MAX_FRAME_BYTES
from kilndb.config import DatabaseConfig
from kilndb.errors import InvalidArgumentError
from kilndb.server.auth import AuthConfig
from kilndb.server.metrics import THRESHOLD_METRICS
from kilndb.server.nodes import NodeConfig

__all__ = ["ServerConfig", "is_loopback"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where and how a server listens. ``port=0`` picks a free port."""

    data: Path = Path("./data")
    #: Keep every database in memory (nothing is written under ``data``; nothing
    #: survives a stop), as ``kilndb.open(":memory:")`` does embedded.
    memory: bool = False
    host: str | None = "127.0.0.1"
    port: int = 7400
    unix: Path | None = None
    #: HTTP/SSE/WebSocket port on ``host`` (None: no HTTP; 0 picks a free port).
    http_port: int | None = None
    max_connections: int = 1024
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_pipeline: int = 1024
    max_subscriber_buffer: int = 8 * 1024 * 1024
    #: Seconds a socket client has to finish a frame it began (a stalled or one-byte-a-
    #: second client is closed with ``protocol_error``); 0: no limit.
    frame_timeout: float = 30.0
    #: Seconds an HTTP connection may stay open between requests.
    http_keepalive: float = 75.0
    #: How long ``stop()`` lets in-flight requests finish before closing connections.
    drain_timeout: float = 5.0
    #: Requests taking this many milliseconds or more, on any transport, are counted and
    #: reported as ``slow_op`` events (0: none).
    slow_op_ms: float = 500.0
    #: Size of the recent-events ring.
    max_recent_events: int = 100
    #: Alert while a metric is above its threshold, per metric name of
    #: :data:`~kilndb.server.metrics.THRESHOLD_METRICS` (``{"error_rate": 0.05}``).
    metrics_thresholds: Mapping[str, float] = field(default_factory=dict)
    #: Written with this process's pid when the server starts, removed when it stops.
    pid_file: Path | None = None
    workers: int = 32
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    #: Idle eviction, the open-database cap and the circuit breaker.
    nodes: NodeConfig = field(default_factory=NodeConfig)
    #: Tokens required on every transport when a secret or a public key is set.
    auth: AuthConfig = field(default_factory=AuthConfig)
    #: Listen on a non-loopback address without authentication (refused otherwise).
    insecure_bind: bool = False
    #: TLS for TCP and HTTP: certificate chain and key (PEM files).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: With it, clients must present a certificate signed by this CA (mutual TLS).
    tls_client_ca: Path | None = None
    #: Follow the leader at this address (``HOST:PORT`` or a URL): ``replicate``, or
    #: every database it has (new ones as they appear) when ``replicate`` is None.
    replica_of: str | None = None
    #: The databases to follow (with ``replica_of``).
    replicate: tuple[str, ...] | None = ("default",)
    #: The token this server presents to its leader (when the leader requires one).
    replication_token: str | None = None
    #: First and longest wait before reconnecting to the leader.
    replication_backoff: tuple[float, float] = (1.0, 30.0)
    #: Seconds a connection to the leader may take to open (then a retry, with backoff).
    replication_connect_timeout: float = 5.0
    #: Followers that must have a write durably before it is acknowledged, unless the
    #: request says otherwise (``replicas``).
    min_insync_replicas: int = 0
    #: How long a write waits for its replicas before ``replication_timeout``.
    replica_timeout: float = 5.0
    #: Cluster membership (gossip on ``host``:``gossip_port``, UDP and TCP; None: no
    #: cluster). ``node_name`` defaults to the host name and TCP port.
    gossip_port: int | None = None
    node_name: str | None = None
    #: Members to join through (``HOST:GOSSIP_PORT`` each).
    join: tuple[str, ...] = ()
    #: Shared secret that authenticates gossip packets (HMAC-SHA256).
    cluster_key: str | None = None
    #: Seconds between two failure-detection probes (every member should agree).
    probe_interval: float = 1.0
    #: The gossip TCP port on ``host`` (None: ``gossip_port``; 0 picks a free one).
    gossip_tcp_port: int | None = None
    #: Seconds between two gossip rounds (None: ``probe_interval / 5``).
    gossip_interval: float | None = None
    #: ``"seed"`` or ``"peer"`` (None: a seed without ``join``, a peer with it).
    gossip_role: str | None = None
    #: Follow, from whichever member leads it, every database the cluster has.
    follow: bool = False
    #: Hold leadership through etcd (``etcd://HOST:PORT[,HOST:PORT…]``): automatic
    #: failover. Needs ``node_name``.
    coordinator: str | None = None
    #: The cluster's keys live under ``/kiln/{cluster_name}/`` in etcd.
    cluster_name: str = "kiln"
    #: Seconds a leader's etcd lease lives without renewal (renewed every third).
    leader_ttl: float = 10.0
    #: The URL other nodes and clients reach this one at, published to the cluster (a
    #: proxy or NAT address); by default the address it listens on.
    advertise_url: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics_thresholds) - set(THRESHOLD_METRICS))
        if unknown:
            raise InvalidArgumentError(
                f"unknown metric(s) for a threshold: {', '.join(unknown)} (known:"
                f" {', '.join(THRESHOLD_METRICS)})"
            )
        thresholds: dict[str, float] = {}
        for name, value in self.metrics_thresholds.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgumentError(f"threshold of {name} must be a number: {value!r}")
            if not math.isfinite(value) or value < 0:
                raise InvalidArgumentError(f"threshold of {name} must be 0 or more: {value!r}")
            thresholds[name] = float(value)
        # A copy: a caller's dict changed later does not change a running server.
        object.__setattr__(self, "metrics_thresholds", thresholds)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None without a certificate."""
        if self.tls_cert is None:
            if self.tls_key is not None or self.tls_client_ca is not None:
                raise InvalidArgumentError("TLS options need a certificate (tls_cert)")
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
            if self.tls_client_ca is not None:
                context.load_verify_locations(cafile=self.tls_client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgumentError(f"cannot set up TLS: {exc}") from exc
        return context


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"

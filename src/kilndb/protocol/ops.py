"""The op table: every request the protocol accepts, declared once.

Each :class:`Op` says everything a transport, the authorizer and the dispatcher need to
know about an op, so that none of them keeps a list of its own:

``check``
    the checker of its fields (:mod:`kilndb.protocol.params`), which returns the op's
    parameters or raises ``bad_request`` naming the field;
``action`` and ``scope``
    what a token must grant: nothing (``none``), reading or writing the database the
    request names (``read``/``write`` with scope ``database``), or administering the
    server (``admin``, scope ``server``);
``runs``
    who answers it: the ``session`` (the connection's own state: hello, ping, close,
    subscriptions, a replication stream), the ``server`` (its status, its databases,
    what it follows) or a ``database`` (through the server's dispatcher, which binds
    each database op to its handler);
``creates``
    a database op that creates the database it names when there is none (writes, and
    ``create_database``); every other op on a database that does not exist gets
    ``not_found``: reads never create;
``quick`` and ``batch``
    bounded work that may run on the event loop itself — a ``batch`` op (``batch`` names
    its list parameter) only while that list has at most :data:`QUICK_BATCH` items;
    anything else runs on the server's bounded worker pool;
``transports``
    which of ``tcp`` (TCP, TLS and Unix sockets), ``ws`` (WebSocket), ``http``
    (``POST /v1/dispatch`` and the REST routes) and ``sse`` (``GET /v1/events``) carry
    it. ``http`` has no connection, so none of the session ops but ``ping`` travel over
    it; ``sse`` carries ``subscribe`` only;
``query``
    for an op with a REST route, the query parameters it takes there and how their text
    reads: ``count`` as an integer, ``number`` as an integer or a float, ``str`` as it is
    (``metadata.*``: any number of ``metadata.K=V``). The op's checker then checks the
    values, so a bad one gets the same ``bad_request`` on every transport.

Igniter's ops keep Igniter's shapes: ``write_fact {fact}``, ``replay {}``,
``write_snapshot {facts}``, ``subscribe {stores}``, ``ping``, ``stats``,
``server_status``, ``close``. Native ops mirror the Python API with the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kilndb.errors import InvalidArgumentError, UnknownOpError
from kilndb.protocol import params as p
from kilndb.protocol.params import WRITE_OPTIONS, Checker, Params

__all__ = [
    "OPS",
    "QUICK_BATCH",
    "TRANSPORTS",
    "WRITE_OPTIONS",
    "Action",
    "Op",
    "carried_by",
    "check_params",
    "op_of",
]

Action = Literal["none", "read", "write", "admin"]
Runs = Literal["session", "server", "database"]
Transport = Literal["tcp", "ws", "http", "sse"]

#: The transports that carry requests of every kind, by the name the table uses.
TRANSPORTS: frozenset[Transport] = frozenset({"tcp", "ws", "http"})

#: The largest batch (``write_many`` writes, ``produce`` records) applied on the loop.
QUICK_BATCH = 100


@dataclass(frozen=True, slots=True)
class Op:
    """One op: its fields, who may send it, who answers it and where it travels."""

    name: str
    check: Checker
    action: Action
    runs: Runs
    creates: bool = False
    quick: bool = False
    batch: str | None = None
    transports: frozenset[Transport] = TRANSPORTS
    query: Mapping[str, str] | None = None

    @property
    def scope(self) -> Literal["database", "server", "none"]:
        """What the authorizer checks the token against."""
        if self.action == "none":
            return "none"
        return "server" if self.action == "admin" else "database"

    @property
    def writes(self) -> bool:
        """Writes facts to a database (and so waits for replicas, if asked to)."""
        return self.action == "write" and self.runs == "database"

    def is_quick(self, params: Params) -> bool:
        """Whether this request is bounded enough to apply on the event loop."""
        if not self.quick:
            return False
        return self.batch is None or len(params[self.batch]) <= QUICK_BATCH

    def written(self, params: Params) -> int:
        """How many facts a successful request of this op wrote (for the counters)."""
        if self.batch is not None:
            return len(params[self.batch])
        return 1 if self.name in ("write", "write_fact") else 0


def _session(name: str, check: Checker, action: Action, *transports: Transport) -> Op:
    return Op(name, check, action, "session", transports=frozenset(transports))


def _server(name: str, check: Checker, creates: bool = False, quick: bool = False) -> Op:
    return Op(name, check, "admin", "server", creates=creates, quick=quick)


def _reads(
    name: str, check: Checker, quick: bool = False, query: Mapping[str, str] | None = None
) -> Op:
    return Op(name, check, "read", "database", quick=quick, query=query)


def _writes(
    name: str,
    check: Checker,
    creates: bool = True,
    quick: bool = False,
    batch: str | None = None,
    query: Mapping[str, str] | None = None,
) -> Op:
    return Op(
        name, check, "write", "database", creates=creates, quick=quick, batch=batch, query=query
    )


_TABLE = (
    # Igniter's ops first.
    _writes("write_fact", p.write_fact, quick=True),
    _reads("replay", p.replay),
    _writes("write_snapshot", p.write_snapshot),
    _session("subscribe", p.subscribe, "read", "tcp", "ws", "sse"),
    _session("ping", p.none, "none", "tcp", "ws", "http"),
    _reads("stats", p.none),
    _server("server_status", p.none, quick=True),
    _session("close", p.none, "none", "tcp", "ws"),
    # The connection: which database, which token, which protocol version.
    _session("hello", p.hello, "none", "tcp", "ws"),
    # Facts.
    _writes(
        "write",
        p.write,
        quick=True,
        query={
            "expected_seq": "count",
            "id": "str",
            "causation": "str",
            "valid_time": "number",
            "schema_version": "count",
            "producer": "str",
            "metadata.*": "str",
        },
    ),
    _writes("write_many", p.write_many, quick=True, batch="writes"),
    _reads("read", p.read, quick=True, query={"as_of": "number"}),
    _reads(
        "history", p.history, query={"since_seq": "count", "until_seq": "count", "limit": "count"}
    ),
    _writes(
        "delete",
        p.delete,
        quick=True,
        query={"expected_seq": "count", "id": "str", "causation": "str", "metadata.*": "str"},
    ),
    _reads("keys", p.keys, query={"prefix": "str", "limit": "count", "after": "str"}),
    _reads("stores", p.none, query={}),
    _writes("compact", p.none, creates=False),
    _writes("set_retention", p.set_retention),
    _reads("retention", p.store_of),
    _writes("sync", p.none, creates=False),
    # Streams: spaces (stores) of ordered segments (keys).
    _writes("produce", p.produce, quick=True, batch="records"),
    _reads("consume", p.consume),
    _reads("peek", p.segment_of),
    _reads("segment_status", p.segment_of),
    _reads("space_consume", p.space_consume),
    _reads("spaces", p.none),
    _reads("segments", p.space_of),
    _session("subscribe_status", p.subscribe_status, "read", "tcp", "ws"),
    # Leases with fencing tokens.
    _writes("acquire_lease", p.acquire_lease),
    _writes("renew_lease", p.held_lease, creates=False),
    _writes("release_lease", p.held_lease, creates=False),
    _reads("leases", p.none),
    # WebSocket: end one of the connection's subscriptions by its request_id.
    _session("unsubscribe", p.unsubscribe, "none", "ws"),
    # Replication: a follower's stream of one database (its database is "database").
    _session("sync_request", p.sync_request, "read", "tcp"),
    _session("replication_ack", p.replication_ack, "read", "tcp"),
    # The server: its members, its databases, what it leads and follows.
    Op("cluster", p.none, "read", "server", quick=True),  # any database's read scope will do
    _server("databases", p.none, quick=True),
    _server("create_database", p.name_of, creates=True),
    _server("remove_database", p.remove_database),
    _server("promote", p.promote),  # lead the databases this server follows
    _server("replicate", p.replicate),  # follow them from another leader
)

#: op name -> its declaration, in the order above.
OPS: dict[str, Op] = {op.name: op for op in _TABLE}
assert len(OPS) == len(_TABLE), "an op is declared twice"


def op_of(name: str) -> Op:
    """The declaration of ``name``; UnknownOpError if there is none."""
    op = OPS.get(name)
    if op is None:
        raise UnknownOpError(f"unknown op {name!r}")
    return op


def check_params(op: str, body: dict[str, Any]) -> Params:
    """The checked parameters of ``op``; raises InvalidArgumentError (``bad_request``)."""
    return OPS[op].check(body)


def carried_by(op: Op, transport: Transport) -> None:
    """Raise InvalidArgumentError unless ``transport`` carries ``op``, saying which do."""
    if transport not in op.transports:
        where = {
            "tcp": "a socket connection",
            "ws": "/v1/ws",
            "http": "POST /v1/dispatch",
            "sse": "GET /v1/events",
        }
        options = " or ".join(where[t] for t in sorted(op.transports))
        raise InvalidArgumentError(f"{op.name} needs {options}")

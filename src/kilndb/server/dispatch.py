"""Executing requests against databases: the part of the server that is not about sockets.

:class:`Dispatcher` runs one checked :class:`~kilndb.protocol.Request` of a database op
(``runs: database`` in the op table, :mod:`kilndb.protocol.ops`) against one of the
databases the :class:`~kilndb.server.nodes.NodeManager` keeps open, and returns the
reply's fields (``{"fact": …}``, ``{"facts": […]}`` …), or raises the
:class:`~kilndb.KilnError` that becomes the error reply. Each database op of the table
has its handler here, and only those: a test and a check at import hold the two to one
another. Whether the op may create its database and whether a replica refuses it come
from the table too.

Session ops (``hello``, ``subscribe`` …) are the session's (:mod:`kilndb.server.session`)
and server ops (``server_status``, ``promote`` …) the admin side's
(:mod:`kilndb.server.admin`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from orjson import Fragment

from kilndb.engine import Database
from kilndb.errors import KilnError, ProtocolError, ReadOnlyReplicaError, UnavailableError
from kilndb.leases import Lease
from kilndb.model import Fact, Write
from kilndb.protocol import Request
from kilndb.protocol.ops import OPS, WRITE_OPTIONS
from kilndb.server.nodes import NodeManager
from kilndb.streams import entry_to_wire, fact_to_entry_wire

__all__ = ["Dispatcher"]

Handler = Callable[[Database, dict[str, Any]], dict[str, Any]]


def _facts(facts: list[Fact]) -> list[dict[str, Any]]:
    return [fact.to_dict() for fact in facts]


#: A write's options in the order of Write's fields after ``value``.
assert Write._fields[3 : 3 + len(WRITE_OPTIONS)] == WRITE_OPTIONS


def _write_options(params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``Store.write`` among a write's checked parameters."""
    return {name: params[name] for name in WRITE_OPTIONS}


def _write(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    fact = db.store(params["store"]).write(
        params["key"], params["value"], fence=params["fence"], **_write_options(params)
    )
    return {"fact": fact.to_dict()}


def _write_many(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    writes = [
        Write(w["store"], w["key"], w["value"], deleted=w["deleted"], **_write_options(w))
        for w in params["writes"]
    ]
    return {"facts": _facts(db.write_many(writes, fence=params["fence"]))}


def _write_fact(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    # The checked params are the whole fact's write already (kilndb.engine.writes).
    write = Write(**{name: params[name] for name in Write._fields})
    return {"fact": db.write_many([write], fence=params["fence"])[0].to_dict()}


def _write_snapshot(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    return db.write_snapshot(params["facts"])


def _read(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    fact = db.store(params["store"]).read(params["key"], as_of=params["as_of"])
    return {"fact": None if fact is None else fact.to_dict()}


def _history(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    facts = db.store(params["store"]).history(
        params["key"],
        since_seq=params["since_seq"],
        until_seq=params["until_seq"],
        limit=params["limit"],
    )
    return {"facts": _facts(facts)}


def _delete(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    fact = db.store(params["store"]).delete(
        params["key"],
        expected_seq=params["expected_seq"],
        id=params["id"],
        causation=params["causation"],
        metadata=params["metadata"],
        fence=params["fence"],
    )
    return {"fact": fact.to_dict()}


def _keys(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    store = db.store(params["store"])
    keys = store.keys(prefix=params["prefix"], limit=params["limit"], after=params["after"])
    return {"keys": keys}


def _replay(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    # The stored JSON of each fact is its wire form: sent as is, never re-encoded.
    records = list(db.replay_wire(params["after"], params["stores"], params["limit"]))
    # ``next_after`` lets a client page through with ``limit``.
    next_after = records[-1][0] if records else params["after"]
    return {"facts": [Fragment(body) for _, body in records], "next_after": next_after}


def _set_retention(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    db.set_retention(params["store"], keep=params["keep"], max_age=params["max_age"])
    return {"retention": db.retention(params["store"])}


def _sync(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    db.sync()
    return {}


def _produce(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    segment = db.space(params["space"]).segment(params["segment"])
    # The producer has the payloads: only what the log gave them goes back, written by
    # the core from the stored records.
    produced = segment.produce_wire(
        params["records"], expected_seq=params["expected_seq"], fence=params["fence"]
    )
    return {"produced": Fragment(produced)}


def _consume(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    entries = (
        db.space(params["space"])
        .segment(params["segment"])
        .consume_wire(
            params["min_seq"],
            params["max_seq"],
            params["min_ts"],
            params["max_ts"],
            params["limit"],
        )
    )
    # Straight from the stored records: no Fact, no Entry, and a bytes payload stays in
    # its stored base64.
    return {"entries": Fragment(entries)}


def _peek(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    entry = db.space(params["space"]).segment(params["segment"]).peek()
    return {"entry": None if entry is None else entry_to_wire(entry)}


def _space_consume(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    facts = db.space(params["space"]).consume_facts(
        params["after"], params["min_ts"], params["max_ts"], params["limit"]
    )
    return {"entries": [fact_to_entry_wire(fact) for fact in facts]}


def _held(params: dict[str, Any]) -> Lease:
    return Lease(params["key"], params["holder"], params["token"], params["expires_at"])


def _renew_lease(db: Database, params: dict[str, Any]) -> dict[str, Any]:
    return {"lease": db.renew_lease(_held(params), params["ttl"]).to_dict()}


_HANDLERS: dict[str, Handler] = {
    "write_fact": _write_fact,
    "write": _write,
    "write_many": _write_many,
    "write_snapshot": _write_snapshot,
    "read": _read,
    "history": _history,
    "delete": _delete,
    "keys": _keys,
    "replay": _replay,
    "stores": lambda db, params: {"stores": db.stores()},
    "stats": lambda db, params: {"stats": db.stats()},
    "compact": lambda db, params: {"result": db.compact()},
    "set_retention": _set_retention,
    "retention": lambda db, params: {"retention": db.retention(params["store"])},
    "sync": _sync,
    "produce": _produce,
    "consume": _consume,
    "peek": _peek,
    "segment_status": lambda db, params: {
        "status": db.space(params["space"]).segment(params["segment"]).status()
    },
    "space_consume": _space_consume,
    "spaces": lambda db, params: {"spaces": db.spaces()},
    "segments": lambda db, params: {"segments": db.space(params["space"]).segments()},
    "acquire_lease": lambda db, params: {
        "lease": db.acquire_lease(params["key"], params["holder"], params["ttl"]).to_dict()
    },
    "renew_lease": _renew_lease,
    "release_lease": lambda db, params: {"released": db.release_lease(_held(params))},
    "leases": lambda db, params: {"leases": [lease.to_dict() for lease in db.leases()]},
}

_DATABASE_OPS = {name for name, op in OPS.items() if op.runs == "database"}
if set(_HANDLERS) != _DATABASE_OPS:
    raise ImportError(
        f"database ops without a handler: {sorted(_DATABASE_OPS - set(_HANDLERS))}; handlers"
        f" of no database op: {sorted(set(_HANDLERS) - _DATABASE_OPS)}"
    )


class Dispatcher:
    """Runs database requests; blocking, thread-safe."""

    def __init__(self, databases: NodeManager) -> None:
        self.databases = databases
        #: Databases this server follows (name -> leader URL): written by replication
        #: only, so a write request gets ReadOnlyReplicaError naming the leader.
        self.read_only: dict[str, str] = {}
        #: Databases that refuse writes whoever else allows them: a fenced leader
        #: (ReadOnlyReplicaError naming its successor, StaleEpochError while that is not
        #: known), a restarted leader waiting for the cluster's metadata
        #: (UnavailableError). Each makes the error to raise; checked first, and again
        #: before a write is answered.
        self.refusals: dict[str, Callable[[], KilnError]] = {}
        #: With a coordinator: raises unless this node may take writes for a database
        #: now (``database``, whether to wait for an election) — see leadership.py.
        self.write_gate: Callable[[str, bool], None] | None = None

    def _check_writable(self, op: str, database: str) -> None:
        if OPS[op].action != "write":
            return
        refusal = self.refusals.get(database)
        if refusal is not None:  # fenced (or held) here, with or without a coordinator
            raise refusal()
        if self.write_gate is not None:  # leadership held through a coordinator
            self.write_gate(database, True)
            return
        leader = self.read_only.get(database)
        if leader is not None:
            raise ReadOnlyReplicaError(leader)

    def confirm(self, database: str) -> None:
        """Before a write to ``database`` is answered: raise if this node stopped leading
        it meanwhile (its lease could not be renewed, another node took over), since the
        write may then not survive; the client retries it (with an ``id``: once). A
        database fenced since the write was applied refuses it the same way: its write
        is cut once it follows the new leader, so it must not be acknowledged."""
        refusal = self.refusals.get(database)
        if refusal is not None:
            raise refusal()
        if self.write_gate is None:
            return
        try:
            self.write_gate(database, False)
        except KilnError as exc:
            raise UnavailableError(
                f"this node stopped leading {database!r} before the write was acknowledged,"
                f" so it may not survive ({exc.message}); retry it, with an id to apply it"
                " once"
            ) from exc

    @staticmethod
    def handles(op: str) -> bool:
        """Whether ``op`` is a database op (the others are not dispatched)."""
        return op in _HANDLERS

    def execute(self, request: Request, database: str) -> dict[str, Any]:
        """The reply fields of ``request`` run against ``request.database or database``,
        once durable. Raises the KilnError the operation raised."""
        result, db, position = self.apply(request, database)
        if db is not None and position:
            db.wait_durable(position)
        return result

    def apply(self, request: Request, database: str) -> tuple[dict[str, Any], Database | None, int]:
        """Run ``request`` without waiting for its fsync.

        Returns the reply fields, the database and the position that must be durable
        before the reply may be sent (0: nothing to wait for).
        """
        handler = _HANDLERS.get(request.op)
        if handler is None:
            raise ProtocolError(f"op {request.op!r} is not a database op")
        name = request.database or database
        self._check_writable(request.op, name)
        with (
            self.databases.use(name, create=OPS[request.op].creates) as db,
            db.defer_durability() as positions,
        ):
            result = handler(db, request.params)
        return result, db, max(positions, default=0)

    def apply_writes(
        self, requests: list[Request], database: str
    ) -> tuple[list[dict[str, Any] | orjson.Fragment | KilnError], Database, int]:
        """Commit a run of single-fact writes (``write``/``write_fact``) to ``database``
        together, each with its own outcome, without waiting for their fsync.

        Returns each write's fact (as a wire dict) or error, the database and the
        position that must be durable before any of the facts is acknowledged.
        """
        # The checked params carry every field of a Write by name: the core takes them
        # as they are.
        return self._write_each([request.params for request in requests], database, False)

    def apply_write_run(
        self, envelopes: list[dict[str, Any]], database: str
    ) -> tuple[list[bytes | KilnError], Database, int]:
        """:meth:`apply_writes` for a :class:`~kilndb.protocol.WriteRun`: each envelope
        is its own params, and each written fact comes back as its stored JSON (bytes)."""
        return self._write_each(envelopes, database, True)

    def _write_each(
        self, writes: list[dict[str, Any]], database: str, as_bytes: bool
    ) -> tuple[list[Any], Database, int]:
        self._check_writable("write", database)
        with self.databases.use(database) as db, db.defer_durability() as positions:
            outcomes = db.write_each_wire(writes, as_bytes=as_bytes)
        return outcomes, db, max(positions, default=0)

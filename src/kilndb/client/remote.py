"""The network client: the embedded database's API, served by a KilnDB server.

``kilndb.connect(url)`` returns a :class:`RemoteDatabase` with the same methods as
:class:`kilndb.Database` (``store``, ``write_many``, ``replay``, ``subscribe``,
``stores``, ``stats``, ``compact``, ``set_retention``, ``sync``, ``close``) and the same
errors, so code and tests written against one run against the other.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from kilndb.client.endpoint import Endpoint, arrived, check_read_from, leader_to_read_from
from kilndb.client.pushed import PushedStream
from kilndb.client.streams import RemoteSpace, RemoteStatusSubscription
from kilndb.client.transport import Connection
from kilndb.engine.writes import prepare_write
from kilndb.errors import (
    ClosedError,
    InvalidArgumentError,
    KilnError,
    ReadOnlyReplicaError,
    error_from_wire,
)
from kilndb.leases import Lease, LeaseKeeper, check_fence, check_ttl, lease_from_wire
from kilndb.model import Fact, Write, fact_from_dict, facts_from_dicts, validate_store_name

__all__ = ["RemoteDatabase", "RemoteStore", "RemoteSubscription", "connect"]

#: Facts fetched per ``replay`` request while iterating.
REPLAY_PAGE = 1000


def _check(store: str, key: Any, value: Any, options: dict[str, Any]) -> None:
    try:
        prepare_write(store, key, value, store_checked=True, **options)
    except TypeError as exc:  # an unknown keyword argument
        raise InvalidArgumentError(str(exc)) from exc


def _batch(writes: Iterable[Write]) -> list[dict[str, Any]]:
    """The wire form of a ``write_many`` batch, checked with the embedded rules."""
    batch = []
    for write in writes:
        if type(write) is not Write:
            raise InvalidArgumentError(
                f"write_many takes kilndb.Write objects, not {type(write).__name__}"
            )
        fields = write._asdict()
        options = {k: v for k, v in fields.items() if k not in ("store", "key", "value")}
        _check(validate_store_name(write.store), write.key, write.value, options)
        batch.append(fields)
    return batch


def _each(writes: Iterable[Write]) -> list[dict[str, Any] | KilnError]:
    """The wire requests of ``write_each``, or the error that refuses each write here."""
    requests: list[dict[str, Any] | KilnError] = []
    for write in writes:
        try:
            (fields,) = _batch([write])
        except KilnError as exc:
            requests.append(exc)
            continue
        op = "delete" if fields["deleted"] else "write"
        request = {"op": op, **{k: v for k, v in fields.items() if v is not None}}
        del request["deleted"]  # the op says it; a delete ignores a write's other fields
        requests.append(request)
    return requests


def _outcome(reply: dict[str, Any]) -> Fact | KilnError:
    return fact_from_dict(reply["fact"]) if reply.get("ok") else error_from_wire(reply)


def _fence(options: dict[str, Any]) -> dict[str, Any] | None:
    """Take ``fence`` out of a call's options, as its wire form ``{"key", "token"}``."""
    checked = check_fence(options.pop("fence", None))
    return None if checked is None else {"key": checked[0], "token": checked[1]}


def _replicas(options: dict[str, Any]) -> int | None:
    """Take ``replicas`` (followers that must have the write durably) out of the options."""
    replicas = options.pop("replicas", None)
    if replicas is not None and (type(replicas) is not int or replicas < 0):
        raise InvalidArgumentError("replicas must be a non-negative integer or None")
    return replicas


def _write_request(store: str, key: Any, value: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a ``write``, checked here with the embedded rules: the same error
    for the same mistake, and nothing unserialisable ever reaches the wire."""
    fence, replicas = _fence(options), _replicas(options)
    _check(store, key, value, options)
    params = {"store": store, "key": key, "value": value, "fence": fence, "replicas": replicas}
    return {**params, **options}


def _delete_request(store: str, key: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a ``delete`` (see :func:`_write_request`)."""
    fence, replicas = _fence(options), _replicas(options)
    _check(store, key, None, {**options, "deleted": True})
    return {"store": store, "key": key, "fence": fence, "replicas": replicas, **options}


def _fact(data: dict[str, Any] | None) -> Fact | None:
    return None if data is None else fact_from_dict(data)


def _stores(stores: Iterable[str] | None) -> list[str] | None:
    if stores is None:
        return None
    if isinstance(stores, str) or not isinstance(stores, Iterable):
        raise InvalidArgumentError("stores must be a list of store names or None")
    return list(stores)


class RemoteStore:
    """A store of a remote database; the same methods as :class:`kilndb.Store`."""

    __slots__ = ("_db", "name")

    def __init__(self, db: RemoteDatabase, name: str) -> None:
        self._db = db
        self.name = name

    def write(self, key: str, value: Any, **options: Any) -> Fact:
        """Append a fact for ``key``; the same arguments and errors as :meth:`Store.write`.

        On a server with followers, ``replicas=N`` also waits until N of them have the
        fact durably (ReplicationTimeoutError after the server's ``replica_timeout``; the
        write itself stays committed on the leader).
        """
        # Checked here with the embedded database's own rules: the same error for the
        # same mistake, and nothing unserialisable ever reaches the wire.
        reply = self._db._call("write", **_write_request(self.name, key, value, options))
        return fact_from_dict(reply["fact"])

    def delete(self, key: str, **options: Any) -> Fact:
        """Write a tombstone for ``key``; as :meth:`Store.delete`."""
        reply = self._db._call("delete", **_delete_request(self.name, key, options))
        return fact_from_dict(reply["fact"])

    def read(self, key: str, *, as_of: float | None = None) -> Fact | None:
        return _fact(self._db._call("read", store=self.name, key=key, as_of=as_of)["fact"])

    def history(
        self,
        key: str,
        *,
        since_seq: int = 1,
        until_seq: int | None = None,
        limit: int | None = None,
    ) -> list[Fact]:
        reply = self._db._call(
            "history",
            store=self.name,
            key=key,
            since_seq=since_seq,
            until_seq=until_seq,
            limit=limit,
        )
        return facts_from_dicts(reply["facts"])

    def keys(
        self, prefix: str = "", limit: int | None = None, after: str | None = None
    ) -> list[str]:
        reply = self._db._call("keys", store=self.name, prefix=prefix, limit=limit, after=after)
        keys: list[str] = reply["keys"]
        return keys


class RemoteDatabase:
    """A database on a KilnDB server. Thread-safe; one socket, one request at a time."""

    def __init__(
        self,
        url: str | Endpoint,
        database: str = "default",
        timeout: float | None = 30.0,
        follow_leader: bool | None = None,
        read_from: str = "any",
    ) -> None:
        check_read_from(read_from)
        self._leader: Connection | None = None
        self._leader_lock = threading.Lock()
        self.endpoint = Endpoint.make(url)
        self.url = self.endpoint.url
        self.name = database
        self.timeout = timeout
        self._conn = Connection(self.endpoint, timeout)
        self._closed = False
        try:
            hello = self._conn.hello(database)
            if leader := leader_to_read_from(self.endpoint, hello, read_from, follow_leader):
                self._conn.close()
                self.endpoint = Endpoint(leader, self.endpoint.token, self.endpoint.ssl_context)
                self.url = leader
                self._conn = Connection(self.endpoint, timeout)
                hello = self._conn.hello(database)
                arrived(self.endpoint, hello)
        except BaseException:
            self._conn.close()
            raise
        #: The cluster member this client reached (None: the server is in no cluster).
        self.cluster_node: str | None = hello.get("cluster")
        #: Send writes a follower refuses (ReadOnlyReplicaError) on to its leader; by
        #: default on in a cluster.
        in_cluster = self.cluster_node is not None
        self.follow_leader = in_cluster if follow_leader is None else follow_leader
        self._stores: dict[str, RemoteStore] = {}
        self._subscriptions: list[RemoteSubscription] = []

    def __repr__(self) -> str:
        return f"<kilndb.RemoteDatabase {self.name!r} at {self.url!r}>"

    def _call(self, op: str, **params: Any) -> dict[str, Any]:
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")
        try:
            return self._conn.call(op, **params)
        except ReadOnlyReplicaError as refused:
            if not self.follow_leader or not refused.leader:
                raise
            return self._leader_call(refused.leader, op, params)

    def _call_body(self, op: str, **params: Any) -> bytes:
        """A read's reply body, undecoded (see :meth:`Connection.call_body`)."""
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")
        return self._conn.call_body(op, **params)

    def _leader_call(self, leader: str, op: str, params: dict[str, Any]) -> dict[str, Any]:
        """A write a follower refused, sent to its leader (same token and TLS)."""
        with self._leader_lock:
            conn = self._leader
            if conn is None or conn.closed or conn.url != leader:
                if conn is not None:
                    conn.close()
                endpoint = Endpoint(leader, self.endpoint.token, self.endpoint.ssl_context)
                conn = self._leader = Connection(endpoint, self.timeout)
                conn.hello(self.name)
        return conn.call(op, **params)

    @property
    def closed(self) -> bool:
        return self._closed

    def cluster(self) -> dict[str, Any] | None:
        """The cluster as the server sees it — members (state, incarnation, addresses,
        databases), each database's leader, gossip counters — or None outside one."""
        found: dict[str, Any] | None = self._call("cluster")["cluster"]
        return found

    def store(self, name: str) -> RemoteStore:
        found = self._stores.get(name) if type(name) is str else None
        if found is None:
            found = self._stores.setdefault(name, RemoteStore(self, validate_store_name(name)))
        return found

    def space(self, name: str) -> RemoteSpace:
        """The streams view of store ``name``; as :meth:`Database.space`."""
        return RemoteSpace(self._call, name, self._status_subscription, self._call_body)

    def spaces(self) -> list[str]:
        spaces: list[str] = self._call("spaces")["spaces"]
        return spaces

    def _status_subscription(
        self, space: str, segment: str, heartbeat: float
    ) -> RemoteStatusSubscription:
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")
        return RemoteStatusSubscription(
            self.endpoint, self.name, space, segment, heartbeat, self.timeout
        )

    def stores(self) -> list[str]:
        names: list[str] = self._call("stores")["stores"]
        return names

    def write_many(
        self, writes: Iterable[Write], *, fence: Any = None, replicas: int | None = None
    ) -> list[Fact]:
        """Write a batch atomically; as :meth:`Database.write_many`. ``replicas``: see
        :meth:`RemoteStore.write`."""
        fenced = _fence({"fence": fence})
        count = _replicas({"replicas": replicas})
        batch = _batch(writes)
        if not batch:
            return []
        reply = self._call("write_many", writes=batch, fence=fenced, replicas=count)
        return facts_from_dicts(reply["facts"])

    # -- leases ----------------------------------------------------------------------

    def acquire_lease(self, key: str, holder: str, ttl: float) -> Lease:
        """As :meth:`Database.acquire_lease`."""
        reply = self._call("acquire_lease", key=key, holder=holder, ttl=check_ttl(ttl))
        return lease_from_wire(reply["lease"])

    def renew_lease(self, lease: Lease, ttl: float | None = None) -> Lease:
        """As :meth:`Database.renew_lease`."""
        ttl = None if ttl is None else check_ttl(ttl)
        return lease_from_wire(self._call("renew_lease", **lease.to_dict(), ttl=ttl)["lease"])

    def release_lease(self, lease: Lease) -> bool:
        """As :meth:`Database.release_lease`."""
        released: bool = self._call("release_lease", **lease.to_dict())["released"]
        return released

    def leases(self) -> list[Lease]:
        return [lease_from_wire(wire) for wire in self._call("leases")["leases"]]

    def lease(self, key: str, holder: str, ttl: float) -> LeaseKeeper:
        """As :meth:`Database.lease`."""
        return LeaseKeeper(self, key, holder, ttl)

    def write_each(self, writes: Iterable[Write]) -> list[Fact | KilnError]:
        """Independent writes, pipelined; as :meth:`Database.write_each`."""
        requests = _each(writes)
        sent = [r for r in requests if not isinstance(r, KilnError)]
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")
        replies = iter(self._conn.pipeline(sent) if sent else ())
        return [r if isinstance(r, KilnError) else _outcome(next(replies)) for r in requests]

    def replay(
        self, after: int = 0, stores: Iterable[str] | None = None, limit: int | None = None
    ) -> Iterator[Fact]:
        chosen = _stores(stores)
        first = self._call("replay", after=after, stores=chosen, limit=_page(limit))
        return self._replay(first, chosen, limit)

    def _replay(
        self, reply: dict[str, Any], stores: list[str] | None, limit: int | None
    ) -> Iterator[Fact]:
        sent = 0
        while True:
            facts = reply["facts"]
            for fact in facts_from_dicts(facts):
                yield fact
                sent += 1
                if sent == limit:
                    return
            if len(facts) < REPLAY_PAGE:
                return
            remaining = None if limit is None else limit - sent
            reply = self._call(
                "replay", after=reply["next_after"], stores=stores, limit=_page(remaining)
            )

    def subscribe(self, stores: Iterable[str] | None = None, after: int = 0) -> RemoteSubscription:
        """Catch-up from ``after``, then live, on a connection of its own."""
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")
        subscription = RemoteSubscription(
            self.endpoint, self.name, _stores(stores), after, self.timeout
        )
        self._subscriptions = [s for s in self._subscriptions if not s.closed]
        self._subscriptions.append(subscription)
        return subscription

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._call("stats")["stats"]
        return stats

    def compact(self) -> dict[str, int]:
        result: dict[str, int] = self._call("compact")["result"]
        return result

    def set_retention(self, store: str, keep: str = "all", max_age: float | None = None) -> None:
        self._call("set_retention", store=store, keep=keep, max_age=max_age)

    def retention(self, store: str) -> dict[str, Any]:
        policy: dict[str, Any] = self._call("retention", store=store)["retention"]
        return policy

    def sync(self) -> None:
        self._call("sync")

    def close(self) -> None:
        """Close the connection and every subscription opened through it. Idempotent."""
        if not self._closed:
            self._closed = True
            for subscription in self._subscriptions:
                subscription.close()
            self._conn.close()
            if self._leader is not None:
                self._leader.close()

    def __enter__(self) -> RemoteDatabase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _page(limit: int | None) -> int:
    if limit is not None and (type(limit) is not int or limit < 0):
        raise InvalidArgumentError("limit must be a non-negative integer or None")
    return REPLAY_PAGE if limit is None else min(limit, REPLAY_PAGE)


class RemoteSubscription(PushedStream[Fact]):
    """A changefeed on its own connection: catch-up from ``after``, then live.

    After a reconnect it resumes after the last fact it received, so that across
    reconnects no fact is missed and none is delivered twice. A server error (a cursor
    compacted away, say) ends it.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        database: str,
        stores: list[str] | None,
        after: int,
        timeout: float | None,
    ) -> None:
        self.position = after
        self._stores = stores
        #: Position of the last fact received (delivered or still buffered).
        self._received = after
        super().__init__(endpoint, database, timeout)

    def _subscribe(self, conn: Connection) -> None:
        conn.call("subscribe", stores=self._stores, after=self._received)

    def _accept(self, message: dict[str, Any]) -> Fact | None:
        if message.get("event") != "fact_written":
            return None
        fact = fact_from_dict(message["fact"])
        if fact.position <= self._received:
            return None
        self._received = fact.position
        return fact

    def _delivered(self, item: Fact) -> None:
        self.position = item.position


def connect(
    url: str,
    database: str = "default",
    *,
    timeout: float | None = 30.0,
    token: str | None = None,
    tls: bool | None = None,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    follow_leader: bool | None = None,
    read_from: str = "any",
) -> RemoteDatabase:
    """Connect to database ``database`` on the KilnDB server at ``url``.

    ``tcp://HOST:PORT``, ``tls://HOST:PORT`` or ``unix:///PATH``; ``token`` is the JWT a
    server with authentication requires; ``tls=True`` turns TLS on for ``tcp://``;
    ``ca_file`` checks the server's certificate, ``cert_file``/``key_file`` present a
    client certificate (mutual TLS). ``follow_leader``: on a follower, writes it refuses
    (ReadOnlyReplicaError) go to the leader it names, reads stay here — on by default
    when the server is a cluster member (``kiln serve --gossip-port``), where a member
    that does not hold the database also sends the client to the one that leads it;
    ``follow_leader=False`` stays on ``url`` whatever it says.
    ``read_from="leader"`` sends reads to the database's leader as well (when ``url`` is
    a follower that knows it; UnavailableError if it does not yet).
    """
    endpoint = Endpoint.make(
        url, token=token, tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file
    )
    return RemoteDatabase(endpoint, database, timeout, follow_leader, read_from)

"""The network client: the embedded database's API, served by a KilnDB server.

``kilndb.connect(url)`` returns a :class:`RemoteDatabase` with the same methods as
:class:`kilndb.Database` (``store``, ``space``, ``write_many``, ``replay``,
``subscribe``, leases, ``stats``, ``compact``, ``set_retention``, ``sync``, ``close`` …)
and the same errors, so code and tests written against one run against the other.

This is the blocking shell over the client core: each method builds its request with
:mod:`kilndb.client.calls` and sends it on a :class:`~kilndb.client.link.Link`, which
reconnects after the server restarts; :mod:`kilndb.client.asyncio_client` is its twin.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, overload

from kilndb.client import calls
from kilndb.client.core import (
    Ready,
    Reconnect,
    Request,
    arrived,
    check_read_from,
    follows_leader,
    leader_for,
    leader_to_read_from,
    refused_writes,
)
from kilndb.client.endpoint import Endpoint
from kilndb.client.feeds import FactFeed
from kilndb.client.hosts import Hosts, reads_hosts
from kilndb.client.link import Link
from kilndb.client.pushed import PushedStream
from kilndb.client.streams import RemoteSpace, RemoteStatusSubscription
from kilndb.engine.changefeed import CallbackSubscription
from kilndb.errors import ClosedError, InvalidArgumentError, KilnError, ReadOnlyReplicaError
from kilndb.leases import Lease, LeaseKeeper
from kilndb.model import Fact, Write, validate_store_name
from kilndb.storage.facts import check_position
from kilndb.streams import check_channel

__all__ = ["RemoteDatabase", "RemoteStore", "RemoteSubscription", "connect"]

T = TypeVar("T")


class RemoteStore:
    """A store of a remote database; the same methods as :class:`kilndb.Store`."""

    __slots__ = ("_db", "name")

    def __init__(self, db: RemoteDatabase, name: str) -> None:
        self._db = db
        self.name = name

    def __repr__(self) -> str:
        return f"<RemoteStore {self.name!r} of {self._db!r}>"

    def write(
        self,
        key: str,
        value: Any,
        *,
        expected_seq: int | None = None,
        id: str | None = None,
        causation: str | None = None,
        valid_time: float | None = None,
        schema_version: int = 1,
        producer: Any = None,
        derivation: Any = None,
        metadata: dict[str, str] | None = None,
        fence: Any = None,
        replicas: int | None = None,
    ) -> Fact:
        """Append a fact for ``key``; the same arguments and errors as :meth:`Store.write`.

        On a server with followers, ``replicas=N`` also waits until N of them have the
        fact durably (ReplicationTimeoutError after the server's ``replica_timeout``; the
        write itself stays committed on the leader). If the connection breaks after the
        write was sent, it is sent again on a new connection when it carries an ``id``;
        without one, WriteOutcomeUnknownError says it may or may not have been applied.
        """
        options = {
            "expected_seq": expected_seq,
            "id": id,
            "causation": causation,
            "valid_time": valid_time,
            "schema_version": schema_version,
            "producer": producer,
            "derivation": derivation,
            "metadata": metadata,
            "fence": fence,
            "replicas": replicas,
        }
        return self._db._send(calls.write(self.name, key, value, options))

    def delete(
        self,
        key: str,
        *,
        expected_seq: int | None = None,
        id: str | None = None,
        causation: str | None = None,
        metadata: dict[str, str] | None = None,
        fence: Any = None,
        replicas: int | None = None,
    ) -> Fact:
        """Write a tombstone for ``key``; as :meth:`Store.delete` (and :meth:`write`)."""
        options = {
            "expected_seq": expected_seq,
            "id": id,
            "causation": causation,
            "metadata": metadata,
            "fence": fence,
            "replicas": replicas,
        }
        return self._db._send(calls.delete(self.name, key, options))

    def read(self, key: str, *, as_of: float | None = None) -> Fact | None:
        """As :meth:`Store.read`."""
        return self._db._send(calls.read(self.name, key, as_of))

    def history(
        self,
        key: str,
        *,
        since_seq: int = 1,
        until_seq: int | None = None,
        limit: int | None = None,
    ) -> list[Fact]:
        """As :meth:`Store.history`."""
        return self._db._send(calls.history(self.name, key, since_seq, until_seq, limit))

    def keys(
        self, prefix: str = "", limit: int | None = None, after: str | None = None
    ) -> list[str]:
        """As :meth:`Store.keys`."""
        return self._db._send(calls.keys(self.name, prefix, limit, after))


class RemoteDatabase:
    """A database on a KilnDB server. Thread-safe; one socket, one request at a time.

    After the server restarts, the next call connects again (see ``reconnect_timeout``
    of :func:`connect`): reads and writes carrying an ``id`` go through as if nothing
    happened; a write without one whose reply was lost raises WriteOutcomeUnknownError.
    """

    def __init__(
        self,
        url: str | Endpoint,
        database: str = "default",
        timeout: float | None = 30.0,
        follow_leader: bool | None = None,
        read_from: str = "any",
        reconnect_timeout: float = 5.0,
    ) -> None:
        check_read_from(read_from)
        self.endpoint = Endpoint.make(url)
        self.name = database
        self.timeout = timeout
        self._reconnect = Reconnect.make(reconnect_timeout)
        hosts = reads_hosts(self.endpoint.hosts, database, read_from, follow_leader)
        self._link = Link(self.endpoint, database, timeout, self._reconnect, hosts=hosts)
        self._leader: Link | None = None
        #: With a list of servers: the link that finds the leader for refused writes.
        self._finder: Link | None = None
        if self.endpoint.several:
            leads = Hosts(self.endpoint.hosts, self.name, "leader")
            self._finder = Link(
                self.endpoint, self.name, self.timeout, self._reconnect, hosts=leads
            )
        self._leader_lock = threading.Lock()
        self._closed = False
        hello = self._link.open()
        try:
            # With a list, the round chose a server that will do (kilndb.client.hosts).
            several = self.endpoint.several
            if not several and (
                leader := leader_to_read_from(self._link.url, hello, read_from, follow_leader)
            ):
                self._link.close()
                self.endpoint = Endpoint(leader, self.endpoint.token, self.endpoint.ssl_context)
                self._link = Link(self.endpoint, database, timeout, self._reconnect)
                hello = self._link.open()
                arrived(self.endpoint.url, hello)
        except BaseException:
            self._link.close()
            raise
        #: The cluster member this client reached (None: the server is in no cluster).
        self.cluster_node: str | None = hello.get("cluster")
        #: Send writes a follower refuses (ReadOnlyReplicaError) on to its leader; by
        #: default on in a cluster and with a list of servers.
        self.follow_leader = follows_leader(hello, follow_leader, self.endpoint.several)
        self._stores: dict[str, RemoteStore] = {}
        self._subscriptions: list[PushedStream[Any] | CallbackSubscription] = []

    def __repr__(self) -> str:
        return f"<kilndb.RemoteDatabase {self.name!r} at {self.url!r}>"

    @property
    def url(self) -> str:
        """The server this client reads from now (with a list, it changes on failover)."""
        return self._link.url

    @property
    def reconnects(self) -> int:
        """How many times this client connected again after losing the server."""
        return self._link.reconnects

    def _send(self, request: Request[T] | Ready[T]) -> T:
        """The value of one call, from the server (or from the core: ``Ready``)."""
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")
        if isinstance(request, Ready):
            return request.value
        try:
            return self._link.call(request)
        except ReadOnlyReplicaError as refused:
            leader = leader_for(refused, self.follow_leader, self.endpoint.several)
            if leader is None:
                raise
            return self._leader_link(leader).call(request)

    def _call(self, op: str, **params: Any) -> dict[str, Any]:
        """Any op's whole reply (admin and diagnostic ops without a method of their own),
        routed and sent again like every call."""
        return self._send(calls.reply(op, **params))

    def _leader_link(self, leader: str) -> Link:
        """The link to the leader a follower named, for the writes it refuses (same
        token and TLS); a new leader replaces the old one's link. With a list of
        servers, one link that finds the leader itself (``leader`` first; ``""``:
        a follower that knows none) and follows it from then on."""
        with self._leader_lock:
            link = self._leader
            if self._finder is not None:  # it connects on its first call, within the budget
                self._finder.hosts.named(leader)
                return self._finder
            if link is None or link.url != leader:
                if link is not None:
                    link.close()
                link = Link(self.endpoint.at(leader), self.name, self.timeout, self._reconnect)
                link.open()
                self._leader = link
            return link

    @property
    def closed(self) -> bool:
        return self._closed

    def cluster(self) -> dict[str, Any] | None:
        """The cluster as the server sees it — members (state, incarnation, addresses,
        databases), each database's leader, gossip counters — or None outside one."""
        found: dict[str, Any] | None = self._send(calls.simple("cluster", "cluster"))
        return found

    def store(self, name: str) -> RemoteStore:
        """As :meth:`Database.store`."""
        found = self._stores.get(name) if type(name) is str else None
        if found is None:
            found = self._stores.setdefault(name, RemoteStore(self, validate_store_name(name)))
        return found

    def space(self, name: str) -> RemoteSpace:
        """The streams view of store ``name``; as :meth:`Database.space`."""
        return RemoteSpace(self, name)

    def spaces(self) -> list[str]:
        """As :meth:`Database.spaces`."""
        spaces: list[str] = self._send(calls.simple("spaces", "spaces"))
        return spaces

    def _status_subscription(
        self, space: str, segment: str, heartbeat: float, channel: str | None
    ) -> RemoteStatusSubscription:
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")
        subscription = RemoteStatusSubscription(
            self.endpoint, self.name, space, segment, heartbeat, self.timeout, channel
        )
        self._keep(subscription)
        return subscription

    def _keep(self, subscription: PushedStream[Any] | CallbackSubscription) -> None:
        self._subscriptions = [s for s in self._subscriptions if not s.closed]
        self._subscriptions.append(subscription)

    def stores(self) -> list[str]:
        """As :meth:`Database.stores`."""
        names: list[str] = self._send(calls.simple("stores", "stores"))
        return names

    def write_many(
        self, writes: Iterable[Write], *, fence: Any = None, replicas: int | None = None
    ) -> list[Fact]:
        """Write a batch atomically; as :meth:`Database.write_many`. ``replicas`` and a
        lost reply: see :meth:`RemoteStore.write` (a batch is sent again only if every
        write in it carries an ``id``)."""
        return self._send(calls.write_many(writes, fence, replicas))

    # -- leases ----------------------------------------------------------------------

    def acquire_lease(self, key: str, holder: str, ttl: float) -> Lease:
        """As :meth:`Database.acquire_lease`."""
        return self._send(calls.acquire_lease(key, holder, ttl))

    def renew_lease(self, lease: Lease, ttl: float | None = None) -> Lease:
        """As :meth:`Database.renew_lease`."""
        return self._send(calls.renew_lease(lease, ttl))

    def release_lease(self, lease: Lease) -> bool:
        """As :meth:`Database.release_lease`."""
        return self._send(calls.release_lease(lease))

    def leases(self) -> list[Lease]:
        """As :meth:`Database.leases`."""
        return self._send(calls.leases())

    def lease(self, key: str, holder: str, ttl: float) -> LeaseKeeper:
        """As :meth:`Database.lease`."""
        return LeaseKeeper(self, key, holder, ttl)

    def write_fact(self, fact: Fact | Mapping[str, Any]) -> Fact:
        """Store a whole fact; as :meth:`Database.write_fact` (Igniter's ``write_fact``).
        A fact with an ``id`` is sent again after a lost reply."""
        return self._send(calls.write_fact(fact))

    def write_snapshot(self, facts: Iterable[Fact | Mapping[str, Any]]) -> dict[str, int]:
        """Igniter's checkpoint; as :meth:`Database.write_snapshot`. Sent again after a
        lost reply when every fact carries an ``id``."""
        return self._send(calls.write_snapshot(facts))

    def write_each(self, writes: Iterable[Write]) -> list[Fact | KilnError]:
        """Independent writes, pipelined; as :meth:`Database.write_each`. A write whose
        reply a broken connection lost is WriteOutcomeUnknownError in the list, unless
        it carries an ``id`` (then it is sent again). Writes a follower refuses go on
        to its leader as a second pipeline (see ``follow_leader``)."""
        requests = calls.write_each(writes)
        sent = [r for r in requests if not isinstance(r, KilnError)]
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")
        outcomes: list[Fact | KilnError] = self._link.pipeline(sent) if sent else []
        refused, leader = refused_writes(outcomes, self.follow_leader, self.endpoint.several)
        if leader is not None:
            again = self._leader_link(leader).pipeline([sent[i] for i in refused])
            for index, outcome in zip(refused, again, strict=True):
                outcomes[index] = outcome
        replies = iter(outcomes)
        return [r if isinstance(r, KilnError) else next(replies) for r in requests]

    def replay(
        self, after: int = 0, stores: Iterable[str] | None = None, limit: int | None = None
    ) -> Iterator[Fact]:
        """As :meth:`Database.replay`, fetched a page at a time."""
        pages = calls.Replay(after, stores, limit)
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")
        return self._replay(pages)

    def _replay(self, pages: calls.Replay) -> Iterator[Fact]:
        while (request := pages.request()) is not None:
            yield from pages.take(self._send(request))

    @overload
    def subscribe(
        self,
        stores: Iterable[str] | None = None,
        after: int = 0,
        *,
        callback: None = None,
        channel: str | None = None,
    ) -> RemoteSubscription: ...

    @overload
    def subscribe(
        self,
        stores: Iterable[str] | None = None,
        after: int = 0,
        *,
        callback: Callable[[Fact], object],
        channel: str | None = None,
    ) -> CallbackSubscription: ...

    def subscribe(
        self,
        stores: Iterable[str] | None = None,
        after: int = 0,
        *,
        callback: Callable[[Fact], object] | None = None,
        channel: str | None = None,
    ) -> RemoteSubscription | CallbackSubscription:
        """Catch-up from ``after``, then live, on a connection of its own; as
        :meth:`Database.subscribe` (``callback=``: a thread calls it for each fact;
        ``channel``: the stream's channel id, else the server assigns a UUID)."""
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")
        if callback is not None and not callable(callback):
            raise InvalidArgumentError("callback must be callable")
        subscription = RemoteSubscription(
            self.endpoint,
            self.name,
            calls.stores_of(stores),
            check_position("after", after),
            self.timeout,
            check_channel(channel),
        )
        if callback is None:
            self._keep(subscription)
            return subscription
        handle = CallbackSubscription(subscription, callback)
        self._keep(handle)
        return handle

    def stats(self) -> dict[str, Any]:
        """As :meth:`Database.stats`."""
        stats: dict[str, Any] = self._send(calls.simple("stats", "stats"))
        return stats

    def compact(self) -> dict[str, int]:
        """As :meth:`Database.compact`."""
        result: dict[str, int] = self._send(calls.simple("compact", "result"))
        return result

    def set_retention(self, store: str, keep: str = "all", max_age: float | None = None) -> None:
        """As :meth:`Database.set_retention`."""
        self._send(calls.set_retention(store, keep, max_age))

    def retention(self, store: str) -> dict[str, Any]:
        """As :meth:`Database.retention`."""
        policy: dict[str, Any] = self._send(calls.simple("retention", "retention", store=store))
        return policy

    def sync(self) -> None:
        """As :meth:`Database.sync`."""
        self._send(calls.simple("sync"))

    def close(self) -> None:
        """Close the connection and every subscription opened through it. Idempotent."""
        if not self._closed:
            self._closed = True
            for subscription in self._subscriptions:
                subscription.close()
            self._link.close()
            for link in (self._leader, self._finder):
                if link is not None:
                    link.close()

    def __enter__(self) -> RemoteDatabase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RemoteSubscription(PushedStream[Fact]):
    """A changefeed on its own connection: catch-up from ``after``, then live; the
    methods of the embedded :class:`~kilndb.Subscription`.

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
        channel: str | None = None,
    ) -> None:
        self._facts = FactFeed(stores, after, channel)
        super().__init__(self._facts, endpoint, database, timeout)

    @property
    def position(self) -> int:
        """Position of the last fact handed out; resume from here with ``after=``."""
        return self._facts.position

    @property
    def covered(self) -> int:
        """See :meth:`kilndb.client.feeds.FactFeed.covered`."""
        with self._cond:
            return self._facts.covered(bool(self._buffer))


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
    reconnect_timeout: float = 5.0,
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
    ``reconnect_timeout``: after the connection breaks (the server restarted, say), how
    long a call keeps trying to connect again before it raises ConnectionLostError
    (0: never reconnect); see the client core for what is sent again.
    """
    endpoint = Endpoint.make(
        url, token=token, tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file
    )
    return RemoteDatabase(endpoint, database, timeout, follow_leader, read_from, reconnect_timeout)

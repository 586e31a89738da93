"""The asyncio client: the same names as the sync client, as coroutines.

``adb = await kilndb.connect_async(url)``. Every call is built and decoded by the
client core (:mod:`kilndb.client.calls`), exactly as :mod:`kilndb.client.remote` does;
only the waiting differs. Concurrent callers share one connection and are pipelined
(see :mod:`kilndb.client.asyncio_link`), so a thousand concurrent ``await
store.write(...)`` calls cost one round trip's worth of waiting, not a thousand. After
the server restarts, the next call connects again, with the sync client's rules for
what is sent again.

Calls that open something — ``subscribe``, ``space(...).subscribe_status`` and
``lease`` — return it at once, to be awaited (``sub = await db.subscribe()``) or
entered (``async with db.subscribe() as sub``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

from kilndb.client import calls
from kilndb.client.asyncio_leases import AsyncLeaseKeeper
from kilndb.client.asyncio_link import AsyncLink
from kilndb.client.asyncio_pushed import (
    AsyncCallbackSubscription,
    AsyncPushedStream,
    AsyncRemoteSubscription,
    AsyncStatusSubscription,
)
from kilndb.client.asyncio_streams import AsyncRemoteSpace
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
from kilndb.client.hosts import Hosts, reads_hosts
from kilndb.errors import (
    ClosedError,
    InvalidArgumentError,
    KilnError,
    ReadOnlyReplicaError,
    WriteOutcomeUnknownError,
)
from kilndb.leases import Lease
from kilndb.model import Fact, Write, validate_store_name
from kilndb.storage.facts import check_position
from kilndb.streams import check_channel

__all__ = ["AsyncRemoteDatabase", "AsyncRemoteStore", "AsyncRemoteSubscription", "connect_async"]

T = TypeVar("T")


class AsyncRemoteStore:
    """A store of a remote database; the methods of :class:`kilndb.client.RemoteStore`
    as coroutines."""

    __slots__ = ("_db", "name")

    def __init__(self, db: AsyncRemoteDatabase, name: str) -> None:
        self._db = db
        self.name = name

    def __repr__(self) -> str:
        return f"<AsyncRemoteStore {self.name!r} of {self._db!r}>"

    async def write(
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
        """As :meth:`kilndb.client.RemoteStore.write` (``fence=``, ``replicas=``, and a
        lost reply)."""
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
        return await self._db._send(calls.write(self.name, key, value, options))

    async def delete(
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
        """As :meth:`kilndb.client.RemoteStore.delete`."""
        options = {
            "expected_seq": expected_seq,
            "id": id,
            "causation": causation,
            "metadata": metadata,
            "fence": fence,
            "replicas": replicas,
        }
        return await self._db._send(calls.delete(self.name, key, options))

    async def read(self, key: str, *, as_of: float | None = None) -> Fact | None:
        """As :meth:`Store.read`."""
        return await self._db._send(calls.read(self.name, key, as_of))

    async def history(
        self,
        key: str,
        *,
        since_seq: int = 1,
        until_seq: int | None = None,
        limit: int | None = None,
    ) -> list[Fact]:
        """As :meth:`Store.history`."""
        return await self._db._send(calls.history(self.name, key, since_seq, until_seq, limit))

    async def keys(
        self, prefix: str = "", limit: int | None = None, after: str | None = None
    ) -> list[str]:
        """As :meth:`Store.keys`."""
        return await self._db._send(calls.keys(self.name, prefix, limit, after))


class AsyncRemoteDatabase:
    """A database on a KilnDB server, for asyncio code. Use :func:`connect_async`."""

    def __init__(
        self,
        link: AsyncLink,
        hello: dict[str, Any],
        follow_leader: bool | None = None,
    ) -> None:
        self._link = link
        self.endpoint = link.endpoint
        self.name = link.database
        self.timeout = link.timeout
        self._reconnect = link.reconnect
        #: The cluster member this client reached (None: the server is in no cluster).
        self.cluster_node: str | None = hello.get("cluster")
        #: Send writes a follower refuses (ReadOnlyReplicaError) on to its leader.
        self.follow_leader = follows_leader(hello, follow_leader, self.endpoint.several)
        self._leader: AsyncLink | None = None
        #: With a list of servers: the link that finds the leader for refused writes.
        self._finder: AsyncLink | None = None
        if self.endpoint.several:
            leads = Hosts(self.endpoint.hosts, self.name, "leader")
            self._finder = AsyncLink(
                self.endpoint, self.name, self.timeout, self._reconnect, hosts=leads
            )
        self._leader_lock = asyncio.Lock()
        self._closed = False
        self._stores: dict[str, AsyncRemoteStore] = {}
        self._subscriptions: list[AsyncPushedStream[Any] | AsyncCallbackSubscription] = []

    def __repr__(self) -> str:
        return f"<kilndb.AsyncRemoteDatabase {self.name!r} at {self.url!r}>"

    @property
    def url(self) -> str:
        """The server this client reads from now (with a list, it changes on failover)."""
        return self._link.url

    @property
    def reconnects(self) -> int:
        """How many times this client connected again after losing the server."""
        return self._link.reconnects

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")

    async def _send(self, request: Request[T] | Ready[T]) -> T:
        """The value of one call, from the server (or from the core: ``Ready``)."""
        self._check_open()
        if isinstance(request, Ready):
            return request.value
        try:
            return await self._link.call(request)
        except ReadOnlyReplicaError as refused:
            leader = leader_for(refused, self.follow_leader, self.endpoint.several)
            if leader is None:
                raise
            return await (await self._leader_link(leader)).call(request)

    async def _call(self, op: str, **params: Any) -> dict[str, Any]:
        """Any op's whole reply (admin and diagnostic ops without a method of their own),
        routed and sent again like every call."""
        return await self._send(calls.reply(op, **params))

    async def _leader_link(self, leader: str) -> AsyncLink:
        """The link to the leader a follower named (same token and TLS); it reconnects
        like any link, and a new leader replaces the old one's link. With a list of
        servers, as :meth:`kilndb.client.RemoteDatabase._leader_link`."""
        async with self._leader_lock:
            link = self._leader
            if self._finder is not None:  # it connects on its first call, within the budget
                self._finder.hosts.named(leader)
                return self._finder
            if link is None or link.url != leader:
                if link is not None:
                    await link.close()
                link = AsyncLink(self.endpoint.at(leader), self.name, self.timeout, self._reconnect)
                await link.open()
                self._leader = link
            return link

    async def cluster(self) -> dict[str, Any] | None:
        """As :meth:`kilndb.client.RemoteDatabase.cluster`."""
        found: dict[str, Any] | None = await self._send(calls.simple("cluster", "cluster"))
        return found

    def store(self, name: str) -> AsyncRemoteStore:
        """As :meth:`Database.store`."""
        found = self._stores.get(name) if type(name) is str else None
        if found is None:
            found = self._stores.setdefault(name, AsyncRemoteStore(self, validate_store_name(name)))
        return found

    def space(self, name: str) -> AsyncRemoteSpace:
        """The streams view of store ``name``; as :meth:`Database.space`."""
        return AsyncRemoteSpace(self, name)

    async def spaces(self) -> list[str]:
        """As :meth:`Database.spaces`."""
        spaces: list[str] = await self._send(calls.simple("spaces", "spaces"))
        return spaces

    def _status_subscription(
        self, space: str, segment: str, heartbeat: float, channel: str | None
    ) -> AsyncStatusSubscription:
        self._check_open()
        subscription = AsyncStatusSubscription(
            self.endpoint, self.name, space, segment, heartbeat, self.timeout, channel
        )
        self._keep(subscription)
        return subscription

    def _keep(self, subscription: AsyncPushedStream[Any] | AsyncCallbackSubscription) -> None:
        self._subscriptions = [s for s in self._subscriptions if not s.closed]
        self._subscriptions.append(subscription)

    async def stores(self) -> list[str]:
        """As :meth:`Database.stores`."""
        names: list[str] = await self._send(calls.simple("stores", "stores"))
        return names

    async def write_many(
        self, writes: Iterable[Write], *, fence: Any = None, replicas: int | None = None
    ) -> list[Fact]:
        """As :meth:`kilndb.client.RemoteDatabase.write_many`."""
        return await self._send(calls.write_many(writes, fence, replicas))

    async def write_fact(self, fact: Fact | Mapping[str, Any]) -> Fact:
        """As :meth:`kilndb.client.RemoteDatabase.write_fact`."""
        return await self._send(calls.write_fact(fact))

    async def write_snapshot(self, facts: Iterable[Fact | Mapping[str, Any]]) -> dict[str, int]:
        """As :meth:`kilndb.client.RemoteDatabase.write_snapshot`."""
        return await self._send(calls.write_snapshot(facts))

    async def write_each(self, writes: Iterable[Write]) -> list[Fact | KilnError]:
        """Independent writes, pipelined; as :meth:`kilndb.client.RemoteDatabase.write_each`."""

        async def send(link: AsyncLink, request: Request[Fact | KilnError]) -> Fact | KilnError:
            self._check_open()
            try:
                return await link.call(request)  # a refusal is its outcome, not raised
            except WriteOutcomeUnknownError as exc:  # this write's outcome, as in a pipeline
                return exc

        requests = calls.write_each(writes)
        self._check_open()
        sent = [r for r in requests if not isinstance(r, KilnError)]
        outcomes = list(await asyncio.gather(*(send(self._link, r) for r in sent)))
        refused, leader = refused_writes(outcomes, self.follow_leader, self.endpoint.several)
        if leader is not None:
            link = await self._leader_link(leader)
            again = await asyncio.gather(*(send(link, sent[i]) for i in refused))
            for index, outcome in zip(refused, again, strict=True):
                outcomes[index] = outcome
        replies = iter(outcomes)
        return [r if isinstance(r, KilnError) else next(replies) for r in requests]

    # -- leases ----------------------------------------------------------------------

    async def acquire_lease(self, key: str, holder: str, ttl: float) -> Lease:
        """As :meth:`Database.acquire_lease`."""
        return await self._send(calls.acquire_lease(key, holder, ttl))

    async def renew_lease(self, lease: Lease, ttl: float | None = None) -> Lease:
        """As :meth:`Database.renew_lease`."""
        return await self._send(calls.renew_lease(lease, ttl))

    async def release_lease(self, lease: Lease) -> bool:
        """As :meth:`Database.release_lease`."""
        return await self._send(calls.release_lease(lease))

    async def leases(self) -> list[Lease]:
        """As :meth:`Database.leases`."""
        return await self._send(calls.leases())

    def lease(self, key: str, holder: str, ttl: float) -> AsyncLeaseKeeper:
        """As :meth:`Database.lease`: ``async with db.lease(...) as keeper`` (or
        ``keeper = await db.lease(...)``, then ``await keeper.release()``)."""
        self._check_open()
        return AsyncLeaseKeeper(self, key, holder, ttl)

    # -- reading ---------------------------------------------------------------------

    def replay(
        self, after: int = 0, stores: Iterable[str] | None = None, limit: int | None = None
    ) -> AsyncIterator[Fact]:
        """As :meth:`Database.replay`, fetched a page at a time: ``async for fact in
        db.replay()`` (arguments are checked at once)."""
        pages = calls.Replay(after, stores, limit)
        self._check_open()
        return self._replay(pages)

    async def _replay(self, pages: calls.Replay) -> AsyncIterator[Fact]:
        while (request := pages.request()) is not None:
            for fact in pages.take(await self._send(request)):
                yield fact

    @overload
    def subscribe(
        self,
        stores: Iterable[str] | None = None,
        after: int = 0,
        *,
        callback: None = None,
        channel: str | None = None,
    ) -> AsyncRemoteSubscription: ...

    @overload
    def subscribe(
        self,
        stores: Iterable[str] | None = None,
        after: int = 0,
        *,
        callback: Callable[[Fact], object],
        channel: str | None = None,
    ) -> AsyncCallbackSubscription: ...

    def subscribe(
        self,
        stores: Iterable[str] | None = None,
        after: int = 0,
        *,
        callback: Callable[[Fact], object] | None = None,
        channel: str | None = None,
    ) -> AsyncRemoteSubscription | AsyncCallbackSubscription:
        """Catch-up from ``after``, then live, on a connection of its own: ``await`` it
        or ``async with`` it; ``async for fact in sub`` or ``await sub.get()``. With
        ``callback`` (a function or a coroutine function), a task calls it for each fact
        (:class:`~kilndb.client.asyncio_pushed.AsyncCallbackSubscription`); ``channel``
        as in :meth:`kilndb.client.RemoteDatabase.subscribe`."""
        self._check_open()
        if callback is not None and not callable(callback):
            raise InvalidArgumentError("callback must be callable")
        subscription = AsyncRemoteSubscription(
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
        handle = AsyncCallbackSubscription(subscription, callback)
        self._keep(handle)
        return handle

    async def stats(self) -> dict[str, Any]:
        """As :meth:`Database.stats`."""
        stats: dict[str, Any] = await self._send(calls.simple("stats", "stats"))
        return stats

    async def compact(self) -> dict[str, int]:
        """As :meth:`Database.compact`."""
        result: dict[str, int] = await self._send(calls.simple("compact", "result"))
        return result

    async def set_retention(
        self, store: str, keep: str = "all", max_age: float | None = None
    ) -> None:
        """As :meth:`Database.set_retention`."""
        await self._send(calls.set_retention(store, keep, max_age))

    async def retention(self, store: str) -> dict[str, Any]:
        """As :meth:`Database.retention`."""
        request = calls.simple("retention", "retention", store=store)
        policy: dict[str, Any] = await self._send(request)
        return policy

    async def sync(self) -> None:
        """As :meth:`Database.sync`."""
        await self._send(calls.simple("sync"))

    async def close(self) -> None:
        """Close the connection and every subscription opened through it. Idempotent."""
        if not self._closed:
            self._closed = True
            for subscription in self._subscriptions:
                await subscription.close()
            await self._link.close()
            for link in (self._leader, self._finder):
                if link is not None:
                    await link.close()

    async def __aenter__(self) -> AsyncRemoteDatabase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect_async(
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
) -> AsyncRemoteDatabase:
    """Connect to database ``database`` on the KilnDB server at ``url`` (asyncio); the
    same options as :func:`kilndb.connect`."""
    check_read_from(read_from)
    reconnect = Reconnect.make(reconnect_timeout)
    endpoint = Endpoint.make(
        url, token=token, tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file
    )
    hosts = reads_hosts(endpoint.hosts, database, read_from, follow_leader)
    link = AsyncLink(endpoint, database, timeout, reconnect, hosts=hosts)
    hello = await link.open()
    try:
        # With a list, the round chose a server that will do (kilndb.client.hosts).
        leader = None
        if not endpoint.several:
            leader = leader_to_read_from(link.url, hello, read_from, follow_leader)
        if leader:
            await link.close()
            endpoint = Endpoint(leader, endpoint.token, endpoint.ssl_context)
            link = AsyncLink(endpoint, database, timeout, reconnect)
            hello = await link.open()
            arrived(endpoint.url, hello)
    except BaseException:
        await link.close()
        raise
    return AsyncRemoteDatabase(link, hello, follow_leader)

"""The asyncio client: the same names as the embedded API, as coroutines.

``adb = await kilndb.connect_async(url)``. Concurrent callers share one connection and
are pipelined: each request is written at once and its reply is matched in order (the
server answers a connection's requests in request order), so a thousand concurrent
``await store.write(...)`` calls cost one round trip's worth of waiting, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import orjson

from kilndb import _core
from kilndb.client.endpoint import Endpoint, arrived, check_read_from, leader_to_read_from
from kilndb.client.remote import (
    REPLAY_PAGE,
    _batch,
    _delete_request,
    _each,
    _fence,
    _page,
    _replicas,
    _stores,
    _write_request,
)
from kilndb.codec import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frame
from kilndb.errors import (
    ClosedError,
    ConnectionLostError,
    InvalidArgumentError,
    KilnError,
    ReadOnlyReplicaError,
    error_from_wire,
)
from kilndb.model import Fact, Write, fact_from_dict, facts_from_dicts, validate_store_name

__all__ = ["AsyncRemoteDatabase", "AsyncRemoteStore", "AsyncRemoteSubscription", "connect_async"]


async def _next_message(reader: asyncio.StreamReader, decoder: FrameDecoder) -> dict[str, Any]:
    """The next frame from the server, decoded; ConnectionLostError once it is gone."""
    while (body := decoder.next_frame()) is None:
        data = await reader.read(256 * 1024)
        if not data:
            raise ConnectionLostError("the server closed the connection")
        decoder.feed(data)
    message: dict[str, Any] = _core.loads(body)
    return message


class _Channel:
    """One pipelined connection: requests go out at once, replies come back in order."""

    def __init__(self, url: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.url = url
        self._reader = reader
        self._writer = writer
        self._waiting: deque[asyncio.Future[dict[str, Any]]] = deque()
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)
        self._failure: KilnError | None = None
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                message = await _next_message(self._reader, self._decoder)
                if self._waiting:
                    future = self._waiting.popleft()
                    if not future.done():
                        future.set_result(message)
        except (KilnError, OSError) as exc:
            failure = (
                exc
                if isinstance(exc, KilnError)
                else ConnectionLostError(f"lost connection to {self.url}: {exc}")
            )
            self._failure = failure
            while self._waiting:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(failure)

    async def call(self, op: str, **params: Any) -> dict[str, Any]:
        if self._failure is not None:
            raise self._failure
        try:
            body = orjson.dumps({"op": op, **params})
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise InvalidArgumentError(f"request is not JSON-serialisable: {exc}") from exc
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._writer.write(encode_frame(body))
        reply = await future
        if not reply.get("ok"):
            raise error_from_wire(reply)
        return reply

    async def close(self) -> None:
        if self._failure is None:
            with contextlib.suppress(KilnError):
                await self.call("close")
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class AsyncRemoteStore:
    """A store of a remote database, with coroutine methods."""

    __slots__ = ("_db", "name")

    def __init__(self, db: AsyncRemoteDatabase, name: str) -> None:
        self._db = db
        self.name = name

    async def write(self, key: str, value: Any, **options: Any) -> Fact:
        """As :meth:`kilndb.client.RemoteStore.write` (``fence=``, ``replicas=``)."""
        reply = await self._db._call("write", **_write_request(self.name, key, value, options))
        return fact_from_dict(reply["fact"])

    async def delete(self, key: str, **options: Any) -> Fact:
        reply = await self._db._call("delete", **_delete_request(self.name, key, options))
        return fact_from_dict(reply["fact"])

    async def read(self, key: str, *, as_of: float | None = None) -> Fact | None:
        reply = await self._db._call("read", store=self.name, key=key, as_of=as_of)
        return None if reply["fact"] is None else fact_from_dict(reply["fact"])

    async def history(
        self,
        key: str,
        *,
        since_seq: int = 1,
        until_seq: int | None = None,
        limit: int | None = None,
    ) -> list[Fact]:
        reply = await self._db._call(
            "history",
            store=self.name,
            key=key,
            since_seq=since_seq,
            until_seq=until_seq,
            limit=limit,
        )
        return facts_from_dicts(reply["facts"])

    async def keys(
        self, prefix: str = "", limit: int | None = None, after: str | None = None
    ) -> list[str]:
        reply = await self._db._call(
            "keys", store=self.name, prefix=prefix, limit=limit, after=after
        )
        keys: list[str] = reply["keys"]
        return keys


class AsyncRemoteDatabase:
    """A database on a KilnDB server, for asyncio code. Use :func:`connect_async`."""

    def __init__(
        self,
        endpoint: Endpoint,
        database: str,
        channel: _Channel,
        follow_leader: bool = False,
        cluster_node: str | None = None,
    ) -> None:
        #: Send writes a follower refuses (ReadOnlyReplicaError) on to its leader.
        self.follow_leader = follow_leader
        #: The cluster member this client reached (None: the server is in no cluster).
        self.cluster_node = cluster_node
        self._leader: _Channel | None = None
        self.endpoint = endpoint
        self.url = endpoint.url
        self.name = database
        self._channel = channel
        self._closed = False
        self._stores: dict[str, AsyncRemoteStore] = {}

    async def _call(self, op: str, **params: Any) -> dict[str, Any]:
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")
        try:
            return await self._channel.call(op, **params)
        except ReadOnlyReplicaError as refused:
            if not self.follow_leader or not refused.leader:
                raise
            return await self._leader_call(refused.leader, op, params)

    async def _leader_call(self, leader: str, op: str, params: dict[str, Any]) -> dict[str, Any]:
        """A write a follower refused, sent to its leader (same token and TLS)."""
        channel = self._leader
        if channel is None or channel.url != leader:
            if channel is not None:
                await channel.close()
            endpoint = Endpoint(leader, self.endpoint.token, self.endpoint.ssl_context)
            reader, writer = await endpoint.open_stream()
            channel = self._leader = _Channel(leader, reader, writer)
            hello = endpoint.hello(self.name)
            await channel.call(hello.pop("op"), **hello)
        return await channel.call(op, **params)

    async def cluster(self) -> dict[str, Any] | None:
        """As :meth:`kilndb.client.remote.RemoteDatabase.cluster`."""
        found: dict[str, Any] | None = (await self._call("cluster"))["cluster"]
        return found

    def store(self, name: str) -> AsyncRemoteStore:
        found = self._stores.get(name) if type(name) is str else None
        if found is None:
            found = self._stores.setdefault(name, AsyncRemoteStore(self, validate_store_name(name)))
        return found

    async def write_many(
        self, writes: Iterable[Write], *, fence: Any = None, replicas: int | None = None
    ) -> list[Fact]:
        fenced = _fence({"fence": fence})
        count = _replicas({"replicas": replicas})
        batch = _batch(writes)
        if not batch:
            return []
        reply = await self._call("write_many", writes=batch, fence=fenced, replicas=count)
        return facts_from_dicts(reply["facts"])

    async def write_each(self, writes: Iterable[Write]) -> list[Fact | KilnError]:
        """Independent writes, pipelined; as :meth:`Database.write_each`."""

        async def send(request: dict[str, Any]) -> Fact | KilnError:
            try:
                reply = await self._call(**request)
            except KilnError as exc:
                return exc
            return fact_from_dict(reply["fact"])

        requests = _each(writes)
        sent = [send(r) for r in requests if not isinstance(r, KilnError)]
        replies = iter(await asyncio.gather(*sent))
        return [r if isinstance(r, KilnError) else next(replies) for r in requests]

    async def replay(
        self, after: int = 0, stores: Iterable[str] | None = None, limit: int | None = None
    ) -> AsyncIterator[Fact]:
        chosen = _stores(stores)
        sent = 0
        reply = await self._call("replay", after=after, stores=chosen, limit=_page(limit))
        while True:
            for fact in facts_from_dicts(reply["facts"]):
                yield fact
                sent += 1
                if sent == limit:
                    return
            if len(reply["facts"]) < REPLAY_PAGE:
                return
            remaining = None if limit is None else limit - sent
            reply = await self._call(
                "replay", after=reply["next_after"], stores=chosen, limit=_page(remaining)
            )

    def subscribe(
        self, stores: Iterable[str] | None = None, after: int = 0
    ) -> AsyncRemoteSubscription:
        """Catch-up from ``after``, then live; ``async for fact in sub`` or ``await sub.get()``."""
        if self._closed:
            raise ClosedError(f"connection to {self.url} is closed")
        return AsyncRemoteSubscription(self.endpoint, self.name, _stores(stores), after)

    async def stores(self) -> list[str]:
        names: list[str] = (await self._call("stores"))["stores"]
        return names

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = (await self._call("stats"))["stats"]
        return stats

    async def compact(self) -> dict[str, int]:
        result: dict[str, int] = (await self._call("compact"))["result"]
        return result

    async def set_retention(
        self, store: str, keep: str = "all", max_age: float | None = None
    ) -> None:
        await self._call("set_retention", store=store, keep=keep, max_age=max_age)

    async def retention(self, store: str) -> dict[str, Any]:
        policy: dict[str, Any] = (await self._call("retention", store=store))["retention"]
        return policy

    async def sync(self) -> None:
        await self._call("sync")

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._channel.close()
            if self._leader is not None:
                await self._leader.close()

    async def __aenter__(self) -> AsyncRemoteDatabase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncRemoteSubscription:
    """A changefeed on its own connection, reconnecting and resuming after the last fact
    received, like :class:`kilndb.client.RemoteSubscription`. Opened lazily: the first
    ``get`` or iteration connects (errors such as a compacted cursor are raised there)."""

    RECONNECT_MIN = 0.05
    RECONNECT_MAX = 5.0

    def __init__(
        self, endpoint: Endpoint, database: str, stores: list[str] | None, after: int
    ) -> None:
        self.endpoint = endpoint
        self.url = endpoint.url
        self.position = after
        self.reconnects = 0
        self._database = database
        self._stores = stores
        self._received = after
        self._queue: asyncio.Queue[Fact] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None
        self._closed = False
        self._writer: asyncio.StreamWriter | None = None
        self.error: KilnError | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self.endpoint.open_stream()
        decoder = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)
        for message in (
            self.endpoint.hello(self._database),
            {"op": "subscribe", "stores": self._stores, "after": self._received},
        ):
            writer.write(encode_frame(orjson.dumps(message)))
            reply = await _next_message(reader, decoder)
            if not reply.get("ok"):
                writer.close()
                raise error_from_wire(reply)
        self._decoder = decoder
        self._writer = writer
        return reader, writer

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        delay = self.RECONNECT_MIN
        while not self._closed:
            try:
                message = await _next_message(reader, self._decoder)
                if message.get("event") == "fact_written":
                    fact = fact_from_dict(message["fact"])
                    if fact.position > self._received:
                        self._received = fact.position
                        self._queue.put_nowait(fact)
                elif message.get("ok") is False:
                    self.error = error_from_wire(message)
                    return
            except (ConnectionLostError, OSError):
                writer.close()
                while not self._closed:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.RECONNECT_MAX)
                    try:
                        reader, writer = await self._connect()
                    except ConnectionLostError:
                        continue
                    self.reconnects += 1
                    delay = self.RECONNECT_MIN
                    break
            except KilnError as exc:
                self.error = exc
                return
        writer.close()

    async def _start(self) -> None:
        if self._task is None:
            reader, writer = await self._connect()
            self._task = asyncio.get_running_loop().create_task(self._run(reader, writer))

    async def get(self, timeout: float | None = None) -> Fact | None:
        """The next fact, or None if none arrived within ``timeout`` seconds or it ended."""
        if self._closed:
            return None
        await self._start()
        try:
            fact = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        self.position = fact.position
        return fact

    def __aiter__(self) -> AsyncRemoteSubscription:
        return self

    async def __anext__(self) -> Fact:
        while not self._closed and self.error is None:
            fact = await self.get(timeout=1.0)
            if fact is not None:
                return fact
        raise StopAsyncIteration

    async def close(self) -> None:
        """End the subscription and close its connection."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def __aenter__(self) -> AsyncRemoteSubscription:
        await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect_async(
    url: str,
    database: str = "default",
    *,
    token: str | None = None,
    tls: bool | None = None,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    follow_leader: bool | None = None,
    read_from: str = "any",
) -> AsyncRemoteDatabase:
    """Connect to database ``database`` on the KilnDB server at ``url`` (asyncio); the
    same options as :func:`kilndb.connect`."""
    check_read_from(read_from)
    endpoint = Endpoint.make(
        url, token=token, tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file
    )
    channel, reply = await _open(endpoint, database)
    try:
        leader = leader_to_read_from(endpoint, reply, read_from, follow_leader)
    except BaseException:
        await channel.close()
        raise
    if leader:
        await channel.close()
        endpoint = Endpoint(leader, endpoint.token, endpoint.ssl_context)
        channel, reply = await _open(endpoint, database)
        try:
            arrived(endpoint, reply)
        except BaseException:
            await channel.close()
            raise
    node = reply.get("cluster")
    follow = node is not None if follow_leader is None else follow_leader
    return AsyncRemoteDatabase(endpoint, database, channel, follow, node)


async def _open(endpoint: Endpoint, database: str) -> tuple[_Channel, dict[str, Any]]:
    """A channel to ``endpoint`` that has said hello for ``database``, and the reply."""
    reader, writer = await endpoint.open_stream()
    channel = _Channel(endpoint.url, reader, writer)
    try:
        hello = endpoint.hello(database)
        return channel, await channel.call(hello.pop("op"), **hello)
    except BaseException:
        await channel.close()
        raise

"""An asyncio client for etcd v3, over etcd's JSON gateway (HTTP), as Patroni uses it.

:class:`Etcd` holds the members' client URLs. Each request goes to the member that
answered last; one that cannot be reached, times out or says it cannot answer now (no
leader, stopping) is left for the next, and when none answers the request raises
:class:`~kilndb.errors.CoordinatorUnavailableError`. Requests etcd refuses for what they
ask raise at once: NotFoundError (an unknown lease), InvalidArgumentError, or KilnError.

Retrying on another member is safe for every request but a transaction: a put, delete,
keep-alive or revoke applied twice leaves etcd as applying it once did, and a lease
granted by an attempt whose reply was lost expires unused. A transaction's compares
would be judged again against what its own first attempt wrote (a create-if-absent
would then report that someone else holds the key), so a transaction is sent to another
member only when the first could not be reached at all; when it may have been applied,
it raises CoordinatorUnavailableError saying so, and the caller reads the keys back.

:meth:`Etcd.watch` streams changes under a prefix; it survives a member's failure or
restart by watching again, on the next member that answers, from the revision after the
last event it delivered, so no event is lost or repeated. While the stream is idle it
checks, every ``timeout`` seconds, that the member still answers, so that a member that
went silent (paused, partitioned) is left within about twice ``timeout``. A watch from
a revision that etcd has compacted away raises CursorTooOldError: the watcher reads the
keys again and watches from the revision that read returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from kilndb.coordination import gateway
from kilndb.coordination.gateway import (
    Compare,
    KeyValue,
    Lease,
    TxnOp,
    TxnResult,
    WatchEvent,
)
from kilndb.errors import (
    ClosedError,
    CoordinatorUnavailableError,
    InvalidArgumentError,
    KilnError,
    NotFoundError,
)

__all__ = ["Etcd", "parse_coordinator_url"]

log = logging.getLogger(__name__)

#: Pause between two rounds of a watch over every member, none of which answered.
_WATCH_RETRY_PAUSE = 0.2


class _Unreached(Exception):
    """The request never reached the member (the connection was refused or could not
    be opened): any request may go to the next one."""


class _NoAnswer(Exception):
    """The request may have reached the member, but no usable answer came (timeout,
    connection lost, a member that cannot answer now)."""


def parse_coordinator_url(url: str) -> list[str]:
    """The client URLs of the etcd members named by ``etcd://HOST:PORT[,HOST:PORT…]``
    (an IPv6 host in brackets), as ``http://HOST:PORT`` endpoints for :class:`Etcd`.

    Raises InvalidArgumentError for another scheme, a missing host or port, a port
    outside 1-65535, or a path, query or credentials.
    """
    if not isinstance(url, str) or not url.startswith("etcd://"):
        raise InvalidArgumentError(
            f"a coordinator URL is etcd://HOST:PORT[,HOST:PORT…], not {url!r}"
        )
    rest = url.removeprefix("etcd://")
    if any(mark in rest for mark in "/?#@"):
        raise InvalidArgumentError(
            f"a coordinator URL names members only (etcd://HOST:PORT,…), without a path,"
            f" query or credentials: {url!r}"
        )
    endpoints: list[str] = []
    for member in rest.split(","):
        host, port = _host_port(member, url)
        endpoint = f"http://{host}:{port}"
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    return endpoints


def _host_port(member: str, url: str) -> tuple[str, int]:
    if member.startswith("["):
        host, bracket, tail = member[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            raise InvalidArgumentError(f"member {member!r} of {url!r} is not [IPV6]:PORT")
        host, digits = f"[{host}]", tail[1:]
    else:
        host, colon, digits = member.rpartition(":")
        if not colon or ":" in host:
            raise InvalidArgumentError(f"member {member!r} of {url!r} is not HOST:PORT")
    if host in ("", "[]"):
        raise InvalidArgumentError(f"member {member!r} of {url!r} has no host")
    if not digits.isdigit() or not 1 <= int(digits) <= 65535:
        raise InvalidArgumentError(f"member {member!r} of {url!r} has no port in 1-65535")
    return host, int(digits)


def _checked_endpoints(endpoints: list[str]) -> list[str]:
    if isinstance(endpoints, str) or not endpoints:
        raise InvalidArgumentError("Etcd needs a non-empty list of http://HOST:PORT endpoints")
    checked = []
    for endpoint in endpoints:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise InvalidArgumentError(f"an etcd endpoint is http://HOST:PORT, not {endpoint!r}")
        checked.append(f"{parts.scheme}://{parts.netloc}")
    return checked


class Etcd:
    """A client of the etcd v3 cluster whose members answer at ``endpoints``
    (``http://HOST:PORT``; see :func:`parse_coordinator_url`). ``timeout`` bounds each
    attempt of a request on one member, in seconds. Use inside one event loop; close
    with :meth:`close` (or ``async with``)."""

    def __init__(self, endpoints: list[str], *, timeout: float = 2.0) -> None:
        if not timeout > 0:
            raise InvalidArgumentError("timeout must be a positive number of seconds")
        self.endpoints = _checked_endpoints(endpoints)
        self.timeout = timeout
        self._current = 0
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The member requests go to first: the one that answered last."""
        return self.endpoints[self._current]

    async def __aenter__(self) -> Etcd:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections; watches end with ClosedError, requests raise it."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- keys ----------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        """The key ``key``, or None when it does not exist."""
        reply = await self._call("/v3/kv/range", gateway.range_body(key), f"get {key!r}")
        kvs = gateway.key_values(reply)
        return kvs[0] if kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key that starts with ``prefix``, in key order, and the store's revision
        they were read at (watch from the revision after it to see what follows)."""
        body = gateway.range_body(prefix, prefix=True)
        reply = await self._call("/v3/kv/range", body, f"get prefix {prefix!r}")
        return gateway.key_values(reply), gateway.revision_of(reply)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``value`` at ``key``, bound to lease ``lease`` (0: none, the key stays
        until deleted); the revision of the write. Raises NotFoundError for a lease that
        does not exist (any more)."""
        body = gateway.put_body(key, value, lease)
        return gateway.revision_of(await self._call("/v3/kv/put", body, f"put {key!r}"))

    async def delete(self, key: str) -> int:
        """Delete ``key``; how many keys were deleted (0 or 1). After a retry on another
        member, the count is what the last attempt found."""
        body = gateway.range_body(key)
        reply = await self._call("/v3/kv/deleterange", body, f"delete {key!r}")
        return gateway.integer(reply, "deleted")

    async def txn(
        self, compare: list[Compare], success: list[TxnOp], failure: list[TxnOp]
    ) -> TxnResult:
        """Run ``success`` if every condition of ``compare`` holds, ``failure``
        otherwise, atomically. The result's ``revision`` is the store's revision after
        it: the transaction's own when its branch wrote, the same for every key it
        wrote.

        Raises CoordinatorUnavailableError when no member could be reached, or when the
        transaction was sent but its reply was lost: it may or may not have been applied
        (read the keys back to learn which)."""
        body = gateway.txn_body(compare, success, failure)
        reply = await self._call("/v3/kv/txn", body, "transaction", retry_sent=False)
        return gateway.txn_result(reply)

    # -- leases --------------------------------------------------------------------------

    async def grant(self, ttl: int) -> Lease:
        """A new lease that expires ``ttl`` seconds from now unless kept alive. Etcd
        may grant a longer TTL than asked (its minimum is about 1.5 election timeouts)."""
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise InvalidArgumentError("a lease TTL is a positive number of seconds")
        reply = await self._call("/v3/lease/grant", {"TTL": str(ttl)}, "lease grant")
        if reply.get("error"):
            raise KilnError(f"etcd refused a lease grant: {reply['error']}")
        return Lease(gateway.integer(reply, "ID"), gateway.integer(reply, "TTL"))

    async def keepalive(self, lease_id: int) -> int:
        """Renew lease ``lease_id`` for its full TTL; the TTL it now has, in seconds, or
        0 when the lease is gone (expired or revoked): its keys are deleted."""
        body = {"ID": str(lease_id)}
        reply = await self._call("/v3/lease/keepalive", body, f"keep-alive of lease {lease_id}")
        return max(gateway.integer(reply.get("result", {}), "TTL"), 0)

    async def revoke(self, lease_id: int) -> None:
        """Revoke lease ``lease_id`` and delete every key bound to it. A lease that is
        already gone is not an error."""
        body = {"ID": str(lease_id)}
        with contextlib.suppress(NotFoundError):
            await self._call("/v3/lease/revoke", body, f"revoke of lease {lease_id}")

    async def time_to_live(self, lease_id: int) -> int:
        """The whole seconds lease ``lease_id`` has left (0: less than one), or -1 when
        it is gone."""
        body = {"ID": str(lease_id)}
        reply = await self._call("/v3/lease/timetolive", body, f"TTL of lease {lease_id}")
        return max(gateway.integer(reply, "TTL"), -1)

    # -- watch ---------------------------------------------------------------------------

    async def watch(
        self, prefix: str, start_revision: int = 0, *, reconnect_for: float = 30.0
    ) -> AsyncIterator[WatchEvent]:
        """The changes to keys starting with ``prefix`` from ``start_revision`` on (0:
        from now), in revision order, each once, without end.

        When the member watched fails, the watch resumes on the next member that
        answers, after the last event delivered. Raises CoordinatorUnavailableError when
        no member answered for ``reconnect_for`` seconds, CursorTooOldError when etcd
        has compacted ``start_revision`` (or the revision to resume from) away, and
        ClosedError once the client is closed.
        """
        next_revision = start_revision
        failing_since: float | None = None
        failures: list[str] = []
        while True:
            endpoint = self.endpoints[self._current]
            try:
                async for result in self._watch_stream(endpoint, prefix, next_revision):
                    failing_since, failures = None, []
                    if result.get("canceled"):
                        compact = gateway.integer(result, "compact_revision")
                        if compact:
                            raise gateway.compacted(next_revision, compact, f"watch {prefix!r}")
                        reason = result.get("cancel_reason", "no reason given")
                        raise KilnError(f"etcd cancelled watch {prefix!r}: {reason}")
                    if result.get("created") and next_revision == 0:
                        next_revision = gateway.revision_of(result) + 1
                    for event in gateway.watch_events(result):
                        next_revision = event.revision + 1
                        yield event
            except (_Unreached, _NoAnswer) as exc:
                if self._closed:
                    raise ClosedError("the etcd client is closed") from exc
                log.warning(
                    "etcd watch of %r at %s failed: %s",
                    prefix,
                    endpoint,
                    exc,
                    extra={"endpoint": endpoint, "prefix": prefix, "revision": next_revision},
                )
                failures.append(f"{endpoint}: {exc}")
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= reconnect_for:
                    raise CoordinatorUnavailableError(
                        f"no etcd member answered watch {prefix!r} for {reconnect_for:g} s"
                        f" ({'; '.join(failures[-len(self.endpoints) :])})"
                    ) from exc
                self._current = (self._current + 1) % len(self.endpoints)
                if len(failures) % len(self.endpoints) == 0:
                    await asyncio.sleep(_WATCH_RETRY_PAUSE)

    async def _watch_stream(
        self, endpoint: str, prefix: str, start_revision: int
    ) -> AsyncIterator[dict[str, Any]]:
        """The ``result`` objects of one watch stream on ``endpoint``; raises _Unreached
        or _NoAnswer when the stream cannot be opened, breaks, or the member stops
        answering while the stream is idle."""
        session = self._open_session()
        body = orjson.dumps(gateway.watch_body(prefix, start_revision))
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=None)
        try:
            response = await asyncio.wait_for(
                session.post(endpoint + "/v3/watch", data=body, timeout=timeout), self.timeout
            )
        except aiohttp.ClientConnectorError as exc:
            raise _Unreached(str(exc) or type(exc).__name__) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _NoAnswer(str(exc) or type(exc).__name__) from exc
        async with response:
            if response.status != 200:
                await self._refused(response, f"watch {prefix!r}")
            buffer = b""
            while True:
                try:
                    chunk = await asyncio.wait_for(response.content.readany(), self.timeout)
                except TimeoutError:
                    # Idle: make sure the member still answers (a paused or partitioned
                    # member keeps the stream open but sends nothing).
                    await self._post(endpoint, "/v3/kv/range", _PROBE)
                    continue
                except aiohttp.ClientError as exc:
                    raise _NoAnswer(str(exc) or type(exc).__name__) from exc
                if not chunk:
                    raise _NoAnswer("the member ended the watch stream")
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    message = orjson.loads(line)
                    if "error" in message:
                        raise _NoAnswer(f"watch stream error: {message['error']}")
                    yield message.get("result", {})

    # -- requests ------------------------------------------------------------------------

    def _open_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClosedError("the etcd client is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Content-Type": "application/json"}, raise_for_status=False
            )
        return self._session

    async def _call(
        self, path: str, body: dict[str, Any], what: str, *, retry_sent: bool = True
    ) -> dict[str, Any]:
        """POST ``body`` to ``path`` on each member in turn, from the one that answered
        last, until one answers. With ``retry_sent`` False, a request that may have
        reached a member is not sent to another."""
        failures: list[str] = []
        for step in range(len(self.endpoints)):
            index = (self._current + step) % len(self.endpoints)
            endpoint = self.endpoints[index]
            try:
                reply = await self._post(endpoint, path, body, what)
            except _Unreached as exc:
                failures.append(f"{endpoint}: {exc}")
                continue
            except _NoAnswer as exc:
                if not retry_sent:
                    raise CoordinatorUnavailableError(
                        f"{what} was sent to etcd at {endpoint} but no answer came ({exc}):"
                        " it may or may not have been applied"
                    ) from exc
                failures.append(f"{endpoint}: {exc}")
                continue
            self._current = index
            return reply
        raise CoordinatorUnavailableError(f"no etcd member answered {what}: {'; '.join(failures)}")

    async def _post(
        self, endpoint: str, path: str, body: dict[str, Any], what: str = "probe"
    ) -> dict[str, Any]:
        session = self._open_session()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with session.post(
                endpoint + path, data=orjson.dumps(body), timeout=timeout
            ) as response:
                if response.status != 200:
                    await self._refused(response, what)
                raw = await response.read()
        except aiohttp.ClientConnectorError as exc:
            raise _Unreached(str(exc) or type(exc).__name__) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _NoAnswer(str(exc) or type(exc).__name__) from exc
        try:
            reply: dict[str, Any] = orjson.loads(raw.splitlines()[0] if raw else b"{}")
        except orjson.JSONDecodeError as exc:
            raise _NoAnswer(f"not a JSON answer: {raw[:200]!r}") from exc
        return reply

    @staticmethod
    async def _refused(response: aiohttp.ClientResponse, what: str) -> None:
        """Raise for a reply with an error status: _NoAnswer for a member that cannot
        answer now, the refusal's error otherwise."""
        raw = await response.read()
        try:
            error = orjson.loads(raw)
            code, message = int(error.get("code", -1)), str(error.get("message", raw))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            code, message = -1, raw[:200].decode(errors="replace").strip()
        if code in gateway.RETRYABLE_CODES or response.status in (502, 503, 504):
            raise _NoAnswer(f"HTTP {response.status}: {message}")
        if response.status == 404 and code == -1:
            raise KilnError(
                f"etcd at {response.url} does not serve {response.url.path}: etcd 3.4 or"
                " newer is needed"
            )
        raise gateway.refusal(code, message, what)


#: The cheapest request that a member answers only while it is part of a working
#: cluster: a linearizable count of one key.
_PROBE = {"key": gateway.b64(b"\0"), "count_only": True}

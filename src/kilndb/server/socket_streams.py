"""The stream of one socket connection: a changefeed, a segment-status stream or the log
shipped to a follower, pushed after the connection's replies.

A socket connection carries at most one stream (its session refuses a second). Its
events reach the client through an :class:`~kilndb.server.push.Outbox` and a pusher task
that writes each piece after every reply queued before it; a stream that ends early
(overflow, its database closed) ends the connection with the error, sent after what the
client has not read yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from kilndb.engine import StatusSubscription
from kilndb.errors import KilnError
from kilndb.protocol import Request, ServerConnection
from kilndb.replication.protocol import BACKUP_FLAG
from kilndb.server.fanout import Feed
from kilndb.server.push import Outbox, changefeed, changefeed_start, pump_status
from kilndb.server.replication import FollowerLink
from kilndb.server.services import Services
from kilndb.streams import new_channel

__all__ = ["SocketStream", "StreamHost", "peer_address"]

log = logging.getLogger("kilndb.server")

#: How long a client whose stream ended early has to read the rest and its error before
#: the connection is dropped.
OVERFLOW_GRACE_SECONDS = 10.0


def peer_address(peername: Any) -> str:
    """A socket's peer as people read it: ``HOST:PORT`` (``[V6]:PORT`` for IPv6), the
    path of a Unix socket, ``unix`` for an unnamed one."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(peername, bytes):
        peername = peername.decode(errors="replace")
    return str(peername) if peername else "unix"


class StreamHost(Protocol):
    """What a stream needs of its connection."""

    transport: asyncio.Transport | None
    closing: bool

    @property
    def writable(self) -> bool: ...

    def has_pending(self) -> bool: ...

    def reply_now(self, frame: bytes) -> None: ...

    def failed(self, request: Request, error: KilnError) -> bytes: ...


class SocketStream:
    """The stream of one connection, once ``subscribe``, ``subscribe_status`` or
    ``sync_request`` opened it."""

    def __init__(self, services: Services, host: StreamHost) -> None:
        self.services = services
        self.metrics = services.metrics
        self.host = host
        self.outbox: Outbox | None = None
        #: What feeds the outbox: the hub's feed, a status stream or a follower link.
        self.feed: Feed | None = None
        self.status: StatusSubscription | None = None
        self.link: FollowerLink | None = None
        #: The channel id of a changefeed or status stream (the client's, or a UUID).
        self.channel: str | None = None

    @property
    def live(self) -> bool:
        """A changefeed or status stream that has not ended."""
        return self.outbox is not None and not self.outbox.ended and self.link is None

    def open(self, request: Request) -> bytes:
        """Open the stream: its reply (or error) frame. Raises nothing."""
        services = self.services
        outbox = Outbox(services.loop, services.config.max_subscriber_buffer, self._held)
        if request.op == "sync_request":
            return self._follower(request, outbox)
        params = request.params
        self.channel = new_channel(params["channel"])
        try:
            db = services.databases.get(request.database or "default", create=False)
            if request.op == "subscribe":
                after = changefeed_start(db, params["stores"], params["after"])
                self.feed = changefeed(outbox, params["stores"], after)
                services.fanout.attach(db, self.feed)
                fields: dict[str, Any] = {"position": after}
                details: dict[str, Any] = {"after": after}
            else:
                status = db.space(params["space"]).subscribe_status(
                    params["segment"], params["heartbeat"], channel=self.channel
                )
                self.status = status
                pump = pump_status(status, outbox, services.executor)
                services.tasks.spawn(pump, "kilndb-status")
                fields = {
                    "space": status.space,
                    "segment": status.segment,
                    "heartbeat": status.heartbeat,
                }
                details = {"space": status.space, "segment": status.segment}
        except KilnError as exc:
            return ServerConnection.error(exc, request.request_id)
        self._start(outbox)
        self.metrics.count("subscriptions_total")
        self.metrics.event("subscription_opened", channel_id=self.channel, **details)
        log.debug("%s stream opened", request.op, extra={"channel_id": self.channel, **details})
        # Events are written by the pusher, after this reply (which names the stream by
        # its request_id, as on WebSocket).
        if request.request_id is not None:
            fields["subscription"] = request.request_id
        return ServerConnection.reply(request.request_id, channel_id=self.channel, **fields)

    def _follower(self, request: Request, outbox: Outbox) -> bytes:
        """A follower asks for a database's log: answer shard_info, then ship it."""
        services = self.services
        name = request.database or "default"
        try:
            handshake = services.leader.handshake(request)
            if handshake.db is None:  # the follower must cut its copy or start over first
                return ServerConnection.reply(request.request_id, **handshake.reply)
            transport = self.host.transport
            peer = peer_address(transport.get_extra_info("peername")) if transport else "?"
            link = FollowerLink(
                handshake.db,
                peer,
                handshake.position,
                outbox.offer,
                self._drop_link,
                services.leader.acked,
                outbox.backlog,
                handshake.holds,
                services.leader.fence.learn,
            )
        except KilnError as exc:
            self.metrics.event("replication_refused", database=name, error=str(exc))
            log.warning("replication of %s refused: %s", name, exc)
            return self.host.failed(request, exc)
        link.node = request.params.get("node")
        link.replica = BACKUP_FLAG not in request.params.get("flags", ())
        self.link = link
        services.leader.add(link)
        self._start(outbox)
        # Shipments are written by the pusher, after this reply.
        services.loop.call_soon(link.start)
        return ServerConnection.reply(request.request_id, **handshake.reply)

    def _held(self) -> int:
        transport = self.host.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def _start(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.services.tasks.spawn(self._push(outbox), "kilndb-push")

    async def _push(self, outbox: Outbox) -> None:
        """Write the stream's events out, each after every reply queued before it."""
        host = self.host
        while (data := await outbox.take()) is not None:
            if not host.writable:
                outbox.end()
                return
            if host.has_pending():
                host.reply_now(data)
            else:
                self.metrics.count("bytes_out", len(data))
                assert host.transport is not None
                host.transport.write(data)
        if outbox.error is not None and host.writable:
            self._end(outbox.error)

    def _drop_link(self, reason: str) -> None:
        """Cut a follower's connection (from its shipping thread)."""
        self.metrics.event("follower_dropped", reason=reason)
        transport = self.host.transport
        if transport is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: so is the connection
                self.services.loop.call_soon_threadsafe(transport.abort)

    def _end(self, error: KilnError) -> None:
        """The stream ended early: send ``error`` after what the client has not read and
        close; a client that never reads again is dropped after a grace period instead
        of holding memory."""
        channel = self.channel
        if error.error_code == "subscriber_overflow":
            position = getattr(error, "position", 0)
            self.metrics.event("subscriber_overflow", position=position, channel_id=channel)
        else:
            self.metrics.event("subscription_ended", error=error.message, channel_id=channel)
        log.info("stream ended: %s", error.message, extra={"channel_id": channel})
        host = self.host
        host.closing = True
        host.reply_now(ServerConnection.error(error))
        transport = host.transport
        if transport is not None:
            self.services.loop.call_later(OVERFLOW_GRACE_SECONDS, transport.abort)

    def close(self) -> None:
        """End the stream (the client closed it, or went away, or the server stops)."""
        if self.link is not None:
            self.services.leader.remove(self.link)
        if self.feed is not None:
            self.services.fanout.detach(self.feed)
        if self.status is not None:
            self.status.close()
        if self.outbox is not None:
            self.outbox.end()

    def acknowledged(self, applied: int, durable: int, epoch: int | None = None) -> None:
        """A follower's ``replication_ack`` (``epoch``: the newest it knows)."""
        if self.link is not None:
            self.link.on_ack(applied, durable, epoch)

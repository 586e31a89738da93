"""The streams view over the network: the same Space and Segment API as embedded."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from typing import Any

from orjson import Fragment

from kilndb import _core
from kilndb.client.endpoint import Endpoint
from kilndb.client.pushed import PushedStream
from kilndb.client.transport import Connection, reply_of
from kilndb.engine.writes import prepare_write
from kilndb.leases import check_fence
from kilndb.model import validate_key, validate_store_name
from kilndb.streams import (
    Entry,
    Record,
    check_time,
    clamp_heartbeat,
    clamp_limit,
    entry_from_wire,
    record_to_wire,
    record_write,
)

__all__ = ["RemoteSegment", "RemoteSpace", "RemoteStatusSubscription"]

Call = Callable[..., dict[str, Any]]
#: Sends a read and returns its reply's body undecoded.
CallBody = Callable[..., bytes]


def _entries(reply: dict[str, Any]) -> list[Entry]:
    # In one call into the core: it builds each Entry as entry_from_wire would.
    entries: list[Entry] = _core.entries_from_wire(reply["entries"], Entry, base64.b64decode)
    return entries


class RemoteSegment:
    """A segment of a remote space; the same methods as :class:`kilndb.engine.Segment`."""

    __slots__ = ("_call", "_call_body", "name", "space")

    def __init__(self, call: Call, space: str, name: str, call_body: CallBody) -> None:
        self._call = call
        self._call_body = call_body
        self.space = space
        self.name = validate_key(name)

    def produce(
        self, records: Iterable[Any], expected_seq: int | None = None, *, fence: Any = None
    ) -> list[Entry]:
        fenced = check_fence(fence)
        checked = list(records)
        # The embedded rules, before anything is sent: the core checks the common
        # records and writes their wire form in one call; the rest are checked here.
        wire: Fragment | list[dict[str, Any]] | None = None
        encoded = _core.produce_records(checked, Record)
        if encoded is not None:
            wire = Fragment(encoded)
        else:
            for record in checked:
                write = record_write(self.space, self.name, record)
                prepare_write(write.store, write.key, write.value, metadata=write.metadata)
            wire = [record_to_wire(record) for record in checked]
        if not checked:
            return []
        reply = self._call(
            "produce",
            space=self.space,
            segment=self.name,
            records=wire,
            expected_seq=expected_seq,
            fence=None if fenced is None else {"key": fenced[0], "token": fenced[1]},
        )
        entries: list[Entry] = _core.produced_entries(
            self.space, self.name, checked, reply["produced"], Entry
        )
        return entries

    def consume(
        self,
        min_seq: int = 1,
        max_seq: int | None = None,
        min_ts: float | None = None,
        max_ts: float | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        body = self._call_body(
            "consume",
            space=self.space,
            segment=self.name,
            min_seq=min_seq,
            max_seq=max_seq,
            min_ts=check_time("min_ts", min_ts),
            max_ts=check_time("max_ts", max_ts),
            limit=clamp_limit(limit),
        )
        # A page of JSON payloads is parsed straight into entries; anything else (an
        # error, a bytes payload) is decoded the general way.
        entries: list[Entry] | None = _core.consume_entries(body, Entry)
        return _entries(reply_of(body)) if entries is None else entries

    def peek(self) -> Entry | None:
        wire = self._call("peek", space=self.space, segment=self.name)["entry"]
        return None if wire is None else entry_from_wire(wire)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self._call("segment_status", space=self.space, segment=self.name)[
            "status"
        ]
        return status


class RemoteSpace:
    """A space of a remote database; the same methods as :class:`kilndb.engine.Space`."""

    __slots__ = ("_call", "_call_body", "_open_status", "name")

    def __init__(
        self,
        call: Call,
        name: str,
        open_status: Callable[..., RemoteStatusSubscription],
        call_body: CallBody,
    ) -> None:
        self._call = call
        self._call_body = call_body
        self._open_status = open_status
        self.name = validate_store_name(name)

    def segment(self, name: str) -> RemoteSegment:
        return RemoteSegment(self._call, self.name, name, self._call_body)

    def segments(self) -> list[str]:
        segments: list[str] = self._call("segments", space=self.name)["segments"]
        return segments

    def consume(
        self,
        after: int = 0,
        min_ts: float | None = None,
        max_ts: float | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        reply = self._call(
            "space_consume",
            space=self.name,
            after=after,
            min_ts=check_time("min_ts", min_ts),
            max_ts=check_time("max_ts", max_ts),
            limit=clamp_limit(limit),
        )
        return _entries(reply)

    def subscribe_status(
        self, segment: str = "*", heartbeat: float = 30
    ) -> RemoteStatusSubscription:
        if segment != "*":
            validate_key(segment)
        return self._open_status(self.name, segment, clamp_heartbeat(heartbeat))


class RemoteStatusSubscription(PushedStream[dict[str, Any]]):
    """Segment-status messages on a connection of their own (see the embedded
    :class:`~kilndb.engine.StatusSubscription`). After a lost connection it reconnects
    and starts again with a fresh ``status`` snapshot."""

    def __init__(
        self,
        endpoint: Endpoint,
        database: str,
        space: str,
        segment: str,
        heartbeat: float,
        timeout: float | None,
    ) -> None:
        self.space = space
        self.segment = segment
        self.heartbeat = heartbeat
        super().__init__(endpoint, database, timeout)

    def _subscribe(self, conn: Connection) -> None:
        conn.call(
            "subscribe_status", space=self.space, segment=self.segment, heartbeat=self.heartbeat
        )

    def _accept(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if message.pop("event") != "segment_status":
            return None
        return message

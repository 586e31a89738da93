"""Stream channel ids over TCP, WebSocket and SSE: a client's comes back, else the
server assigns a UUID; it is in the subscribe reply and in the events about the stream."""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from kilndb.client.transport import Connection
from kilndb.server import Server
from kilndb.server.http import CHANNEL_HEADER


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(data=tmp_path / "data", port=0, http_port=0) as running:
        running.databases.get("default")
        yield running


def recent(server: Server) -> list[dict[str, Any]]:
    with urllib.request.urlopen(server.http_url + "/v1/events/recent", timeout=10) as response:
        events: list[dict[str, Any]] = json.loads(response.read())
    return events


def is_uuid(text: object) -> bool:
    return isinstance(text, str) and str(uuid.UUID(text)) == text


def test_tcp_subscriptions_return_their_channel_id(server: Server) -> None:
    for op, params in (("subscribe", {"after": 0}), ("subscribe_status", {"space": "q"})):
        with (
            closing(Connection(server.url, 10)) as named,
            closing(Connection(server.url, 10)) as plain,
        ):
            reply = named.call(op, channel=f"{op}-7", **params)
            assert reply["channel_id"] == f"{op}-7"
            assert is_uuid(plain.call(op, **params)["channel_id"])
    opened = [e for e in recent(server) if e["event"] == "subscription_opened"]
    assert [e["channel_id"] for e in opened][::2] == ["subscribe-7", "subscribe_status-7"]
    closed = [e["channel_id"] for e in recent(server) if e["event"] == "subscription_closed"]
    assert "subscribe-7" in closed


def test_tcp_refuses_a_malformed_channel_id(server: Server) -> None:
    for bad in (7, "x" * 129, "", "a b", ["list"]):
        with closing(Connection(server.url, 10)) as conn:
            reply = conn.call_body("subscribe", channel=bad)
            error = json.loads(reply)
            assert error["ok"] is False and error["error_code"] == "bad_request"
            assert "channel" in error["error"]


def test_websocket_subscriptions_return_their_channel_id(server: Server) -> None:
    async def scenario() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(server.http_url + "/v1/ws") as socket,
        ):
            asks = [
                {"op": "subscribe", "after": 0, "request_id": "a", "channel": "ws-a"},
                {"op": "subscribe_status", "space": "q", "request_id": "b"},
                {"op": "subscribe", "request_id": "c", "channel": {"not": "a string"}},
            ]
            replies = {}
            for ask in asks:
                await socket.send_str(json.dumps(ask))
                reply = json.loads(await asyncio.wait_for(socket.receive_str(), 5))
                replies[reply["request_id"]] = reply
            assert replies["a"]["channel_id"] == "ws-a"
            assert is_uuid(replies["b"]["channel_id"])
            assert replies["c"]["ok"] is False and "channel" in replies["c"]["error"]

    asyncio.run(scenario())
    opened = [e for e in recent(server) if e["event"] == "subscription_opened"]
    assert opened[-2]["channel_id"] == "ws-a" and is_uuid(opened[-1]["channel_id"])


def sse_headers(server: Server, query: str) -> tuple[int, str | None]:
    parts = urlsplit(server.http_url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("GET", "/v1/events" + query)
        response = connection.getresponse()
        status, channel = response.status, response.getheader(CHANNEL_HEADER)
        response.close()
        return status, channel
    finally:
        connection.close()


def test_sse_streams_name_their_channel_in_a_header(server: Server) -> None:
    assert sse_headers(server, "?channel=sse-1") == (200, "sse-1")
    status, assigned = sse_headers(server, "")
    assert status == 200 and is_uuid(assigned)
    assert sse_headers(server, "?channel=" + "x" * 129) == (400, None)
    opened = [e for e in recent(server) if e["event"] == "subscription_opened"]
    assert [e["channel_id"] for e in opened] == ["sse-1", assigned]

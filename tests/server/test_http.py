"""HTTP, SSE and WebSocket against a real server on loopback."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import kilndb
from kilndb.engine import Subscription
from kilndb.server import Server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(data=tmp_path / "data", port=0, http_port=0) as running:
        yield running


def call(server: Server, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.http_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
        error.close()
    text = raw.decode()
    return status, json.loads(text) if text.startswith(("{", "[")) else text


def test_health_ready_status_and_recent_events(server: Server) -> None:
    assert call(server, "GET", "/v1/health")[1]["status"] == "ready"
    assert call(server, "GET", "/v1/ready") == (200, {"status": "ready"})
    status, body = call(server, "GET", "/v1/status")
    assert status == 200 and body["metrics"]["active_connections"] == 0
    status, events = call(server, "GET", "/v1/events/recent")
    assert status == 200 and events[0]["event"] == "server_started"


def test_rest_facts(server: Server) -> None:
    base = "/v1/db/billing/stores/tasks/keys/t1"
    status, fact = call(server, "PUT", base, {"title": "Hello"})
    assert status == 200 and fact["seq"] == 1 and fact["value"] == {"title": "Hello"}
    call(server, "PUT", base, {"title": "Hi"})
    assert call(server, "GET", base)[1]["value"] == {"title": "Hi"}
    assert [f["seq"] for f in call(server, "GET", base + "/history")[1]] == [1, 2]
    assert call(server, "DELETE", base)[1]["deleted"] is True
    status, error = call(server, "GET", base)
    assert status == 404 and error["error_code"] == "not_found"
    assert call(server, "GET", "/v1/db/default/stores/bad%20name/keys/k")[0] == 400


def test_dispatch_takes_op_envelopes(server: Server) -> None:
    status, reply = call(
        server, "POST", "/v1/dispatch", {"op": "write", "store": "s", "key": "k", "value": 1}
    )
    assert status == 200 and reply["ok"] and reply["fact"]["position"] == 1
    assert call(server, "POST", "/v1/dispatch", {"op": "ping", "request_id": 5})[1] == {
        "ok": True,
        "pong": True,
        "request_id": 5,
    }
    status, reply = call(server, "POST", "/v1/dispatch", {"op": "nope"})
    assert status == 400 and reply["error_code"] == "unknown_op"
    status, reply = call(
        server,
        "POST",
        "/v1/dispatch",
        {"op": "write", "store": "s", "key": "k", "value": 2, "expected_seq": 0},
    )
    assert status == 409 and reply["error_code"] == "conflict"


def test_prometheus_metrics_parse(server: Server) -> None:
    call(server, "POST", "/v1/dispatch", {"op": "write", "store": "s", "key": "k", "value": 1})
    for path in ("/metrics", "/v1/metrics"):
        status, text = call(server, "GET", path)
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["kiln_facts_written"].samples[0].value == 1
        assert "kiln_active_connections" in families


class _Sse:
    """One SSE request over its own HTTP connection; close() ends both."""

    def __init__(self, server: Server, headers: dict[str, str], query: str = "") -> None:
        parts = urlsplit(server.http_url)
        self.connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        self.connection.request("GET", "/v1/events" + query, headers=headers)
        self.response = self.connection.getresponse()

    def close(self) -> None:
        self.response.close()
        self.connection.close()


def _sse(server: Server, headers: dict[str, str], query: str = "") -> _Sse:
    return _Sse(server, headers, query)


def _read_events(stream: _Sse, count: int) -> list[tuple[int, dict[str, Any]]]:
    response = stream.response
    events: list[tuple[int, dict[str, Any]]] = []
    event_id, data = 0, ""
    while len(events) < count:
        line = response.readline().decode().rstrip("\n")
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            events.append((event_id, json.loads(data)))
            data = ""
    return events


def test_reads_of_an_unknown_database_are_404_and_create_nothing(server: Server) -> None:
    status, error = call(server, "GET", "/v1/db/typo/stores/tasks/keys/t1")
    assert status == 404 and error["error_code"] == "not_found"
    assert "database 'typo' does not exist" in error["error"]
    stream = _sse(server, {}, "?database=typo")
    try:
        assert stream.response.status == 404
        assert json.loads(stream.response.read())["error_code"] == "not_found"
    finally:
        stream.close()
    assert "typo" not in server.databases.on_disk()
    assert call(server, "PUT", "/v1/db/typo/stores/tasks/keys/t1", 1)[0] == 200  # a write does
    assert "typo" in server.databases.on_disk()


def test_idle_sse_streams_hold_no_worker_and_all_get_the_next_fact(tmp_path: Path) -> None:
    """Twice as many idle SSE streams as worker threads: a REST read is still served at
    once (a stream waiting for facts holds no thread), and a write reaches them all."""
    with Server(data=tmp_path / "data", port=0, http_port=0, workers=4) as server:
        streams = [_sse(server, {}, "?cursor=0") for _ in range(8)]
        try:
            assert all(stream.response.status == 200 for stream in streams)
            time.sleep(0.2)  # every stream is waiting
            status, error = call(server, "GET", "/v1/db/default/stores/s/keys/k")
            assert status == 404 and error["error_code"] == "not_found"
            assert call(server, "PUT", "/v1/db/default/stores/s/keys/k", 1)[0] == 200
            for stream in streams:
                ((position, fact),) = _read_events(stream, 1)
                assert (position, fact["value"]) == (1, 1)
        finally:
            for stream in streams:
                stream.close()


def test_an_sse_stream_that_is_not_read_ends_instead_of_growing(tmp_path: Path) -> None:
    """A reader that stops reading lets at most ``max_subscriber_buffer`` bytes pile up on
    the server; then its stream ends (it resumes with Last-Event-ID), and the server and
    other clients go on."""
    with Server(data=tmp_path / "data", port=0, http_port=0, max_subscriber_buffer=65536) as server:
        stalled = _sse(server, {}, "?cursor=0")
        try:
            assert stalled.response.status == 200
            with kilndb.connect(server.url) as db:
                for start in range(0, 20_000, 1000):  # about 10 MB of events
                    db.write_many(
                        [kilndb.Write("s", f"k{i}", "x" * 300) for i in range(start, start + 1000)]
                    )
                assert db.stats()["last_position"] == 20_000
            received = stalled.response.read()  # ends: the server closed the stream
            assert 0 < received.count(b"event: fact_written") < 20_000
        finally:
            stalled.close()
        assert call(server, "GET", "/v1/ready")[0] == 200


def test_sse_streams_and_resumes_with_last_event_id(server: Server) -> None:
    with kilndb.connect(server.url) as db:
        for i in range(5):
            db.store("tasks" if i % 2 == 0 else "other").write(f"k{i}", i)
    first = _sse(server, {})
    assert first.response.status == 200
    assert first.response.getheader("Content-Type", "").startswith("text/event-stream")
    got = _read_events(first, 3)
    assert [i for i, _ in got] == [1, 2, 3]
    first.close()
    resumed = _sse(server, {"Last-Event-ID": "3"})
    assert [i for i, _ in _read_events(resumed, 2)] == [4, 5]
    resumed.close()
    filtered = _sse(server, {}, "?stores=tasks&cursor=1")
    assert [f["key"] for _, f in _read_events(filtered, 2)] == ["k2", "k4"]
    filtered.close()


def test_sse_refuses_a_compacted_cursor(server: Server) -> None:
    with kilndb.connect(server.url) as db:
        for i in range(4):
            db.store("s").write("k", i)
        db.store("t").write("k", "kept")
        db.set_retention("s", keep="latest")
        db.compact()
    response = _sse(server, {"Last-Event-ID": "1"})
    assert response.response.status == 409
    body = json.loads(response.response.read())
    assert body["error_code"] == "cursor_too_old"
    assert (body["cursor"], body["store"], body["oldest"], body["oldest_available"]) == (
        1,
        "s",
        3,
        4,
    )
    response.close()
    refused = _sse(server, {}, "?stores=t,s&cursor=2")
    assert refused.response.status == 409
    assert json.loads(refused.response.read())["store"] == "s"
    refused.close()
    # Compacting "s" leaves a cursor on "t" alone.
    other = _sse(server, {}, "?stores=t&cursor=1")
    assert other.response.status == 200
    assert [(i, f["value"]) for i, f in _read_events(other, 1)] == [(5, "kept")]
    other.close()


def test_idle_websocket_changefeeds_hold_no_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twice as many idle WebSocket changefeeds as worker threads, each on its own
    connection: no worker ever waits for facts (the changefeeds are feeds of the
    database's one fan-out hub), a write over another WebSocket is answered and reaches
    them all."""
    waits: list[float | None] = []
    real_get_batch = Subscription.get_batch

    def recorded(self: Subscription, limit: int = 256, timeout: float | None = None) -> Any:
        if threading.current_thread().name.startswith("kilndb-op"):  # a worker
            waits.append(timeout)
        return real_get_batch(self, limit, timeout)

    monkeypatch.setattr(Subscription, "get_batch", recorded)

    async def scenario(server: Server) -> None:
        async with aiohttp.ClientSession() as session:
            feeds = [await session.ws_connect(server.http_url + "/v1/ws") for _ in range(8)]
            for n, feed in enumerate(feeds):
                await feed.send_str(json.dumps({"op": "subscribe", "after": 0, "request_id": n}))
                assert json.loads(await feed.receive_str())["ok"] is True
            await asyncio.sleep(0.2)  # every changefeed is waiting
            async with session.ws_connect(server.http_url + "/v1/ws") as writer:
                write = {"op": "write", "store": "s", "key": "k", "value": 7, "request_id": 1}
                await writer.send_str(json.dumps(write))
                reply = json.loads(await asyncio.wait_for(writer.receive_str(), 5))
                assert reply["ok"] is True
            for feed in feeds:
                event = json.loads(await asyncio.wait_for(feed.receive_str(), 5))
                assert event["event"] == "fact_written" and event["fact"]["value"] == 7
                await feed.close()

    with Server(data=tmp_path / "data", port=0, http_port=0, workers=4) as server:
        asyncio.run(scenario(server))
    assert set(waits) <= {0}


def test_websocket_ops_and_subscription(server: Server) -> None:
    async def scenario() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(server.http_url + "/v1/ws") as socket,
        ):
            await socket.send_str(json.dumps({"op": "ping", "request_id": 1}))
            assert json.loads(await socket.receive_str()) == {
                "ok": True,
                "pong": True,
                "request_id": 1,
            }
            subscribe = {"op": "subscribe", "stores": ["s"], "after": 0, "request_id": "feed"}
            await socket.send_str(json.dumps(subscribe))
            reply = json.loads(await socket.receive_str())
            assert reply["ok"] is True and reply["subscription"] == "feed"
            await socket.send_str(
                json.dumps({"op": "write", "store": "s", "key": "k", "value": 1, "request_id": 2})
            )
            messages = [json.loads(await socket.receive_str()) for _ in range(2)]
            kinds = sorted("event" if "event" in m else "reply" for m in messages)
            assert kinds == ["event", "reply"]
            event = next(m for m in messages if "event" in m)
            assert event["subscription"] == "feed" and event["fact"]["value"] == 1
            await socket.send_str(json.dumps({"op": "bogus"}))
            assert json.loads(await socket.receive_str())["error_code"] == "unknown_op"
            await socket.send_str(json.dumps({"op": "subscribe", "stores": ["s"]}))
            unnamed = json.loads(await socket.receive_str())
            assert unnamed["error_code"] == "bad_request"  # a subscription needs a name

    asyncio.run(scenario())


def test_websocket_multiplexes_requests_and_subscriptions(server: Server) -> None:
    async def scenario() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(server.http_url + "/v1/ws") as socket,
        ):
            await socket.send_str(json.dumps({"op": "subscribe", "after": 0, "request_id": "a"}))
            await socket.send_str(
                json.dumps({"op": "subscribe_status", "space": "q", "request_id": "b"})
            )
            for i in range(50):  # all in flight at once; replies matched by request_id
                write = {"op": "write", "store": "q", "key": f"k{i % 5}", "value": i}
                await socket.send_str(json.dumps({**write, "request_id": i}))
            replies: dict[Any, dict[str, Any]] = {}
            events: dict[str, int] = {"a": 0, "b": 0}
            while len(replies) < 52 or events["a"] < 50 or events["b"] < 50:
                message = json.loads(await socket.receive_str(timeout=10))
                if "event" in message:
                    if message["event"] == "fact_written" or message.get("type") == "change":
                        events[message["subscription"]] += 1
                else:
                    assert message["ok"], message
                    replies[message["request_id"]] = message
            assert sorted(k for k in replies if isinstance(k, int)) == list(range(50))
            assert {replies[i]["fact"]["value"] for i in range(50)} == set(range(50))
            await socket.send_str(
                json.dumps({"op": "unsubscribe", "subscription": "a", "request_id": "u"})
            )
            while True:
                message = json.loads(await socket.receive_str(timeout=10))
                if message.get("request_id") == "u":
                    assert message == {"ok": True, "subscription": "a", "request_id": "u"}
                    break
            await socket.send_str(
                json.dumps({"op": "write", "store": "q", "key": "z", "value": 0, "request_id": "w"})
            )
            seen = [json.loads(await socket.receive_str(timeout=10)) for _ in range(2)]
            assert {m.get("subscription") for m in seen if "event" in m} == {"b"}

    asyncio.run(scenario())


def test_websocket_caps_message_size(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0, http_port=0, max_frame_bytes=4096) as server:

        async def scenario() -> None:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(server.http_url + "/v1/ws") as socket,
            ):
                big = {"op": "write", "store": "s", "key": "k", "value": "x" * 10_000}
                await socket.send_str(json.dumps(big))
                error = await socket.receive_json(timeout=10)
                assert error["error_code"] == "frame_too_large" and error["limit"] == 4096
                message = await socket.receive(timeout=10)
                assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert socket.close_code == 1009

        asyncio.run(scenario())


def test_websocket_drops_a_silent_client(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from kilndb.server import websocket

    monkeypatch.setattr(websocket, "PING_SECONDS", 0.1)
    monkeypatch.setattr(websocket, "SILENCE_SECONDS", 0.5)

    async def scenario() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(server.http_url + "/v1/ws", autoping=False) as socket,
        ):
            kinds = []
            while True:  # pings arrive, we never answer: the server gives up
                message = await socket.receive(timeout=10)
                kinds.append(message.type)
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
            assert aiohttp.WSMsgType.PING in kinds

    asyncio.run(scenario())


def test_websocket_answers_ping_with_pong(server: Server) -> None:
    async def scenario() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(server.http_url + "/v1/ws", autoping=False) as socket,
        ):
            await socket.ping(b"are you there")
            message = await socket.receive(timeout=10)
            assert message.type == aiohttp.WSMsgType.PONG
            assert message.data == b"are you there"

    asyncio.run(scenario())


KEY = "/v1/db/default/stores/tasks/keys/t1"


def test_rest_write_options_as_query_parameters(server: Server) -> None:
    query = (
        "?expected_seq=0&id=cmd-1&causation=cmd-0&valid_time=1700000000.5&schema_version=2"
        "&producer=curl&metadata.by=ann&metadata.team=ops"
    )
    status, fact = call(server, "PUT", KEY + query, {"title": "Hello"})
    assert status == 200
    assert (fact["seq"], fact["id"], fact["causation"], fact["valid_time"]) == (
        1,
        "cmd-1",
        "cmd-0",
        1700000000.5,
    )
    assert (fact["schema_version"], fact["producer"]) == (2, "curl")
    assert fact["metadata"] == {"by": "ann", "team": "ops"}
    # The same id again is an idempotent retry: the stored fact comes back.
    assert call(server, "PUT", KEY + "?id=cmd-1", {"title": "Hello"}) == (200, fact)
    status, error = call(server, "PUT", KEY + "?expected_seq=0", {"title": "Again"})
    assert status == 409 and error["error_code"] == "conflict"
    assert (error["store"], error["key"], error["expected"], error["actual"]) == (
        "tasks",
        "t1",
        0,
        1,
    )
    assert call(server, "PUT", KEY + "?expected_seq=1", {"title": "Hi"})[1]["seq"] == 2


def test_rest_delete_options(server: Server) -> None:
    call(server, "PUT", KEY, 1)
    status, error = call(server, "DELETE", KEY + "?expected_seq=7")
    assert status == 409 and (error["expected"], error["actual"]) == (7, 1)
    status, tombstone = call(
        server, "DELETE", KEY + "?expected_seq=1&id=del-1&causation=cmd-9&metadata.why=done"
    )
    assert status == 200 and tombstone["deleted"] is True
    assert (tombstone["seq"], tombstone["id"], tombstone["causation"]) == (2, "del-1", "cmd-9")
    assert tombstone["metadata"] == {"why": "done"}
    assert call(server, "GET", KEY)[0] == 404


def test_rest_read_as_of_and_history_ranges(server: Server) -> None:
    facts = [call(server, "PUT", KEY, i)[1] for i in range(1, 5)]
    first = facts[0]["transaction_time"]
    assert call(server, "GET", KEY + f"?as_of={first!r}")[1]["value"] == 1
    assert call(server, "GET", KEY + f"?as_of={facts[2]['transaction_time']!r}")[1]["value"] == 3
    assert call(server, "GET", KEY + "?as_of=0")[0] == 404  # before the first write

    def seqs(query: str) -> list[int]:
        status, history = call(server, "GET", KEY + "/history" + query)
        assert status == 200, history
        return [f["seq"] for f in history]

    assert seqs("") == [1, 2, 3, 4]
    assert seqs("?since_seq=2") == [2, 3, 4]
    assert seqs("?until_seq=2") == [1, 2]
    assert seqs("?since_seq=2&until_seq=3") == [2, 3]
    assert seqs("?limit=1") == [1]
    assert seqs("?since_seq=3&limit=5") == [3, 4]


@pytest.mark.parametrize(
    ("method", "path", "parameter"),
    [
        ("PUT", KEY + "?expected_seq=abc", "expected_seq"),
        ("PUT", KEY + "?expected_seq=-1", "expected_seq"),
        ("PUT", KEY + "?expected_seq=1.5", "expected_seq"),
        ("PUT", KEY + "?valid_time=tomorrow", "valid_time"),
        ("PUT", KEY + "?valid_time=nan", "valid_time"),
        ("PUT", KEY + "?schema_version=" + "9" * 5000, "schema_version"),
        ("DELETE", KEY + "?expected_seq=x", "expected_seq"),
        ("GET", KEY + "?as_of=soon", "as_of"),
        ("GET", KEY + "/history?since_seq=first", "since_seq"),
        ("GET", KEY + "/history?until_seq=-2", "until_seq"),
        ("GET", KEY + "/history?limit=-1", "limit"),
        ("GET", "/v1/db/default/stores/tasks/keys?limit=many", "limit"),
        ("GET", "/v1/db/default/stores/tasks/keys?limit=0", "limit"),
    ],
)
def test_rest_refuses_a_bad_value_naming_the_parameter(
    server: Server, method: str, path: str, parameter: str
) -> None:
    call(server, "PUT", "/v1/db/default/stores/tasks/keys/other", 0)  # the database exists
    status, error = call(server, method, path, 1 if method == "PUT" else None)
    assert status == 400 and error["error_code"] == "bad_request"
    assert f"'{parameter}'" in error["error"]
    assert call(server, "GET", KEY)[0] == 404  # nothing was written


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/db/default/stores"),
        ("GET", "/v1/db/default/stores/tasks/keys"),
        ("GET", KEY),
        ("PUT", KEY),
        ("DELETE", KEY),
        ("GET", KEY + "/history"),
        ("GET", "/v1/events"),
    ],
)
def test_rest_refuses_unknown_query_parameters(server: Server, method: str, path: str) -> None:
    call(server, "PUT", KEY, 0)
    status, error = call(
        server, method, path + "?foo=1&bar=2&foo=3", 1 if method == "PUT" else None
    )
    assert (status, error["error_code"]) == (400, "bad_request")
    assert error["error"] == "unknown query parameter(s): foo, bar"
    assert call(server, "GET", KEY + "/history")[1][-1]["seq"] == 1  # nothing written


def test_rest_refuses_metadata_where_it_means_nothing_and_repeats(server: Server) -> None:
    call(server, "PUT", KEY, 0)
    status, error = call(server, "GET", KEY + "?metadata.by=ann")
    assert status == 400 and error["error"] == "unknown query parameter(s): metadata.by"
    status, error = call(server, "PUT", KEY + "?metadata.=x", 1)
    assert status == 400 and error["error"] == "unknown query parameter(s): metadata."
    status, error = call(server, "PUT", KEY + "?expected_seq=1&expected_seq=2", 1)
    assert status == 400 and "'expected_seq' given more than once" in error["error"]


def test_rest_lists_stores_and_pages_through_keys(server: Server) -> None:
    names = [f"k{i:02}" for i in range(23)]
    for name in reversed(names):
        call(server, "PUT", f"/v1/db/default/stores/tasks/keys/{name}", name)
    call(server, "DELETE", "/v1/db/default/stores/tasks/keys/k05")
    call(server, "PUT", "/v1/db/default/stores/notes/keys/n", 0)
    assert call(server, "GET", "/v1/db/default/stores") == (200, {"stores": ["notes", "tasks"]})
    live = [name for name in names if name != "k05"]

    def pages(query: str) -> list[list[str]]:
        found, after = [], None
        while True:
            cursor = "" if after is None else f"&after={after}"
            status, page = call(server, "GET", f"/v1/db/default/stores/tasks/keys?{query}{cursor}")
            assert status == 200, page
            found.append(page["keys"])
            after = page["next"]
            if after is None:
                return found
            assert after == page["keys"][-1]

    assert pages("limit=5") == [live[i : i + 5] for i in range(0, 22, 5)]
    assert pages("limit=11") == [live[:11], live[11:]]  # no empty page after a full one
    assert pages("limit=5&prefix=k1") == [live[9:14], live[14:19]]
    assert pages("") == [live]  # one page of up to 1000
    assert call(server, "GET", "/v1/db/default/stores/empty/keys") == (
        200,
        {"keys": [], "next": None},
    )


def test_rest_keys_default_page(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from kilndb.server import http

    monkeypatch.setattr(http, "KEYS_PAGE", 2)
    for name in ("a", "b", "c"):
        call(server, "PUT", f"/v1/db/default/stores/s/keys/{name}", 0)
    assert call(server, "GET", "/v1/db/default/stores/s/keys")[1] == {
        "keys": ["a", "b"],
        "next": "b",
    }
    assert call(server, "GET", "/v1/db/default/stores/s/keys?after=b")[1] == {
        "keys": ["c"],
        "next": None,
    }


def test_rest_listing_an_unknown_database_is_404_and_creates_nothing(server: Server) -> None:
    for path in (
        "/v1/db/typo/stores",
        "/v1/db/typo/stores/s/keys",
        "/v1/db/typo/stores/s/keys/k/history",
    ):
        status, error = call(server, "GET", path)
        assert status == 404 and error["error_code"] == "not_found"
    assert "typo" not in server.databases.on_disk()


_CURL = re.compile(
    r"^curl -s (?:-X (?P<method>[A-Z]+) )?'http://127\.0\.0\.1:7300(?P<path>/v1/db/[^']*)'"
    r"(?: -d '(?P<body>[^']*)')?\s+# (?P<status>\d{3})$"
)
_DOCS = Path(__file__).parents[2]


@pytest.mark.parametrize("document", ["README.md", "docs/api.md"])
def test_every_rest_curl_example_in_the_docs_runs(tmp_path: Path, document: str) -> None:
    lines = (_DOCS / document).read_text().splitlines()
    examples = [line for line in lines if line.startswith("curl ") and "/v1/db/" in line]
    assert examples
    with Server(data=tmp_path / "data", port=0, http_port=0) as running:
        for line in examples:
            match = _CURL.match(line)
            assert match, f"not in the tested form: {line}"
            body = match["body"]
            got = call(running, match["method"] or "GET", match["path"], body and json.loads(body))
            assert got[0] == int(match["status"]), (line, got)


def test_the_rest_docs_name_every_query_parameter() -> None:
    from kilndb.protocol.ops import OPS

    text = (_DOCS / "docs/api.md").read_text()
    section = text[text.index("## HTTP REST") :]
    for op in OPS.values():
        if op.query is None:
            continue
        row = next(line for line in section.splitlines() if f"| `{op.name}` |" in line)
        for name in op.query:
            assert f"`{name.removesuffix('*')}" in row, (op.name, name)
    for name in ("cursor", "stores", "database"):
        assert f"`{name}`" in section

"""Fan-out across servers: several servers follow one leader, and a changefeed subscriber
on any of them — TCP, WebSocket or SSE — sees every fact, in order, without gaps, through
a follower's reconnection. /metrics of a follower counts the reconnection."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

import kilndb
from kilndb.server import Server
from tests.replication.test_follower import _eventually, _free_port
from tests.replication.test_follower import _write as write
from tests.replication.test_processes import _last

#: What a subscriber saw: (position, fact id), in the order it saw them.
Seen = list[tuple[int, str]]


def _tcp(server: Server, seen: Seen, count: int) -> None:
    with kilndb.connect(server.url) as db, db.subscribe(after=0) as feed:
        for fact in feed:
            seen.append((fact.position, fact.id))
            if len(seen) >= count:
                return


def _sse(server: Server, seen: Seen, count: int) -> None:
    parts = urlsplit(server.http_url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request("GET", "/v1/events?cursor=0")
        response = connection.getresponse()
        assert response.status == 200
        event_id = None
        while len(seen) < count:
            line = response.readline().decode().rstrip("\n")
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                fact = json.loads(line[6:])
                assert fact["position"] == event_id
                seen.append((fact["position"], fact["id"]))
    finally:
        connection.close()


def _websocket(server: Server, seen: Seen, count: int) -> None:
    async def follow() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(server.http_url + "/v1/ws") as socket,
        ):
            await socket.send_str(json.dumps({"op": "subscribe", "after": 0, "request_id": "f"}))
            assert json.loads(await socket.receive_str(timeout=30))["ok"] is True
            while len(seen) < count:
                event = json.loads(await socket.receive_str(timeout=30))
                seen.append((event["fact"]["position"], event["fact"]["id"]))

    asyncio.run(follow())


def _metrics(server: Server) -> dict[str, dict[str, float]]:
    """``{family: {database label: value}}`` of the labelled families of /metrics."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        family.name: {sample.labels["database"]: sample.value for sample in family.samples}
        for family in text_string_to_metric_families(text)
        if family.name in ("kiln_replication_reconnects", "kiln_replication_max_position_seen")
    }


def _write(url: str, start: int, n: int) -> int:
    """:func:`tests.replication.test_follower._write`; the leader's last position."""
    write(url, start, n)
    return _last(url)


def test_subscribers_on_every_follower_see_every_fact_in_order_through_a_reconnect(
    tmp_path: Path,
) -> None:
    port = _free_port()
    leader = Server(data=tmp_path / "leader", port=port).start()
    followers: list[Server] = []
    try:
        first = _write(leader.url, 0, 5)
        for n in range(2):
            followers.append(
                Server(
                    data=tmp_path / f"follower{n}",
                    port=0,
                    http_port=0,
                    replica_of=f"127.0.0.1:{port}",
                    replicate=("default",),
                    replication_backoff=(0.05, 0.3),
                ).start()
            )
        for follower in followers:  # each has a copy to subscribe to

            def copied(follower: Server = follower) -> bool:
                (state,) = follower.status()["replication"]["following"]
                return bool(state["position"] >= first)

            _eventually(copied)

        # Three rounds of writes: before, while and after the followers reconnect.
        total = _count_of_writes(0, 5) + _count_of_writes(5, 40) + _count_of_writes(45, 40)
        seen: dict[str, Seen] = {}
        threads = []
        for n, follower in enumerate(followers):
            for name, subscriber in (("tcp", _tcp), ("sse", _sse), ("ws", _websocket)):
                key = f"{name}@follower{n}"
                seen[key] = []
                thread = threading.Thread(
                    target=subscriber, args=(follower, seen[key], total), daemon=True
                )
                thread.start()
                threads.append(thread)

        _write(leader.url, 5, 40)
        leader.stop()  # every follower's stream breaks; subscribers stay connected
        for follower in followers:

            def retried(follower: Server = follower) -> bool:
                (state,) = follower.status()["replication"]["following"]
                return bool(state["reconnects"] >= 1)

            _eventually(retried)
        leader = Server(data=tmp_path / "leader", port=port).start()
        last = _write(leader.url, 45, 40)
        assert last == total

        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()
        with kilndb.connect(leader.url) as db:
            expected = [(fact.position, fact.id) for fact in db.replay()]
        assert [p for p, _ in expected] == list(range(1, total + 1))
        for key, facts in seen.items():
            assert facts == expected, key

        for follower in followers:  # the reconnection is counted on /metrics
            metrics = _metrics(follower)
            assert metrics["kiln_replication_reconnects"]["default"] >= 1
            assert metrics["kiln_replication_max_position_seen"]["default"] == total
    finally:
        for follower in followers:
            follower.stop()
        leader.stop()


def _count_of_writes(start: int, n: int) -> int:
    """The facts ``_write(url, start, n)`` commits (every tenth write a batch of four)."""
    return sum(4 if i % 10 == 0 else 1 for i in range(start, start + n))

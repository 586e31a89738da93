"""Background work has an owner: streams of every kind hold no thread while idle, and a
stopping server leaves no task or thread of its own behind."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import aiohttp
import orjson

import kilndb
from kilndb.server import Server
from tests.server.test_sockets import RawClient, tcp_address

#: Streams of each kind opened at once: several times the worker pool below.
STREAMS = 24


def server_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("kilndb")}


async def websocket_streams(server: Server, ready: asyncio.Event, done: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(server.http_url + "/v1/ws") for _ in range(STREAMS)]
        for n, ws in enumerate(sockets):
            op = {"op": "subscribe_status", "space": "jobs", "request_id": n}
            if n % 2:
                op = {"op": "subscribe", "stores": ["quiet"], "request_id": n}
            await ws.send_str(orjson.dumps(op).decode())
            reply = orjson.loads(await ws.receive_str())
            assert reply["ok"] is True and reply["subscription"] == n, reply
        ready.set()
        await done.wait()
        for ws in sockets:
            await ws.close()


def test_idle_streams_of_every_kind_hold_no_thread(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0, http_port=0, workers=4) as server:
        with kilndb.connect(server.url) as db:
            db.space("jobs").segment("a").produce([kilndb.Record({"n": 1})])
        before = server_threads()
        sockets = []
        for n in range(STREAMS):  # status streams and changefeeds over TCP
            client = RawClient(tcp_address(server))
            op = {"op": "subscribe_status", "space": "jobs", "heartbeat": 30}
            client.send(op if n % 2 else {"op": "subscribe", "stores": ["quiet"]})
            assert (client.receive() or {}).get("ok") is True
            sockets.append(client)

        loop = asyncio.new_event_loop()
        ready, done = asyncio.Event(), asyncio.Event()
        runner = threading.Thread(
            target=loop.run_until_complete, args=(websocket_streams(server, ready, done),)
        )
        runner.start()
        try:
            assert (
                asyncio.run_coroutine_threadsafe(asyncio.wait_for(ready.wait(), 30), loop).result(
                    35
                )
                is True
            )
            # 96 idle streams: no thread each. What may run besides the ones before: the
            # fan-out hub of the database and the pool's workers (4 at most).
            grown = server_threads() - before
            assert len(grown) <= 1 + 4, grown
            assert server.status()["metrics"]["background_tasks"] >= 2 * STREAMS
            # And the pool is free: a write and a replay are answered meanwhile.
            with kilndb.connect(server.url) as db:
                db.store("busy").write("k", 1)
                assert [f.key for f in db.replay(stores=["busy"])] == ["k"]
        finally:
            loop.call_soon_threadsafe(done.set)
            runner.join(30)
            loop.close()
            for client in sockets:
                client.close()
    assert not {name for name in server_threads() if "fanout" in name or "status" in name}

"""The asyncio client in its own event loop: concurrent callers and server restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import kilndb
from tests.client.test_reconnect import Restartable


def test_a_restart_seen_while_the_loop_was_busy_still_sends_a_plain_write_once(
    tmp_path: Path,
) -> None:
    server = Restartable(tmp_path / "data")

    async def scenario() -> None:
        async with await kilndb.connect_async(server.url) as db:
            tasks = db.store("tasks")
            await tasks.write("t", 1)
            server.restart()  # blocks the loop: the client has not seen the old socket close
            # The idle connection is found dead before the write is sent, so the write,
            # without an id, goes on the new connection instead of being lost.
            assert (await tasks.write("t", 2)).seq == 2
            assert db.reconnects == 1

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_concurrent_callers_share_one_reconnection(tmp_path: Path) -> None:
    server = Restartable(tmp_path / "data")

    async def scenario() -> None:
        async with await kilndb.connect_async(server.url) as db:
            await db.write_many([kilndb.Write("s", f"k{i}", i) for i in range(50)])
            server.restart()
            facts = await asyncio.gather(*(db.store("s").read(f"k{i}") for i in range(50)))
            assert [f.value for f in facts if f is not None] == list(range(50))
            assert db.reconnects == 1
            written = await asyncio.gather(
                *(db.store("s").write(f"n{i}", i, id=f"n-{i}") for i in range(50))
            )
            assert sorted(f.value for f in written) == list(range(50))

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_awaiting_a_subscription_raises_what_the_server_refuses(tmp_path: Path) -> None:
    server = Restartable(tmp_path / "data")

    async def scenario() -> None:
        async with await kilndb.connect_async(server.url) as db:
            await db.set_retention("s", keep="latest")
            for i in range(3):
                await db.store("s").write("k", i)
            await db.compact()
            subscription = db.subscribe(stores=["s"], after=1)
            try:
                await subscription
            except kilndb.CursorTooOldError:
                pass
            else:
                raise AssertionError("a compacted cursor was accepted")
            async with db.subscribe(stores=["s"]) as sub:
                (fact,) = await sub.get_batch(10, timeout=5)
                assert fact.value == 2 and sub.covered == sub.position == fact.position

    try:
        asyncio.run(scenario())
    finally:
        server.stop()

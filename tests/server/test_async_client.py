"""kilndb.connect_async: the same names as coroutines, with pipelined concurrent callers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import kilndb
from kilndb.server import Server


def test_concurrent_callers_share_one_pipelined_connection(tmp_path: Path) -> None:
    async def scenario(url: str) -> None:
        async with await kilndb.connect_async(url) as db:
            tasks = db.store("tasks")
            facts = await asyncio.gather(*(tasks.write(f"t{i}", {"n": i}) for i in range(200)))
            assert sorted(f.position for f in facts) == list(range(1, 201))
            assert (await tasks.read("t7")) is not None
            assert [f.seq for f in await tasks.history("t7")] == [1]
            batch = await db.write_many([kilndb.Write("tasks", "t7", 2), kilndb.Write("x", "y", 1)])
            assert [f.seq for f in batch] == [2, 1]
            assert await db.stores() == ["tasks", "x"]
            assert len([f async for f in db.replay(after=100)]) == 102
            assert (await db.stats())["last_position"] == 202
            with pytest.raises(kilndb.ConflictError):
                await tasks.write("t7", 3, expected_seq=0)
            with pytest.raises(kilndb.InvalidArgumentError):
                await tasks.write("", 1)
            assert (await tasks.delete("t7")).deleted
            assert await tasks.keys(prefix="t1", limit=2) == ["t1", "t10"]
            assert await tasks.keys(prefix="t1", limit=2, after="t10") == ["t100", "t101"]

    with Server(data=tmp_path / "data", port=0) as server:
        asyncio.run(scenario(server.url))
        assert server.status()["metrics"]["accepted_connections_total"] == 1


def test_async_subscription_catches_up_then_follows(tmp_path: Path) -> None:
    async def scenario(url: str) -> list[int]:
        async with await kilndb.connect_async(url) as db:
            for i in range(3):
                await db.store("s").write(f"k{i}", i)
            positions = []
            async with db.subscribe(after=1) as sub:
                positions.append((await sub.get(timeout=5)).position)  # type: ignore[union-attr]
                positions.append((await sub.get(timeout=5)).position)  # type: ignore[union-attr]
                await db.store("s").write("live", 1)
                positions.append((await sub.get(timeout=5)).position)  # type: ignore[union-attr]
                assert await sub.get(timeout=0.05) is None
            return positions

    with Server(data=tmp_path / "data", port=0) as server:
        assert asyncio.run(scenario(server.url)) == [2, 3, 4]


def test_connect_async_to_nothing_is_connection_lost() -> None:
    with pytest.raises(kilndb.ConnectionLostError):
        asyncio.run(kilndb.connect_async("tcp://127.0.0.1:9"))

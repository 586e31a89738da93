"""The etcd client against a real etcd: keys, transactions, leases and watches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
import pytest

import kilndb
from kilndb.coordination import (
    Compare,
    DeleteOp,
    DeleteResult,
    Etcd,
    GetOp,
    PutOp,
    PutResult,
    RangeResult,
    WatchEvent,
)
from tests.fixtures.etcd import EtcdProcess

T = TypeVar("T")


def run(scenario: Coroutine[Any, Any, T]) -> T:
    """Run ``scenario`` to its end, failing instead of hanging past a minute."""
    return asyncio.run(asyncio.wait_for(scenario, 60))


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Wait until ``check()`` holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


async def collect(events: Any, count: int) -> list[WatchEvent]:
    got: list[WatchEvent] = []
    async for event in events:
        got.append(event)
        if len(got) == count:
            break
    return got


def test_put_get_delete_and_prefix(etcd: EtcdProcess) -> None:
    async def scenario() -> None:
        async with Etcd(etcd.endpoints) as client:
            assert await client.get("kiln/db/a") is None
            first = await client.put("kiln/db/a", b"one")
            second = await client.put("kiln/db/b", b"two")
            await client.put("kiln/dbx", b"outside")
            assert second == first + 1
            kv = await client.get("kiln/db/a")
            assert kv is not None
            assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
                "kiln/db/a",
                b"one",
                first,
                first,
                1,
            )
            third = await client.put("kiln/db/a", b"uno")
            kv = await client.get("kiln/db/a")
            assert kv is not None and (kv.value, kv.version, kv.mod_revision) == (b"uno", 2, third)
            kvs, revision = await client.get_prefix("kiln/db/")
            assert [(kv.key, kv.value) for kv in kvs] == [
                ("kiln/db/a", b"uno"),
                ("kiln/db/b", b"two"),
            ]
            assert revision == third
            assert await client.delete("kiln/db/a") == 1
            assert await client.delete("kiln/db/a") == 0
            assert await client.get("kiln/db/a") is None
            kvs, _ = await client.get_prefix("kiln/db/")
            assert [kv.key for kv in kvs] == ["kiln/db/b"]

    run(scenario())


def test_create_if_absent_succeeds_once(etcd: EtcdProcess) -> None:
    async def take(client: Etcd, name: bytes) -> tuple[bool, int, bytes]:
        result = await client.txn(
            [Compare("kiln/leader/db", "create_revision", "=", 0)],
            [PutOp("kiln/leader/db", name)],
            [GetOp("kiln/leader/db")],
        )
        if result.succeeded:
            (put,) = result.responses
            assert put == PutResult(result.revision)
            return True, result.revision, name
        (read,) = result.responses
        assert isinstance(read, RangeResult)
        (holder,) = read.kvs
        return False, holder.create_revision, holder.value

    async def scenario() -> None:
        async with Etcd(etcd.endpoints) as one, Etcd(etcd.endpoints) as two:
            first = await take(one, b"n1")
            second = await take(two, b"n2")
            assert first[0] and not second[0]
            # The loser learns who holds the key, and the epoch it was taken at.
            assert second[1:] == first[1:] == (first[1], b"n1")

    run(scenario())


def test_transactions_compare_every_target(etcd: EtcdProcess) -> None:
    async def scenario() -> None:
        async with Etcd(etcd.endpoints) as client:
            lease = await client.grant(30)
            revision = await client.put("k", b"v", lease=lease.id)
            holds = [
                Compare("k", "value", "=", b"v"),
                Compare("k", "value", "!=", b"w"),
                Compare("k", "version", "=", 1),
                Compare("k", "create_revision", "=", revision),
                Compare("k", "mod_revision", "<", revision + 1),
                Compare("k", "mod_revision", ">", revision - 1),
                Compare("k", "lease", "=", lease.id),
            ]
            result = await client.txn(holds, [DeleteOp("k"), GetOp("k")], [])
            assert result.succeeded
            assert result.responses == [DeleteResult(1, result.revision), RangeResult([])]
            assert result.revision == revision + 1
            for wrong in [
                Compare("k", "version", ">", 0),
                Compare("k", "value", "=", b"v"),
                Compare("missing", "create_revision", "!=", 0),
            ]:
                failed = await client.txn([wrong], [PutOp("k", b"x")], [])
                assert not failed.succeeded and failed.responses == []
            assert await client.get("k") is None

    run(scenario())


def test_a_lease_key_expires_without_keepalive_and_stays_with_it(etcd: EtcdProcess) -> None:
    async def scenario() -> None:
        async with Etcd(etcd.endpoints) as client:
            kept, dropped = await client.grant(1), await client.grant(1)
            assert kept.id != dropped.id and kept.ttl >= 1
            await client.put("kept", b"1", lease=kept.id)
            await client.put("dropped", b"1", lease=dropped.id)
            kv = await client.get("kept")
            assert kv is not None and kv.lease == kept.id

            async def dropped_is_gone() -> bool:
                assert await client.keepalive(kept.id) >= 1
                return await client.get("dropped") is None

            await until(dropped_is_gone)
            assert await client.keepalive(dropped.id) == 0
            assert await client.time_to_live(dropped.id) == -1
            # Kept alive past three of its TTLs, the other key is still there.
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                assert await client.keepalive(kept.id) >= 1
                assert await client.get("kept") is not None
                await asyncio.sleep(0.2)
            assert 0 <= await client.time_to_live(kept.id) <= kept.ttl

    run(scenario())


def test_revoke_deletes_the_lease_keys(etcd: EtcdProcess) -> None:
    async def scenario() -> None:
        async with Etcd(etcd.endpoints) as client:
            lease = await client.grant(60)
            await client.put("a", b"1", lease=lease.id)
            await client.put("b", b"2", lease=lease.id)
            assert 50 < await client.time_to_live(lease.id) <= lease.ttl
            await client.revoke(lease.id)
            assert await client.time_to_live(lease.id) == -1
            assert await client.get("a") is None and await client.get("b") is None
            assert await client.keepalive(lease.id) == 0
            await client.revoke(lease.id)  # already gone: not an error
            with pytest.raises(kilndb.NotFoundError, match="lease not found"):
                await client.put("c", b"3", lease=lease.id)

    run(scenario())


def test_watch_sees_puts_and_deletes_in_order(etcd: EtcdProcess) -> None:
    async def scenario() -> None:
        async with Etcd(etcd.endpoints) as client:
            before = await client.put("w/early", b"0")
            watcher = asyncio.create_task(collect(client.watch("w/", before + 1), 4))
            revisions = [
                await client.put("w/a", b"1"),
                await client.put("elsewhere", b"x"),
                await client.put("w/a", b"2"),
                await client.delete("w/a"),
            ]
            result = await client.txn([], [PutOp("w/b", b"3")], [])
            events = await watcher
            assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
                ("PUT", "w/a", b"1"),
                ("PUT", "w/a", b"2"),
                ("DELETE", "w/a", b""),
                ("PUT", "w/b", b"3"),
            ]
            assert [e.revision for e in events[:2]] == [revisions[0], revisions[2]]
            assert events[3].revision == result.revision
            assert events[1].kv.version == 2

    run(scenario())


def test_a_watch_from_now_skips_the_past(etcd: EtcdProcess) -> None:
    async def scenario() -> None:
        async with Etcd(etcd.endpoints) as client:
            await client.put("n/old", b"0")
            events = client.watch("n/")
            watcher = asyncio.create_task(collect(events, 1))
            await asyncio.sleep(0.3)  # let the watch start before the write below
            revision = await client.put("n/new", b"1")
            (event,) = await watcher
            assert (event.kv.key, event.revision) == ("n/new", revision)

    run(scenario())


def test_a_watch_from_a_compacted_revision_raises(etcd: EtcdProcess) -> None:
    async def scenario() -> None:
        async with Etcd(etcd.endpoints) as client:
            for value in range(5):
                last = await client.put("c/k", str(value).encode())
            async with aiohttp.ClientSession() as session:
                compact = {"revision": str(last)}
                async with session.post(etcd.endpoint + "/v3/kv/compaction", json=compact) as reply:
                    assert reply.status == 200
            with pytest.raises(kilndb.CursorTooOldError, match="compacted") as caught:
                await collect(client.watch("c/", 2), 1)
            assert caught.value.oldest_available == last
            (event,) = await collect(client.watch("c/", last), 1)
            assert event.revision == last

    run(scenario())


def test_a_closed_client_refuses_requests(etcd: EtcdProcess) -> None:
    async def scenario() -> None:
        client = Etcd(etcd.endpoints)
        await client.put("k", b"v")
        await client.close()
        with pytest.raises(kilndb.ClosedError):
            await client.get("k")

    run(scenario())


def test_bad_arguments_are_refused_before_sending() -> None:
    with pytest.raises(kilndb.InvalidArgumentError):
        Etcd([])
    with pytest.raises(kilndb.InvalidArgumentError):
        Etcd(["127.0.0.1:2379"])
    with pytest.raises(kilndb.InvalidArgumentError):
        Etcd(["http://127.0.0.1:2379"], timeout=0)

    async def scenario() -> None:
        async with Etcd(["http://127.0.0.1:9"]) as client:
            with pytest.raises(kilndb.InvalidArgumentError):
                await client.grant(0)

    run(scenario())

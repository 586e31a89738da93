"""The etcd client when etcd fails: members down, restarted, paused, cut off or silent
behind the fault-injecting proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

import kilndb
from kilndb.coordination import Compare, Etcd, PutOp, WatchEvent
from tests.coordination.test_etcd import collect, run, until
from tests.fixtures.etcd import EtcdProcess, free_port
from tests.fixtures.faultproxy import FaultProxy


@pytest.fixture
def proxy(etcd: EtcdProcess) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", etcd.client_port)) as running:
        yield running


def test_requests_go_on_to_the_member_that_answers(etcd: EtcdProcess) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> None:
        async with Etcd([dead, etcd.endpoint], timeout=5) as client:
            revision = await client.put("k", b"v")
            assert client.endpoint == etcd.endpoint
            kv = await client.get("k")
            assert kv is not None and kv.mod_revision == revision
            result = await client.txn([Compare("k", "value", "=", b"v")], [], [])
            assert result.succeeded
            (event,) = await collect(client.watch("k", revision), 1)
            assert event.revision == revision

    run(scenario())


def test_no_member_answering_raises_coordinator_unavailable(etcd: EtcdProcess) -> None:
    async def scenario() -> None:
        async with Etcd([*etcd.endpoints, f"http://127.0.0.1:{free_port()}"]) as client:
            await client.put("k", b"v")
            etcd.stop()
            with pytest.raises(kilndb.CoordinatorUnavailableError) as caught:
                await client.get("k")
            assert caught.value.error_code == "coordinator_unavailable"
            assert isinstance(caught.value, kilndb.UnavailableError)
            assert etcd.endpoint in str(caught.value)
            with pytest.raises(kilndb.CoordinatorUnavailableError):
                await client.txn([], [PutOp("k", b"w")], [])
            with pytest.raises(kilndb.CoordinatorUnavailableError, match="no etcd member"):
                await collect(client.watch("k", reconnect_for=0.5), 1)
            etcd.start()
            kv = await client.get("k")
            assert kv is not None and kv.value == b"v"

    run(scenario())


def test_a_watch_resumes_after_a_restart_without_losing_an_event(etcd: EtcdProcess) -> None:
    async def scenario() -> None:
        async with Etcd(etcd.endpoints) as writer, Etcd(etcd.endpoints) as reader:
            seen: list[WatchEvent] = []

            async def watch() -> None:
                async for event in reader.watch("r/", 1):
                    seen.append(event)
                    if len(seen) == 8:
                        return

            watcher = asyncio.create_task(watch())
            for n in range(4):
                await writer.put(f"r/{n}", b"before")

            async def seen_four() -> bool:
                return len(seen) == 4

            await until(seen_four)
            etcd.kill()
            await asyncio.to_thread(etcd.start)
            # Written while the watch reconnects: it must still see each once.
            for n in range(4):
                await writer.put(f"r/{n}", b"after")
            await watcher
            assert [(e.kv.key, e.kv.value) for e in seen] == [
                (f"r/{n}", value) for value in (b"before", b"after") for n in range(4)
            ]
            revisions = [e.revision for e in seen]
            assert revisions == sorted(set(revisions))

    run(scenario())


def test_a_paused_member_times_out_and_answers_again_after_resume(etcd: EtcdProcess) -> None:
    async def scenario() -> None:
        async with Etcd(etcd.endpoints, timeout=0.5) as client:
            await client.put("k", b"v")
            etcd.pause()
            try:
                with pytest.raises(kilndb.CoordinatorUnavailableError):
                    await client.keepalive(1)
                with pytest.raises(kilndb.CoordinatorUnavailableError, match="may or may not"):
                    await client.txn([], [PutOp("k", b"w")], [])
            finally:
                etcd.resume()

            async def answers() -> bool:
                try:
                    return await client.get("k") is not None
                except kilndb.CoordinatorUnavailableError:
                    return False

            await until(answers)

    run(scenario())


def test_a_cut_link_fails_fast_and_heal_restores_it(etcd: EtcdProcess, proxy: FaultProxy) -> None:
    async def scenario() -> None:
        # A long timeout: failing within it shows the cut was seen, not waited out.
        async with Etcd([proxy.endpoint], timeout=10) as client:
            await client.put("k", b"v")
            proxy.cut()
            started = time.monotonic()
            for request in (client.get("k"), client.txn([], [PutOp("k", b"w")], [])):
                with pytest.raises(kilndb.CoordinatorUnavailableError):
                    await request
            assert time.monotonic() - started < 5
            proxy.heal()
            kv = await client.get("k")
            assert kv is not None and kv.value == b"v"

    run(scenario())


def test_a_silent_link_times_out_and_heal_restores_it(etcd: EtcdProcess, proxy: FaultProxy) -> None:
    async def scenario() -> None:
        async with Etcd([proxy.endpoint], timeout=0.5) as client:
            await client.put("k", b"v")
            proxy.blackhole()
            with pytest.raises(kilndb.CoordinatorUnavailableError):
                await client.get("k")
            with pytest.raises(kilndb.CoordinatorUnavailableError, match="may or may not"):
                await client.txn([], [PutOp("k", b"w")], [])
            proxy.heal()
            kv = await client.get("k")
            assert kv is not None and kv.value in (b"v", b"w")

    run(scenario())


def test_a_delayed_link_still_answers(etcd: EtcdProcess, proxy: FaultProxy) -> None:
    async def scenario() -> None:
        async with Etcd([proxy.endpoint], timeout=5) as client:
            proxy.delay(0.2)
            revision = await client.put("k", b"v")
            kv = await client.get("k")
            assert kv is not None and kv.mod_revision == revision

    run(scenario())


def test_a_watch_leaves_a_silent_member_for_one_that_answers(
    etcd: EtcdProcess, proxy: FaultProxy
) -> None:
    """The watch's stream through the proxy stays open but goes silent: the watch finds
    out by its idle check and resumes on the direct endpoint, losing nothing."""

    async def scenario() -> None:
        async with (
            Etcd(etcd.endpoints) as writer,
            Etcd([proxy.endpoint, etcd.endpoint], timeout=0.5) as reader,
        ):
            first = await writer.put("s/a", b"1")
            events = reader.watch("s/", first)
            (event,) = await collect(events, 1)
            assert event.revision == first
            proxy.blackhole()
            second = await writer.put("s/a", b"2")
            (event,) = await collect(events, 1)
            assert (event.revision, event.kv.value) == (second, b"2")
            assert reader.endpoint == etcd.endpoint

    run(scenario())

"""Igniter's NetworkBackend through the network clients: callback subscriptions on a
thread (or a task) of their own that survive a server restart, whole facts sent again
after a lost reply only when they carry an id."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kilndb
from kilndb.client.core import repeatable
from tests.client.test_reconnect import Restartable


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Restartable]:
    running = Restartable(tmp_path / "data")
    yield running
    running.stop()


class Received:
    def __init__(self) -> None:
        self.values: list[Any] = []
        self.threads: list[threading.Thread] = []
        self._cond = threading.Condition()

    def __call__(self, fact: kilndb.Fact) -> None:
        with self._cond:
            self.values.append(fact.value)
            self.threads.append(threading.current_thread())
            self._cond.notify_all()

    def wait_for(self, count: int) -> list[Any]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.values) >= count, timeout=10)
            return list(self.values)


def test_a_callback_subscription_survives_a_server_restart(
    server: Restartable, connect: Callable[..., Any]
) -> None:
    got = Received()
    with connect(server.url) as db, connect(server.url) as writer:
        handle = db.subscribe(["s"], callback=got, channel="restart-1")
        writer.store("s").write("a", 1)
        assert got.wait_for(1) == [1]
        server.restart()
        writer.store("s").write("b", 2)  # the writer reconnects too
        assert got.wait_for(2) == [1, 2]  # resumed after position 1: no loss, no repeat
        assert handle.channel_id == "restart-1" and handle.position == 2
        handle.close()
        assert handle.closed
        handle.close()


def test_the_callback_runs_on_a_named_daemon_thread_and_may_close_its_handle(
    server: Restartable,
) -> None:
    closed = threading.Event()
    handles: list[Any] = []

    def once(fact: kilndb.Fact) -> None:
        handles[0].close()  # from the callback's own thread: no deadlock
        closed.set()

    with kilndb.connect(server.url) as db:
        got = Received()
        with db.subscribe(callback=got) as handle:
            db.store("s").write("a", 1)
            got.wait_for(1)
            (thread,) = set(got.threads)
            assert thread.daemon and thread.name == f"kilndb-subscriber-{handle.channel_id}"
            assert thread is not threading.current_thread()
        assert not thread.is_alive()  # close joined it
        handles.append(db.subscribe(callback=once))
        db.store("s").write("b", 2)
        assert closed.wait(10)
        assert handles[0].closed


def test_an_asyncio_callback_may_be_a_coroutine_function(server: Restartable) -> None:
    async def scenario() -> None:
        seen: list[Any] = []
        arrived = asyncio.Event()

        async def callback(fact: kilndb.Fact) -> None:
            await asyncio.sleep(0)
            seen.append(fact.value)
            if fact.value == "boom":
                raise ValueError("broken")
            if len(seen) == 3:
                arrived.set()

        async with await kilndb.connect_async(server.url) as db:
            async with db.subscribe(["s"], callback=callback, channel="aio") as handle:
                assert handle.channel_id == "aio"
                for value in (1, "boom", 3):
                    await db.store("s").write(f"k{value}", value)
                await asyncio.wait_for(arrived.wait(), 10)
                assert seen == [1, "boom", 3] and handle.failures == 1
            assert handle.closed
            with pytest.raises(kilndb.InvalidArgumentError):
                db.subscribe(callback="not callable")  # type: ignore[call-overload]

    asyncio.run(scenario())


def test_whole_facts_are_sent_again_only_with_ids() -> None:
    assert repeatable("write_fact", {"fact": {"id": "x"}})
    assert not repeatable("write_fact", {"fact": {"store": "s"}})
    assert repeatable("write_snapshot", {"facts": [{"id": "a"}, {"id": "b"}]})
    assert not repeatable("write_snapshot", {"facts": [{"id": "a"}, {"key": "b"}]})


def test_a_client_checks_a_whole_fact_before_sending_it(
    server: Restartable, connect: Callable[..., Any]
) -> None:
    with connect(server.url) as db:
        with pytest.raises(kilndb.InvalidArgumentError, match="value_hash"):
            db.write_fact({"store": "s", "key": "k", "value": 1, "value_hash": "bad"})
        with pytest.raises(kilndb.InvalidArgumentError):
            db.write_snapshot([{"store": "bad name!", "key": "k", "value": 1}])
        assert db.stats()["last_position"] == 0

"""A blocking view of the asyncio client, so that the conformance suite runs through it.

Every call goes to the real :func:`kilndb.connect_async` client: a :class:`Synced`
object forwards each method call to the object it wraps and, when the call returns a
coroutine, runs it on an event loop in a background thread and waits for the result.
What the asyncio client returns to be awaited or entered (a subscription, a callback
subscription, a lease keeper) is opened at once, as the blocking API does; async
iterators become iterators.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from kilndb.client import AsyncCallbackSubscription, AsyncLeaseKeeper
from kilndb.client.asyncio_pushed import AsyncPushedStream

T = TypeVar("T")


class Loop:
    """An event loop running in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` on the loop and wait for its result (or its error)."""

        async def wait() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wait(), self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _unwrap(value: Any) -> Any:
    return value._target if isinstance(value, Synced) else value


class Synced:
    """The blocking face of an asyncio client object (database, store, space, segment,
    subscription, lease keeper)."""

    def __init__(self, target: Any, loop: Loop) -> None:
        self._target = target
        self._loop = loop

    def __repr__(self) -> str:
        return f"Synced({self._target!r})"

    def _wrap(self, result: Any) -> Any:
        if inspect.iscoroutine(result):
            result = self._loop.run(result)
        if isinstance(result, AsyncPushedStream | AsyncLeaseKeeper | AsyncCallbackSubscription):
            return Synced(self._loop.run(result), self._loop)  # opened at once, as connect's
        if isinstance(result, AsyncIterator):
            return self._iterate(result)
        if type(result).__module__.startswith("kilndb.client"):
            return Synced(result, self._loop)
        return result

    def _iterate(self, items: AsyncIterator[Any]) -> Iterator[Any]:
        while True:
            try:
                yield self._loop.run(items.__anext__())
            except StopAsyncIteration:
                return

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return self._wrap(value)

        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(_unwrap(arg) for arg in args)
            kwargs = {key: _unwrap(arg) for key, arg in kwargs.items()}
            return self._wrap(value(*args, **kwargs))

        return call

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return self._loop.run(self._target.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def __enter__(self) -> Synced:
        self._loop.run(self._target.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.run(self._target.__aexit__(*exc))


def synced_connect(loop: Loop) -> Callable[..., Synced]:
    """``kilndb.connect`` made of ``kilndb.connect_async`` on ``loop``."""
    import kilndb

    def connect(*args: Any, **kwargs: Any) -> Synced:
        return Synced(loop.run(kilndb.connect_async(*args, **kwargs)), loop)

    return connect

"""The owner of a server's background work: its asyncio tasks and its few threads.

Pushes to subscribers, status streams, catch-up reads and pings are asyncio tasks; the
threads that remain (a fan-out hub per database with subscribers, a shipping thread per
follower link, a follower per followed database, the discovery of a leader's databases)
each do blocking work for something that lives as long as they do. Nothing is started
and forgotten: :class:`TaskOwner` keeps every task and thread it starts, logs a task that
fails, and ends them all when the server stops — tasks cancelled and awaited, threads
told to stop by their owners and joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["TaskOwner"]

log = logging.getLogger("kilndb.server")


class TaskOwner:
    """Starts tasks on one event loop and threads, and ends them all at :meth:`close`
    (as :class:`asyncio.TaskGroup` does, without ending the others when one fails)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._tasks: set[asyncio.Task[Any]] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self.closed = False

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coroutine`` as a task of this owner (on the loop's thread)."""
        task = self.loop.create_task(coroutine, name=name)
        if self.closed:
            task.cancel()
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def every(self, seconds: float, action: Callable[[], object], name: str) -> asyncio.Task[Any]:
        """Call ``action()`` every ``seconds`` on the loop's thread, in a task of this
        owner. A failure is logged at debug level and the next round goes on (what it
        measures may be closing meanwhile)."""

        async def rounds() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    action()
                except Exception:
                    log.debug("%s failed; trying again in %s s", name, seconds, exc_info=True)

        return self.spawn(rounds(), name)

    def spawn_threadsafe(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        """:meth:`spawn` from any thread; the coroutine is closed if the loop is gone."""
        try:
            self.loop.call_soon_threadsafe(self.spawn, coroutine, name)
        except RuntimeError:
            coroutine.close()

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background task %s failed", task.get_name(), exc_info=error)

    def thread(self, target: Callable[..., object], name: str, *args: Any) -> threading.Thread:
        """Start a daemon thread running ``target(*args)``, kept until it ends."""
        thread = threading.Thread(target=self._run, args=(target, args), name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return thread

    def _run(self, target: Callable[..., object], args: tuple[Any, ...]) -> None:
        try:
            target(*args)
        except Exception:
            log.exception("background thread %s failed", threading.current_thread().name)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    @property
    def thread_count(self) -> int:
        with self._lock:
            return len(self._threads)

    async def cancel_tasks(self) -> None:
        """Cancel every task and wait for each to end (on the loop's thread)."""
        self.closed = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._tasks.difference_update(tasks)

    def join_threads(self, timeout: float = 10.0) -> list[str]:
        """Wait for the threads (whose owners were told to stop) to end; the names of
        those still running after ``timeout`` seconds."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
        return [thread.name for thread in threads if thread.is_alive()]

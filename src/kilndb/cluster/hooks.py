"""The callbacks of a gossip node: Pokan's ``on``, ``before``, ``after`` and ``every``.

A callback runs in the node's event loop. If it raises, the error is logged and counted
(``callback_errors``) and the protocol carries on; if it returns an awaitable, the node
awaits it in a task of its own (the ``spawn`` function the node passes in).
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from kilndb.errors import InvalidArgumentError

__all__ = ["EVENTS", "Callback", "Hooks"]

log = logging.getLogger("kilndb.cluster")

#: Names accepted by ``on``.
EVENTS = frozenset(
    {
        "new_key",
        "key_changed",
        "key_removed",
        "member_joined",
        "member_alive",
        "member_suspect",
        "member_dead",
        "member_left",
        "start",
        "shutdown",
    }
)
Callback = Callable[..., Any]
Spawn = Callable[[Any], None]


class Hooks:
    """The registered callbacks and periodic tasks of one node."""

    def __init__(self, name: str, counters: Counter[str]) -> None:
        self.name = name
        self._counters = counters
        self._hooks: dict[str, list[Callback]] = {}
        self._periodics: list[list[Any]] = []  # [due, seconds, fn]

    def on(self, event: str, fn: Callback) -> None:
        """Call ``fn(event_object)`` on each ``event``: a ``KeyEvent`` for key events, a
        ``MemberEvent`` for member ones, a ``StartEvent`` for ``start`` and a
        ``ShutdownEvent`` for ``shutdown``.

        Raises:
            InvalidArgumentError: an unknown event name.
        """
        if event not in EVENTS:
            raise InvalidArgumentError(f"unknown event {event!r}; one of {sorted(EVENTS)}")
        self._hooks.setdefault(event, []).append(fn)

    def before(self, event: str, fn: Callback) -> None:
        """Call ``fn(host, port, size)`` before each gossip packet.

        Raises:
            InvalidArgumentError: ``event`` is not ``"gossip"``.
        """
        if event != "gossip":
            raise InvalidArgumentError("before() supports only 'gossip'")
        self._hooks.setdefault("before_gossip", []).append(fn)

    def after(self, event: str, fn: Callback) -> None:
        """Call ``fn(host, port)`` after each gossip packet, or ``fn(SyncEvent)`` after each
        push-pull.

        Raises:
            InvalidArgumentError: ``event`` is neither ``"gossip"`` nor ``"sync"``.
        """
        if event not in ("gossip", "sync"):
            raise InvalidArgumentError("after() supports 'gossip' and 'sync'")
        self._hooks.setdefault(f"after_{event}", []).append(fn)

    def every(self, seconds: float, fn: Callback, now: float) -> None:
        """Call ``fn()`` every ``seconds``, the first time ``seconds`` after ``now``.

        Raises:
            InvalidArgumentError: ``seconds`` <= 0.
        """
        if seconds <= 0:
            raise InvalidArgumentError("every() needs seconds > 0")
        self._periodics.append([now + seconds, seconds, fn])

    def fire(self, name: str, *args: Any, spawn: Spawn) -> None:
        """Call every callback registered under ``name``."""
        for fn in self._hooks.get(name, ()):
            self.call(fn, *args, spawn=spawn)

    def run_due(self, now: float, spawn: Spawn) -> float:
        """Run the periodic tasks that are due; when the next one is (inf if none)."""
        due = float("inf")
        for periodic in self._periodics:
            if now >= periodic[0]:
                periodic[0] = now + periodic[1]
                self.call(periodic[2], spawn=spawn)
            due = min(due, periodic[0])
        return due

    def call(self, fn: Callback, *args: Any, spawn: Spawn) -> None:
        """Call ``fn``; log and count an exception; hand an awaitable to ``spawn``."""
        try:
            result = fn(*args)
        except Exception:
            self._counters["callback_errors"] += 1
            log.exception("gossip %s: callback %r failed", self.name, fn)
            return
        if inspect.isawaitable(result):
            spawn(result)

    async def guard(self, awaitable: Any) -> None:
        """Await a callback's awaitable; log and count its exception."""
        try:
            await awaitable
        except Exception:
            self._counters["callback_errors"] += 1
            log.exception("gossip %s: async callback failed", self.name)

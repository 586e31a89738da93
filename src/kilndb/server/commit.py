"""Commit rounds: every request applied on the event loop during one turn of it is made
durable with one fsync at the end of the turn, as Redis does before it sleeps, and then
answered."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from kilndb.errors import KilnError
from kilndb.protocol import ServerConnection

__all__ = ["Acknowledging", "CommitRounds"]

log = logging.getLogger("kilndb.server")


class Acknowledging(Protocol):
    """A connection whose applied requests wait for a commit round."""

    def acknowledge(self, applied: list[Any]) -> None: ...

    def flush(self) -> None: ...


class CommitRounds:
    """The requests applied on the loop this turn, per connection, until its end."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._awaiting: list[tuple[Acknowledging, list[Any]]] = []

    def soon(self, connection: Acknowledging, applied: list[Any]) -> None:
        """Acknowledge ``applied`` once this turn of the loop is over."""
        if not self._awaiting:
            self._loop.call_soon(self._round)
        self._awaiting.append((connection, applied))

    def _round(self) -> None:
        awaiting, self._awaiting = self._awaiting, []
        for connection, applied in awaiting:
            try:
                connection.acknowledge(applied)  # the first wait syncs; the rest find it done
            except Exception as exc:  # a bug: fail this connection's replies, not the round
                log.exception("acknowledging a batch failed", exc_info=exc)
                error = ServerConnection.error(KilnError(f"internal error: {exc}"))
                for slot, *_ in applied:
                    if slot.frame is None:
                        slot.frame = error
        for connection, _ in awaiting:
            connection.flush()

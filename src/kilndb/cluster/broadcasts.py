"""The queue of updates a node still has to piggyback, with SWIM's retransmit limit.

Every update a node learns (or makes) is queued and sent along with its next packets
until it has gone out ``retransmit_limit(N)`` times. Updates that have been sent the
least go first, newest first among equals, as many as fit the datagram. A newer update
about the same subject (a member, or one owner's key) replaces the queued one: there
is no point spreading a superseded rumour.
"""

from __future__ import annotations

from dataclasses import dataclass

from kilndb.cluster.messages import KeyDelta, Update
from kilndb.cluster.wire import update_size

__all__ = ["BroadcastQueue"]


@dataclass
class _Entry:
    update: Update
    size: int
    order: int  # larger is newer
    sent: int = 0


def _subject(update: Update) -> tuple[str, ...]:
    if isinstance(update, KeyDelta):
        return ("key", update.owner, update.key)
    return ("member", update.name)


class BroadcastQueue:
    """Pending updates; :meth:`take` fills one packet."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, update: Update) -> bool:
        """Queue ``update``, replacing a queued update about the same subject; False (and
        not queued) if it is larger than ``max_size``, so it could never be piggybacked
        (a big metadata value then travels by push-pull only)."""
        size = update_size(update)
        if size > self.max_size:
            self._entries.pop(_subject(update), None)
            return False
        self._order += 1
        self._entries[_subject(update)] = _Entry(update, size, self._order)
        return True

    def take(self, budget: int, limit: int) -> list[Update]:
        """Updates whose sizes (plus a comma each) fit ``budget`` bytes; each taken one
        counts as sent once more and leaves the queue after ``limit`` sends."""
        if not self._entries or budget <= 0:
            return []
        ranked = sorted(self._entries.items(), key=lambda item: (item[1].sent, -item[1].order))
        taken: list[Update] = []
        used = 0
        for subject, entry in ranked:
            cost = entry.size + (1 if taken else 0)
            if used + cost > budget:
                continue
            used += cost
            taken.append(entry.update)
            entry.sent += 1
            if entry.sent >= limit:
                del self._entries[subject]
        return taken

    def pending(self) -> list[Update]:
        """Every queued update (for tests and status)."""
        return [entry.update for entry in self._entries.values()]

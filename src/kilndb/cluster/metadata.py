"""Cluster metadata: every node's own key/value map, replicated scuttlebutt-style.

Each node *owns* its keys; nobody else writes them. Every write of the owner (a set or
a delete, which leaves a tombstone) takes the next number of the owner's version
counter, so "newer" is decided by that counter, never by a wall clock. A value is
identified by ``(owner, generation, key)``: a node that restarts begins a new, larger
generation, and its keys then replace everything of the old run.

For each owner a node keeps a *watermark*: it holds every write of the owner up to that
version (writes overwritten by later ones of the same key count as held). The digest
``owner → (generation, watermark)`` is what a push-pull sends; the peer answers with
every key of that owner above the watermark in version order, after which the receiver
may raise its watermark to the peer's. Deltas that arrive by gossip, out of order or
with gaps, are applied at once (last writer wins per key), but only move the watermark
while they are contiguous, so a digest never claims more than the node holds.

A digest also tells of new runs: an owner at a larger generation than the one held
replaces the old run at once (its keys are dropped), even before the new run has
written a key, or the old keys would live on among the peers forever.

When the member table *reaps* a dead or left member, its metadata is forgotten and the
run is remembered as reaped for a while (``reap_after``): deltas of that run (from a
peer that has not reaped it yet) are refused, so the keys do not come back. A newer
generation (the node restarted) is taken at once, and the refusal ends early if the
member rejoins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kilndb.cluster.messages import Digest, KeyDelta, KeyEvent

__all__ = ["MetadataStore"]


@dataclass
class _Owner:
    generation: int
    watermark: int = 0
    above: set[int] = field(default_factory=set)  # versions held past a gap
    keys: dict[str, KeyDelta] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Reaped:
    generation: int | None  # the run that was reaped; None: we held none of its keys
    until: float  # refuse its deltas until then (clock of the caller of forget/expire)


class MetadataStore:
    """The metadata one node holds: its own keys and the replicas of everyone else's."""

    def __init__(self, owner: str, generation: int) -> None:
        self.owner = owner
        self._owners: dict[str, _Owner] = {owner: _Owner(generation)}
        self._reaped: dict[str, _Reaped] = {}

    # -- the local node's writes -----------------------------------------------------

    def set(self, key: str, value: Any) -> tuple[KeyDelta, list[KeyEvent]]:
        """Write one of this node's keys; the delta to gossip and the local events."""
        return self._write(key, value, deleted=False)

    def delete(self, key: str) -> tuple[KeyDelta, list[KeyEvent]]:
        """Delete one of this node's keys (a versioned tombstone)."""
        return self._write(key, None, deleted=True)

    def _write(self, key: str, value: Any, deleted: bool) -> tuple[KeyDelta, list[KeyEvent]]:
        mine = self._owners[self.owner]
        mine.watermark += 1
        delta = KeyDelta(self.owner, mine.generation, key, mine.watermark, value, deleted)
        return delta, self._store(mine, delta)

    # -- replication -----------------------------------------------------------------

    def apply(self, delta: KeyDelta) -> tuple[bool, list[KeyEvent]]:
        """Apply one delta from gossip: whether it was news (stale ones are ignored)
        and the events it caused."""
        events: list[KeyEvent] = []
        state = self._owners.get(delta.owner)
        if delta.owner == self.owner:
            return False, events  # nobody else writes our keys: an echo or an old run
        if self._refused(delta.owner, delta.generation):
            return False, events  # a reaped run: its keys must not come back
        if state is None or delta.generation > state.generation:
            if state is not None:
                events.extend(self.forget(delta.owner))
            state = self._owners[delta.owner] = _Owner(delta.generation)
        elif delta.generation < state.generation:
            return False, events
        current = state.keys.get(delta.key)
        if current is not None and current.version >= delta.version:
            return False, events
        events.extend(self._store(state, delta))
        if delta.version == state.watermark + 1:
            state.watermark += 1
            while state.watermark + 1 in state.above:
                state.watermark += 1
                state.above.discard(state.watermark)
        elif delta.version > state.watermark:
            state.above.add(delta.version)
        return True, events

    def apply_complete(
        self, deltas: Iterable[KeyDelta], digest: Iterable[Digest]
    ) -> list[KeyEvent]:
        """Apply the deltas a peer computed against our digest, then raise watermarks to
        the peer's: we now hold all it held.

        An owner the peer holds at a newer generation replaces our older run (its keys
        are removed) even if the new run sent no key.
        """
        events: list[KeyEvent] = []
        for delta in deltas:
            events.extend(self.apply(delta)[1])
        for entry in digest:
            state = self._owners.get(entry.owner)
            if entry.owner == self.owner or state is None:
                continue  # (a reaped owner has no state: nothing to raise)
            if entry.generation > state.generation:
                # The peer computed its deltas against our older run, so it sent every
                # key of the new one: we hold all it holds of it.
                events.extend(self.forget(entry.owner))
                state = self._owners[entry.owner] = _Owner(entry.generation)
            if state.generation == entry.generation and entry.version > state.watermark:
                state.watermark = entry.version
                state.above = {v for v in state.above if v > entry.version}
        return events

    def digest(self) -> tuple[Digest, ...]:
        """``owner → (generation, watermark)`` for every owner held."""
        return tuple(
            Digest(owner, state.generation, state.watermark)
            for owner, state in self._owners.items()
        )

    def missing(self, digest: Iterable[Digest]) -> tuple[KeyDelta, ...]:
        """What a peer with ``digest`` lacks, owner by owner in version order."""
        theirs = {d.owner: d for d in digest}
        out: list[KeyDelta] = []
        for owner, state in self._owners.items():
            known = theirs.get(owner)
            if known is not None and known.generation > state.generation:
                continue
            floor = known.version if known and known.generation == state.generation else 0
            newer = [d for d in state.keys.values() if d.version > floor]
            out.extend(sorted(newer, key=lambda d: d.version))
        return tuple(out)

    def forget(self, owner: str, *, refuse_until: float | None = None) -> list[KeyEvent]:
        """Drop everything of ``owner`` (reaped, or replaced by a new run).

        With ``refuse_until`` (a reaped member), the run dropped is remembered and its
        deltas are refused until :meth:`expire` passes that time, a newer generation of
        the owner arrives, or :meth:`rejoined` is called.
        """
        if owner == self.owner:
            return []
        state = self._owners.pop(owner, None)
        if refuse_until is not None:
            known = self._reaped.get(owner)
            generation = state.generation if state is not None else None
            if known is not None and generation is None:
                generation = known.generation
            self._reaped[owner] = _Reaped(generation, refuse_until)
        if state is None:
            return []
        return [
            KeyEvent("key_removed", owner, d.key, d.value)
            for d in state.keys.values()
            if not d.deleted
        ]

    def expire(self, now: float) -> None:
        """End the refusals of reaped runs whose time is up."""
        for owner in [o for o, r in self._reaped.items() if r.until <= now]:
            del self._reaped[owner]

    def rejoined(self, owner: str) -> None:
        """``owner`` is a member again: take its metadata again, whatever the run."""
        self._reaped.pop(owner, None)

    def _refused(self, owner: str, generation: int) -> bool:
        reaped = self._reaped.get(owner)
        if reaped is None:
            return False
        if reaped.generation is not None and generation > reaped.generation:
            del self._reaped[owner]  # a new run of the owner: welcome
            return False
        return True

    # -- reads -----------------------------------------------------------------------

    def get(self, owner: str, key: str, default: Any = None) -> Any:
        """``owner``'s value of ``key``, or ``default`` if absent or deleted."""
        state = self._owners.get(owner)
        delta = state.keys.get(key) if state else None
        return default if delta is None or delta.deleted else delta.value

    def items(self, owner: str) -> dict[str, Any]:
        """``owner``'s live keys and values."""
        state = self._owners.get(owner)
        if state is None:
            return {}
        return {k: d.value for k, d in state.keys.items() if not d.deleted}

    def owners(self) -> list[str]:
        """Every owner with metadata held here."""
        return list(self._owners)

    def _store(self, state: _Owner, delta: KeyDelta) -> list[KeyEvent]:
        current = state.keys.get(delta.key)
        state.keys[delta.key] = delta
        if current is None or current.deleted:
            if delta.deleted:
                return []
            return [KeyEvent("new_key", delta.owner, delta.key, delta.value)]
        if delta.deleted:
            return [KeyEvent("key_removed", delta.owner, delta.key, current.value)]
        if current.value != delta.value:
            return [KeyEvent("key_changed", delta.owner, delta.key, delta.value)]
        return []

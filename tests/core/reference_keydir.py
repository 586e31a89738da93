"""The pure-Python keydir KilnDB had before its native core: the reference the native
``kilndb._core.KeyDir`` is checked against (tests/core/test_keydir.py).

Theory of operation
-------------------
Two structures, both sized for millions of facts in a few hundred bytes each:

*Per position* (the database's gap-free commit order), four packed arrays indexed by
``position - base``:

    ``loc``    u64  ``file_id << 40 | offset`` of the fact's frame; 0 = not retained
    ``size``   u32  frame length in bytes
    ``seq``    u32  the fact's seq, with bit 31 set for a tombstone
    ``ttime``  f64  transaction time (non-decreasing, so ``as_of`` is a bisection)

*Per key*: ``stores[store][key]`` is the position of the key's only retained fact (an
``int``) or, once a key has several, an ``array('Q')`` of their positions in order. The
newest entry is the key's latest fact; its seq is the key's current seq.

Positions never retained any more (compacted away, or never written because a repair
dropped them) read as ``loc == 0``. The keydir is not thread-safe: the log guards it
with its lock.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import TypeAlias

__all__ = ["TOMBSTONE", "KeyDir"]

TOMBSTONE = 1 << 31
OFFSET_BITS = 40
OFFSET_MASK = (1 << OFFSET_BITS) - 1

KeyEntry: TypeAlias = "int | array[int]"


class KeyDir:
    __slots__ = (
        "base",
        "facts",
        "loc",
        "seq",
        "size",
        "stores",
        "ttime",
    )

    def __init__(self, base: int = 1) -> None:
        self.base = base
        self.loc = array("Q")
        self.size = array("I")
        self.seq = array("I")
        self.ttime = array("d")
        self.stores: dict[str, dict[str, KeyEntry]] = {}
        #: Number of retained facts.
        self.facts = 0

    # -- positions -----------------------------------------------------------------

    @property
    def last_position(self) -> int:
        return self.base + len(self.loc) - 1

    def add(
        self,
        store: str,
        key: str,
        position: int,
        file_id: int,
        offset: int,
        size: int,
        seq: int,
        deleted: bool,
        ttime: float,
    ) -> None:
        """Index a fact; ``position`` must be above every position indexed so far."""
        loc = self.loc
        gap = position - self.base - len(loc)
        if gap:
            if gap < 0:
                raise ValueError(f"position {position} is not above {self.last_position}")
            self._pad(gap)
        loc.append(file_id << OFFSET_BITS | offset)
        self.size.append(size)
        self.seq.append(seq | TOMBSTONE if deleted else seq)
        self.ttime.append(ttime)
        self.facts += 1
        keys = self.stores.get(store)
        if keys is None:
            keys = self.stores[store] = {}
        entry = keys.get(key)
        if entry is None:
            keys[key] = position
        elif isinstance(entry, int):
            keys[key] = array("Q", (entry, position))
        else:
            entry.append(position)

    def load_columns(
        self,
        file_id: int,
        positions: array[int],
        offsets: array[int],
        sizes: array[int],
        seqs: array[int],
        ttimes: array[float],
        store_index: array[int],
        store_names: list[str],
        keys: list[str],
    ) -> None:
        """Index a hint's columns (positions ascending, above every indexed position)."""
        count = len(positions)
        if not count:
            return
        if positions[0] <= self.last_position:
            raise ValueError(f"position {positions[0]} is not above {self.last_position}")
        contiguous = positions[-1] - positions[0] + 1 == count
        if contiguous:
            self._pad(positions[0] - self.base - len(self.loc))
            shift = file_id << OFFSET_BITS
            self.loc.extend([shift | offset for offset in offsets])
            self.size.extend(sizes)
            self.seq.extend(seqs)
            self.ttime.extend(ttimes)
        else:
            for i in range(count):
                raw = seqs[i]
                self._add_position(positions[i], file_id, offsets[i], sizes[i], raw, ttimes[i])
        self.facts += count if contiguous else 0
        stores = [self.stores.setdefault(name, {}) for name in store_names]
        for i in range(count):
            keys_of_store = stores[store_index[i]]
            key = keys[i]
            position = positions[i]
            entry = keys_of_store.get(key)
            if entry is None:
                keys_of_store[key] = position
            elif isinstance(entry, int):
                keys_of_store[key] = array("Q", (entry, position))
            else:
                entry.append(position)

    def _add_position(
        self, position: int, file_id: int, offset: int, size: int, raw_seq: int, ttime: float
    ) -> None:
        gap = position - self.base - len(self.loc)
        if gap:
            self._pad(gap)
        self.loc.append(file_id << OFFSET_BITS | offset)
        self.size.append(size)
        self.seq.append(raw_seq)
        self.ttime.append(ttime)
        self.facts += 1

    def pad_to(self, position: int) -> None:
        """Make ``position`` the last indexed position (unretained) if it is beyond it."""
        gap = position - self.last_position
        if gap > 0:
            self._pad(gap)

    def _pad(self, count: int) -> None:
        last_time = self.ttime[-1] if self.ttime else 0.0
        self.loc.frombytes(bytes(8 * count))
        self.size.frombytes(bytes(4 * count))
        self.seq.frombytes(bytes(4 * count))
        self.ttime.extend(array("d", [last_time]) * count)

    def location(self, position: int) -> tuple[int, int, int] | None:
        """``(file_id, offset, size)`` of a retained fact, else ``None``."""
        index = position - self.base
        if index < 0 or index >= len(self.loc):
            return None
        packed = self.loc[index]
        if not packed:
            return None
        return packed >> OFFSET_BITS, packed & OFFSET_MASK, self.size[index]

    def relocate(self, position: int, file_id: int, offset: int) -> None:
        self.loc[position - self.base] = file_id << OFFSET_BITS | offset

    def is_retained(self, position: int) -> bool:
        index = position - self.base
        return 0 <= index < len(self.loc) and self.loc[index] != 0

    def seq_of(self, position: int) -> tuple[int, bool]:
        raw = self.seq[position - self.base]
        return raw & ~TOMBSTONE, bool(raw & TOMBSTONE)

    def position_at_time(self, as_of: float) -> int:
        """The last position whose transaction time is ``<= as_of`` (base - 1 if none)."""
        return self.base + bisect_right(self.ttime, as_of) - 1

    def first_retained_at_or_after(self, position: int) -> int | None:
        loc = self.loc
        index = max(position - self.base, 0)
        while index < len(loc):
            if loc[index]:
                return index + self.base
            index += 1
        return None

    # -- keys ----------------------------------------------------------------------

    def latest(self, store: str, key: str) -> int | None:
        keys = self.stores.get(store)
        if keys is None:
            return None
        entry = keys.get(key)
        if entry is None:
            return None
        if isinstance(entry, int):
            return entry
        return entry[-1]

    def positions(self, store: str, key: str) -> list[int]:
        keys = self.stores.get(store)
        entry = None if keys is None else keys.get(key)
        if entry is None:
            return []
        if isinstance(entry, int):
            return [entry]
        return list(entry)

    def iter_keys(self, store: str) -> Iterator[tuple[str, int]]:
        """``(key, latest position)`` for every key of ``store`` (any order)."""
        for key, entry in self.stores.get(store, {}).items():
            yield key, entry if isinstance(entry, int) else entry[-1]

    def drop(self, store: str, key: str, positions: Iterable[int]) -> list[tuple[int, int]]:
        """Stop retaining some of a key's facts; return ``(file_id, size)`` of each."""
        doomed = set(positions)
        keys = self.stores[store]
        kept = [p for p in self.positions(store, key) if p not in doomed]
        freed = []
        for position in doomed:
            index = position - self.base
            packed = self.loc[index]
            if packed:
                freed.append((packed >> OFFSET_BITS, self.size[index]))
                self.loc[index] = 0
                self.facts -= 1
        if not kept:
            del keys[key]
            if not keys:
                del self.stores[store]
        elif len(kept) == 1:
            keys[key] = kept[0]
        else:
            keys[key] = array("Q", kept)
        return freed

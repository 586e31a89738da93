"""``kilndb._core.KeyDir``, the native keydir, against the pure-Python reference
``tests.core.reference_keydir.KeyDir`` (the keydir KilnDB had before its core): a state
machine of random additions, padding, drops, retention and relocations asserting that
every query agrees; hint columns from bytes;
the errors; threads; and the memory target (<= 100 bytes per key at 1,000,000 keys)."""

from __future__ import annotations

import bisect
import json
import math
import os
import subprocess
import sys
import threading
from array import array

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kilndb import InvalidArgumentError, KilnError
from kilndb._core import KeyDir
from tests.core.reference_keydir import TOMBSTONE
from tests.core.reference_keydir import KeyDir as RefKeyDir

Fact = tuple[str, str, int, int, int, int, bool, float]
Freed = list[tuple[int, int]]

STORES = ["s", "t", "ünï"]
KEYS = ["k", "k1", "k12", "k2", "a", "é", "ключ", ""]


def column(typecode: str, values: list[int] | list[float]) -> bytes:
    data = array(typecode, values)
    if sys.byteorder != "little":
        data.byteswap()
    return data.tobytes()


# -- the queries the reference does not have, as the storage code computes them --------


def ref_latest_state(ref: RefKeyDir, store: str, key: str) -> tuple[int, int, bool] | None:
    position = ref.latest(store, key)
    if position is None:
        return None
    seq, deleted = ref.seq_of(position)
    return position, seq, deleted


def ref_position_as_of(ref: RefKeyDir, store: str, key: str, as_of: float) -> int | None:
    positions = ref.positions(store, key)
    index = bisect.bisect_right(positions, ref.position_at_time(as_of))
    return positions[index - 1] if index else None


def ref_history(
    ref: RefKeyDir,
    store: str,
    key: str,
    since: int,
    until: int | None,
    limit: int | None,
    visible: int | None,
) -> list[int]:
    positions = ref.positions(store, key)

    def seq_of(position: int) -> int:
        return ref.seq[position - ref.base] & ~TOMBSTONE

    stop = len(positions) if visible is None else bisect.bisect_right(positions, visible)
    start = bisect.bisect_left(positions, since, key=seq_of, hi=stop)
    end = stop if limit is None else min(stop, start + limit)
    if until is not None:
        end = min(end, bisect.bisect_right(positions, until, key=seq_of, lo=start, hi=stop))
    return positions[start:end]


def ref_keys(
    ref: RefKeyDir, store: str, prefix: str, limit: int | None, live_only: bool
) -> list[str]:
    found = sorted(
        key
        for key, position in ref.iter_keys(store)
        if key.startswith(prefix) and not (live_only and ref.seq[position - ref.base] & TOMBSTONE)
    )
    return found if limit is None else found[:limit]


def ref_stores(ref: RefKeyDir) -> list[str]:
    return sorted(store for store, keys in ref.stores.items() if keys)


def ref_store_facts(ref: RefKeyDir, store: str) -> int:
    return sum(len(ref.positions(store, key)) for key in ref.stores.get(store, {}))


def ref_drop_superseded(ref: RefKeyDir, store: str) -> Freed:
    freed: Freed = []
    for key in list(ref.stores.get(store, {})):
        positions = ref.positions(store, key)
        if len(positions) > 1:
            freed += ref.drop(store, key, positions[:-1])
    return freed


def ref_drop_older_than(ref: RefKeyDir, store: str, horizon: float) -> Freed:
    freed: Freed = []
    for key in list(ref.stores.get(store, {})):
        positions = ref.positions(store, key)
        old = [p for p in positions[:-1] if ref.ttime[p - ref.base] < horizon]
        if old:
            freed += ref.drop(store, key, old)
    return freed


# -- the state machine ------------------------------------------------------------------


class KeyDirMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.native = KeyDir()
        self.ref = RefKeyDir()
        self.ttime = 1000.0

    @initialize(base=st.integers(0, 5))
    def start(self, base: int) -> None:
        self.native = KeyDir(base)
        self.ref = RefKeyDir(base)

    def next_seq(self, store: str, key: str, data: st.DataObject) -> int:
        """A key's seqs grow with its positions, as the database assigns them."""
        state = self.native.latest_state(store, key)
        return (0 if state is None else state[1]) + data.draw(st.integers(1, 3))

    def draw_facts(self, data: st.DataObject, count: int) -> list[Fact]:
        facts: list[Fact] = []
        position = self.ref.last_position
        latest_seq: dict[tuple[str, str], int] = {}
        for _ in range(count):
            store = data.draw(st.sampled_from(STORES))
            key = data.draw(st.sampled_from(KEYS))
            position += data.draw(st.integers(1, 3))
            self.ttime += data.draw(st.sampled_from([0.0, 0.5, 1.0]))
            state = self.native.latest_state(store, key)
            seq = latest_seq.get((store, key), 0 if state is None else state[1])
            seq += data.draw(st.integers(1, 3))
            latest_seq[store, key] = seq
            facts.append(
                (
                    store,
                    key,
                    position,
                    data.draw(st.integers(1, (1 << 40) - 1)),
                    data.draw(st.integers(0, (1 << 32) - 1)),
                    seq,
                    data.draw(st.booleans()),
                    self.ttime,
                )
            )
        return facts

    @rule(data=st.data(), file_id=st.integers(1, (1 << 24) - 1))
    def add(self, data: st.DataObject, file_id: int) -> None:
        for store, key, position, offset, size, seq, deleted, ttime in self.draw_facts(data, 1):
            self.native.add(store, key, position, file_id, offset, size, seq, deleted, ttime)
            self.ref.add(store, key, position, file_id, offset, size, seq, deleted, ttime)

    @rule(data=st.data(), file_id=st.integers(1, 3), count=st.integers(0, 6))
    def add_many(self, data: st.DataObject, file_id: int, count: int) -> None:
        facts = self.draw_facts(data, count)
        self.native.add_many(file_id, facts)
        for store, key, position, offset, size, seq, deleted, ttime in facts:
            self.ref.add(store, key, position, file_id, offset, size, seq, deleted, ttime)

    @rule(data=st.data(), file_id=st.integers(1, 3), count=st.integers(0, 6))
    def load_columns(self, data: st.DataObject, file_id: int, count: int) -> None:
        facts = self.draw_facts(data, count)
        names = sorted({f[0] for f in facts})
        positions = [f[2] for f in facts]
        offsets = [f[3] for f in facts]
        sizes = [f[4] for f in facts]
        seqs = [f[5] | (TOMBSTONE if f[6] else 0) for f in facts]
        ttimes = [f[7] for f in facts]
        stores = [names.index(f[0]) for f in facts]
        keys = [f[1] for f in facts]
        self.native.load_columns(
            file_id,
            column("Q", positions),
            column("Q", offsets),
            column("I", sizes),
            column("I", seqs),
            column("d", ttimes),
            column("I", stores),
            names,
            keys,
        )
        self.ref.load_columns(
            file_id,
            array("Q", positions),
            array("Q", offsets),
            array("I", sizes),
            array("I", seqs),
            array("d", ttimes),
            array("I", stores),
            names,
            keys,
        )

    @rule(step=st.integers(-2, 3))
    def pad_to(self, step: int) -> None:
        position = self.ref.last_position + step
        self.native.pad_to(position)
        self.ref.pad_to(position)

    def keys_held(self) -> list[tuple[str, str]]:
        return sorted((store, key) for store, keys in self.ref.stores.items() for key in keys)

    @precondition(lambda self: self.ref.facts > 0)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        store, key = data.draw(st.sampled_from(self.keys_held()))
        positions = self.ref.positions(store, key)
        doomed = data.draw(st.lists(st.sampled_from(positions), max_size=len(positions) + 1))
        freed = self.native.drop(store, key, doomed)
        assert sorted(freed) == sorted(self.ref.drop(store, key, doomed))

    @rule(store=st.sampled_from([*STORES, "none"]))
    def drop_superseded(self, store: str) -> None:
        freed = self.native.drop_superseded(store)
        assert sorted(freed) == sorted(ref_drop_superseded(self.ref, store))

    @rule(data=st.data(), store=st.sampled_from(STORES), shift=st.sampled_from([0.0, 0.25]))
    def drop_older_than(self, data: st.DataObject, store: str, shift: float) -> None:
        """A horizon at (or just past) a fact's transaction time."""
        horizon = data.draw(st.sampled_from([0.0, *self.ref.ttime])) + shift
        freed = self.native.drop_older_than(store, horizon)
        assert sorted(freed) == sorted(ref_drop_older_than(self.ref, store, horizon))

    @precondition(lambda self: self.ref.facts > 0)
    @rule(data=st.data(), file_id=st.integers(1, 3), offset=st.integers(1, 1 << 20))
    def relocate(self, data: st.DataObject, file_id: int, offset: int) -> None:
        store, key = data.draw(st.sampled_from(self.keys_held()))
        position = data.draw(st.sampled_from(self.ref.positions(store, key)))
        self.native.relocate(position, file_id, offset)
        self.ref.relocate(position, file_id, offset)

    @invariant()
    def positions_agree(self) -> None:
        native, ref = self.native, self.ref
        native._check_invariants()
        assert native.base == ref.base
        assert native.last_position == ref.last_position
        assert native.facts == ref.facts
        every = list(range(ref.base - 2, ref.last_position + 3))
        assert native.locations(every) == [ref.location(p) for p in every]
        for position in every:
            assert native.location(position) == ref.location(position)
            assert native.is_retained(position) == ref.is_retained(position)
            assert native.first_retained_at_or_after(position) == ref.first_retained_at_or_after(
                position
            )
            if ref.base <= position <= ref.last_position:
                assert native.seq_of(position) == ref.seq_of(position)
                assert native.ttime_of(position) == ref.ttime[position - ref.base]
        times = sorted({t + d for t in ref.ttime for d in (-0.25, 0.0, 0.25)})
        for as_of in [-math.inf, 0.0, *times, math.inf]:
            assert native.position_at_time(as_of) == ref.position_at_time(as_of)

    @invariant()
    def keys_agree(self) -> None:
        native, ref = self.native, self.ref
        assert native.stores() == ref_stores(ref)
        assert native.store_count == len(ref_stores(ref))
        assert native.key_count == len(self.keys_held())
        for store in [*STORES, "none"]:
            assert native.store_facts(store) == ref_store_facts(ref, store)
            assert sorted(native.iter_keys(store)) == sorted(ref.iter_keys(store))
            for prefix in ["", "k", "k1", "ключ", "z"]:
                for limit in [None, 0, 2]:
                    for live_only in [True, False]:
                        assert native.keys(store, prefix, limit, live_only) == ref_keys(
                            ref, store, prefix, limit, live_only
                        )
        times = sorted(set(ref.ttime))
        for store in [*STORES, "none"]:
            for key in [*KEYS, "absent"]:
                assert native.latest(store, key) == ref.latest(store, key)
                assert native.latest_state(store, key) == ref_latest_state(ref, store, key)
                positions = ref.positions(store, key)
                assert native.positions(store, key) == positions
                for as_of in [0.0, *times[-3:], math.inf]:
                    assert native.position_as_of(store, key, as_of) == ref_position_as_of(
                        ref, store, key, as_of
                    )
                if not positions:
                    assert native.history(store, key) == []
                    continue
                seqs = [ref.seq_of(p)[0] for p in positions]
                middle = positions[len(positions) // 2]
                for since, until, limit, visible in [
                    (0, None, None, None),
                    (seqs[-1], None, None, None),
                    (seqs[0] + 1, seqs[-1] - 1, None, None),
                    (0, None, 1, None),
                    (seqs[len(seqs) // 2], None, 2, middle),
                    (0, None, None, middle - 1),
                    (seqs[-1] + 1, None, None, None),
                ]:
                    assert native.history(store, key, since, until, limit, visible) == (
                        ref_history(ref, store, key, since, until, limit, visible)
                    )


TestKeyDirMachine = KeyDirMachine.TestCase
TestKeyDirMachine.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- examples ---------------------------------------------------------------------------


def test_load_columns_from_bytes() -> None:
    keydir = KeyDir(10)
    keydir.add("s", "a", 10, 1, 16, 50, 1, False, 5.0)
    keydir.load_columns(
        2,
        column("Q", [12, 13, 17]),
        column("Q", [16, 80, 200]),
        column("I", [64, 120, 70]),
        column("I", [1, 2, 2 | TOMBSTONE]),
        column("d", [6.0, 6.5, 9.0]),
        column("I", [1, 0, 1]),
        ["s", "t", "unused"],
        ["a", "b", "a"],
    )
    keydir._check_invariants()
    assert keydir.last_position == 17
    assert keydir.facts == 4
    assert keydir.stores() == ["s", "t"]  # a name no fact uses makes no store
    assert keydir.positions("t", "a") == [12, 17]
    assert keydir.latest_state("t", "a") == (17, 2, True)
    assert keydir.latest_state("s", "b") == (13, 2, False)
    assert keydir.location(13) == (2, 80, 120)
    assert keydir.location(14) is None  # the gap is padded, unretained
    assert keydir.ttime_of(14) == 6.5
    assert keydir.seq_of(14) == (0, False)
    assert keydir.keys("t", "") == []
    assert keydir.keys("t", "", live_only=False) == ["a"]
    assert keydir.position_as_of("t", "a", 8.0) == 12
    assert keydir.history("t", "a", 2) == [17]
    # an empty hint changes nothing
    empty = column("Q", [])
    keydir.load_columns(3, empty, empty, b"", b"", empty, b"", [], [])
    assert keydir.last_position == 17


def hint(
    positions: list[int],
    offsets: list[int] | None = None,
    sizes: list[int] | None = None,
    seqs: list[int] | None = None,
    ttimes: list[float] | None = None,
    stores: list[int] | None = None,
) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
    """Hint columns as bytes; by default one of each per position."""
    n = len(positions)
    return (
        column("Q", positions),
        column("Q", [16 * (i + 1) for i in range(n)] if offsets is None else offsets),
        column("I", [64] * n if sizes is None else sizes),
        column("I", list(range(1, n + 1)) if seqs is None else seqs),
        column("d", [6.0] * n if ttimes is None else ttimes),
        column("I", [0] * n if stores is None else stores),
    )


def test_load_columns_rejects_bad_columns() -> None:
    keydir = KeyDir()
    keydir.add("s", "a", 5, 1, 16, 50, 1, False, 5.0)
    names, keys = ["s"], ["b", "c"]
    keydir.load_columns(9, *hint([6, 7]), names, keys)
    for columns in [
        hint([8, 9], sizes=[64]),
        hint([8]),
        hint([8, 9], ttimes=[6.0, 6.5, 7.0]),
        hint([8, 9], stores=[0, 1]),
        hint([9, 8]),
        hint([8, 8]),
        hint([1 << 63, (1 << 64) - 1]),
        hint([8, 9], offsets=[1 << 40, 5]),
        (*hint([8, 9])[:5], b"\0" * 7),
    ]:
        with pytest.raises(ValueError):
            keydir.load_columns(9, *columns, names, keys)
        assert keydir.last_position == 7  # nothing changed
        keydir._check_invariants()
    with pytest.raises(ValueError):
        keydir.load_columns(9, *hint([8, 9]), names, ["b"])
    with pytest.raises(ValueError, match="not above 7"):
        keydir.load_columns(9, *hint([6, 7]), names, keys)
    with pytest.raises(ValueError):
        keydir.load_columns(9, *hint([8, 9]), names, ["b", "\ud800"])
    with pytest.raises(TypeError):
        keydir.load_columns(9, *hint([8, 9]), names, "bc")  # type: ignore[arg-type]
    keydir.load_columns(0, *hint([8, 9], offsets=[1, 2]), names, keys)
    assert keydir.location(9) == (0, 2, 64)


def test_errors() -> None:
    keydir = KeyDir(1)
    keydir.add("s", "k", 3, 1, 16, 50, 1, False, 5.0)
    with pytest.raises(ValueError, match="position 3 is not above 3"):
        keydir.add("s", "k", 3, 1, 16, 50, 2, False, 5.0)
    with pytest.raises(InvalidArgumentError):  # a ValueError too
        keydir.add("s", "k", 2, 1, 16, 50, 2, False, 5.0)
    for file_id, offset, size, seq in [
        (0, 0, 1, 1),
        (1 << 24, 1, 1, 1),
        (-1, 1, 1, 1),
        (1, 1 << 40, 1, 1),
        (1, -1, 1, 1),
        (1, 1, 1 << 32, 1),
        (1, 1, -1, 1),
        (1, 1, 1, 1 << 31),
        (1, 1, 1, -1),
    ]:
        with pytest.raises(ValueError):
            keydir.add("s", "k", 4, file_id, offset, size, seq, False, 5.0)
    with pytest.raises(ValueError):
        keydir.add("s", "x" * 70_000, 4, 1, 1, 1, 1, False, 5.0)
    with pytest.raises(ValueError):
        keydir.add("s", "\ud800", 4, 1, 1, 1, 1, False, 5.0)
    with pytest.raises(ValueError):
        keydir.add("s", "k", 1 << 40, 1, 1, 1, 1, False, 5.0)
    with pytest.raises(ValueError):
        keydir.pad_to(1 << 40)
    with pytest.raises(OverflowError):
        keydir.add("s", "k", 1 << 70, 1, 1, 1, 1, False, 5.0)
    with pytest.raises(TypeError):
        keydir.add("s", b"k", 4, 1, 1, 1, 1, False, 5.0)  # type: ignore[arg-type]
    # a batch with one bad fact changes nothing
    with pytest.raises(ValueError):
        keydir.add_many(1, [("s", "a", 4, 1, 1, 1, False, 6.0), ("s", "b", 4, 1, 1, 1, False, 6.0)])
    assert keydir.last_position == 3
    assert keydir.latest("s", "a") is None
    with pytest.raises(ValueError):
        keydir.seq_of(4)
    with pytest.raises(ValueError):
        keydir.seq_of(0)
    with pytest.raises(ValueError):
        keydir.ttime_of(-1)
    with pytest.raises(ValueError):
        keydir.relocate(2, 1, 1)
    with pytest.raises(ValueError):
        keydir.history("s", "k", limit=-1)
    with pytest.raises(ValueError):
        keydir.keys("s", "", -1)
    with pytest.raises(ValueError):
        KeyDir(-1)
    # lookups of anything absent, out of range or not UTF-8 find nothing
    assert keydir.latest("s", "\ud800") is None
    assert keydir.positions("\ud800", "k") == []
    assert keydir.keys("s", "\ud800") == []
    assert keydir.location(-(1 << 62)) is None
    assert keydir.location(1 << 62) is None
    assert keydir.is_retained(2) is False
    assert keydir.first_retained_at_or_after(-5) == 3
    assert keydir.first_retained_at_or_after(4) is None
    assert keydir.drop("none", "k", [3]) == []
    assert keydir.drop("s", "none", [3]) == []
    assert keydir.drop("s", "k", [1, 2, 99, -1]) == []
    assert keydir.drop("s", "k", (3,)) == [(1, 50)]  # any iterable of positions
    assert (keydir.facts, keydir.key_count, keydir.store_count) == (0, 0, 0)
    with pytest.raises(KilnError, match="a bug"):
        from kilndb._core import _panic_for_tests

        _panic_for_tests("boom")


def test_drop_ignores_other_keys_positions() -> None:
    keydir = KeyDir()
    keydir.add_many(1, [("s", "a", 1, 10, 5, 1, False, 1.0), ("s", "b", 2, 20, 6, 1, False, 1.0)])
    assert keydir.drop("s", "a", [2]) == []
    assert keydir.is_retained(2)
    assert keydir.drop("s", "a", [1, 1]) == [(1, 5)]
    assert keydir.stores() == ["s"]
    assert keydir.iter_keys("s") == [("b", 2)]
    keydir._check_invariants()


def test_threads_share_a_keydir() -> None:
    keydir = KeyDir()
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            position = 0
            for batch in range(2000):
                facts: list[Fact] = []
                for i in range(50):
                    position += 1
                    facts.append(("s", f"k{i}", position, position, 10, batch + 1, False, 1.0))
                keydir.add_many(1, facts)
                if batch % 20 == 0:
                    keydir.drop_superseded("s")
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                keydir.latest("s", "k1")
                keydir.keys("s", "k", 5)
                keydir.history("s", "k2", 0)
                keydir.location(keydir.last_position)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert keydir.facts == keydir.store_facts("s")
    keydir._check_invariants()


MEMORY_PROBE = """
import json, os
from kilndb._core import KeyDir

def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

count = 1_000_000
before = resident_bytes()
keydir = KeyDir()
for start in range(0, count, 1000):
    keydir.add_many(
        1,
        [
            ("s", f"k{i}", i + 1, 64 + 100 * i, 100, 1, False, 1.7e9 + i / 1000)
            for i in range(start, start + 1000)
        ],
    )
grown = resident_bytes() - before
print(json.dumps({"keys": keydir.key_count, "reported": keydir.memory_bytes(), "grown": grown}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_memory_per_key_at_a_million_keys() -> None:
    """1,000,000 keys of one fact each (store "s", keys "k0".."k999999") take at most 100
    bytes per key, and the process grows by about what ``memory_bytes`` reports. Measured
    in a fresh interpreter, where the allocator has no freed memory to hand back."""
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, check=True
    )
    measured = json.loads(probe.stdout)
    count, reported, grown = measured["keys"], measured["reported"], measured["grown"]
    assert count == 1_000_000
    assert reported <= 100 * count, reported / count
    # Capacity not yet touched is not resident; the allocator and Python keep a little.
    assert 0.7 * reported <= grown <= 1.15 * reported + 8 * 1024 * 1024, (grown, reported)

"""Scuttlebutt metadata: versions not clocks, tombstones, digests, generations."""

from __future__ import annotations

from kilndb.cluster.messages import KeyDelta, KeyEvent
from kilndb.cluster.metadata import MetadataStore


def kinds(events: list[KeyEvent]) -> list[tuple[str, str, object]]:
    return [(e.kind, e.key, e.value) for e in events]


def test_own_writes_take_increasing_versions_and_emit_events() -> None:
    a = MetadataStore("a", 1)
    d1, e1 = a.set("role", "leader")
    d2, e2 = a.set("role", "follower")
    d3, e3 = a.set("role", "follower")
    d4, e4 = a.delete("role")
    assert [d.version for d in (d1, d2, d3, d4)] == [1, 2, 3, 4]
    assert kinds(e1) == [("new_key", "role", "leader")]
    assert kinds(e2) == [("key_changed", "role", "follower")]
    assert e3 == []
    assert kinds(e4) == [("key_removed", "role", "follower")]
    assert d4.deleted and a.get("a", "role") is None and a.items("a") == {}


def test_last_writer_wins_by_version_whatever_the_arrival_order() -> None:
    a, b = MetadataStore("a", 1), MetadataStore("b", 1)
    old, _ = a.set("k", "old")
    new, _ = a.set("k", "new")
    assert b.apply(new) == (True, [KeyEvent("new_key", "a", "k", "new")])
    assert b.apply(old) == (False, [])
    assert b.get("a", "k") == "new"


def test_watermark_moves_only_over_contiguous_versions() -> None:
    a, b = MetadataStore("a", 1), MetadataStore("b", 1)
    deltas = [a.set(f"k{i}", i)[0] for i in range(4)]
    b.apply(deltas[2])
    b.apply(deltas[0])
    assert {d.owner: d.version for d in b.digest()}["a"] == 1  # v2 missing
    b.apply(deltas[1])
    assert {d.owner: d.version for d in b.digest()}["a"] == 3
    assert [d.version for d in a.missing(b.digest())] == [4]


def test_push_pull_fills_gaps_left_by_overwritten_versions() -> None:
    a, b = MetadataStore("a", 1), MetadataStore("b", 1)
    a.set("x", 1)
    a.set("y", 1)
    last, _ = a.set("x", 2)  # v1 is overwritten and will never travel again
    b.apply(last)
    assert {d.owner: d.version for d in b.digest()}["a"] == 0
    missing = a.missing(b.digest())
    assert [d.version for d in missing] == [2, 3]  # in version order
    b.apply_complete(missing, a.digest())
    assert {d.owner: d.version for d in b.digest()}["a"] == 3
    assert a.missing(b.digest()) == ()
    assert b.items("a") == {"x": 2, "y": 1}


def test_tombstones_replicate_and_new_generations_replace_old_runs() -> None:
    a1, b = MetadataStore("a", 1), MetadataStore("b", 1)
    b.apply_complete(a1.missing(b.digest()), a1.digest())
    b.apply(a1.set("gone", 1)[0])
    b.apply(a1.set("kept", 1)[0])
    b.apply(a1.delete("gone")[0])
    assert b.items("a") == {"kept": 1}
    a2 = MetadataStore("a", 2)  # a restarted: fresh counter
    fresh, events = b.apply(a2.set("new", 1)[0])
    assert fresh and kinds(events) == [("key_removed", "kept", 1), ("new_key", "new", 1)]
    stale = KeyDelta("a", 1, "kept", 99, 5, False)
    assert b.apply(stale) == (False, [])
    assert b.items("a") == {"new": 1}


def test_nobody_else_writes_our_keys_and_forget_drops_an_owner() -> None:
    a, b = MetadataStore("a", 1), MetadataStore("b", 1)
    assert a.apply(KeyDelta("a", 1, "k", 10, "forged", False)) == (False, [])
    b.apply(a.set("k", "v")[0])
    assert kinds(b.forget("a")) == [("key_removed", "k", "v")]
    assert b.owners() == ["b"] and b.forget("b") == [] and b.owners() == ["b"]

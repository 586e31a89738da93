"""Scuttlebutt metadata: versions not clocks, tombstones, digests, generations."""

from __future__ import annotations

from kilndb.cluster.messages import Digest, KeyDelta, KeyEvent
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


def replicate(source: MetadataStore, target: MetadataStore) -> list[KeyEvent]:
    """One push-pull leg: ``target`` takes what it lacks of ``source``."""
    return target.apply_complete(source.missing(target.digest()), source.digest())


def test_a_reaped_run_is_refused_from_peers_that_have_not_reaped_it_yet() -> None:
    x, a, b = MetadataStore("x", 1), MetadataStore("a", 1), MetadataStore("b", 1)
    delta, _ = x.set("leader", "yes")
    a.apply(delta)
    b.apply(delta)
    assert kinds(a.forget("x", refuse_until=20.0)) == [("key_removed", "leader", "yes")]
    # b still holds x: neither gossip nor a push-pull brings it back to a
    assert a.apply(delta) == (False, [])
    assert replicate(b, a) == [] and "x" not in a.owners()
    assert all(d.owner != "x" for d in a.digest())
    a.expire(19.9)
    assert a.apply(delta) == (False, [])
    a.expire(20.0)  # the refusal ended: by now every peer has reaped x too
    assert a.apply(delta)[0]


def test_a_newer_run_of_a_reaped_owner_is_taken_at_once() -> None:
    x1, a = MetadataStore("x", 1), MetadataStore("a", 1)
    a.apply(x1.set("k", "old")[0])
    a.forget("x", refuse_until=100.0)
    assert a.apply(KeyDelta("x", 1, "k", 2, "older run", False)) == (False, [])
    x2 = MetadataStore("x", 2)
    fresh, events = a.apply(x2.set("k", "new")[0])
    assert fresh and kinds(events) == [("new_key", "k", "new")]
    assert a.apply(KeyDelta("x", 1, "k", 3, "older run", False)) == (False, [])
    assert a.items("x") == {"k": "new"}


def test_a_reaped_owner_we_held_nothing_of_is_refused_until_it_rejoins() -> None:
    x, a = MetadataStore("x", 5), MetadataStore("a", 1)
    delta, _ = x.set("k", "v")
    assert a.forget("x", refuse_until=100.0) == []
    assert a.apply(delta) == (False, [])  # whatever its run: we do not know which it was
    a.rejoined("x")
    assert a.apply(delta)[0] and a.items("x") == {"k": "v"}


def test_a_digest_with_a_newer_generation_replaces_the_old_run_without_any_key() -> None:
    x1, a, b = MetadataStore("x", 1), MetadataStore("a", 1), MetadataStore("b", 1)
    a.apply(x1.set("stale", 1)[0])
    a.apply(x1.delete("stale")[0])
    a.apply(x1.set("kept", 1)[0])
    x2 = MetadataStore("x", 2)  # x restarted and has set no key yet
    events = replicate(x2, b)  # b knew nothing of x: nothing to learn
    assert events == []
    b.apply(x1.set("kept", 1)[0])  # b picked up an old-run key late
    assert kinds(replicate(x2, b)) == [("key_removed", "kept", 1)]
    assert {d.owner: (d.generation, d.version) for d in b.digest()}["x"] == (2, 0)
    # b passes the news on to a in a push-pull
    assert kinds(replicate(b, a)) == [("key_removed", "kept", 1)]
    assert a.items("x") == {} and {d.owner: d.generation for d in a.digest()}["x"] == 2
    # the new run's keys then arrive with their versions, tombstones included
    x2.set("n", 1)
    x2.delete("n")
    x2.set("m", 2)
    replicate(x2, a)
    assert a.items("x") == {"m": 2}
    assert {d.owner: d.version for d in a.digest()}["x"] == 3
    assert a.missing(x2.digest()) == () and x2.missing(a.digest()) == ()
    assert a.apply(KeyDelta("x", 1, "kept", 9, 1, False)) == (False, [])


def test_a_digest_with_an_older_or_our_own_generation_changes_nothing() -> None:
    a = MetadataStore("a", 3)
    a.apply(KeyDelta("x", 2, "k", 1, "v", False))
    assert a.apply_complete((), (Digest("x", 1, 7), Digest("a", 9, 9))) == []
    assert a.items("x") == {"k": "v"}
    assert {d.owner: (d.generation, d.version) for d in a.digest()} == {
        "a": (3, 0),
        "x": (2, 1),
    }

"""The member table: incarnations heard from packets, and reaping with its metadata."""

from __future__ import annotations

import random
from collections import Counter

from kilndb.cluster import ClusterConfig, MemberEvent, MemberState
from kilndb.cluster import messages as m
from kilndb.cluster.broadcasts import BroadcastQueue
from kilndb.cluster.core import SwimCore
from kilndb.cluster.membership import MemberTable
from kilndb.cluster.metadata import MetadataStore

CFG = ClusterConfig(reap_after=10.0)


class Table:
    """A member table of ``me`` with its queue and metadata at hand."""

    def __init__(self) -> None:
        self.queue = BroadcastQueue(max_size=1000)
        self.metadata = MetadataStore("me", 1)
        self.table = MemberTable(
            "me", "me:1", CFG, random.Random(1), self.queue, self.metadata, Counter()
        )
        self.table.prime([("x", "x:OLD")], 0.0)

    def about(self, name: str) -> list[m.Update]:
        return [u for u in self.queue.pending() if getattr(u, "name", None) == name]

    def events(self) -> list[tuple[str, str]]:
        events = [(e.kind, e.member.name) for e in self.table.events if isinstance(e, MemberEvent)]
        self.table.events.clear()
        return events


def test_a_newer_incarnation_heard_from_a_packet_clears_a_suspicion_and_spreads_nothing() -> None:
    t = Table()
    suspicion = m.Suspect("x", 0, "y")
    t.table.apply(suspicion, 1.0)
    t.events()
    t.table.heard_from("x", 1, 2.0)
    x = t.table.peers["x"]
    assert (x.state, x.incarnation, x.address) == (MemberState.ALIVE, 1, "x:OLD")
    assert "x" not in t.table.suspects
    assert t.events() == [("member_alive", "x")]
    assert t.about("x") == [suspicion]  # no Alive invented at an address we do not know
    t.table.heard_from("x", 1, 3.0)  # nothing newer: nothing happens
    assert t.events() == [] and t.about("x") == [suspicion]


def test_the_members_own_alive_at_the_heard_incarnation_is_still_taken_and_spread() -> None:
    t = Table()
    t.table.heard_from("x", 1, 1.0)  # x restarted on a new port and refuted
    t.events()
    news = m.Alive("x", "x:NEW", 1)
    t.table.apply(news, 2.0)
    assert t.table.peers["x"].address == "x:NEW"
    assert t.about("x") == [news]
    assert t.events() == []  # it was alive already
    # Once confirmed, the usual rule is back: the same incarnation is no news.
    t.table.apply(m.Alive("x", "x:OTHER", 1), 3.0)
    assert t.table.peers["x"].address == "x:NEW"


def test_a_suspicion_at_the_heard_incarnation_is_not_undone_by_the_address() -> None:
    t = Table()
    t.table.heard_from("x", 1, 1.0)
    t.table.apply(m.Suspect("x", 1, "y"), 2.0)
    t.table.apply(m.Alive("x", "x:NEW", 1), 3.0)
    x = t.table.peers["x"]
    assert (x.state, x.address) == (MemberState.SUSPECT, "x:NEW")
    # and a suspicion at a newer incarnation still wants a newer Alive
    t.table.apply(m.Suspect("x", 2, "y"), 4.0)
    t.table.apply(m.Alive("x", "x:THIRD", 2), 5.0)
    assert (x.state, x.address) == (MemberState.SUSPECT, "x:NEW")


def test_otherwise_the_same_incarnation_at_another_address_is_ignored() -> None:
    t = Table()
    t.table.apply(m.Alive("x", "x:NEW", 0), 1.0)
    assert t.table.peers["x"].address == "x:OLD" and t.about("x") == []


def test_a_dead_member_heard_from_at_a_newer_incarnation_is_alive_again() -> None:
    t = Table()
    t.table.apply(m.Dead("x", 0, "y"), 1.0)
    t.events()
    t.table.heard_from("x", 1, 2.0)
    assert t.table.peers["x"].state is MemberState.ALIVE
    assert t.events() == [("member_alive", "x")]
    assert [p.name for p in t.table.live()] == ["x"]
    assert t.table.next_target() is not None


def test_a_restarted_member_on_a_new_port_is_known_there_after_one_push_pull() -> None:
    y = SwimCore("y", "y:1", rng=random.Random(1), now=0, generation=1)
    y.prime([("x", "x:OLD")], 0)
    x = SwimCore("x", "x:NEW", rng=random.Random(2), now=0, generation=2)
    x.prime([("y", "y:1")], 0)
    x.step(m.Packet("z", m.Rumors(), (m.Suspect("x", 0, "z"),)), "z:1", 0)  # x refutes
    assert x.incarnation == 1
    push = m.Packet("x", m.PushPull(x._table.records(), x.metadata.digest(), (), False, False))
    out = y.step(m.Packet("x", push.body, (), x.incarnation), "x:NEW", 1)
    seen = y.member("x")
    assert seen is not None and (seen.address, seen.incarnation) == ("x:NEW", 1)
    assert [u for u in y._queue.pending() if getattr(u, "name", None) == "x"] == [
        m.Alive("x", "x:NEW", 1)
    ]
    assert [o.address for o in out] == ["x:NEW"]


def _core(name: str) -> SwimCore:
    node = SwimCore(name, f"{name}:1", rng=random.Random(1), now=0, generation=1, config=CFG)
    node.prime([(n, f"{n}:1") for n in "abx"], 0)
    return node


def _push_pull(initiator: SwimCore, responder: SwimCore, now: float) -> None:
    """A whole push-pull from ``initiator`` to ``responder``, by hand."""
    request = initiator._push_pull(f"{responder.name}:1").packet
    for reply in responder.step(request, f"{initiator.name}:1", now):
        for last in initiator.step(reply.packet, f"{responder.name}:1", now):
            responder.step(last.packet, f"{initiator.name}:1", now)


def test_a_reaped_members_metadata_does_not_come_back_from_a_peer_that_still_holds_it() -> None:
    a, b, x = _core("a"), _core("b"), _core("x")
    x.set_key("leader", "yes")
    delta = next(u for u in x._queue.pending() if isinstance(u, m.KeyDelta))
    for node in (a, b):
        node.step(m.Packet("x", m.Rumors(), (delta,)), "x:1", 0)
    a._table.apply(m.Dead("x", 0, "a"), 1.0)
    b._table.apply(m.Dead("x", 0, "a"), 3.0)  # b hears of it 2 s later
    a._table.reap(11.5)
    assert a.member("x") is None and a.metadata.get("x", "leader") is None
    _push_pull(b, a, 11.6)  # b has not reaped x yet and offers its keys
    a.step(m.Packet("b", m.Rumors(), (delta,)), "b:1", 11.7)  # or gossips them again
    assert a.metadata.get("x", "leader") is None and "x" not in a.metadata.owners()
    b._table.reap(13.5)
    for t in range(12, 100):
        a._table.reap(float(t))
    assert a.metadata.owners() == ["a"] and b.metadata.owners() == ["b"]


def test_a_reaped_member_that_comes_back_brings_its_metadata_again() -> None:
    t = Table()
    t.metadata.apply(m.KeyDelta("x", 1, "k", 1, "old", False))
    t.table.apply(m.Left("x", 0), 1.0)
    t.table.reap(11.0)
    assert "x" not in t.table.peers and t.metadata.owners() == ["me"]
    assert t.metadata.apply(m.KeyDelta("x", 1, "k", 1, "old", False))[0] is False
    # x restarts: a new run is taken whatever the member table says
    assert t.metadata.apply(m.KeyDelta("x", 2, "k", 1, "new", False))[0]
    assert t.metadata.items("x") == {"k": "new"}
    # a member reaped with no metadata held: refused until it rejoins
    t.table.apply(m.Alive("y", "y:1", 0), 12.0)
    t.table.apply(m.Dead("y", 0, "me"), 12.0)
    t.table.reap(22.0)
    assert t.metadata.apply(m.KeyDelta("y", 7, "k", 1, "v", False))[0] is False
    t.table.apply(m.Alive("y", "y:2", 0), 23.0)
    assert t.metadata.apply(m.KeyDelta("y", 7, "k", 1, "v", False))[0]

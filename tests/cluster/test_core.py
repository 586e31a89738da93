"""One SWIM core fed packets by hand: probes, indirect probes, suspicion, refutation."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from kilndb.cluster import ClusterConfig, MemberEvent, MemberState
from kilndb.cluster import messages as m
from kilndb.cluster.core import SwimCore
from kilndb.cluster.wire import Codec
from kilndb.errors import InvalidArgumentError

CFG = ClusterConfig(probe_interval=1.0)
PEERS = [(f"p{i}", f"10.0.0.{i}:7946") for i in range(1, 6)]


def core(now: float = 0.0) -> SwimCore:
    node = SwimCore("me", "10.0.0.0:7946", rng=random.Random(1), now=now, generation=1, config=CFG)
    node.prime(PEERS, now)
    return node


def run_to_probe(node: SwimCore) -> tuple[float, m.Outgoing]:
    """Tick until the node sends its first ping; (time, the ping)."""
    t = 0.0
    while True:
        t = node.next_deadline()
        pings = [o for o in node.tick(t) if isinstance(o.packet.body, m.Ping)]
        if pings:
            return t, pings[0]


def member_events(node: SwimCore) -> list[tuple[str, str]]:
    return [(e.kind, e.member.name) for e in node.pop_events() if isinstance(e, MemberEvent)]


def test_a_probe_answered_by_an_ack_suspects_nobody() -> None:
    node = core()
    t, ping = run_to_probe(node)
    body = ping.packet.body
    assert isinstance(body, m.Ping) and ping.channel == "udp"
    assert any(isinstance(u, m.Alive) and u.name == "me" for u in ping.packet.updates)
    node.step(m.Packet(body.target, m.Ack(body.seq)), ping.address, t + 0.01)
    out = node.tick(t + CFG.probe_interval)
    assert not any(isinstance(o.packet.body, m.PingReq) for o in out)
    assert node.counters["suspicions"] == 0


def test_no_ack_leads_to_indirect_probes_then_suspicion_then_death() -> None:
    node = core()
    t, ping = run_to_probe(node)
    target = ping.packet.body.target  # type: ignore[union-attr]
    out = node.tick(t + CFG.ack_timeout)
    requests = [o for o in out if isinstance(o.packet.body, m.PingReq)]
    assert len(requests) == CFG.indirect_checks
    assert all(o.packet.body.target == target for o in requests)  # type: ignore[union-attr]
    node.tick(t + CFG.probe_interval)
    assert member_events(node) == [("member_suspect", target)]
    n = node.live_count()
    deadline = t + CFG.probe_interval + CFG.suspicion_deadline(n, 0)
    node.tick(deadline - 0.01)
    assert node.member(target).state is MemberState.SUSPECT  # type: ignore[union-attr]
    node.tick(deadline)
    assert node.member(target).state is MemberState.DEAD  # type: ignore[union-attr]
    assert ("member_dead", target) in member_events(node)
    assert node.counters["declared_dead"] == 1


def test_confirmations_from_others_shorten_the_suspicion() -> None:
    lone, confirmed = core(), core()
    for node in (lone, confirmed):
        node.step(m.Packet("p1", m.Rumors(), (m.Suspect("p5", 0, "p1"),)), "x", 0.0)
    for by in ("p2", "p3"):
        confirmed.step(m.Packet(by, m.Rumors(), (m.Suspect("p5", 0, by),)), "x", 0.0)
    n = lone.live_count()
    assert CFG.suspicion_deadline(n, 0) == CFG.suspicion_max_timeout(n)
    assert CFG.suspicion_deadline(n, 2) == CFG.suspicion_timeout(n)
    t = CFG.suspicion_timeout(n) + 0.01
    lone.tick(t)
    confirmed.tick(t)
    assert confirmed.member("p5").state is MemberState.DEAD  # type: ignore[union-attr]
    assert lone.member("p5").state is MemberState.SUSPECT  # type: ignore[union-attr]


def test_relaying_a_ping_req_acks_or_nacks_the_requester() -> None:
    node = core()
    out = node.step(m.Packet("p1", m.PingReq(77, "p2", "10.0.0.2:7946")), "10.0.0.1:7946", 0.0)
    (ping,) = out
    assert ping.address == "10.0.0.2:7946" and isinstance(ping.packet.body, m.Ping)
    (ack,) = node.step(m.Packet("p2", m.Ack(ping.packet.body.seq)), "10.0.0.2:7946", 0.1)
    assert ack.address == "10.0.0.1:7946" and ack.packet.body == m.Ack(77)
    node.step(m.Packet("p1", m.PingReq(78, "p3", "10.0.0.3:7946")), "10.0.0.1:7946", 1.0)
    nacks = [o for o in node.tick(1.0 + CFG.ack_timeout) if isinstance(o.packet.body, m.Nack)]
    assert [o.packet.body for o in nacks] == [m.Nack(78)]


def test_pings_for_another_name_are_not_acked() -> None:
    node = core()
    assert node.step(m.Packet("p1", m.Ping(3, "someone-else")), "10.0.0.1:7946", 0.0) == []
    (ack,) = node.step(m.Packet("p1", m.Ping(4, "me")), "10.0.0.1:7946", 0.0)
    assert ack.packet.body == m.Ack(4) and ack.address == "10.0.0.1:7946"


@pytest.mark.parametrize(
    "rumour", [m.Suspect("me", 0, "p1"), m.Dead("me", 0, "p1"), m.Left("me", 0)]
)
def test_hearing_itself_suspected_dead_or_left_a_node_refutes(rumour: m.Update) -> None:
    node = core()
    node.step(m.Packet("p1", m.Rumors(), (rumour,)), "x", 0.0)
    assert node.incarnation == 1 and node.counters["refutations"] == 1
    (ack,) = node.step(m.Packet("p1", m.Ping(1, "me")), "x", 0.0)
    assert m.Alive("me", "10.0.0.0:7946", 1) in ack.packet.updates
    assert ack.packet.incarnation == 1
    node.step(m.Packet("p1", m.Rumors(), (m.Suspect("me", 0, "p2"),)), "x", 0.0)
    assert node.incarnation == 1  # an old rumour needs no new refutation


def test_alive_of_a_previous_run_is_refuted_and_stale_states_are_ignored() -> None:
    node = core()
    node.step(m.Packet("p1", m.Rumors(), (m.Alive("me", "10.9.9.9:1", 4),)), "x", 0.0)
    assert node.incarnation == 5
    node.step(m.Packet("p1", m.Rumors(), (m.Dead("p2", 0, "p1"),)), "x", 0.0)
    node.step(m.Packet("p1", m.Rumors(), (m.Alive("p2", "10.0.0.2:7946", 0),)), "x", 0.0)
    assert node.member("p2").state is MemberState.DEAD  # type: ignore[union-attr]
    node.step(m.Packet("p2", m.Ping(1, "me"), (), 1), "x", 0.0)  # p2 itself, refuted
    assert node.member("p2").state is MemberState.ALIVE  # type: ignore[union-attr]
    assert member_events(node) == [("member_dead", "p2"), ("member_alive", "p2")]


def test_goodbye_marks_left_at_once_and_leave_says_goodbye_to_all() -> None:
    node = core()
    node.step(m.Packet("p3", m.Goodbye("p3", 0)), "x", 0.0)
    assert node.member("p3").state is MemberState.LEFT  # type: ignore[union-attr]
    assert member_events(node) == [("member_left", "p3")]
    out = node.leave(1.0)
    assert sorted(o.address for o in out) == sorted(a for n, a in PEERS if n != "p3")
    assert all(o.channel == "tcp" and o.packet.body == m.Goodbye("me", 0) for o in out)
    assert node.tick(5.0) == [] and node.member("me").state is MemberState.LEFT  # type: ignore[union-attr]


def test_hello_is_answered_with_a_push_pull_reply_carrying_the_metadata() -> None:
    node = core()
    node.set_key("role", "leader")
    hello = m.Hello(m.Alive("new", "10.0.0.9:7946", 0), ())
    (reply,) = node.step(m.Packet("new", hello), "10.0.0.9:50000", 0.0)
    body = reply.packet.body
    assert reply.address == "10.0.0.9:7946" and reply.channel == "tcp"
    assert isinstance(body, m.PushPull) and body.reply and body.join
    assert {r.name for r in body.members} == {"me", "new", *(n for n, _ in PEERS)}
    assert [(d.key, d.value) for d in body.deltas] == [("role", "leader")]
    assert ("member_joined", "new") in member_events(node)


def test_piggybacking_fills_a_datagram_but_never_overflows_it() -> None:
    node = core()
    for i in range(300):
        node.step(
            m.Packet("p1", m.Rumors(), (m.Alive(f"x{i:03}", f"10.1.{i // 250}.{i % 250}:1", 0),)),
            "x",
            0.0,
        )
    codec = Codec(b"k", 1)
    _, ping = run_to_probe(node)
    data = codec.seal(ping.packet, "udp")
    assert 1300 < len(data) <= CFG.max_udp_bytes
    assert len(ping.packet.updates) > 10


def test_config_formulas_and_validation() -> None:
    cfg = ClusterConfig()
    assert cfg.ack_timeout == 0.5 and cfg.gossip_every == 0.2 and cfg.push_pull_every == 30.0
    assert cfg.suspicion_timeout(1) == 4.0 and cfg.suspicion_timeout(5) == 4.0
    assert cfg.suspicion_timeout(1000) == pytest.approx(12.0)
    assert cfg.suspicion_max_timeout(100) == pytest.approx(48.0)
    assert cfg.retransmit_limit(9) == 4 and cfg.retransmit_limit(10) == 8
    assert cfg.retransmit_limit(200) == 4 * math.ceil(math.log10(201))
    assert cfg.expected_confirmations(3) == 0 and cfg.suspicion_deadline(3, 0) == 4.0
    assert ClusterConfig(probe_interval=0.1).gossip_every == pytest.approx(0.02)
    bad: dict[str, Any]
    for bad in (
        {"probe_interval": 0},
        {"probe_timeout": 2.0},
        {"gossip_nodes": 0},
        {"suspicion_max_mult": 0.5},
        {"max_udp_bytes": 100},
    ):
        with pytest.raises(InvalidArgumentError):
            ClusterConfig(**bad)


def test_a_probe_cut_short_by_timer_jitter_still_counts_as_failed() -> None:
    # Real timers fire a little early or late: the probe started late, and the next
    # probe is due a hair before ``started + probe_interval``. The unanswered probe must
    # count as failed then, not vanish under the next one.
    node = core()
    scheduled = node.next_deadline()
    while True:
        late = scheduled + 0.03
        pings = [o for o in node.tick(late) if isinstance(o.packet.body, m.Ping)]
        if pings:
            break
        scheduled = node.next_deadline()
    target = pings[0].packet.body.target  # type: ignore[union-attr]
    node.tick(late + CFG.ack_timeout)  # indirect probes go out, nobody answers
    node.tick(scheduled + CFG.probe_interval)  # the next probe is due: 0.03 s "early"
    assert node.counters["suspicions"] == 1
    assert ("member_suspect", target) in member_events(node)


def test_a_probe_started_late_by_a_busy_loop_still_gets_its_whole_interval() -> None:
    node = core()
    scheduled = node.next_deadline()
    while True:
        late = scheduled + 0.6  # longer than the ack timeout
        pings = [o for o in node.tick(late) if isinstance(o.packet.body, m.Ping)]
        if pings:
            break
        scheduled = node.next_deadline()
    out = node.tick(scheduled + CFG.probe_interval)  # the schedule says: next probe
    assert not any(isinstance(o.packet.body, m.Ping) for o in out)
    assert node.counters["suspicions"] == 0  # not failed: it had only 0.4 s
    assert node.next_deadline() <= late + CFG.probe_interval
    out = node.tick(late + CFG.ack_timeout)
    assert any(isinstance(o.packet.body, m.PingReq) for o in out)  # indirect probes too
    node.tick(late + CFG.probe_interval)
    assert node.counters["suspicions"] == 1


def test_a_leaving_node_has_nothing_scheduled_and_gossip_hooks_fire_every_round() -> None:
    node = core()
    assert node.gossip_due(node.next_deadline() + CFG.gossip_every)  # even with no news
    node.leave(0.0)
    assert node.next_deadline() == math.inf and not node.gossip_due(1e9)

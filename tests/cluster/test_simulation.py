"""Many cores on a simulated network with a fake clock (nothing here sleeps).

The bounds asserted are the protocol's, computed from the configuration: metadata
spreads within ``log2 N + ln N`` gossip rounds (push gossip's bound), and a crashed
member is declared dead by everyone within :meth:`ClusterConfig.detection_bound`.
"""

from __future__ import annotations

import math

import pytest

from kilndb.cluster import ClusterConfig, MemberState
from kilndb.cluster.simulation import SimulatedCluster

CFG = ClusterConfig()


def push_gossip_bound(n: int) -> float:
    return math.log2(n) + math.log(n)


@pytest.mark.parametrize("n", [50, 200])
def test_metadata_reaches_every_node_within_log_n_rounds(n: int) -> None:
    sim = SimulatedCluster(n, seed=n, config=CFG)
    sim.run_for(2.0)
    for owner in ("n1", f"n{n // 2}", f"n{n - 1}"):
        sim.nodes[owner].set_key("leads", ["db1", owner])
        start = sim.now

        def spread(o: str = owner) -> bool:
            return sim.everyone_has(o, "leads", ["db1", o])

        assert sim.run_until(start + 30, spread, every=0.01)
        rounds = (sim.now - start) / CFG.gossip_every
        assert rounds <= push_gossip_bound(n), (owner, rounds)


@pytest.mark.parametrize("n", [50, 200])
def test_a_killed_node_is_declared_dead_by_all_within_the_swim_bound(n: int) -> None:
    sim = SimulatedCluster(n, seed=n + 1, config=CFG)
    sim.run_for(3.0)
    sim.kill("n7")
    killed = sim.now
    bound = CFG.detection_bound(n)
    assert sim.run_until(
        killed + bound, lambda: sim.everyone_sees("n7", MemberState.DEAD), every=0.1
    )
    seen = sim.first_seen("member_dead", "n7")
    assert set(seen) == set(sim.live())
    assert max(seen.values()) - killed <= bound
    assert min(sim.first_seen("member_suspect", "n7").values()) - killed > 0
    assert {o.event.member.name for o in sim.declared("member_dead")} == {"n7"}  # type: ignore[union-attr]


def test_no_healthy_node_is_declared_dead_at_ten_percent_loss() -> None:
    sim = SimulatedCluster(20, seed=7, loss=0.10, config=CFG)
    sim.run_for(1000 * CFG.probe_interval)
    assert sim.stats["lost"] > 0.09 * sim.stats["sent_udp"]
    assert len(sim.declared("member_suspect")) > 0  # loss did cause false suspicions…
    assert sim.declared("member_dead") == []  # …every one of them refuted in time
    assert sum(c.counters["refutations"] for c in sim.nodes.values()) > 0
    assert all(sim.everyone_sees(name, MemberState.ALIVE) for name in sim.live())


def test_a_partition_heals_and_both_sides_converge() -> None:
    sim = SimulatedCluster(20, seed=11, config=CFG)
    sim.run_for(2.0)
    left, right = [f"n{i}" for i in range(10)], [f"n{i}" for i in range(10, 20)]
    sim.partition(left, right)
    sim.nodes["n1"].set_key("side", "left")
    sim.nodes["n15"].set_key("side", "right")

    def split() -> bool:
        return all(sim.everyone_sees(x, MemberState.DEAD, among=left) for x in right) and all(
            sim.everyone_sees(x, MemberState.DEAD, among=right) for x in left
        )

    assert sim.run_until(sim.now + CFG.detection_bound(20) * 2, split, every=0.5)
    assert not sim.everyone_has("n15", "side", "right")
    sim.heal()

    def whole() -> bool:
        return (
            all(sim.everyone_sees(x, MemberState.ALIVE) for x in sim.live())
            and sim.everyone_has("n1", "side", "left")
            and sim.everyone_has("n15", "side", "right")
        )

    # Rediscovery waits for push-pulls with dead members, one per node per interval.
    assert sim.run_until(sim.now + 3 * CFG.push_pull_every, whole, every=0.5)


def test_a_restarted_node_refutes_with_a_higher_incarnation_and_new_metadata() -> None:
    sim = SimulatedCluster(20, seed=12, config=CFG)
    sim.nodes["n4"].set_key("role", "old")
    sim.run_for(3.0)
    assert sim.everyone_has("n4", "role", "old")
    sim.kill("n4")
    assert sim.run_until(
        sim.now + CFG.detection_bound(20),
        lambda: sim.everyone_sees("n4", MemberState.DEAD),
        every=0.1,
    )
    dead_at = sim.nodes["n0"].member("n4").incarnation  # type: ignore[union-attr]
    fresh = sim.restart("n4")
    assert fresh.incarnation == 0
    fresh.set_key("role", "new")

    def back() -> bool:
        return sim.everyone_sees("n4", MemberState.ALIVE) and sim.everyone_has("n4", "role", "new")

    assert sim.run_until(sim.now + 10, back, every=0.05)
    assert fresh.incarnation > dead_at
    assert all(sim.nodes[o].member("n4").incarnation == fresh.incarnation for o in sim.live())  # type: ignore[union-attr]
    assert len(sim.first_seen("member_alive", "n4")) == 19


def test_goodbye_marks_the_member_left_everywhere_at_once() -> None:
    sim = SimulatedCluster(50, seed=13, config=CFG)
    sim.run_for(2.0)
    sim.leave("n9")
    said = sim.now
    assert sim.run_until(
        said + 0.05, lambda: sim.everyone_sees("n9", MemberState.LEFT), every=0.001
    )
    assert sim.declared("member_suspect") == [] and sim.declared("member_dead") == []
    sim.run_for(10.0)
    assert sim.everyone_sees("n9", MemberState.LEFT)


def test_joining_through_one_seed_over_the_real_wire_format() -> None:
    sim = SimulatedCluster(30, seed=14, config=CFG, bootstrap="join", through_wire=True)

    def converged() -> bool:
        return all(sim.everyone_sees(x, MemberState.ALIVE) for x in sim.live())

    assert sim.run_until(20.0, converged, every=0.1)
    sim.nodes["n3"].set_key("big", "x" * 300)
    assert sim.run_until(sim.now + 5, lambda: sim.everyone_has("n3", "big", "x" * 300), every=0.05)
    assert 0 < sim.largest_udp <= CFG.max_udp_bytes
    assert not any(k.startswith("dropped") for k in sim.stats)


def test_dead_members_are_reaped_with_their_metadata() -> None:
    cfg = ClusterConfig(reap_after=20.0)
    sim = SimulatedCluster(10, seed=15, config=cfg)
    sim.nodes["n2"].set_key("k", 1)
    sim.run_for(3.0)
    sim.kill("n2")
    assert sim.run_until(
        sim.now + 60, lambda: all(sim.view(o, "n2") is None for o in sim.live()), every=0.5
    )
    assert all(sim.nodes[o].metadata.items("n2") == {} for o in sim.live())

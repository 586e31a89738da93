#!/usr/bin/env python3
"""Gossip benchmark: convergence and failure detection, simulated and on loopback.

Rows:

1. metadata convergence for 10, 50, 200 and 1,000 simulated nodes (a converged cluster,
   one node publishes a key; gossip rounds until every node holds it, averaged over
   three publishers) beside the push-gossip bound ``log2 N + ln N``;
2. failure detection (simulated, 0 %, 5 %, 10 % UDP loss): one node crashes; seconds
   until the first suspicion and until every node has declared it dead, beside the
   configured SWIM bound; then the false-positive rate, healthy nodes declared dead over
   many probe rounds;
3. on loopback, 5 agents each: the time from SIGKILL of one member until all 4 others
   report it dead — KilnDB (5 ``python -m kilndb.cluster`` processes) against HashiCorp
   Serf (5 ``serf agent`` processes; installed with apt-get if missing, except in
   ``--smoke``). Both use memberlist's LAN profile: probe every 1 s, 500 ms probe
   timeout, suspicion multiplier 4 (6 times that unconfirmed), gossip every 200 ms to 3 nodes.

    python bench/cluster.py            # full run (``make bench``)
    python bench/cluster.py --smoke    # small sizes, about half a minute
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from statistics import mean

import orjson

from kilndb.cluster import ClusterConfig, MemberState
from kilndb.cluster.simulation import SimulatedCluster
from server import (
    Cell,
    Processes,
    Report,
    Target,
    ensure_installed,
    free_port,
    log,
    render,
)

ISSUE = "6"
HOST = "127.0.0.1"
LAN = ClusterConfig()  # memberlist's LAN defaults, as Serf uses them


@dataclass(frozen=True)
class Sizes:
    convergence: tuple[int, ...]
    detection_n: int
    fp_n: int
    fp_rounds: int
    trials: int  # kills per loopback side


FULL = Sizes((10, 50, 200, 1000), 50, 50, 500, 5)
SMOKE = Sizes((10, 50), 20, 10, 100, 1)


# -- simulated -----------------------------------------------------------------------


def convergence(n: int) -> tuple[float, float]:
    """(mean gossip rounds, mean simulated seconds) for one key to reach all nodes."""
    sim = SimulatedCluster(n, seed=n, config=LAN)
    sim.run_for(2.0)
    times = []
    for owner in ("n1", f"n{n // 2}", f"n{n - 1}"):
        sim.nodes[owner].set_key("leads", owner)
        start = sim.now

        def spread(o: str = owner) -> bool:
            return sim.everyone_has(o, "leads", o)

        if not sim.run_until(start + 60, spread, every=0.01):
            raise RuntimeError(f"N={n}: {owner}'s key did not converge in 60 simulated s")
        times.append(sim.now - start)
    seconds = mean(times)
    return seconds / LAN.gossip_every, seconds


def detection(n: int, loss: float, trials: int = 3) -> tuple[float, float]:
    """(mean seconds to first suspicion, mean seconds until all declare dead)."""
    first, everyone = [], []
    for trial in range(trials):
        sim = SimulatedCluster(n, seed=1000 + trial, loss=loss, config=LAN)
        sim.run_for(3.0)
        victim = f"n{trial + 1}"
        sim.kill(victim)
        killed = sim.now

        def dead(v: str = victim, s: SimulatedCluster = sim) -> bool:
            return s.everyone_sees(v, MemberState.DEAD)

        if not sim.run_until(killed + 10 * LAN.detection_bound(n), dead, every=0.05):
            raise RuntimeError(f"N={n} loss {loss}: {victim} not declared dead by all")
        first.append(min(sim.first_seen("member_suspect", victim).values()) - killed)
        everyone.append(sim.now - killed)
    return mean(first), mean(everyone)


def false_positives(n: int, loss: float, rounds: int) -> tuple[int, int]:
    """(healthy members declared dead, probes sent) over ``rounds`` probe intervals."""
    sim = SimulatedCluster(n, seed=77, loss=loss, config=LAN)
    sim.run_for(rounds * LAN.probe_interval)
    probes = sum(core.counters["probes"] for core in sim.nodes.values())
    return len(sim.declared("member_dead")), probes


# -- loopback agents -----------------------------------------------------------------


class Follower:
    """Every line an agent prints, with the time it arrived (read by a thread)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.args = proc.args
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                with self._changed:
                    self.lines.append((time.time(), line))
                    self._changed.notify_all()

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, needle: str, timeout: float) -> tuple[float, str]:
        """(arrival time, line) of the first line containing ``needle``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for arrived, line in self.lines:
                    if needle in line:
                        return arrived, line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.args!r} did not print {needle!r} in {timeout:.0f} s")
                self._changed.wait(left)


class Agents:
    """Five agents of one kind; each one's stdout followed line by line."""

    def __init__(self, procs: Processes, kind: str) -> None:
        self.procs, self.kind = procs, kind
        self.outputs: dict[str, Follower] = {}
        self.popen: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str, port: int, seed_port: int | None) -> None:
        if self.kind == "kiln":
            args = [sys.executable, "-m", "kilndb.cluster", "--name", name]
            args += ["--bind", f"{HOST}:{port}", "--probe-interval", "1.0"]
            args += ["--suspicion-mult", "4", "--cluster-key", "bench"]
            if seed_port is not None:
                args += ["--join", f"{HOST}:{seed_port}"]
        else:
            args = ["serf", "agent", "-node", name, "-bind", f"{HOST}:{port}"]
            args += ["-rpc-addr", f"{HOST}:{free_port()}", "-log-level", "info"]
            if seed_port is not None:
                args += ["-join", f"{HOST}:{seed_port}"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = self.procs.start(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.popen[name] = proc
        self.outputs[name] = Follower(proc)

    def wait_line(self, name: str, needle: str, timeout: float) -> float:
        """time.time() when agent ``name`` printed a line with ``needle`` (KilnDB agents
        stamp their lines; Serf's are stamped on arrival)."""
        arrived, line = self.outputs[name].wait_for(needle, timeout)
        if self.kind == "kiln":
            return float(orjson.loads(line)["t"])
        return arrived

    def joined(self, other: str) -> str:
        if self.kind == "kiln":
            return f'"event":"member_joined","member":"{other}"'
        return f"EventMemberJoin: {other} "

    def failed(self, victim: str) -> str:
        if self.kind == "kiln":
            return f'"event":"member_dead","member":"{victim}"'
        return f"EventMemberFailed: {victim} "


def kill_detection(procs: Processes, kind: str) -> float:
    """Seconds from SIGKILL of one of 5 agents until the 4 others all report it dead."""
    agents = Agents(procs, kind)
    names = [f"{kind[0]}{i}" for i in range(5)]
    ports = [free_port() for _ in names]
    for i, name in enumerate(names):
        agents.start(name, ports[i], ports[0] if i else None)
        agents.wait_line(name, '"event":"ready"' if kind == "kiln" else "agent running", 30)
    for name in names:
        for other in names:
            if other != name:
                agents.wait_line(name, agents.joined(other), 30)
    time.sleep(2.0)  # let every agent settle into its probe rhythm (not a measurement)
    victim = names[-1]
    killed = time.time()
    agents.popen[victim].send_signal(signal.SIGKILL)
    seen = [agents.wait_line(name, agents.failed(victim), 120) for name in names[:-1]]
    procs.stop_all()
    return max(seen) - killed


# -- the run -------------------------------------------------------------------------


def run(sizes: Sizes, smoke: bool, procs: Processes) -> Report:
    report = Report()
    for n in sizes.convergence:
        log(f"convergence, N={n}")
        rounds, seconds = convergence(n)
        bound = math.log2(n) + math.log(n)
        report.targets.append(
            Target(
                rounds <= bound,
                f"N={n:,}: convergence within log2 N + ln N rounds",
                f"{rounds:.1f}",
            )
        )
        report.add(
            f"metadata convergence, N={n:,} (simulated, gossip every 200 ms)",
            f"{rounds:.1f} rounds = {seconds * 1000:,.0f} ms",
            [("push-gossip bound log2 N + ln N", f"{bound:.1f} rounds")],
        )
    n = sizes.detection_n
    for loss in (0.0, 0.05, 0.10):
        log(f"failure detection, N={n}, {loss:.0%} loss")
        first, everyone = detection(n, loss)
        bound = LAN.detection_bound(n)
        report.targets.append(
            Target(
                everyone <= bound,
                f"{loss:.0%} loss: all declare dead within the SWIM bound",
                f"{everyone:.1f} s",
            )
        )
        report.add(
            f"failure detection, N={n}, {loss:.0%} loss (simulated): first suspicion / all dead",
            f"{first:.1f} s / {everyone:.1f} s",
            [("SWIM bound from the config", f"{LAN.detection_bound(n):.1f} s")],
        )
    n = sizes.fp_n
    for loss in (0.0, 0.05, 0.10):
        log(f"false positives, N={n}, {loss:.0%} loss")
        wrong, probes = false_positives(n, loss, sizes.fp_rounds)
        report.targets.append(
            Target(wrong == 0, f"{loss:.0%} loss: no healthy node declared dead", str(wrong))
        )
        report.add(
            f"false positives, N={n}, {loss:.0%} loss, {sizes.fp_rounds:,} probe rounds",
            f"{wrong} dead of {probes:,} probes",
            [],
        )
    label = "killed member seen dead by all 4 others, 5 agents on loopback (probe 1 s, mult 4)"
    times = []
    for trial in range(sizes.trials):
        log(f"loopback: KilnDB agents, trial {trial + 1}")
        times.append(kill_detection(procs, "kiln"))
    reason = ensure_installed("serf", "serf", smoke)
    serf_times: list[float] = []
    peer_name = "HashiCorp Serf"
    if not reason:
        version = subprocess.run(["serf", "version"], capture_output=True, text=True, check=False)
        peer_name = f"HashiCorp Serf {(version.stdout.split() or ['?'])[0]}, LAN profile"
        for trial in range(sizes.trials):
            log(f"loopback: Serf agents, trial {trial + 1}")
            serf_times.append(kill_detection(procs, "serf"))
    kills = f"{sizes.trials} kill{'s' if sizes.trials > 1 else ''}"
    for what, pick in (("mean", mean), ("slowest", max)):
        kiln = Cell(pick(times) * 1000, "ms")
        peer: Cell | str = Cell(pick(serf_times) * 1000, "ms") if serf_times else reason
        report.add(f"{label}, {what} of {kills}", kiln, [(peer_name, peer)])
        if what == "mean" and isinstance(peer, Cell):
            ratio = peer.value / kiln.value
            report.targets.append(
                Target(
                    ratio >= 1 / 1.5,
                    "loopback detection (mean) within 1.5x of Serf's",
                    f"{ratio:.2f}x",
                )
            )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="small sizes, about half a minute")
    options = parser.parse_args(argv)
    sizes = SMOKE if options.smoke else FULL
    procs = Processes()

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        report = run(sizes, options.smoke, procs)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)
    print(render(report, issue=ISSUE))
    return 0


if __name__ == "__main__":
    sys.exit(main())

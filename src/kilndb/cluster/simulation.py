"""A deterministic simulated network that drives many :class:`SwimCore` nodes.

No sockets, no threads, no real time: a fake clock jumps from one event to the next
(a packet arriving, a node's timer), packets get a random latency and, over "UDP", a
random chance of loss; TCP packets are never lost but cannot cross a partition or reach
a stopped node. Everything is drawn from one seeded ``random.Random``, so a run is
reproducible. The tests and ``bench/cluster.py`` use it to measure convergence and
failure detection for hundreds of nodes in seconds.

With ``through_wire=True`` every packet is sealed and opened by a real :class:`Codec`
(slower; proves that what the core emits fits and survives the wire format).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kilndb.cluster.config import ClusterConfig
from kilndb.cluster.core import Event, SwimCore
from kilndb.cluster.messages import MemberEvent, MemberState, Outgoing, Packet
from kilndb.cluster.wire import Codec, WireError

__all__ = ["Observed", "SimulatedCluster"]


@dataclass(frozen=True, slots=True)
class Observed:
    """An event one node emitted at a simulated time."""

    time: float
    observer: str
    event: Event


class SimulatedCluster:
    """``size`` nodes named ``n0``… on a fake network.

    ``bootstrap="full"`` starts every node knowing every other (a converged cluster,
    cheap for large N); ``"join"`` starts each node alone and has it join through
    ``n0`` at a random moment of the first probe interval.
    """

    def __init__(
        self,
        size: int,
        *,
        config: ClusterConfig | None = None,
        seed: int = 0,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.0005, 0.003),
        bootstrap: str = "full",
        through_wire: bool = False,
    ) -> None:
        self.config = config or ClusterConfig()
        self.rng = random.Random(seed)
        self.loss = loss
        self.latency = latency
        self.now = 0.0
        self.through_wire = through_wire
        self.nodes: dict[str, SwimCore] = {}
        self.codecs: dict[str, Codec] = {}
        self.down: set[str] = set()
        self.groups: dict[str, int] | None = None
        self.log: list[Observed] = []
        self.stats: Counter[str] = Counter()
        self.largest_udp = 0
        self._generation: Counter[str] = Counter()
        self._by_address: dict[str, str] = {}
        self._packets: list[tuple[float, int, str, Packet | bytes, str, str]] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._wakeups: list[tuple[float, int, str]] = []
        self._ids = itertools.count()
        names = [f"n{i}" for i in range(size)]
        for name in names:
            self._boot(name)
        if bootstrap == "full":
            everyone = [(name, self.address(name)) for name in names]
            for core in self.nodes.values():
                core.prime(everyone, 0.0)
        else:
            for name in names[1:]:
                self.at(self.rng.uniform(0, self.config.probe_interval), self._joiner(name))

    # -- nodes -----------------------------------------------------------------------

    @staticmethod
    def address(name: str) -> str:
        return f"{name}.sim:7946"

    def _boot(self, name: str) -> SwimCore:
        self._generation[name] += 1
        core = SwimCore(
            name,
            self.address(name),
            rng=random.Random(self.rng.random()),
            now=self.now,
            generation=self._generation[name],
            config=self.config,
        )
        self.nodes[name] = core
        self._by_address[core.address] = name
        if self.through_wire:
            self.codecs[name] = Codec(b"sim-key", self._generation[name])
        self.down.discard(name)
        self._wake(name)
        return core

    def _joiner(self, name: str, seed: str = "n0") -> Callable[[], None]:
        def join() -> None:
            if name not in self.down:
                self._send(name, self.nodes[name].join([self.address(seed)], self.now))

        return join

    def kill(self, name: str) -> None:
        """Stop ``name`` without a goodbye (a crash): its packets are lost from now on."""
        self.down.add(name)

    def restart(self, name: str, seed: str = "n0") -> SwimCore:
        """Start ``name`` again as a new run (new generation, incarnation 0) and join."""
        core = self._boot(name)
        self._joiner(name, seed)()
        return core

    def leave(self, name: str) -> None:
        """``name`` says goodbye and stops."""
        self._send(name, self.nodes[name].leave(self.now))
        self.down.add(name)

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the network between ``groups`` (nodes in no group are in group -1)."""
        self.groups = {name: i for i, group in enumerate(groups) for name in group}

    def heal(self) -> None:
        self.groups = None

    def live(self) -> list[str]:
        return [name for name in self.nodes if name not in self.down]

    def view(self, observer: str, name: str) -> MemberState | None:
        """``name``'s state as ``observer`` sees it (None: unknown)."""
        member = self.nodes[observer].member(name)
        return None if member is None else member.state

    # -- running ---------------------------------------------------------------------

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` at simulated time ``when`` (scheduled as a pseudo-packet)."""
        heapq.heappush(self._timers, (when, next(self._ids), action))

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(
        self, end: float, stop: Callable[[], bool] | None = None, every: float = 0.0
    ) -> bool:
        """Advance the clock to ``end``; with ``stop``, check it every ``every`` seconds
        (and at the end) and return True as soon as it holds (the clock stays there)."""
        check_at = self.now + every if stop is not None else math.inf
        while True:
            t_packet = self._packets[0][0] if self._packets else math.inf
            t_node = self._wakeups[0][0] if self._wakeups else math.inf
            t_timer = self._timers[0][0] if self._timers else math.inf
            t = min(t_packet, t_node, t_timer, check_at)
            if t > end:
                self.now = max(self.now, end)
                return stop() if stop is not None else False
            self.now = max(self.now, t)
            if t == check_at:
                assert stop is not None
                if stop():
                    return True
                check_at = self.now + every if every > 0 else math.inf
            elif t == t_timer:
                heapq.heappop(self._timers)[2]()
            elif t == t_packet:
                _, _, name, packet, source, channel = heapq.heappop(self._packets)
                self._deliver(name, packet, source, channel)
            else:
                _, _, name = heapq.heappop(self._wakeups)
                core = self.nodes[name]
                if name not in self.down and core.next_deadline() <= self.now:
                    self._send(name, core.tick(self.now))
                    self._wake(name)

    def _deliver(self, name: str, item: Packet | bytes, source: str, channel: str) -> None:
        if name in self.down:
            return
        core = self.nodes[name]
        if isinstance(item, bytes):
            try:
                item = self.codecs[name].open(item, "udp" if channel == "udp" else "tcp")
            except WireError as exc:
                self.stats[f"dropped_{exc.reason}"] += 1
                return
        self.stats["delivered"] += 1
        self._send(name, core.step(item, source, self.now))
        self._wake(name)

    def _send(self, sender: str, outgoing: list[Outgoing]) -> None:
        self._collect(sender)
        for out in outgoing:
            self.stats[f"sent_{out.channel}"] += 1
            dest = self._by_address.get(out.address)
            if dest is None or dest in self.down or (sender in self.down and out.channel == "udp"):
                self.stats["unreachable"] += 1
                continue
            if self.groups is not None and self.groups.get(dest, -1) != self.groups.get(sender, -1):
                self.stats["partitioned"] += 1
                continue
            if out.channel == "udp" and self.rng.random() < self.loss:
                self.stats["lost"] += 1
                continue
            item: Packet | bytes = out.packet
            if self.through_wire:
                item = self.codecs[sender].seal(out.packet, out.channel)
                if out.channel == "udp":
                    self.largest_udp = max(self.largest_udp, len(item))
            delay = self.rng.uniform(*self.latency) * (3 if out.channel == "tcp" else 1)
            entry = (
                self.now + delay,
                next(self._ids),
                dest,
                item,
                self.address(sender),
                out.channel,
            )
            heapq.heappush(self._packets, entry)

    def _wake(self, name: str) -> None:
        deadline = max(self.nodes[name].next_deadline(), self.now + 1e-9)
        heapq.heappush(self._wakeups, (deadline, next(self._ids), name))

    def _collect(self, name: str) -> None:
        for event in self.nodes[name].pop_events():
            self.log.append(Observed(self.now, name, event))

    # -- observations ----------------------------------------------------------------

    def first_seen(self, kind: str, name: str) -> dict[str, float]:
        """For each observer, when it first emitted ``kind`` about member ``name``."""
        seen: dict[str, float] = {}
        for o in self.log:
            e = o.event
            if isinstance(e, MemberEvent) and e.kind == kind and e.member.name == name:
                seen.setdefault(o.observer, o.time)
        return seen

    def declared(self, kind: str) -> list[Observed]:
        """Every member event of ``kind``."""
        return [o for o in self.log if isinstance(o.event, MemberEvent) and o.event.kind == kind]

    def everyone_sees(
        self, name: str, state: MemberState, among: Iterable[str] | None = None
    ) -> bool:
        """Whether every live node (or every node of ``among``) sees ``name`` in ``state``."""
        observers = [o for o in (among or self.live()) if o != name and o not in self.down]
        return all(self.view(o, name) is state for o in observers)

    def everyone_has(
        self, owner: str, key: str, value: object, among: Iterable[str] | None = None
    ) -> bool:
        """Whether every live node holds ``owner``'s ``key`` at ``value``."""
        observers = among or self.live()
        return all(self.nodes[o].metadata.get(owner, key) == value for o in observers)

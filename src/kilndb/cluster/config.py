"""Tuning of the gossip protocol: one typed object, and the timeouts derived from it.

The defaults are memberlist's LAN profile (what HashiCorp Serf and Consul use): a probe
every second with a 500 ms ack timeout, three indirect probes, a suspicion timeout of
``4 · max(1, log10 N) · probe_interval`` that starts six times longer and shrinks as
other members confirm the suspicion (Lifeguard), a gossip round every 200 ms to three
members, and a full push-pull every 30 probe intervals. The intervals that are not set
scale with ``probe_interval``, so a test can run the whole protocol ten times faster by
setting that one number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kilndb.errors import InvalidArgumentError

__all__ = ["ClusterConfig"]


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Protocol parameters; every member of a cluster should use the same ones.

    Attributes:
        probe_interval: seconds between two probes sent by one node.
        probe_timeout: seconds to wait for a direct ack before asking others to probe
            (default ``probe_interval / 2``).
        indirect_checks: members asked to probe indirectly (SWIM's *k*).
        suspicion_mult: the suspicion timeout is ``suspicion_mult · max(1, log10 N) ·
            probe_interval`` once enough members have confirmed the suspicion.
        suspicion_max_mult: the timeout of an unconfirmed suspicion, as a multiple of
            the above.
        retransmit_mult: an update is sent ``retransmit_mult · ceil(log10(N + 1))``
            times by every node that learns it.
        gossip_interval: seconds between gossip rounds (default ``probe_interval / 5``:
            200 ms with the default probe interval; Pokan's ``gossip_every`` defaults to
            1 s, but SWIM spreads its rumours on these rounds, and memberlist's 200 ms is
            what the failure-detection bounds are worked out for).
        gossip_nodes: members a gossip round is sent to.
        push_pull_interval: seconds between full-state syncs with a random member
            (default ``30 · probe_interval``); dead members are retried as often.
        reap_after: seconds a dead or left member (and its metadata) stays listed.
        max_udp_bytes: the largest datagram sent or accepted.
        max_tcp_bytes: the largest TCP frame sent or accepted.
    """

    probe_interval: float = 1.0
    probe_timeout: float | None = None
    indirect_checks: int = 3
    suspicion_mult: float = 4.0
    suspicion_max_mult: float = 6.0
    retransmit_mult: int = 4
    gossip_interval: float | None = None
    gossip_nodes: int = 3
    push_pull_interval: float | None = None
    reap_after: float = 3600.0
    max_udp_bytes: int = 1400
    max_tcp_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        """Check the values.

        Raises:
            InvalidArgumentError: a non-positive (or infinite) interval or count, a probe
                timeout not shorter than the probe interval, or a size limit too small
                for a packet.
        """
        if self.probe_interval <= 0:
            raise InvalidArgumentError("probe_interval must be > 0")
        if not 0 < self.ack_timeout < self.probe_interval:
            raise InvalidArgumentError("probe_timeout must be > 0 and < probe_interval")
        for name, seconds in (
            ("gossip_interval", self.gossip_every),
            ("push_pull_interval", self.push_pull_every),
            ("reap_after", self.reap_after),
        ):
            if not 0 < seconds < math.inf:
                raise InvalidArgumentError(
                    f"{name} must be a number of seconds > 0, not {seconds!r}"
                )
        if self.indirect_checks < 0 or self.gossip_nodes < 1 or self.retransmit_mult < 1:
            raise InvalidArgumentError("indirect_checks >= 0, gossip_nodes and retransmit >= 1")
        if self.suspicion_mult <= 0 or self.suspicion_max_mult < 1:
            raise InvalidArgumentError("suspicion_mult > 0 and suspicion_max_mult >= 1")
        if self.max_udp_bytes < 512 or self.max_tcp_bytes < self.max_udp_bytes:
            raise InvalidArgumentError("max_udp_bytes >= 512 and max_tcp_bytes >= it")

    @property
    def ack_timeout(self) -> float:
        """Seconds to wait for a direct ack."""
        return self.probe_timeout if self.probe_timeout is not None else self.probe_interval / 2

    @property
    def gossip_every(self) -> float:
        """Seconds between gossip rounds."""
        if self.gossip_interval is not None:
            return self.gossip_interval
        return self.probe_interval / 5

    @property
    def push_pull_every(self) -> float:
        """Seconds between push-pulls."""
        if self.push_pull_interval is not None:
            return self.push_pull_interval
        return self.probe_interval * 30

    def suspicion_timeout(self, members: int) -> float:
        """The shortest suspicion timeout in a cluster of ``members`` (fully confirmed)."""
        scale = max(1.0, math.log10(max(1, members)))
        return self.suspicion_mult * scale * self.probe_interval

    def suspicion_max_timeout(self, members: int) -> float:
        """The timeout of a suspicion nobody else has confirmed."""
        return self.suspicion_max_mult * self.suspicion_timeout(members)

    def expected_confirmations(self, members: int) -> int:
        """How many independent suspicions bring the timeout down to its minimum."""
        k = int(self.suspicion_mult) - 2
        return k if members - 2 >= k else 0

    def suspicion_deadline(self, members: int, confirmations: int) -> float:
        """Seconds from the start of a suspicion to declaring death (Lifeguard's formula:
        from the maximum down to the minimum as ``log(confirmations + 1)`` grows)."""
        low, high = self.suspicion_timeout(members), self.suspicion_max_timeout(members)
        k = self.expected_confirmations(members)
        if k < 1:
            return low
        fraction = math.log(confirmations + 1) / math.log(k + 1)
        return max(low, high - fraction * (high - low))

    def retransmit_limit(self, members: int) -> int:
        """How many times each node sends one update."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(members + 1)))

    def detection_bound(self, members: int) -> float:
        """Seconds within which, with high probability, every healthy member has declared
        a crashed one dead: a few probe periods until someone probes it (round robin
        over shuffled members), the failed probe, the longest suspicion, and the
        retransmissions that spread the verdict."""
        first_probe = min(max(1, members - 1), 5) * self.probe_interval
        spread = (self.retransmit_limit(members) + 2) * self.gossip_every
        return first_probe + self.probe_interval + self.suspicion_max_timeout(members) + spread

"""A stand-alone gossip agent: ``python -m kilndb.cluster --name n1 --bind HOST:PORT``.

It binds UDP on ``--bind`` and TCP on ``--tcp-port`` (default: the same port), joins
the seeds given with ``--join`` (their TCP ``HOST:PORT``), publishes ``--set
key=value`` pairs, and prints one JSON line per event on stdout — ``{"event":
"start", ...}`` with its addresses, ports, role, gossip interval and seeds, then
``{"event": "ready", ...}``, every member and key event with the agent's whole member
view, and ``{"event": "shutdown", ...}`` and ``{"event": "stopped", ...}`` at the end —
so that a benchmark or an operator can follow it. SIGTERM, SIGINT or SIGQUIT make it
leave gracefully (a goodbye to every member) and exit 0; SIGKILL is a crash the
others detect.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from kilndb.cluster.config import ClusterConfig
from kilndb.cluster.gossip import AsyncGossip
from kilndb.cluster.messages import ROLES, KeyEvent, MemberEvent, ShutdownEvent, StartEvent

#: The signals that make the agent leave gracefully (Pokan traps the same three).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps({"t": time.time(), **record}).decode() + "\n")
    sys.stdout.flush()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kilndb.cluster", description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", default="127.0.0.1:7946", help="UDP HOST:PORT")
    parser.add_argument(
        "--tcp-port", type=_port, default=None, help="TCP port (default: the UDP port)"
    )
    parser.add_argument("--advertise", default=None)
    parser.add_argument(
        "--join", action="append", default=[], help="seed TCP HOST:PORT[,…] to join through"
    )
    parser.add_argument(
        "--role",
        choices=ROLES,
        default=None,
        help="default: seed without --join, peer with it",
    )
    parser.add_argument("--probe-interval", type=_seconds, default=1.0)
    parser.add_argument(
        "--gossip-interval",
        type=_seconds,
        default=None,
        help="seconds between gossip rounds (default: probe interval / 5)",
    )
    parser.add_argument("--suspicion-mult", type=float, default=4.0)
    parser.add_argument("--cluster-key", default=None, help="shared secret (text)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"not a number of seconds > 0: {text!r}")
    return seconds


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port in 0..65535: {text!r}")
    return int(text)


async def run(options: argparse.Namespace) -> None:
    config = ClusterConfig(
        probe_interval=options.probe_interval,
        suspicion_mult=options.suspicion_mult,
        gossip_interval=options.gossip_interval,
    )
    seeds = [s for arg in options.join for s in arg.split(",") if s]
    key = options.cluster_key.encode() if options.cluster_key else None
    node = AsyncGossip(
        options.name,
        options.bind,
        seeds=seeds,
        advertise=options.advertise,
        cluster_key=key,
        config=config,
        tcp_port=options.tcp_port,
        role=options.role,
    )

    def view() -> dict[str, str]:
        return {m.name: m.state.value for m in node.members()}

    def on_member(event: MemberEvent) -> None:
        member = event.member
        _emit(
            {
                "event": event.kind,
                "member": member.name,
                "incarnation": member.incarnation,
                "members": view(),
            }
        )

    def on_key(event: KeyEvent) -> None:
        _emit({"event": event.kind, "node": event.node, "key": event.key, "value": event.value})

    for kind in ("member_joined", "member_alive", "member_suspect", "member_dead", "member_left"):
        node.on(kind, on_member)
    for kind in ("new_key", "key_changed", "key_removed"):
        node.on(kind, on_key)

    def on_lifecycle(event: StartEvent | ShutdownEvent) -> None:
        kind = "start" if isinstance(event, StartEvent) else "shutdown"
        _emit({"event": kind, **event.to_json()})

    node.on("start", on_lifecycle)
    node.on("shutdown", on_lifecycle)
    for pair in options.set:
        key_name, _, value = pair.partition("=")
        node.set(key_name, value)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    _emit(
        {
            "event": "ready",
            "name": options.name,
            "address": node.address,
            "tcp_address": node.tcp_address,
            "role": node.role,
        }
    )
    await stop.wait()
    await node.leave()
    _emit({"event": "stopped", "name": options.name, "counters": node.counters()})


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(level=options.log_level.upper(), stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(options))
    return 0


if __name__ == "__main__":
    sys.exit(main())

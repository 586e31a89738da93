"""A stand-alone gossip agent: ``python -m kilndb.cluster --name n1 --bind HOST:PORT``.

It joins the seeds given with ``--join``, publishes ``--set key=value`` pairs, and
prints one JSON line per event on stdout — ``{"event": "ready", ...}`` once bound,
then every member event with the agent's whole member view — so that a benchmark or
an operator can follow it. SIGTERM or SIGINT make it leave gracefully (a goodbye);
SIGKILL is a crash the others detect.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from kilndb.cluster.config import ClusterConfig
from kilndb.cluster.gossip import AsyncGossip
from kilndb.cluster.messages import KeyEvent, MemberEvent


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps({"t": time.time(), **record}).decode() + "\n")
    sys.stdout.flush()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kilndb.cluster", description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", default="127.0.0.1:7946")
    parser.add_argument("--advertise", default=None)
    parser.add_argument("--join", action="append", default=[], help="seed HOST:PORT[,…]")
    parser.add_argument("--probe-interval", type=float, default=1.0)
    parser.add_argument("--suspicion-mult", type=float, default=4.0)
    parser.add_argument("--cluster-key", default=None, help="shared secret (text)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


async def run(options: argparse.Namespace) -> None:
    config = ClusterConfig(
        probe_interval=options.probe_interval, suspicion_mult=options.suspicion_mult
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
    for pair in options.set:
        key_name, _, value = pair.partition("=")
        node.set(key_name, value)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    _emit({"event": "ready", "name": options.name, "address": node.address})
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

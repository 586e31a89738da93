"""docs/api.md's "Gossip cluster" sample runs as written, its addresses pointed at a seed
on this machine (tests/docs runs the other samples of the docs)."""

from __future__ import annotations

import contextlib
import io
import re
import socket
from pathlib import Path

from kilndb.cluster import Gossip

_ROOT = Path(__file__).parents[1]


def _sample(page: str, heading: str) -> str:
    """The first Python block after ``heading`` in ``page``."""
    text = (_ROOT / page).read_text()
    start = text.index(f"\n{heading}")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None, f"no Python sample after {heading!r} in {page}"
    return block.group(1)


def _run(sample: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(sample, "docs/api.md", "exec"), {"__name__": "docs"})
    return out.getvalue()


def _free_udp_and_tcp_port() -> int:
    """A port free on both UDP and TCP (a gossip node binds both on one port)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_gossip_sample_runs() -> None:
    sample = _sample("docs/api.md", "## Gossip cluster")
    seed_port = _free_udp_and_tcp_port()
    seed = Gossip("n1", f"127.0.0.1:{seed_port}", cluster_key=b"secret")
    seed.start()
    try:
        udp, tcp = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
        code = (
            sample.replace("10.0.0.2:7946", f"127.0.0.1:{udp}")
            .replace("10.0.0.1:7946", f"127.0.0.1:{seed_port}")
            .replace("tcp_port=7947", f"tcp_port={tcp}")
        )
        assert code != sample
        printed = _run(code)
        assert printed.startswith(f"up 127.0.0.1:{udp} 127.0.0.1:{tcp} peer")
    finally:
        seed.stop()

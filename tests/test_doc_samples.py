"""The Python samples of the README's "Replication" section and docs/api.md's "Gossip
cluster" section run as written, their addresses pointed at servers on this machine."""

from __future__ import annotations

import contextlib
import io
import re
import socket
from pathlib import Path

import kilndb
from kilndb.cluster import Gossip
from kilndb.server import Server

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


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_embedded_follower_sample_runs(tmp_path: Path) -> None:
    sample = _sample("README.md", "### Replication")
    assert 'Follower("tcp://127.0.0.1:7400", "./replica"' in sample
    with Server(data=tmp_path / "leader", port=0) as leader:
        with kilndb.connect(leader.url) as db:
            db.store("tasks").write("t1", {"title": "ship it"})
        replica = tmp_path / "replica"
        code = sample.replace("tcp://127.0.0.1:7400", leader.url).replace(
            '"./replica"', repr(str(replica))
        )
        _run(code + "print(follower.database is not None, follower.position)\n")
        # The copy is on disk where the sample asked, and holds the leader's fact.
        with kilndb.open(replica) as copy:
            fact = copy.store("tasks").read("t1")
            assert fact is not None and fact.value == {"title": "ship it"}


def test_the_gossip_sample_runs() -> None:
    sample = _sample("docs/api.md", "## Gossip cluster")
    seed_port = _free_port(socket.SOCK_DGRAM)
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

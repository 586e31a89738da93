"""Every code sample of the network client's documentation runs, against a real server."""

from __future__ import annotations

import contextlib
import io
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from kilndb.server import Server
from tests.client.proxy import Proxy

_ROOT = Path(__file__).parents[2]


def _samples() -> list[str]:
    text = (_ROOT / "docs/api.md").read_text()
    section = text[text.index("## Network client") : text.index("### `kilndb.server.Server")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _run(sample: str, url: str) -> str:
    out = io.StringIO()
    names = {"URL": url, "URLS": url, "__name__": "docs"}
    with contextlib.redirect_stdout(out):
        exec(compile(sample, "docs/api.md", "exec"), names)
    return out.getvalue()


def test_the_several_servers_sample_runs(tmp_path: Path) -> None:
    """The first server of the list is down; the second leads the database."""
    _, several_sample, _ = _samples()
    with Server(data=tmp_path / "data", port=0) as server:
        server.databases.get("default")
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            dead = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
        assert _run(several_sample, f"{dead},{server.url}") == "{'title': 'Hello'} True\n"


def test_the_client_samples_run(tmp_path: Path) -> None:
    sync_sample, _, async_sample = _samples()
    with Server(data=tmp_path / "data", port=0) as server:
        server.databases.get("default")
        proxy = Proxy(("127.0.0.1", urlsplit(server.url).port or 0))
        try:
            proxy.lose_reply_to("write")  # the first write's reply: it has an id
            assert _run(sync_sample, proxy.url) == "{'qty': 3}\n"
            assert proxy.lost == ["write"]
        finally:
            proxy.close()
        assert _run(async_sample, server.url) == "[{'qty': 1}]\n[10] True\n"

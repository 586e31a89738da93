"""Every code sample of the network client's documentation runs, against a real server."""

from __future__ import annotations

import contextlib
import io
import re
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
    with contextlib.redirect_stdout(out):
        exec(compile(sample, "docs/api.md", "exec"), {"URL": url, "__name__": "docs"})
    return out.getvalue()


def test_the_client_samples_run(tmp_path: Path) -> None:
    sync_sample, async_sample = _samples()
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

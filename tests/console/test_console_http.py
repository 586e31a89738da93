"""What the console reads and how it is served, without a browser: the page and its
assets with their security headers, the SSE event names and ``?token=``, and
``GET /v1/metrics/history``."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import kilndb
from kilndb.server import Server
from kilndb.server.auth import AuthConfig, create_token
from kilndb.server.console import ASSETS, SECURITY_HEADERS
from tests.console.browser import wait_for

SECRET = "console-http-secret-" + "z" * 32


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("console-http") / "data"
    with Server(data=data, port=0, http_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("console-http-auth") / "data"
    with Server(data=data, port=0, http_port=0, auth=AuthConfig(secret=SECRET)) as running:
        yield running


def get(server: Server, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(server.http_url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def sse_head(server: Server, query: str) -> tuple[http.client.HTTPConnection, Any]:
    """Open ``GET /v1/events?query``; the connection and its response (headers read)."""
    where = urlsplit(server.http_url)
    connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
    connection.request("GET", "/v1/events?" + query)
    return connection, connection.getresponse()


def first_event(server: Server, query: str) -> list[str]:
    """The lines of the first event of ``GET /v1/events?query``."""
    connection, response = sse_head(server, query)
    try:
        assert response.status == 200, response.read()
        lines: list[str] = []
        while (line := response.readline().decode().rstrip("\n")) or not lines:
            if line and not line.startswith(":"):
                lines.append(line)
        return lines
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/", "/console", "/console/"])
def test_the_page_is_served_with_strict_security_headers(server: Server, path: str) -> None:
    status, headers, body = get(server, path)
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == (resources.files("kilndb.server.console") / "index.html").read_bytes()
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value
    policy = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy
    # Nothing loaded from elsewhere, no inline script or style.
    page = body.decode()
    assert "<script>" not in page and "<style" not in page and " style=" not in page
    assert (
        "http://" not in page
        and "https://" not in page
        and "//" not in page.replace("http://www.w3.org", "")
    )


def test_every_asset_ships_in_the_package_and_others_are_404(server: Server) -> None:
    for name, kind in ASSETS.items():
        status, headers, body = get(server, f"/console/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind), name
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert body == (resources.files("kilndb.server.console") / name).read_bytes()
    status, headers, _ = get(server, "/console/__init__.py")
    assert status == 404 and headers["X-Frame-Options"] == "DENY"
    status, _, _ = get(server, "/console/..%2F..%2Fhttp.py")
    assert status == 404
    script = (resources.files("kilndb.server.console") / "console.js").read_text()
    assert "fetch(" in script and "http://" not in script.replace("http://www.w3.org", "")


def test_sse_events_are_named_fact_written_as_on_tcp_and_websocket(server: Server) -> None:
    with kilndb.connect(server.url) as db:
        fact = db.store("named").write("k", 1)
    lines = first_event(server, f"stores=named&cursor={fact.position - 1}")
    assert lines[:2] == [f"id: {fact.position}", "event: fact_written"] and len(lines) == 3
    data = json.loads(lines[2].removeprefix("data: "))
    assert (data["id"], data["value"]) == (fact.id, 1)


def test_the_deprecated_event_name_is_kept_when_asked_for(server: Server) -> None:
    with kilndb.connect(server.url) as db:
        fact = db.store("old").write("k", 1)
    lines = first_event(server, f"stores=old&cursor={fact.position - 1}&event=fact_committed")
    assert lines[:2] == [f"id: {fact.position}", "event: fact_committed"]
    connection, response = sse_head(server, "event=committed")
    with closing(connection):
        assert response.status == 400
        error = json.loads(response.read())
    assert error["error_code"] == "bad_request" and "fact_written" in error["error"]


def test_the_sse_stream_takes_a_token_as_a_query_parameter(secured: Server) -> None:
    good = create_token(SECRET, ["kiln::default:read"])
    with kilndb.connect(secured.url, token=create_token(SECRET, ["kiln::*"])) as db:
        fact = db.store("s").write("k", 1)
    lines = first_event(secured, f"token={good}&cursor={fact.position - 1}")
    assert lines[:2] == [f"id: {fact.position}", "event: fact_written"]
    for query, code in [
        ("cursor=0", 401),
        ("token=garbage", 401),
        (f"token={create_token('another-' + 'q' * 32, ['kiln::*'])}", 401),
        (f"token={create_token(SECRET, ['kiln::other'])}", 403),
    ]:
        connection, response = sse_head(secured, query)
        with closing(connection):
            assert response.status == code, query
    # Only the SSE stream reads ?token=: every other route wants the header.
    assert get(secured, f"/v1/status?token={good}")[0] == 401
    assert get(secured, f"/v1/db/default/stores?token={good}")[0] == 400


def test_metrics_history_samples_writes_fsyncs_latency_and_lag(server: Server) -> None:
    with kilndb.connect(server.url) as db:
        for i in range(20):
            db.store("sampled").write(f"k{i}", i)

    def with_writes() -> list[dict[str, Any]]:
        history = json.loads(get(server, "/v1/metrics/history")[2])
        return [s for s in history["samples"] if s["writes_per_second"] > 0]

    (sample, *_) = wait_for(with_writes, what="a sample with the writes")
    assert sample["fsyncs_per_second"] > 0 and sample["requests_per_second"] > 0
    assert 0 < sample["latency_p50_ms"] <= sample["latency_p99_ms"]
    assert sample["replication_lag_records"] == 0
    history = json.loads(get(server, "/v1/metrics/history")[2])
    assert history["interval_seconds"] == 1.0 and history["window_seconds"] == 600
    assert history["epochs"]["default"] == 0
    assert [s["at"] for s in history["samples"]] == sorted(s["at"] for s in history["samples"])


def test_metrics_history_needs_the_status_scope(secured: Server) -> None:
    assert get(secured, "/v1/metrics/history")[0] == 401
    reader = {"Authorization": "Bearer " + create_token(SECRET, ["kiln::default:read"])}
    assert get(secured, "/v1/metrics/history", reader)[0] == 403
    admin = {"Authorization": "Bearer " + create_token(SECRET, ["kiln::admin"])}
    status, _, body = get(secured, "/v1/metrics/history", admin)
    assert status == 200 and "samples" in json.loads(body)


def test_the_history_starts_empty_after_a_restart(tmp_path: Path) -> None:
    """The ring lives in memory: a restarted server samples afresh."""
    with Server(data=tmp_path / "data", port=0, http_port=0) as first:
        with kilndb.connect(first.url) as db:
            db.store("s").write("k", 1)
        wait_for(lambda: json.loads(get(first, "/v1/metrics/history")[2])["samples"])
    started = time.time()
    with Server(data=tmp_path / "data", port=0, http_port=0) as second:
        samples = json.loads(get(second, "/v1/metrics/history")[2])["samples"]
        assert all(s["at"] >= started for s in samples)

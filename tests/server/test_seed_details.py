"""Server behaviour the seed systems document, each proved on a real server.

streamkit's JWT scopes and WebSocket path, Igniter's slow-op log, recent-events ring,
counters and readiness, the server's DatabaseConfig reaching its databases, streamkit's
heartbeat and consume clamps on the wire, TCP_NODELAY on both ends of a connection,
and ``kiln serve`` as a process: stopped by Ctrl-C, configured by TOML, environment and
command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

import kilndb
import kilndb.streams
from kilndb.codec import encode_frame
from kilndb.config import DatabaseConfig
from kilndb.protocol.ops import OPS
from kilndb.server import Server
from kilndb.server.auth import AuthConfig, Principal, create_token
from kilndb.streams import MAX_CONSUME
from tests.processes import KILN, reap, start_server, stop
from tests.server.test_sockets import RawClient, tcp_address

SECRET = "a-secret-for-streamkit-tokens-long-enough-for-hs256-0123456789abcdef"
STORE = str(uuid.UUID("6f1c8d2e-3b7a-4c55-9e0f-2a4b6c8d0e1f"))
OTHER = str(uuid.UUID("0a0b0c0d-1e1f-4a4b-8c8d-9e9fa0a1b2b3"))


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- streamkit scopes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("streamkit-auth")
    with Server(data=root / "data", port=0, http_port=0, auth=AuthConfig(secret=SECRET)) as s:
        with kilndb.connect(s.url, OTHER, token=create_token(SECRET, ["kiln::*"])) as db:
            db.store("s").write("k", "theirs")
        yield s


def _http(server: Server, token: str, path: str, method: str = "GET") -> str:
    """``ok`` or the error code of an HTTP request carrying ``token``."""
    request = urllib.request.Request(server.http_url + path, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if method == "PUT":
        request.data = b'{"from": "streamkit"}'
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            return "ok"
    except urllib.error.HTTPError as exc:
        return str(json.loads(exc.read())["error_code"])


def _store_api(url: str, database: str, token: str) -> None:
    """The whole streamkit API on one store: produce, consume, leases, status."""
    with kilndb.connect(url, database, token=token) as db:
        space = db.space("orders")
        space.segment("o-1").produce([kilndb.Record({"qty": 2})], expected_seq=0)
        assert [e.sequence for e in space.segment("o-1").consume(min_seq=1)] == [1]
        lease = db.acquire_lease("nightly", "worker-1", 30)
        assert db.release_lease(lease)
        with space.subscribe_status(heartbeat=60) as statuses:
            first = statuses.get(timeout=10)
            assert first is not None and first["segment"] == "o-1"
        db.store("s").write("k", "ours")
        latest = db.store("s").read("k")
        assert latest is not None and latest.value == "ours"


def test_a_streamkit_store_scope_grants_its_store_over_tcp_and_http(secured: Server) -> None:
    token = create_token(SECRET, [f"streamkit::{STORE}"])
    _store_api(secured.url, STORE, token)
    keys = f"/v1/db/{STORE}/stores/s/keys/k"
    assert _http(secured, token, keys, "PUT") == "ok"
    assert _http(secured, token, keys) == "ok"
    # Another store, over TCP and HTTP: refused, naming the scope that would do.
    with kilndb.connect(secured.url, OTHER, token=token) as db:
        with pytest.raises(kilndb.PermissionDeniedError, match=f"streamkit::{OTHER}"):
            db.store("s").read("k")
        with pytest.raises(kilndb.PermissionDeniedError):
            db.space("orders").segment("o-1").produce([kilndb.Record(1)])
    assert _http(secured, token, f"/v1/db/{OTHER}/stores/s/keys/k") == "permission_denied"
    assert _http(secured, token, f"/v1/db/{OTHER}/stores/s/keys/k", "PUT") == "permission_denied"
    # Server administration is not part of a store's API.
    assert _http(secured, token, "/v1/status") == "permission_denied"


def test_streamkit_all_grants_every_store_but_not_the_server(secured: Server) -> None:
    token = create_token(SECRET, ["streamkit::*"])
    _store_api(secured.url, f"{STORE}.all", token)
    with kilndb.connect(secured.url, OTHER, token=token) as db:
        fact = db.store("s").read("k")
        assert fact is not None and fact.value == "theirs"
        with pytest.raises(kilndb.PermissionDeniedError, match="kiln::admin"):
            db._call("server_status")
    assert _http(secured, token, "/v1/db/admin/stores/s/keys/k", "PUT") == "ok"
    assert _http(secured, token, f"/v1/db/{OTHER}/stores/s/keys/k") == "ok"
    assert _http(secured, token, "/metrics") == "permission_denied"


def _granted(scopes: set[str], op: str, database: str) -> bool:
    try:
        Principal("t", frozenset(scopes)).check(op, database)
    except kilndb.PermissionDeniedError:
        return False
    return True


def test_streamkit_scopes_grant_exactly_what_the_kiln_database_scope_grants() -> None:
    """Every op of the op table: ``streamkit::DB`` grants what ``kiln::DB`` grants,
    ``streamkit::*`` that on every database, and neither anything on another one."""
    for op in OPS:
        for database in ("default", STORE, "billing.eu"):
            expected = _granted({f"kiln::{database}"}, op, database)
            assert _granted({f"streamkit::{database}"}, op, database) is expected, op
            assert _granted({"streamkit::*"}, op, database) is expected, op
            assert _granted({f"streamkit::{database}"}, op, "other") is (OPS[op].action == "none")
        # ``kiln::admin`` is the server's administration; ``streamkit::admin`` is the
        # database called admin, granted as any other database.
        expected = _granted({"kiln::billing"}, op, "billing")
        assert _granted({"streamkit::admin"}, op, "admin") is expected, op
        assert _granted({"streamkit::*"}, op, "admin") is expected, op


MALFORMED = [
    "streamkit::",
    "streamkit:*",
    "streamkit::*:read",
    f"streamkit::{STORE}:read",
    "STREAMKIT::*",
    f"Streamkit::{STORE}",
    f"streamkit:{STORE}",
    "streamkit::**",
]


@pytest.mark.parametrize(
    "scope",
    [pytest.param(MALFORMED, id="streamkit"), pytest.param(["kiln::", "kiln:*"], id="kiln")],
)
def test_malformed_scopes_grant_nothing(secured: Server, scope: list[str]) -> None:
    token = create_token(SECRET, scope)
    with kilndb.connect(secured.url, STORE, token=token) as db:  # authenticated
        assert db._call("ping")["pong"] is True
        with pytest.raises(kilndb.PermissionDeniedError):
            db.store("s").read("k")
        with pytest.raises(kilndb.PermissionDeniedError):
            db.store("s").write("k", 1)
    assert _http(secured, token, f"/v1/db/{STORE}/stores/s/keys/k") == "permission_denied"
    # A scope claim that is neither a string nor a list grants nothing either.
    odd = jwt.encode({"scope": {"streamkit::*": True}, "exp": int(time.time()) + 60}, SECRET)
    assert _http(secured, odd, f"/v1/db/{STORE}/stores/s/keys/k") == "permission_denied"


# -- GET /streamz -------------------------------------------------------------------------


async def _websocket_session(url: str, token: str, store: str) -> list[dict[str, Any]]:
    """hello, a write, a subscription and the fact it pushes, over one WebSocket."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as socket:

        async def exchange(message: dict[str, Any]) -> dict[str, Any]:
            await socket.send_str(json.dumps(message))
            reply: dict[str, Any] = json.loads(await socket.receive_str(timeout=10))
            return reply

        hello = await exchange({"op": "hello", "token": token, "database": STORE, "request_id": 0})
        if not hello["ok"]:
            return [hello]
        seen = [
            hello,
            await exchange(
                {"op": "write", "store": store, "key": "k", "value": 1, "request_id": 1}
            ),
            await exchange(
                {"op": "subscribe", "stores": [store], "after": 0, "request_id": "feed"}
            ),
        ]
        seen.append(json.loads(await socket.receive_str(timeout=10)))  # the fact above
        return seen


def _shape(message: Any) -> Any:
    """A message with its values replaced by their types (what both paths must share)."""
    if isinstance(message, dict):
        return {key: _shape(value) for key, value in message.items()}
    return type(message).__name__


def test_streamz_is_the_websocket_endpoint_under_streamkits_path(secured: Server) -> None:
    token = create_token(SECRET, [f"streamkit::{STORE}"])
    main = asyncio.run(_websocket_session(secured.http_url + "/v1/ws", token, "via-main"))
    alias = asyncio.run(_websocket_session(secured.http_url + "/streamz", token, "via-streamz"))
    hello, written, subscribed, pushed = alias
    assert hello["ok"] and hello["database"] == STORE and hello["request_id"] == 0
    assert written["ok"] and written["fact"]["store"] == "via-streamz"
    assert subscribed["ok"] and subscribed["subscription"] == "feed"
    assert pushed["event"] == "fact_written" and pushed["subscription"] == "feed"
    assert pushed["fact"]["id"] == written["fact"]["id"]
    assert [_shape(m) for m in alias] == [_shape(m) for m in main]
    assert hello == main[0]
    # Authentication is the same too: no token, no session.
    refused = asyncio.run(_websocket_session(secured.http_url + "/streamz", "", "x"))[0]
    assert refused["error_code"] == "unauthenticated"


# -- slow ops, the recent-events ring, counters --------------------------------------------


def test_requests_slower_than_slow_op_ms_are_counted_and_recorded(tmp_path: Path) -> None:
    with Server(data=tmp_path / "slow", port=0, slow_op_ms=0.001) as server:
        with kilndb.connect(server.url) as db:
            db.store("s").write("k", 1)
            db.store("s").read("k")
        slow = [e for e in server.recent_events if e["event"] == "slow_op"]
        assert {e["op"] for e in slow} >= {"write", "read"}
        assert all(e["ms"] >= 0 for e in slow)
        assert server.status()["metrics"]["slow_ops_total"] == len(slow)
    with Server(data=tmp_path / "fast", port=0) as server:
        assert server.config.slow_op_ms == 500.0  # KilnDB's default (Igniter's: off)
        with kilndb.connect(server.url) as db:
            db.store("s").write("k", 1)
            db.store("s").read("k")
        assert server.status()["metrics"]["slow_ops_total"] == 0
        assert not [e for e in server.recent_events if e["event"] == "slow_op"]


def test_slow_ops_are_timed_on_every_transport_and_zero_turns_them_off(tmp_path: Path) -> None:
    with Server(data=tmp_path / "http", port=0, http_port=0, slow_op_ms=0.001) as server:
        body = {"op": "write", "store": "s", "key": "k", "value": 1}
        request = urllib.request.Request(
            server.http_url + "/v1/dispatch",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as reply:
            assert json.loads(reply.read())["ok"]
        slow = [e for e in server.recent_events if e["event"] == "slow_op"]
        assert [e["op"] for e in slow] == ["write"]
    with Server(data=tmp_path / "off", port=0, slow_op_ms=0) as server:
        with kilndb.connect(server.url) as db:
            db.store("s").write("k", 1)
        assert server.status()["metrics"]["slow_ops_total"] == 0


def test_the_recent_events_ring_keeps_the_newest(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0, max_recent_events=3) as server:
        clients = [RawClient(tcp_address(server)) for _ in range(5)]
        for client in clients:  # one connection_opened event each
            client.send({"op": "ping"})
            assert client.receive() == {"ok": True, "pong": True}
        peers = ["{}:{}".format(*client.sock.getsockname()) for client in clients]
        events = server.recent_events
        assert [e["event"] for e in events] == ["connection_opened"] * 3
        assert [e["peer"] for e in events] == peers[2:]  # oldest first, the newest three
        for client in clients:
            client.close()


def test_counters_move_as_requests_are_made(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0) as server:
        client = RawClient(tcp_address(server))
        before = server.status()["metrics"]
        sent = received = 0
        requests: list[dict[str, Any]] = [
            {"op": "write", "store": "s", "key": "a", "value": 1, "request_id": 1},
            {"op": "write", "store": "s", "key": "b", "value": 2, "request_id": 2},
            {"op": "write", "store": "s", "key": "a", "value": 3, "expected_seq": 5},
            {"op": "no_such_op", "request_id": 3},
            {"op": "replay", "request_id": 4},
        ]
        replies = []
        for request in requests:
            frame = encode_frame(orjson.dumps(request))
            client.send_raw(frame)
            sent += len(frame)
            while (body := client.decoder.next_frame()) is None:
                data = client.sock.recv(65536)
                assert data, "the server closed the connection"
                received += len(data)
                client.decoder.feed(data)
            replies.append(orjson.loads(body))
        assert [r.get("error_code") for r in replies] == [
            None,
            None,
            "conflict",
            "unknown_op",
            None,
        ]
        assert len(replies[-1]["facts"]) == 2
        client.send({"op": "close"})
        assert client.receive() == {"ok": True}
        assert client.receive() is None
        client.close()
        wait_for(lambda: server.status()["metrics"]["closed_connections_total"] == 1)
        after = server.status()["metrics"]
        moved = {name: after[name] - before[name] for name in before if name in after}
        assert moved["errors_total"] == 2
        assert moved["facts_written"] == 2
        assert moved["facts_replayed"] == 2
        assert moved["bytes_in"] == sent + len(encode_frame(orjson.dumps({"op": "close"})))
        assert moved["bytes_out"] == received + len(encode_frame(orjson.dumps({"ok": True})))
        assert moved["closed_connections_total"] == 1
        assert before["closed_connections_total"] == 0


# -- configuration reaching the databases, the clamps on the wire, TCP_NODELAY ------------


def test_the_servers_database_config_reaches_every_database_it_opens(tmp_path: Path) -> None:
    config = DatabaseConfig(sync="none", max_file_size=4096, compaction_threshold=0.9)
    with Server(data=tmp_path / "data", port=0, database=config) as server:
        with kilndb.connect(server.url, "billing") as db:
            for i in range(40):
                db.store("s").write(f"k{i}", "x" * 200)
        for name in ("default", "billing"):
            assert server.databases.get(name).config == config
    files = sorted(p.name for p in (tmp_path / "data" / "billing").glob("*.log"))
    assert len(files) > 1  # rotated at 4 KiB, not the default 64 MiB


def test_the_server_clamps_a_status_heartbeat_above_300_seconds(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0) as server:
        asked = {1000: 300.0, 300.5: 300.0, 300: 300.0, 7: 7.0, 1: 1.0}
        for requested, granted in asked.items():
            client = RawClient(tcp_address(server))
            client.send({"op": "subscribe_status", "space": "q", "heartbeat": requested})
            reply = client.receive()
            assert reply is not None and reply["ok"], reply
            assert reply["heartbeat"] == granted, requested
            client.close()


def test_a_consume_limit_above_the_maximum_is_clamped_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert MAX_CONSUME == 10_000_000  # streamkit's serverMaxConsumeEntries
    # The server clamps with the same constant; a smaller one shows it at work.
    monkeypatch.setattr(kilndb.streams, "MAX_CONSUME", 2)
    with Server(data=tmp_path / "data", port=0) as server, kilndb.connect(server.url) as db:
        db.space("q").segment("g").produce([kilndb.Record(i) for i in range(3)])
        client = RawClient(tcp_address(server))
        try:
            client.send({"op": "consume", "space": "q", "segment": "g", "limit": 10**12})
            reply = client.receive()
        finally:
            client.close()
        assert reply is not None and reply["ok"], reply
        assert [e["sequence"] for e in reply["entries"]] == [1, 2]  # exactly the maximum


def test_tcp_connections_set_tcp_nodelay_on_both_ends(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0) as server, kilndb.connect(server.url) as db:
        db.store("s").write("k", 1)
        conn = db._link._conn  # the client's connection
        assert conn is not None and conn._sock is not None
        client_side = conn._sock
        assert client_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        (server_side,) = server.connections
        assert server_side.transport is not None
        sock = server_side.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sock.getpeername() == client_side.getsockname()


# -- readiness while draining ---------------------------------------------------------------


def _ready(server_http_url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(server_http_url + "/v1/ready", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_ready_answers_503_while_the_server_drains(tmp_path: Path) -> None:
    # A write waiting (up to replica_timeout) for a replica that never comes keeps the
    # server draining; its worker holds stop() until then.
    server = Server(
        data=tmp_path / "data", port=0, http_port=0, drain_timeout=30, replica_timeout=3
    ).start()
    http_url = server.http_url
    assert _ready(http_url) == (200, {"status": "ready"})
    client = RawClient(tcp_address(server))
    client.send({"op": "write", "store": "s", "key": "k", "value": 1, "replicas": 1})
    wait_for(lambda: server.databases.get("default").stats()["facts"] == 1)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    try:
        wait_for(lambda: server.state == "draining")
        assert _ready(http_url) == (503, {"status": "draining"})
    finally:
        client.close()
        stopper.join(60)
    assert server.state == "stopped"


# -- kiln serve as a process --------------------------------------------------------------


def test_kiln_serve_stops_gracefully_on_ctrl_c(tmp_path: Path) -> None:
    process, url = start_server(tmp_path / "data", "--http-port", "-1")
    try:
        with kilndb.connect(url) as db:
            db.store("tasks").write("t1", "acknowledged")
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        reap(process)
    with kilndb.open(tmp_path / "data") as db:
        fact = db.store("tasks").read("t1")
        assert fact is not None and fact.value == "acknowledged"


def test_kiln_serve_slow_op_ms_sets_the_threshold(tmp_path: Path) -> None:
    process, url = start_server(tmp_path / "data", "--http-port", "-1", "--slow-op-ms", "0.001")
    try:
        with kilndb.connect(url) as db:
            db.store("tasks").write("t1", 1)
            before = db._call("server_status")["metrics"]["slow_ops_total"]
            db.store("tasks").read("t1")
            assert db._call("server_status")["metrics"]["slow_ops_total"] > before >= 1
    finally:
        stop(process)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _serve_addresses(data: Path, options: list[str], env: dict[str, str]) -> list[str]:
    """The addresses a ``kiln serve`` started so prints; the process is then stopped."""
    process = subprocess.Popen(
        [str(KILN), "--data", str(data), "serve", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("KILN_")} | env,
    )
    assert process.stdout is not None
    addresses = []
    try:
        while (line := process.stdout.readline()) and "Ctrl-C" not in line:
            if "listening on" in line:
                addresses.append(line.split("listening on", 1)[1].strip())
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        reap(process)
    return addresses


def test_serve_takes_toml_then_environment_then_command_line(tmp_path: Path) -> None:
    toml_port, toml_http, env_port, env_http, cli_port = _free_ports(5)
    config = tmp_path / "kiln.toml"
    unix = tmp_path / "kiln.sock"
    config.write_text(f'port = {toml_port}\nhttp_port = {toml_http}\nunix = "{unix}"\n')
    from_toml = _serve_addresses(tmp_path / "a", ["--config", str(config)], {})
    assert from_toml == [
        f"tcp://127.0.0.1:{toml_port}",
        f"unix://{unix}",
        f"http://127.0.0.1:{toml_http}",
    ]
    layered = _serve_addresses(
        tmp_path / "b",
        ["--port", str(cli_port)],
        {"KILN_CONFIG": str(config), "KILN_PORT": str(env_port), "KILN_HTTP_PORT": str(env_http)},
    )
    assert layered == [
        f"tcp://127.0.0.1:{cli_port}",  # the command line wins over the environment
        f"unix://{unix}",  # the file alone names it
        f"http://127.0.0.1:{env_http}",  # the environment wins over the file
    ]

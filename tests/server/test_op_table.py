"""The op table is the one description of every op: this walks it and sends each op over
TCP, WebSocket and HTTP dispatch, with a token that grants it and with one that does
not, and checks that every transport that carries the op gives the same reply (the same
fields, the same error code) and the same authorization, and that a transport that does
not carry it says so."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from kilndb.protocol.ops import OPS, TRANSPORTS
from kilndb.replication.protocol import PROTOCOL_VERSION as REPLICATION_PROTOCOL
from kilndb.server import Server
from kilndb.server.auth import AuthConfig, create_token
from tests.server.test_sockets import RawClient, tcp_address

SECRET = "a-test-secret-long-enough-for-every-hmac-algorithm-0123456789abcdef"
EVERYTHING = create_token(SECRET, ["kiln::*"])
#: Reads and writes another database only: no op on the tested ones but the open ones.
STRANGER = create_token(SECRET, ["kiln::elsewhere"])


def requests(db: str) -> dict[str, dict[str, Any]]:
    """A request of every op, on database ``db`` (each transport has its own, filled the
    same way, so that the same requests in the same order give the same replies)."""
    lease = {"key": "l", "holder": "h", "token": 99, "expires_at": 0.0}
    return {
        "write_fact": {"fact": {"store": "s", "key": "f", "value": 1}},
        "replay": {"after": 0, "limit": 2},
        "write_snapshot": {"facts": [{"store": "s", "key": "snap", "value": 2, "id": "x"}]},
        "subscribe": {"stores": ["s"], "after": 0},
        "ping": {},
        "stats": {},
        "server_status": {},
        "close": {},
        "hello": {"database": db},
        "write": {"store": "s", "key": "k", "value": {"v": 1}},
        "write_many": {"writes": [{"store": "s", "key": "m", "value": 3}]},
        "read": {"store": "s", "key": "k"},
        "history": {"store": "s", "key": "k"},
        "delete": {"store": "s", "key": "m"},
        "keys": {"store": "s"},
        "stores": {},
        "compact": {},
        "set_retention": {"store": "s", "keep": "all"},
        "retention": {"store": "s"},
        "sync": {},
        "produce": {"space": "sp", "segment": "g", "records": [{"payload": "a"}]},
        "consume": {"space": "sp", "segment": "g"},
        "peek": {"space": "sp", "segment": "g"},
        "segment_status": {"space": "sp", "segment": "g"},
        "space_consume": {"space": "sp"},
        "spaces": {},
        "segments": {"space": "sp"},
        "subscribe_status": {"space": "sp", "heartbeat": 5},
        "acquire_lease": {"key": "l", "holder": "h", "ttl": 30},
        "renew_lease": {**lease, "ttl": 30},  # a token nobody holds: refused alike
        "release_lease": lease,
        "leases": {},
        "unsubscribe": {"subscription": "none-such"},
        "sync_request": {
            # A version not spoken here: refused alike, nothing shipped. (A leader epoch
            # ahead of this leader's would fence the database, which promote then finds.)
            "protocol_version": REPLICATION_PROTOCOL + 1,
            "leader_epoch": 0,
            "position": 0,
        },
        "replication_ack": {"applied": 0, "durable": 0},
        "cluster": {},
        "databases": {},
        "create_database": {"name": f"made-{db}"},
        "remove_database": {"name": f"never-{db}"},
        "promote": {"database": db},
        "replicate": {"leader": "127.0.0.1:9", "databases": [f"copy-{db}"]},
    }


def shape(value: Any) -> Any:
    """What a reply says, without what differs between two databases or two moments:
    its fields and their kinds, recursively, and every error code and flag."""
    if isinstance(value, dict):
        return {
            k: v if k in ("ok", "error_code", "pong", "created") else shape(v)
            for k, v in value.items()
            if k not in ("request_id", "message", "error")
        }
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("op-table")
    auth = AuthConfig(secret=SECRET)
    with Server(data=data, port=0, http_port=0, auth=auth) as running:
        yield running


def over_tcp(server: Server, token: str, db: str, message: dict[str, Any]) -> dict[str, Any]:
    client = RawClient(tcp_address(server))
    try:
        client.send({"op": "hello", "token": token, "database": db})
        assert (client.receive() or {}).get("ok"), "hello"
        client.send(message, {"op": "ping", "request_id": "after"})
        reply = client.receive() or {}
        return {"no reply": True} if reply.get("request_id") == "after" else reply
    finally:
        client.close()


async def over_ws(server: Server, token: str, db: str, message: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(server.http_url + "/v1/ws", headers=headers) as ws,
    ):
        await ws.send_str(orjson.dumps({"op": "hello", "database": db}).decode())
        assert orjson.loads(await ws.receive_str())["ok"], "hello"
        await ws.send_str(orjson.dumps(message).decode())
        while True:  # requests run concurrently: this one's reply, by its request_id
            received = await asyncio.wait_for(ws.receive(), 10)
            if received.type != aiohttp.WSMsgType.TEXT:
                return {"closed": True}
            reply: dict[str, Any] = orjson.loads(received.data)
            if reply.get("request_id") == message["request_id"]:
                return reply


async def over_http(server: Server, token: str, db: str, message: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.http_url + "/v1/dispatch", json=message, headers=headers) as reply,
    ):
        body: dict[str, Any] = await reply.json()
        status = reply.status
        error = body.get("error_code")
        assert (status == 200) == (error is None), (status, body)
        return body


async def over_sse(server: Server, token: str, db: str, message: dict[str, Any]) -> dict[str, Any]:
    """``GET /v1/events`` carries ``subscribe``: the stream's start, or its refusal."""
    headers = {"Authorization": f"Bearer {token}"}
    query = {"database": db, "stores": ",".join(message["stores"])}
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.http_url + "/v1/events", params=query, headers=headers) as reply,
    ):
        if reply.status == 200:
            return {"ok": True}
        body: dict[str, Any] = await reply.json()
        return body


def send(server: Server, transport: str, token: str, op: str) -> dict[str, Any]:
    db = f"t-{transport}"
    message = {"op": op, "request_id": 7, **requests(db)[op]}
    if OPS[op].scope == "database" and op != "hello":
        message["database"] = db
    if transport == "tcp":
        return over_tcp(server, token, db, message)
    if transport == "ws":
        return asyncio.run(over_ws(server, token, db, message))
    if transport == "sse":
        return asyncio.run(over_sse(server, token, db, message))
    return asyncio.run(over_http(server, token, db, message))


def test_every_op_has_a_request_here() -> None:
    assert set(requests("x")) == set(OPS)


def test_every_transport_answers_every_op_alike(server: Server) -> None:
    for transport in sorted(TRANSPORTS):  # the same content in every database
        assert send(server, transport, EVERYTHING, "write")["ok"] is True
    differences = []
    for op in OPS:
        replies = {t: send(server, t, EVERYTHING, op) for t in sorted(TRANSPORTS)}
        carried = {t: shape(r) for t, r in replies.items() if t in OPS[op].transports}
        if len({orjson.dumps(s, option=orjson.OPT_SORT_KEYS) for s in carried.values()}) > 1:
            differences.append((op, carried))
        for transport, reply in replies.items():
            if transport not in OPS[op].transports:
                assert reply.get("error_code") == "bad_request", (op, transport, reply)
                assert "needs" in reply.get("error", ""), (op, transport, reply)
    assert not differences, differences


def test_every_transport_authorizes_every_op_alike(server: Server) -> None:
    for op in OPS:
        declared = OPS[op]
        for transport in sorted(declared.transports):
            reply = send(server, transport, STRANGER, op)
            if declared.action == "none":
                assert reply.get("error_code") != "permission_denied", (op, transport, reply)
            else:
                assert reply.get("error_code") == "permission_denied", (op, transport, reply)
                # The refusal names the scope the op needs, per the table.
                needed = "kiln::admin" if declared.scope == "server" else "kiln::t-"
                assert needed in reply["error"], (op, transport, reply)


def test_without_a_token_only_the_open_ops_are_answered(tmp_path: Path) -> None:
    auth = AuthConfig(secret=SECRET)
    with Server(data=tmp_path / "data", port=0, http_port=0, auth=auth) as running:
        for op, declared in OPS.items():
            if "tcp" not in declared.transports or op in ("close", "replication_ack"):
                continue
            client = RawClient(tcp_address(running))
            try:
                client.send({"op": op, "request_id": 1, **requests("default")[op]})
                reply = client.receive() or {}
            finally:
                client.close()
            if declared.action == "none":
                assert reply.get("ok") is True or reply.get("error_code") != "unauthenticated"
            else:
                assert reply.get("error_code") == "unauthenticated", (op, reply)


def test_the_docs_list_every_op_as_the_table_declares_it() -> None:
    text = (Path(__file__).parents[2] / "docs/api.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in text[text.index("## Ops") : text.index("## HTTP REST")].splitlines()
        if line.startswith("| `")
    }
    assert set(rows) == set(OPS)
    for name, (needs, runs, creates, quick, transports) in rows.items():
        op = OPS[name]
        assert needs == {"none": "nothing"}.get(op.action, op.action), name
        assert runs == op.runs, name
        assert creates == ("yes" if op.creates else "no"), name
        assert quick == (f"up to 100 `{op.batch}`" if op.batch else "yes" if op.quick else "no")
        assert transports.split(", ") == sorted(op.transports), name

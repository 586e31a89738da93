"""Every error code, provoked (or injected where provoking is impractical) and checked on
every transport: REST (HTTP status and body), the in-process dispatcher, WebSocket and TCP.

Each case runs against its own database per transport, so a database a case leaves
failed (a full disk) troubles no other case.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

import kilndb
from kilndb import errors
from kilndb.codec import FrameDecoder, encode_frame
from kilndb.protocol import BadRequest, Request, ServerConnection, parse_request
from kilndb.server import Server, dispatch
from kilndb.server.auth import AuthConfig, create_token

LIMIT = 4096
SECRET = "a-test-secret-long-enough-for-every-hmac-algorithm-0123456789abcdef"
CLASSES = {cls.error_code: cls for cls in errors.error_classes()}

#: A message: an op envelope, or raw bytes sent as they are.
Message = dict[str, Any] | bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("codes")
    with Server(
        data=data, port=0, http_port=0, max_frame_bytes=LIMIT, replica_timeout=0.05
    ) as running:
        yield running


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("guarded")
    with Server(data=data, port=0, http_port=0, auth=AuthConfig(secret=SECRET)) as running:
        yield running


# -- the transports --------------------------------------------------------------------


def _body(message: Message) -> bytes:
    return message if isinstance(message, bytes) else orjson.dumps(message)


def over_http(
    server: Server, method: str, path: str, body: bytes | None, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(
        server.http_url + path, data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, orjson.loads(error.read())


def over_tcp(server: Server, message: Message, token: str | None = None) -> dict[str, Any]:
    host, port = server.url.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        frames = [encode_frame(_body(message))]
        if token is not None:
            frames.insert(0, encode_frame(orjson.dumps({"op": "hello", "token": token})))
        sock.sendall(b"".join(frames))
        decoder = FrameDecoder()
        replies: list[dict[str, Any]] = []
        while len(replies) < len(frames):
            while (body := decoder.next_frame()) is None:
                data = sock.recv(65536)
                assert data, "the server closed the connection"
                decoder.feed(data)
            replies.append(orjson.loads(body))
        return replies[-1]


def over_websocket(server: Server, message: Message, token: str | None = None) -> dict[str, Any]:
    async def scenario() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(server.http_url + "/v1/ws", headers=headers) as ws,
        ):
            await ws.send_str(_body(message).decode())
            reply: dict[str, Any] = await ws.receive_json(timeout=10)
            return reply

    return asyncio.run(scenario())


def in_process(server: Server, message: Message) -> dict[str, Any]:
    """What the transports share, without one: the sans-I/O connection checks the
    frame and the request, the dispatcher runs it."""
    events = ServerConnection(server.config.max_frame_bytes).receive_data(
        encode_frame(_body(message))
    )
    (event,) = events
    if isinstance(event, BadRequest):
        return event.error.to_wire()
    assert isinstance(event, Request)
    request = event._replace(database=event.database or "default")
    running = server.services.runner.run(request)
    try:
        result = asyncio.run_coroutine_threadsafe(running, server.loop).result(30)
    except kilndb.KilnError as exc:
        return exc.to_wire()
    return {"ok": True, **result}


# -- the cases -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """How to provoke one error code in database ``db``."""

    code: str
    message: Callable[[str], Message]
    #: Prepares ``db`` (and the server) before the message is sent.
    setup: Callable[[Server, str, pytest.MonkeyPatch], None] | None = None
    #: A REST route that provokes the same error: method, path and body.
    rest: Callable[[str], tuple[str, str, bytes | None]] | None = None


def _write(db: str, **extra: Any) -> dict[str, Any]:
    return {"op": "write", "database": db, "store": "s", "key": "k", "value": 1, **extra}


def _run(server: Server, db: str, message: dict[str, Any]) -> None:
    request = parse_request(orjson.dumps(message))
    assert isinstance(request, Request)
    server.dispatcher.execute(request, db)


def _created(server: Server, db: str) -> None:
    _run(server, db, _write(db))


def _lease_taken(server: Server, db: str, _: pytest.MonkeyPatch) -> None:
    message = {"op": "acquire_lease", "database": db, "key": "job", "holder": "a", "ttl": 60}
    _run(server, db, message)


def _read_only(server: Server, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(server.dispatcher.read_only, db, "tcp://127.0.0.1:7400")


def _fenced(server: Server, db: str, _: pytest.MonkeyPatch) -> None:
    """Led here at epoch 0; epoch 1 is led elsewhere, by a node not known yet."""
    _created(server, db)
    assert server.following.fence(db, 1)


def _disk_full(server: Server, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _created(server, db)

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)


def _injected(error: Exception) -> Callable[[Server, str, pytest.MonkeyPatch], None]:
    """Make ``stats`` raise ``error``: for states a test cannot cheaply bring about."""

    def inject(server: Server, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
        def raising(database: Any, params: dict[str, Any]) -> dict[str, Any]:
            raise error

        server.databases.get(db)  # exists: reads of an unknown database are not_found
        monkeypatch.setitem(dispatch._HANDLERS, "stats", raising)

    return inject


def _stats(db: str) -> dict[str, Any]:
    return {"op": "stats", "database": db}


CASES = [
    Case(
        "bad_request",
        lambda db: _write(db, key=5),
        rest=lambda db: ("PUT", f"/v1/db/{db}/stores/bad%20name/keys/k", b"1"),
    ),
    Case(
        "conflict",
        lambda db: _write(db, expected_seq=3),
    ),
    Case(
        "not_found",
        lambda db: {"op": "remove_database", "name": f"{db}-missing"},
        rest=lambda db: ("GET", f"/v1/db/{db}/stores/s/keys/missing", None),
    ),
    Case(
        "protocol_error",
        lambda db: b'{"op": "write", "store": ',
    ),
    Case(
        "frame_too_large",
        lambda db: orjson.dumps(_write(db, value="x" * LIMIT)),
        rest=lambda db: ("PUT", f"/v1/db/{db}/stores/s/keys/k", orjson.dumps("x" * LIMIT)),
    ),
    Case("unknown_op", lambda db: {"op": "no_such_op", "database": db}),
    Case("disk_full", _write, setup=_disk_full),
    Case(
        "lease_held",
        lambda db: {"op": "acquire_lease", "database": db, "key": "job", "holder": "b", "ttl": 60},
        setup=_lease_taken,
    ),
    Case(
        "lease_lost",
        lambda db: {
            "op": "renew_lease",
            "database": db,
            "key": "job",
            "holder": "a",
            "token": 999,
            "expires_at": time.time() + 60,
        },
        setup=_lease_taken,
    ),
    Case("read_only_replica", _write, setup=_read_only),
    Case(
        "stale_epoch",
        _write,
        setup=_fenced,
        rest=lambda db: ("PUT", f"/v1/db/{db}/stores/s/keys/k", b"1"),
    ),
    Case("replication_timeout", lambda db: _write(db, replicas=1)),
    Case("internal", _stats, setup=_injected(RuntimeError("a bug"))),
    Case("cursor_too_old", _stats, setup=_injected(kilndb.CursorTooOldError(3, 9))),
    Case("closed", _stats, setup=_injected(kilndb.ClosedError("closed"))),
    Case("storage_error", _stats, setup=_injected(kilndb.StorageError("EIO"))),
    Case("corrupt_record", _stats, setup=_injected(kilndb.CorruptRecordError("/x.log", 64))),
    Case("database_locked", _stats, setup=_injected(kilndb.DatabaseLockedError("held"))),
    Case("connection_lost", _stats, setup=_injected(kilndb.ConnectionLostError("gone"))),
    Case(
        "outcome_unknown",
        _stats,
        setup=_injected(kilndb.WriteOutcomeUnknownError("write", "tcp://127.0.0.1:1")),
    ),
    Case("unavailable", _stats, setup=_injected(kilndb.UnavailableError("busy"))),
    Case(
        "coordinator_unavailable",
        _stats,
        setup=_injected(kilndb.CoordinatorUnavailableError("no etcd member answered")),
    ),
    Case("subscriber_overflow", _stats, setup=_injected(kilndb.SubscriberOverflowError(12))),
]

#: Refused before any op runs, so shown on a server that requires tokens.
AUTH_CASES: dict[str, Callable[[], str | None]] = {
    "unauthenticated": lambda: None,
    "permission_denied": lambda: create_token(SECRET, ["kiln::default:read"]),
}

#: ``http`` is ``POST /v1/dispatch``; ``rest`` the key routes, for the cases they reach.
TRANSPORTS = ["http", "in_process", "websocket", "tcp"]
CASE_TRANSPORTS = [(case, transport) for case in CASES for transport in TRANSPORTS] + [
    (case, "rest") for case in CASES if case.rest is not None
]


def test_every_error_code_has_a_case() -> None:
    assert {case.code for case in CASES} | set(AUTH_CASES) == set(CLASSES)


@pytest.mark.usefixtures("os_io")
@pytest.mark.parametrize(
    ("case", "transport"),
    CASE_TRANSPORTS,
    ids=[f"{case.code}-{transport}" for case, transport in CASE_TRANSPORTS],
)
def test_each_error_code_on_each_transport(
    server: Server, case: Case, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"{case.code}-{transport}"
    if case.setup is not None:
        case.setup(server, db, monkeypatch)
    message = case.message(db)
    status = None
    if transport == "http":
        status, reply = over_http(server, "POST", "/v1/dispatch", _body(message))
    elif transport == "rest":
        assert case.rest is not None
        status, reply = over_http(server, *case.rest(db))
    elif transport == "in_process":
        reply = in_process(server, message)
    elif transport == "websocket":
        reply = over_websocket(server, message)
    else:
        reply = over_tcp(server, message)
    assert reply["ok"] is False and reply["error_code"] == case.code, reply
    error = errors.error_from_wire(reply)
    assert type(error) is CLASSES[case.code]
    if status is not None:
        assert status == CLASSES[case.code].http_status


@pytest.mark.parametrize("transport", ["http", "rest", "websocket", "tcp"])
@pytest.mark.parametrize("code", sorted(AUTH_CASES))
def test_authentication_codes_on_each_transport(guarded: Server, code: str, transport: str) -> None:
    token = AUTH_CASES[code]()
    message = _write("default")
    status = None
    if transport == "http":
        status, reply = over_http(guarded, "POST", "/v1/dispatch", _body(message), token)
    elif transport == "rest":
        status, reply = over_http(guarded, "PUT", "/v1/db/default/stores/s/keys/k", b"1", token)
    elif transport == "websocket":
        reply = over_websocket(guarded, message, token)
    else:
        reply = over_tcp(guarded, message, token)
    assert reply["ok"] is False and reply["error_code"] == code, reply
    if status is not None:
        assert status == CLASSES[code].http_status


# -- client mistakes are never internal ------------------------------------------------


def test_a_protocol_version_this_server_does_not_speak(server: Server) -> None:
    hello = {"op": "hello", "protocol_version": 99, "request_id": 1}
    for reply in (over_tcp(server, hello), over_websocket(server, hello)):
        assert reply["error_code"] == "protocol_error" and reply["request_id"] == 1
        assert "protocol version 99" in reply["error"]


def test_subscribing_twice_on_one_tcp_connection(server: Server) -> None:
    host, port = server.url.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        subscribe = {"op": "subscribe", "stores": None, "after": 0}
        sock.sendall(
            encode_frame(orjson.dumps({**subscribe, "request_id": 1}))
            + encode_frame(orjson.dumps({**subscribe, "request_id": 2}))
        )
        decoder = FrameDecoder()
        replies: list[dict[str, Any]] = []
        while len(replies) < 2:
            while (body := decoder.next_frame()) is None:
                decoder.feed(sock.recv(65536))
            replies.append(orjson.loads(body))
    assert replies[0]["ok"] is True
    assert replies[1]["error_code"] == "protocol_error" and replies[1]["request_id"] == 2


# -- one body limit ----------------------------------------------------------------------


def test_a_body_of_exactly_the_limit_is_taken_on_every_transport(server: Server) -> None:
    def sized(db: str, size: int) -> bytes:
        message = _write(db, value="")
        padding = size - len(orjson.dumps(message))
        return orjson.dumps(_write(db, value="x" * padding))

    for size in (LIMIT, LIMIT + 1):
        want = "frame_too_large" if size > LIMIT else None
        status, reply = over_http(server, "POST", "/v1/dispatch", sized("exact-http", size))
        assert reply.get("error_code") == want and status == (413 if want else 200)
        assert over_tcp(server, sized("exact-tcp", size)).get("error_code") == want
        assert over_websocket(server, sized("exact-ws", size)).get("error_code") == want


def test_an_oversize_http_body_without_a_length_is_refused(server: Server) -> None:
    async def scenario() -> tuple[int, dict[str, Any]]:
        async def chunks() -> Any:
            for _ in range(4):
                yield b"x" * LIMIT

        async with (
            aiohttp.ClientSession() as session,
            session.post(server.http_url + "/v1/dispatch", data=chunks()) as response,
        ):
            return response.status, await response.json()

    status, reply = asyncio.run(scenario())
    assert status == 413 and reply["error_code"] == "frame_too_large"
    assert reply["limit"] == LIMIT


def test_an_oversize_message_closes_the_websocket_with_1009_after_the_error(
    server: Server,
) -> None:
    async def scenario() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(server.http_url + "/v1/ws") as ws,
        ):
            await ws.send_str("x" * (LIMIT + 1))
            error = await ws.receive_json(timeout=10)
            assert error["error_code"] == "frame_too_large" and error["limit"] == LIMIT
            closing = await ws.receive(timeout=10)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1009

    asyncio.run(scenario())


def test_the_async_client_keeps_its_connection_after_an_oversize_write(server: Server) -> None:
    async def scenario() -> None:
        db = await kilndb.connect_async(server.url, database="async-oversize")
        try:
            with pytest.raises(kilndb.FrameTooLargeError):
                await db.store("s").write("big", "x" * LIMIT)
            assert (await db.store("s").write("small", 1)).seq == 1
        finally:
            await db.close()

    asyncio.run(scenario())


def test_a_header_announcing_4_gib_is_skipped_as_it_arrives(server: Server) -> None:
    host, port = server.url.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack(">I", 2**32 - 1) + b"x" * 100_000)
        decoder = FrameDecoder()
        while (body := decoder.next_frame()) is None:
            decoder.feed(sock.recv(65536))
        reply = orjson.loads(body)
        assert reply["error_code"] == "frame_too_large" and reply["size"] == 2**32 - 1

"""Authentication and authorization on every transport: TCP, Unix, HTTP, SSE, WebSocket."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import kilndb
from kilndb.server import Server
from kilndb.server.auth import AuthConfig, create_token
from tests.cli.runner import kiln

SECRET = "a-test-secret-long-enough-for-every-hmac-algorithm-0123456789abcdef"
OTHER_SECRET = "another-secret-entirely-which-is-also-long-enough-for-hmac-0123456789"
SECRET_VALUE = "the-payroll-figures"


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "tester", "scope": "kiln::*", "exp": int(time.time()) + 300, **extra}


def _tampered() -> str:
    header, payload, signature = create_token(SECRET, ["kiln::default:read"]).split(".")
    forged = jwt.utils.base64url_encode(json.dumps(_claims()).encode()).decode()
    assert forged != payload
    return f"{header}.{forged}.{signature}"


#: token -> (what the server must answer, a word its message must contain)
BAD_TOKENS: dict[str, tuple[Callable[[], str | None], str, str]] = {
    "missing": (lambda: None, "unauthenticated", "token"),
    "expired": (
        lambda: jwt.encode(_claims(exp=int(time.time()) - 100), SECRET),
        "unauthenticated",
        "expired",
    ),
    "not-yet-valid": (
        lambda: jwt.encode(_claims(nbf=int(time.time()) + 100), SECRET),
        "unauthenticated",
        "not valid yet",
    ),
    "tampered": (_tampered, "unauthenticated", "signature"),
    "wrong-secret": (
        lambda: jwt.encode(
            _claims(), "another-secret-entirely-which-is-also-long-enough-for-hmac-0123456789"
        ),
        "unauthenticated",
        "signature",
    ),
    "wrong-algorithm": (
        lambda: jwt.encode(_claims(), SECRET, algorithm="HS512"),
        "unauthenticated",
        "algorithm",
    ),
    "no-exp": (lambda: jwt.encode({"scope": "kiln::*"}, SECRET), "unauthenticated", "exp"),
    "wrong-scope": (
        lambda: create_token(SECRET, ["kiln::other"]),
        "permission_denied",
        "kiln::default",
    ),
    "read-only-writing": (
        lambda: create_token(SECRET, ["kiln::default:read"]),
        "permission_denied",
        "kiln::default",
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("auth")
    with Server(
        data=root / "data",
        port=0,
        http_port=0,
        unix=root / "kiln.sock",
        auth=AuthConfig(secret=SECRET),
    ) as running:
        with kilndb.connect(running.url, token=create_token(SECRET, ["kiln::*"])) as db:
            db.store("s").write("k", SECRET_VALUE)
        yield running


def _unix(server: Server) -> str:
    return next(a for a in server.addresses if a.startswith("unix://"))


def _socket_outcome(url: str, token: str | None) -> str:
    try:
        with kilndb.connect(url, token=token) as db:
            db.store("s").write("k2", 1)
    except kilndb.KilnError as exc:
        assert SECRET_VALUE not in str(exc)
        return exc.error_code
    return "ok"


def _http_outcome(server: Server, token: str | None, path: str, method: str = "GET") -> str:
    request = urllib.request.Request(server.http_url + path, method=method)
    if method == "PUT":
        request.data = b"1"
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return "ok" if response.status == 200 else str(response.status)
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        assert SECRET_VALUE not in body
        return str(json.loads(body)["error_code"])


def _ws_outcome(server: Server, token: str | None, via_header: bool) -> str:
    async def scenario() -> str:
        headers = {"Authorization": f"Bearer {token}"} if via_header and token else {}
        async with aiohttp.ClientSession() as session:
            try:
                socket = await session.ws_connect(server.http_url + "/v1/ws", headers=headers)
            except aiohttp.WSServerHandshakeError as exc:
                return "unauthenticated" if exc.status == 401 else str(exc.status)
            async with socket:
                if not via_header:
                    await socket.send_str(
                        json.dumps({"op": "hello", "token": token, "request_id": 0})
                    )
                    hello = json.loads(await socket.receive_str(timeout=10))
                    if not hello["ok"]:
                        return str(hello["error_code"])
                write = {"op": "write", "store": "s", "key": "k3", "value": 1, "request_id": 1}
                await socket.send_str(json.dumps(write))
                reply = json.loads(await socket.receive_str(timeout=10))
                assert SECRET_VALUE not in json.dumps(reply)
                return "ok" if reply["ok"] else str(reply["error_code"])

    return asyncio.run(scenario())


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_tokens_are_refused_on_every_transport(server: Server, case: str) -> None:
    make, code, word = BAD_TOKENS[case]
    token = make()
    assert _socket_outcome(server.url, token) == code
    assert _socket_outcome(_unix(server), token) == code
    assert _http_outcome(server, token, "/v1/db/default/stores/s/keys/k", "PUT") == code
    assert _ws_outcome(server, token, via_header=False) == code
    if token is not None:
        assert _ws_outcome(server, token, via_header=True) == code
    if code == "unauthenticated":
        assert _http_outcome(server, token, "/v1/events?cursor=0") == code
        assert _http_outcome(server, token, "/v1/db/default/stores/s/keys/k") == code
    try:
        with kilndb.connect(server.url, token=token) as db:
            db.store("s").write("k4", 1)
    except kilndb.KilnError as exc:
        assert word in str(exc), str(exc)


def test_scopes_grant_what_they_say(server: Server) -> None:
    reader = create_token(SECRET, ["kiln::default:read"])
    with kilndb.connect(server.url, token=reader) as db:
        fact = db.store("s").read("k")
        assert fact is not None and fact.value == SECRET_VALUE
        with pytest.raises(kilndb.PermissionDeniedError):
            db.store("s").write("k", 2)
        with pytest.raises(kilndb.PermissionDeniedError, match="kiln::admin"):
            db._call("server_status")
    admin = create_token(SECRET, ["kiln::admin"])
    with kilndb.connect(server.url, token=admin) as db:
        assert db._call("server_status")["status"] == "ready"
        with pytest.raises(kilndb.PermissionDeniedError):
            db.store("s").read("k")
    owner = create_token(SECRET, ["kiln::billing"])
    with kilndb.connect(server.url, "billing", token=owner) as db:
        db.store("s").write("k", 1)
        with pytest.raises(kilndb.PermissionDeniedError):
            db._call("read", store="s", key="k", database="default")
    assert _http_outcome(server, reader, "/v1/db/default/stores/s/keys/k") == "ok"
    assert _http_outcome(server, reader, "/v1/status") == "permission_denied"
    assert _http_outcome(server, admin, "/v1/status") == "ok"
    assert _http_outcome(server, admin, "/metrics") == "ok"
    assert _http_outcome(server, None, "/v1/health") == "ok"  # for load balancers
    assert _ws_outcome(server, create_token(SECRET, ["kiln::*"]), via_header=True) == "ok"


def test_a_connection_must_authenticate_before_anything_else(server: Server) -> None:
    from tests.server.test_sockets import RawClient, tcp_address

    client = RawClient(tcp_address(server))
    client.send(
        {"op": "ping", "request_id": 1}, {"op": "read", "store": "s", "key": "k", "request_id": 2}
    )
    assert client.receive() == {"ok": True, "pong": True, "request_id": 1}
    refused = client.receive()
    assert refused is not None and refused["error_code"] == "unauthenticated"
    assert SECRET_VALUE not in json.dumps(refused)
    client.send({"op": "hello", "token": create_token(SECRET, ["kiln::*"]), "request_id": 3})
    assert (client.receive() or {})["ok"]
    client.send({"op": "read", "store": "s", "key": "k", "request_id": 4})
    assert (client.receive() or {})["fact"]["value"] == SECRET_VALUE
    client.close()


def test_public_key_servers_take_their_algorithm_only(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with Server(data=tmp_path / "data", port=0, auth=AuthConfig(public_key=public_pem)) as server:
        good = jwt.encode(_claims(), private, algorithm="ES256")
        with kilndb.connect(server.url, token=good) as db:
            db.store("s").write("k", 1)
        # An HS256 token "signed" with the public key as a secret: the classic confusion.
        confused = jwt.encode(
            _claims(),
            "not-the-key-but-any-secret-at-all-long-enough-for-hmac-sha256",
            algorithm="HS256",
        )
        with pytest.raises(kilndb.AuthenticationError, match="algorithm"):
            kilndb.connect(server.url, token=confused)


def test_without_auth_only_loopback_unless_insecure(tmp_path: Path) -> None:
    with pytest.raises(kilndb.InvalidArgumentError, match="without authentication"):
        Server(data=tmp_path / "data", host="0.0.0.0", port=0)
    Server(data=tmp_path / "data", host="0.0.0.0", port=0, insecure_bind=True)  # not started
    Server(data=tmp_path / "data", host="0.0.0.0", port=0, auth=AuthConfig(secret=SECRET))


def test_kiln_token_create_and_token_option(server: Server, tmp_path: Path) -> None:
    minted = kiln(tmp_path, "token", "create", "--secret", SECRET, "--scope", "kiln::default:read")
    assert minted.exit_code == 0, minted.stderr
    token = minted.stdout.strip()
    got = kiln(tmp_path, "--url", server.url, "--token", token, "get", "s", "k")
    assert got.exit_code == 0, got.stderr
    assert SECRET_VALUE in got.stdout
    refused = kiln(tmp_path, "--url", server.url, "--token", token, "put", "s", "k", "1")
    assert (
        refused.exit_code == 1 and "permission_denied" in refused.stderr
    ) or "scope" in refused.stderr
    anonymous = kiln(tmp_path, "--url", server.url, "get", "s", "k")
    assert anonymous.exit_code == 1 and SECRET_VALUE not in anonymous.stderr + anonymous.stdout


def test_hello_cannot_redirect_requests_queued_before_it(server: Server) -> None:
    from tests.server.test_sockets import RawClient, tcp_address

    only_a = create_token(SECRET, ["kiln::tenant-a"])
    client = RawClient(tcp_address(server))
    client.send({"op": "hello", "token": only_a, "database": "tenant-a", "request_id": 0})
    assert (client.receive() or {})["ok"]
    client.send(  # one send: the write is queued when hello switches the database
        {"op": "write", "store": "s", "key": "k", "value": "mine", "request_id": 1},
        {"op": "hello", "database": "tenant-b", "request_id": 2},
        {"op": "read", "store": "s", "key": "k", "request_id": 3},
    )
    replies = [client.receive() for _ in range(3)]
    assert replies[0] is not None and replies[0]["ok"]
    assert replies[2] is not None and replies[2]["error_code"] == "permission_denied"
    client.close()
    admin = create_token(SECRET, ["kiln::*"])
    with (
        kilndb.connect(server.url, "tenant-b", token=admin) as b,
        pytest.raises(kilndb.NotFoundError),  # nothing landed in the other tenant,
    ):
        b.store("s").read("k")  # which no write ever created
    with kilndb.connect(server.url, "tenant-a", token=admin) as a:
        fact = a.store("s").read("k")
        assert fact is not None and fact.value == "mine"


def test_the_admin_scope_is_not_a_database_scope(server: Server) -> None:
    admin = create_token(SECRET, ["kiln::admin"])
    with (
        kilndb.connect(server.url, "admin", token=admin) as db,
        pytest.raises(kilndb.PermissionDeniedError),
    ):
        db.store("s").write("k", 1)
    tenant = create_token(SECRET, ["kiln::admin:read"])
    with (
        kilndb.connect(server.url, "admin", token=tenant) as db,
        pytest.raises(kilndb.PermissionDeniedError),
    ):
        db.store("s").read("k")

"""Runs of pipelined plain writes take the server's plain-write lane (committed as one
group, replies framed in one call) and answer exactly as request-by-request handling
would: in order, each with its own outcome, refusal or failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import kilndb
from kilndb.codec import encode_frame
from kilndb.server import Server
from kilndb.server.auth import AuthConfig, create_token
from tests.server.test_sockets import RawClient, tcp_address

SECRET = "a-test-secret-long-enough-for-every-hmac-algorithm-0123456789abcdef"


def write(i: int, store: str = "s", **extra: Any) -> dict[str, Any]:
    return {"op": "write", "request_id": i, "store": store, "key": f"k{i % 3}", "value": i, **extra}


def replies(client: RawClient, count: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(count):
        reply = client.receive()
        assert reply is not None
        out.append(reply)
    return out


def count_runs(server: Server, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the size of each run the server applies through the lane."""
    runs: list[int] = []
    apply_write_run = server.dispatcher.apply_write_run

    def counted(envelopes: list[dict[str, Any]], database: str) -> Any:
        runs.append(len(envelopes))
        return apply_write_run(envelopes, database)

    monkeypatch.setattr(server.dispatcher, "apply_write_run", counted)
    return runs


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(data=tmp_path / "data", port=0) as running:
        yield running


def test_a_mixed_pipeline_is_answered_in_order_with_each_outcome(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = count_runs(server, monkeypatch)
    client = RawClient(tcp_address(server))
    client.send(write(-1, store="warm"))  # opens the database: runs are then applied inline
    assert (client.receive() or {})["ok"]
    requests_before = server.counters["requests_total"]
    pipeline = [
        *(write(i) for i in range(5)),
        write(5, store="kiln.reserved"),  # refused inside a run; its neighbours are not
        *(write(i) for i in range(6, 9)),
        {"op": "read", "request_id": 9, "store": "s", "key": "k0"},
        *(write(i) for i in range(10, 13)),
        {"op": "write", "store": "s", "key": "no-id", "value": "x"},  # no request_id
        {"op": "write", "store": "s", "key": "no-id", "value": "y"},
        {"op": "ping", "request_id": 15},
    ]
    client.send(*pipeline)
    answers = replies(client, len(pipeline))
    assert [a.get("request_id") for a in answers] == [*range(13), None, None, 15]
    refused = answers[5]
    alone = RawClient(tcp_address(server))
    alone.send(write(5, store="kiln.reserved"))
    assert refused == alone.receive()  # the same refusal as the request alone gets
    assert refused["ok"] is False and "reserved" in refused["error"]
    alone.close()
    written = [a for a, r in zip(answers, pipeline, strict=True) if r["op"] == "write" and a["ok"]]
    assert [a["fact"]["position"] for a in written] == list(range(2, 15))
    for answer, request in zip(answers, pipeline, strict=True):
        if request["op"] == "write" and answer["ok"]:
            fact = answer["fact"]
            assert (fact["store"], fact["key"], fact["value"]) == (
                request["store"],
                request["key"],
                request["value"],
            )
    assert runs and sum(runs) >= 8  # the runs took the plain-write lane
    assert answers[9]["fact"]["value"] == 6  # the read sees every write before it
    counters = server.counters
    assert counters["requests_total"] - requests_before == len(pipeline) + 1  # and `alone`
    assert counters["facts_written"] == len(written) + 1
    with kilndb.connect(server.url) as db:
        stored = [f.to_dict() for f in db.replay(after=1)]
        assert stored == [a["fact"] for a in written]
    client.close()


def test_a_run_replies_byte_for_byte_as_single_writes_do(server: Server) -> None:
    single, pipelined = RawClient(tcp_address(server)), RawClient(tcp_address(server))
    single.send(write(0, store="a"))
    alone = single.decoder
    while (one := alone.next_frame()) is None:
        alone.feed(single.sock.recv(65536))
    pipelined.sock.sendall(
        b"".join(encode_frame(orjson.dumps(write(i, store="b"))) for i in range(4))
    )
    bodies: list[bytes] = []
    while len(bodies) < 4:
        if (body := pipelined.decoder.next_frame()) is None:
            pipelined.decoder.feed(pipelined.sock.recv(65536))
        else:
            bodies.append(body)
    # Same shape: {"ok":true,"fact":<stored JSON>,"request_id":N}, nothing else.
    for body in [one, *bodies]:
        reply = orjson.loads(body)
        assert list(reply) == ["ok", "fact", "request_id"]
        assert body == orjson.dumps(reply)
    single.close()
    pipelined.close()


def test_a_run_without_write_permission_is_refused_write_by_write(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0, auth=AuthConfig(secret=SECRET)) as server:
        client = RawClient(tcp_address(server))
        reader = create_token(SECRET, ["kiln::default:read"])
        client.send({"op": "hello", "request_id": "h", "token": reader})
        assert (client.receive() or {})["ok"]
        client.send(*(write(i) for i in range(4)))
        answers = replies(client, 4)
        assert [a["request_id"] for a in answers] == [0, 1, 2, 3]
        assert {a["error_code"] for a in answers} == {"permission_denied"}
        unauthenticated = RawClient(tcp_address(server))
        unauthenticated.send(*(write(i) for i in range(3)))
        assert {a["error_code"] for a in replies(unauthenticated, 3)} == {"unauthenticated"}
        client.close()
        unauthenticated.close()


def test_a_run_sent_to_a_read_only_replica_is_refused_write_by_write(server: Server) -> None:
    with kilndb.connect(server.url) as db:
        db.store("s").write("k", 0)  # the database is open
    server.dispatcher.read_only["default"] = "tcp://127.0.0.1:1"
    client = RawClient(tcp_address(server))
    client.send(*(write(i) for i in range(3)))
    answers = replies(client, 3)
    assert [a["error_code"] for a in answers] == ["read_only_replica"] * 3
    assert [a["request_id"] for a in answers] == [0, 1, 2]
    client.close()


def test_a_run_to_a_database_not_open_yet_is_applied_all_the_same(server: Server) -> None:
    client = RawClient(tcp_address(server))
    client.send({"op": "hello", "request_id": "h", "database": "fresh"})
    assert (client.receive() or {})["ok"]
    client.send(*(write(i) for i in range(5)))
    answers = replies(client, 5)
    assert [a["fact"]["position"] for a in answers] == [1, 2, 3, 4, 5]
    client.close()


def test_the_python_clients_writes_take_the_lane(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kilndb.connect(server.url) as db:
        db.store("s").write("warm", 0)  # opens the database
        runs = count_runs(server, monkeypatch)
        fact = db.store("s").write("k", {"v": 1})
        assert runs == [1]  # the client's null options keep a write plain
        assert db.store("s").read("k") == fact
        second = db.store("s").write("k", {"v": 2}, expected_seq=1)  # an option: checked
        assert runs == [1] and second.seq == 2


def test_a_failing_acknowledgement_fails_only_its_own_replies(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kilndb.server.connections import SocketConnection

    acknowledge = SocketConnection.acknowledge

    def failing(self: SocketConnection, applied: list[Any]) -> None:
        for _, request, *_ in applied:
            run = request.params.get("run")
            ids = [e.get("request_id") for e in run.envelopes] if run else [request.request_id]
            if "boom" in ids:
                raise RuntimeError("injected")
        acknowledge(self, applied)

    warm = RawClient(tcp_address(server))
    warm.send(write(-1, store="warm"))  # opens the database: both writes apply inline
    assert (warm.receive() or {})["ok"]
    monkeypatch.setattr(SocketConnection, "acknowledge", failing)
    doomed, fine = RawClient(tcp_address(server)), RawClient(tcp_address(server))
    doomed.send({"op": "write", "request_id": "boom", "store": "s", "key": "a", "value": 1})
    fine.send({"op": "write", "request_id": "ok", "store": "s", "key": "b", "value": 2})
    failed, answered = doomed.receive(), fine.receive()
    assert failed is not None and failed["ok"] is False and "internal error" in failed["error"]
    assert answered is not None and answered["ok"] and answered["request_id"] == "ok"
    doomed.send({"op": "ping", "request_id": 1})  # the failed connection still works
    assert doomed.receive() == {"ok": True, "pong": True, "request_id": 1}
    for client in (warm, doomed, fine):
        client.close()

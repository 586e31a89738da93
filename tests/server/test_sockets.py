"""The socket server with real sockets on loopback: pipelining, bad input, limits."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import orjson
import pytest

import kilndb
from kilndb.codec import FrameDecoder, encode_frame
from kilndb.server import Server


class RawClient:
    """Frames over a plain socket, exactly as any client in any language would send them."""

    def __init__(self, address: tuple[str, int] | str, receive_buffer: int | None = None) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        if receive_buffer is not None:  # before connecting, so the window is sized for it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise
        self.decoder = FrameDecoder()

    def send(self, *messages: dict[str, Any]) -> None:
        self.sock.sendall(b"".join(encode_frame(orjson.dumps(m)) for m in messages))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        """The next frame, or None once the server has closed the connection."""
        while (body := self.decoder.next_frame()) is None:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.decoder.feed(data)
        message: dict[str, Any] = orjson.loads(body)
        return message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(data=tmp_path / "data", port=0, unix=tmp_path / "kiln.sock") as running:
        yield running


def tcp_address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def test_pipelined_writes_are_answered_in_request_order(server: Server) -> None:
    client = RawClient(tcp_address(server))
    client.send(
        *(
            {"op": "write", "request_id": i, "store": "s", "key": f"k{i % 7}", "value": i}
            for i in range(300)
        )
    )
    replies = [client.receive() for _ in range(300)]
    assert [r["request_id"] for r in replies if r] == list(range(300))
    assert all(r and r["ok"] for r in replies)
    positions = [r["fact"]["position"] for r in replies if r]
    assert sorted(positions) == list(range(1, 301))
    client.close()


def test_a_mixed_pipeline_gets_one_outcome_per_request_in_order(server: Server) -> None:
    client = RawClient(tcp_address(server))
    client.send(
        {"op": "write", "request_id": 0, "store": "s", "key": "a", "value": 1},
        {"op": "write", "request_id": 1, "store": "s", "key": "a", "value": 2, "expected_seq": 0},
        {"op": "write", "request_id": 2, "store": "s", "key": "a", "value": 3, "expected_seq": 1},
        {"op": "write", "request_id": 3, "store": "s", "key": "", "value": 4},
        {"op": "write", "request_id": 4, "store": "s", "key": "b", "value": 5, "id": "c-1"},
        {"op": "write", "request_id": 5, "store": "s", "key": "b", "value": 6, "id": "c-1"},
        {"op": "write", "request_id": 6, "store": "s", "key": "a", "value": 7, "database": "other"},
        {"op": "read", "request_id": 7, "store": "s", "key": "a"},
        {"op": "write_fact", "request_id": 8, "fact": {"store": "s", "key": "c", "value": 8}},
        {"op": "delete", "request_id": 9, "store": "s", "key": "nope"},
        {"op": "write", "request_id": 10, "store": "s", "key": "a", "value": 9},
    )
    replies = [client.receive() for _ in range(11)]
    assert all(r is not None for r in replies)
    by_id = {r["request_id"]: r for r in replies if r}
    assert [r["request_id"] for r in replies if r] == list(range(11))
    assert by_id[0]["fact"]["seq"] == 1
    assert by_id[1]["error_code"] == "conflict"
    assert by_id[2]["fact"]["seq"] == 2 and by_id[2]["fact"]["value"] == 3
    assert by_id[3]["error_code"] == "bad_request"
    assert by_id[5]["fact"] == by_id[4]["fact"]  # the retry is the stored fact
    assert by_id[6]["fact"]["seq"] == 1  # another database
    assert by_id[7]["fact"]["value"] == 3  # reads see the writes before them
    assert by_id[8]["fact"]["key"] == "c"
    assert by_id[9]["error_code"] == "not_found"
    assert by_id[10]["fact"]["seq"] == 3
    client.close()
    with kilndb.connect(server.url) as db:
        assert [f.value for f in db.replay()] == [1, 3, 5, 8, 9]
    with kilndb.connect(server.url, "other") as db:
        assert [f.value for f in db.replay()] == [7]


def test_quick_and_worker_ops_interleaved_in_one_pipeline_stay_in_order(server: Server) -> None:
    client = RawClient(tcp_address(server))
    client.send({"op": "write", "request_id": "open", "store": "s", "key": "k", "value": 0})
    assert (client.receive() or {})["ok"]  # the database is open: writes go the quick way
    requests: list[dict[str, Any]] = []
    for i in range(1, 201):
        requests.append({"op": "write", "store": "s", "key": "k", "value": i})
        if i % 7 == 0:  # replay and history run on worker threads
            requests.append({"op": "history", "store": "s", "key": "k"})
        if i % 11 == 0:
            requests.append({"op": "replay", "after": 0})
        requests.append({"op": "read", "store": "s", "key": "k"})
    for n, request in enumerate(requests):
        request["request_id"] = n
    client.send(*requests)
    latest = 0
    for n, request in enumerate(requests):
        reply = client.receive()
        assert reply is not None and reply["ok"] and reply["request_id"] == n, reply
        if request["op"] == "write":
            latest = request["value"]
            assert reply["fact"]["seq"] == latest + 1
        elif request["op"] == "read":
            assert reply["fact"]["value"] == latest  # sees every write before it
        elif request["op"] == "history":
            assert [f["value"] for f in reply["facts"]] == list(range(latest + 1))
        else:
            assert len(reply["facts"]) == latest + 1
    client.close()


@pytest.mark.usefixtures("os_io")
def test_an_fsync_failure_fails_the_writes_waiting_for_it(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = RawClient(tcp_address(server))
    client.send({"op": "write", "request_id": 0, "store": "s", "key": "k", "value": 0})
    assert (client.receive() or {})["ok"]

    def failing_fdatasync(fd: int) -> None:
        raise OSError(5, "injected I/O error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    client.send(
        *({"op": "write", "request_id": i, "store": "s", "key": "k", "value": i} for i in (1, 2))
    )
    for i in (1, 2):
        reply = client.receive()
        assert reply is not None and reply["request_id"] == i
        assert reply["ok"] is False and reply["error_code"] == "storage_error", reply
    client.send({"op": "ping", "request_id": 3})  # the server itself is fine
    assert client.receive() == {"ok": True, "pong": True, "request_id": 3}
    client.close()


def test_a_bad_request_gets_an_error_and_the_connection_goes_on(server: Server) -> None:
    client = RawClient(tcp_address(server))
    client.send_raw(encode_frame(b"{not json"))
    client.send({"op": "frobnicate", "request_id": 1}, {"op": "ping", "request_id": 2})
    first, second, third = client.receive(), client.receive(), client.receive()
    assert first and first["ok"] is False and first["error_code"] == "protocol_error"
    assert second and second["error_code"] == "unknown_op" and second["request_id"] == 1
    assert third == {"ok": True, "pong": True, "request_id": 2}
    client.close()


def test_a_crc_mismatch_gets_an_error_frame_and_a_close(server: Server) -> None:
    client = RawClient(tcp_address(server))
    client.send_raw(encode_frame(b'{"op":"ping"}')[:-1] + b"\x00")
    error = client.receive()
    assert error and error["ok"] is False and error["error_code"] == "protocol_error"
    assert client.receive() is None  # closed by the server
    client.close()
    other = RawClient(tcp_address(server))  # everyone else is still served
    other.send({"op": "ping"})
    assert other.receive() == {"ok": True, "pong": True}
    other.close()


def test_an_oversize_frame_is_refused_and_the_connection_goes_on(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0, max_frame_bytes=4096) as server:
        client = RawClient(tcp_address(server))
        client.send({"op": "ping", "request_id": 1})
        # Over the limit, sent in pieces after the refusal: the body and its CRC are
        # skipped, and the requests behind them are answered in order.
        client.send_raw(struct.pack(">I", 1_000_000))
        for _ in range(10):
            client.send_raw(b"x" * 100_000)
        client.send_raw(b"\0\0\0\0")
        client.send({"op": "write", "request_id": 3, "store": "s", "key": "k", "value": 1})
        assert client.receive() == {"ok": True, "pong": True, "request_id": 1}
        error = client.receive()
        assert error == {
            "ok": False,
            "error": "frame of 1000000 bytes exceeds the limit of 4096 bytes",
            "error_code": "frame_too_large",
            "size": 1_000_000,
            "limit": 4096,
        }
        reply = client.receive()
        assert reply and reply["ok"] and reply["request_id"] == 3
        client.close()
        # The Python client raises FrameTooLargeError and keeps its connection.
        with kilndb.connect(server.url) as db:
            with pytest.raises(kilndb.FrameTooLargeError) as info:
                db.store("s").write("big", "x" * 10_000)
            assert info.value.limit == 4096 and info.value.size > 10_000
            assert db.store("s").write("small", 1).seq == 1
            assert db.store("s").history("small")[0].value == 1


def test_a_client_that_vanishes_mid_frame_hurts_nobody(server: Server) -> None:
    client = RawClient(tcp_address(server))
    client.send_raw(encode_frame(b'{"op":"ping"}')[:7])
    client.close()
    db = kilndb.connect(server.url)
    assert db.store("s").write("k", 1).position == 1
    db.close()


def test_igniter_subscription_then_close(server: Server) -> None:
    subscriber = RawClient(tcp_address(server))
    subscriber.send({"op": "subscribe", "stores": ["tasks"]})
    assert subscriber.receive() == {"ok": True, "position": 0, "channel_id": ANY}
    writer = kilndb.connect(server.url)
    writer.store("other").write("x", 1)
    written = writer.store("tasks").write("t1", {"title": "Hello"})
    event = subscriber.receive()
    assert event and event["event"] == "fact_written"
    assert event["fact"]["id"] == written.id and event["fact"]["key"] == "t1"
    subscriber.send({"op": "close"})
    assert subscriber.receive() == {"ok": True}
    assert subscriber.receive() is None
    subscriber.close()
    writer.close()


def test_unix_socket_and_hello(server: Server, tmp_path: Path) -> None:
    client = RawClient(str(tmp_path / "kiln.sock"))
    client.send(
        {"op": "hello", "database": "billing", "protocol_version": 1},
        {"op": "write", "store": "s", "key": "k", "value": 1},
        {"op": "hello", "protocol_version": 99},
    )
    hello, write, wrong = client.receive(), client.receive(), client.receive()
    assert hello == {"ok": True, "protocol_version": 1, "database": "billing", "role": "leader"}
    assert write and write["ok"]
    assert wrong and wrong["ok"] is False and "99" in wrong["error"]
    client.close()
    billing = kilndb.connect(f"unix://{tmp_path / 'kiln.sock'}", database="billing")
    assert billing.store("s").keys() == ["k"]
    billing.close()


def test_max_connections_refuses_with_an_error_frame(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0, max_connections=2) as server:
        first, second = RawClient(tcp_address(server)), RawClient(tcp_address(server))
        for client in (first, second):
            client.send({"op": "ping"})
            assert client.receive() == {"ok": True, "pong": True}
        third = RawClient(tcp_address(server))
        refused = third.receive()
        assert refused and refused["error_code"] == "unavailable"
        assert third.receive() is None
        for client in (first, second, third):
            client.close()
        assert server.counters["rejected_connections_total"] == 1


def test_server_status_reports_counters(server: Server) -> None:
    client = RawClient(tcp_address(server))
    client.send({"op": "ping"}, {"op": "server_status", "request_id": "s"})
    client.receive()
    status = client.receive()
    assert status and status["ok"] and status["request_id"] == "s"
    metrics = status["metrics"]
    assert metrics["requests_total"] >= 2 and metrics["active_connections"] >= 1
    client.close()


def test_the_client_raises_connection_lost_when_the_server_is_gone(tmp_path: Path) -> None:
    server = Server(data=tmp_path / "data", port=0).start()
    db = kilndb.connect(server.url)
    db.store("s").write("k", 1)
    server.stop()
    with pytest.raises(kilndb.ConnectionLostError):
        db.store("s").write("k", 2)
    db.close()


def test_stop_drains_in_flight_requests_and_records_events(tmp_path: Path) -> None:
    server = Server(data=tmp_path / "data", port=0, drain_timeout=10).start()
    client = RawClient(tcp_address(server))
    client.send(
        *(
            {"op": "write", "request_id": i, "store": "s", "key": "k", "value": i}
            for i in range(200)
        )
    )
    first = client.receive()  # the server is busy with the rest of the pipeline
    assert first and first["ok"]
    address = tcp_address(server)
    server.stop()
    replies = [first]
    while (reply := client.receive()) is not None:
        replies.append(reply)
    client.close()
    # Every request was answered before the connection closed, and nothing was lost.
    assert [r["request_id"] for r in replies] == list(range(200))
    with pytest.raises(OSError):
        RawClient(address)
    kinds = [e["event"] for e in server.recent_events]
    assert kinds[0] == "server_started" and "server_draining" in kinds
    assert kinds[-1] == "server_stopped" and server.state == "stopped"
    with kilndb.open(tmp_path / "data") as db:
        assert [f.value for f in db.store("s").history("k")] == list(range(200))


def test_a_pipeline_shares_fsyncs(server: Server) -> None:
    client = RawClient(tcp_address(server))
    client.send(
        *(
            {"op": "write", "request_id": i, "store": "s", "key": "k", "value": i}
            for i in range(1000)
        )
    )
    replies = [client.receive() for _ in range(1000)]
    client.close()
    assert all(r and r["ok"] for r in replies)
    with kilndb.connect(server.url) as db:
        stats = db.stats()
        history = db.store("s").history("k")
    assert [f.value for f in history] == list(range(1000))  # applied in request order
    assert stats["fsyncs"] < 100, stats["fsyncs"]  # durable, yet far fewer fsyncs than writes


def test_a_subscriber_that_does_not_read_is_cut_off_with_its_position(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0, max_subscriber_buffer=64 * 1024) as server:
        slow = RawClient(tcp_address(server), receive_buffer=4096)
        slow.send({"op": "subscribe", "after": 0})
        assert slow.receive() == {"ok": True, "position": 0, "channel_id": ANY}
        with kilndb.connect(server.url) as writer:
            pad = "x" * 300
            for batch in range(60):  # far more than the socket buffers and the 64 KiB limit
                writer.write_many([kilndb.Write("s", f"k{batch}-{i}", pad) for i in range(500)])
                if server.status()["metrics"]["subscription_count"] == 0:
                    break  # already cut off: writers were never held up
            assert writer.stats()["last_position"] >= 500
        last_position = 0
        while (message := slow.receive()) is not None:
            if message.get("event") == "fact_written":
                last_position = message["fact"]["position"]
            else:
                assert message["error_code"] == "subscriber_overflow"
                assert message["position"] == last_position  # resume exactly there
                break
        else:
            raise AssertionError("the slow subscriber was never cut off")
        slow.close()


def test_a_server_that_cannot_bind_fails_cleanly_and_frees_what_it_bound(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            tcp_port = probe.getsockname()[1]
        server = Server(data=tmp_path / "data", port=tcp_port, http_port=busy)
        with pytest.raises(OSError, match="address already in use"):
            server.start()
        server.stop()  # nothing to stop: no error
        with socket.socket() as again:  # the TCP port bound before the failure is free
            again.bind(("127.0.0.1", tcp_port))
    # Nothing is left holding the data directory.
    with Server(data=tmp_path / "data", port=0) as healthy, kilndb.connect(healthy.url) as db:
        db.store("s").write("k", 1)

"""Client behaviour the seed systems document: Igniter's clean ``close``, streamkit's
heartbeat and consume clamps, and a status subscription's fresh snapshot after its
server restarts."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

import kilndb
from kilndb.codec import FrameDecoder, encode_frame
from kilndb.streams import MAX_CONSUME, clamp_heartbeat, clamp_limit
from tests.client.test_reconnect import Restartable


class _FakeServer:
    """One connection on a plain socket: answers ``hello``, then records how the client
    behaves around its ``close``."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen: dict[str, Any] = {}
        self.reply_sent = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            decoder = FrameDecoder()

            def next_message() -> dict[str, Any]:
                while (body := decoder.next_frame()) is None:
                    data = conn.recv(65536)
                    assert data, "the client closed before its request"
                    decoder.feed(data)
                message: dict[str, Any] = orjson.loads(body)
                return message

            hello = next_message()
            assert hello["op"] == "hello"
            answer = {"ok": True, "protocol_version": 1, "database": "default", "role": "leader"}
            conn.sendall(encode_frame(orjson.dumps(answer)))
            self.seen["close"] = next_message()
            # A client that did not wait for the reply would have closed by now.
            conn.settimeout(0.5)
            try:
                self.seen["before_reply"] = conn.recv(1)
            except TimeoutError:
                self.seen["before_reply"] = "still connected"
            conn.settimeout(10)
            # Set before sending: the client cannot have the reply any sooner, and once it
            # has it, it may return before this thread runs again.
            self.reply_sent.set()
            conn.sendall(encode_frame(orjson.dumps({"ok": True})))
            try:
                self.seen["after_reply"] = conn.recv(1)  # b"": FIN
            except ConnectionResetError:
                self.seen["after_reply"] = "RST"

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


def test_close_reads_the_servers_reply_then_ends_with_fin() -> None:
    fake = _FakeServer()
    try:
        db = kilndb.connect(fake.url, reconnect_timeout=0)
        returned_after_reply: list[bool] = []

        def close() -> None:
            db.close()
            returned_after_reply.append(fake.reply_sent.is_set())

        closer = threading.Thread(target=close)
        closer.start()
        closer.join(15)
    finally:
        fake.close()
    assert fake.seen == {
        "close": {"op": "close"},
        "before_reply": "still connected",
        "after_reply": b"",
    }
    assert returned_after_reply == [True]


def test_a_status_subscription_gets_a_fresh_snapshot_after_its_server_restarts(
    tmp_path: Path,
) -> None:
    server = Restartable(tmp_path / "data")
    try:
        with kilndb.connect(server.url) as db:
            space = db.space("jobs")
            space.segment("a").produce([kilndb.Record(1)])
            with space.subscribe_status(heartbeat=60) as statuses:
                first = statuses.get(timeout=10)
                assert first is not None
                assert (first["type"], first["segment"], first["last_sequence"]) == (
                    "status",
                    "a",
                    1,
                )
                server.stop()
                # What changed while the server was down arrives as a snapshot, not as
                # changes: the subscription asks again from scratch.
                with kilndb.open(tmp_path / "data") as local:
                    local.space("jobs").segment("b").produce([kilndb.Record(1), kilndb.Record(2)])
                server.start()
                again = [statuses.get(timeout=10) for _ in range(2)]
                assert [(m["type"], m["segment"], m["last_sequence"]) for m in again if m] == [
                    ("status", "a", 1),
                    ("status", "b", 2),
                ]
                space.segment("a").produce([kilndb.Record(2)])
                change = statuses.get(timeout=10)
                assert change is not None
                assert (change["type"], change["segment"], change["last_sequence"]) == (
                    "change",
                    "a",
                    2,
                )
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("asked", "granted"),
    [
        (300.5, 300.0),
        (301, 300.0),
        (3600, 300.0),
        (1e9, 300.0),
        (300, 300.0),
        (1, 1.0),
        (42.5, 42.5),
    ],
)
def test_a_heartbeat_is_clamped_to_at_most_300_seconds(asked: float, granted: float) -> None:
    assert clamp_heartbeat(asked) == granted


def test_the_clients_clamp_heartbeats_before_asking(tmp_path: Path) -> None:
    with (
        kilndb.open(tmp_path / "data") as db,
        db.space("q").subscribe_status(heartbeat=3600) as statuses,
    ):
        assert statuses.heartbeat == 300.0
    server = Restartable(tmp_path / "served")
    try:
        with kilndb.connect(server.url) as remote:
            subscription = remote.space("q").subscribe_status(heartbeat=3600)
            try:
                assert subscription._feed.request()["heartbeat"] == 300.0
            finally:
                subscription.close()
    finally:
        server.stop()


def test_a_consume_limit_is_clamped_to_ten_million() -> None:
    assert MAX_CONSUME == 10_000_000
    assert clamp_limit(MAX_CONSUME + 1) == MAX_CONSUME
    assert clamp_limit(10**15) == MAX_CONSUME
    assert clamp_limit(None) == MAX_CONSUME
    assert clamp_limit(MAX_CONSUME) == MAX_CONSUME
    assert clamp_limit(5) == 5
    with pytest.raises(kilndb.InvalidArgumentError):
        clamp_limit(-1)

"""The sans-I/O server connection: requests in, replies out, bad input handled."""

from __future__ import annotations

import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kilndb
from kilndb.codec import FrameDecoder, encode_frame
from kilndb.protocol import (
    OPS,
    BadRequest,
    ConnectionBroken,
    Request,
    ServerConnection,
)


def frame(message: Any) -> bytes:
    return encode_frame(orjson.dumps(message))


def one(connection: ServerConnection, data: bytes) -> Any:
    events = connection.receive_data(data)
    assert len(events) == 1
    return events[0]


def decode(reply: bytes) -> dict[str, Any]:
    decoder = FrameDecoder()
    decoder.feed(reply)
    body = decoder.next_frame()
    assert body is not None and decoder.buffered == 0
    result: dict[str, Any] = orjson.loads(body)
    return result


# -- Igniter's NetworkBackend, byte for byte ----------------------------------------

IGNITER_FACT = {
    "id": "0b7c7f0e-2f3a-4c55-9a51-6f1f3c9d2a10",
    "store": "tasks",
    "key": "t1",
    "value": {"title": "Hello"},
    "value_hash": "5c924960820d681cb4ac7c1dd76c1b56b963dbbf718faba003691dd26cce3e38",
    "causation": None,
    "transaction_time": 1717236000.123,
    "valid_time": None,
    "schema_version": 1,
    "producer": None,
    "derivation": None,
}


def test_igniter_write_fact_frame() -> None:
    body = b'{"op":"write_fact","fact":' + orjson.dumps(IGNITER_FACT) + b"}"
    request = one(ServerConnection(), encode_frame(body))
    assert isinstance(request, Request)
    assert request.op == "write_fact"
    params = request.params
    assert (params["store"], params["key"], params["value"]) == ("tasks", "t1", {"title": "Hello"})
    assert params["id"] == IGNITER_FACT["id"]
    assert params["schema_version"] == 1


@pytest.mark.parametrize(
    ("message", "op", "params"),
    [
        ({"op": "replay"}, "replay", {"after": 0, "stores": None, "limit": None}),
        (
            {"op": "subscribe", "stores": ["tasks"]},
            "subscribe",
            {"stores": ["tasks"], "after": None, "channel": None},
        ),
        ({"op": "ping"}, "ping", {}),
        ({"op": "stats"}, "stats", {}),
        ({"op": "server_status"}, "server_status", {}),
        ({"op": "close"}, "close", {}),
    ],
)
def test_igniter_ops(message: dict[str, Any], op: str, params: dict[str, Any]) -> None:
    request = one(ServerConnection(), frame(message))
    assert isinstance(request, Request)
    assert (request.op, request.params, request.request_id) == (op, params, None)


def test_igniter_write_snapshot() -> None:
    request = one(ServerConnection(), frame({"op": "write_snapshot", "facts": [IGNITER_FACT]}))
    assert isinstance(request, Request)
    assert request.params["facts"][0]["key"] == "t1"


def test_replies_as_igniter_expects() -> None:
    assert decode(ServerConnection.reply()) == {"ok": True}
    assert decode(ServerConnection.reply(pong=True)) == {"ok": True, "pong": True}
    assert decode(ServerConnection.reply(7, facts=[])) == {"ok": True, "facts": [], "request_id": 7}
    error = decode(ServerConnection.error(kilndb.UnknownOpError("unknown op 'frobnicate'"), "r1"))
    assert error == {
        "ok": False,
        "error": "unknown op 'frobnicate'",
        "error_code": "unknown_op",
        "request_id": "r1",
    }
    event = decode(ServerConnection.fact_event({"id": "f1", "key": "k"}))
    assert event == {"event": "fact_written", "fact": {"id": "f1", "key": "k"}}


def test_error_fields_travel_with_the_error() -> None:
    reply = decode(ServerConnection.error(kilndb.ConflictError("s", "k", 1, 3), 9))
    assert reply["error_code"] == "conflict"
    assert (reply["expected"], reply["actual"], reply["request_id"]) == (1, 3, 9)
    assert isinstance(kilndb.errors.error_from_wire(reply), kilndb.ConflictError)


# -- native ops -----------------------------------------------------------------------


def test_native_write_with_options_and_request_id() -> None:
    message = {
        "op": "write",
        "request_id": "abc",
        "database": "billing",
        "store": "tasks",
        "key": "t1",
        "value": [1, 2],
        "expected_seq": 0,
        "metadata": {"by": "ann"},
        "ignored": "extra fields are ignored",
    }
    request = one(ServerConnection(), frame(message))
    assert isinstance(request, Request)
    assert (request.request_id, request.database) == ("abc", "billing")
    assert request.params["expected_seq"] == 0
    assert request.params["metadata"] == {"by": "ann"}
    assert "ignored" not in request.params


def test_hello_selects_a_database() -> None:
    request = one(ServerConnection(), frame({"op": "hello", "database": "billing"}))
    assert isinstance(request, Request)
    assert request.params["database"] == "billing" and request.database is None


def test_write_many_checks_every_write() -> None:
    ok = one(
        ServerConnection(),
        frame(
            {
                "op": "write_many",
                "writes": [
                    {"store": "s", "key": "a", "value": 1},
                    {"store": "s", "key": "b", "deleted": True},
                ],
            }
        ),
    )
    assert isinstance(ok, Request)
    assert [w["deleted"] for w in ok.params["writes"]] == [False, True]
    bad = one(
        ServerConnection(),
        frame(
            {"op": "write_many", "writes": [{"store": "s", "key": "a", "value": 1}, {"store": "s"}]}
        ),
    )
    assert isinstance(bad, BadRequest)
    assert "writes[1]" in str(bad.error) and "'key'" in str(bad.error)


def test_pipelined_requests_arrive_in_order_across_any_split() -> None:
    stream = b"".join(frame({"op": "ping", "request_id": i}) for i in range(50))
    connection = ServerConnection()
    ids: list[Any] = []
    for start in range(0, len(stream), 7):
        for event in connection.receive_data(stream[start : start + 7]):
            assert isinstance(event, Request)
            ids.append(event.request_id)
    assert ids == list(range(50))
    assert connection.requests == 50 and connection.buffered == 0


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        (b"{not json", "protocol_error", "not valid JSON"),
        (b"[1, 2]", "protocol_error", "JSON object"),
        (b'{"store": "s"}', "bad_request", "'op'"),
        (b'{"op": 5}', "bad_request", "'op'"),
        (b'{"op": "frobnicate", "request_id": 3}', "unknown_op", "frobnicate"),
        (b'{"op": "write", "store": "s", "key": "k"}', "bad_request", "'value'"),
        (b'{"op": "write", "store": 1, "key": "k", "value": 1}', "bad_request", "'store'"),
        (b'{"op": "read", "store": "s", "key": "k", "as_of": "yesterday"}', "bad_request", "as_of"),
        (b'{"op": "history", "store": "s", "key": "k", "limit": -1}', "bad_request", "limit"),
        (b'{"op": "replay", "after": true}', "bad_request", "after"),
        (b'{"op": "subscribe", "stores": "tasks"}', "bad_request", "stores"),
        (b'{"op": "write_fact"}', "bad_request", "fact"),
        (
            b'{"op": "write_fact", "fact": {"store": "s"}}',
            "bad_request",
            "fact: missing field 'key'",
        ),
        (b'{"op": "ping", "database": "../etc"}', "bad_request", "database"),
    ],
)
def test_bad_requests_keep_the_stream_in_step(body: bytes, code: str, needle: str) -> None:
    connection = ServerConnection()
    events = connection.receive_data(encode_frame(body) + frame({"op": "ping", "request_id": 1}))
    assert len(events) == 2
    bad, ping = events
    assert isinstance(bad, BadRequest)
    assert bad.error.error_code == code
    assert needle in str(bad.error)
    assert isinstance(ping, Request) and ping.request_id == 1
    reply = decode(ServerConnection.error(bad.error, bad.request_id))
    assert reply["ok"] is False and reply["error_code"] == code


def test_request_id_is_echoed_even_for_a_bad_request() -> None:
    bad = one(ServerConnection(), frame({"op": "nope", "request_id": "x-1"}))
    assert isinstance(bad, BadRequest) and bad.request_id == "x-1"


def test_an_oversize_frame_is_refused_and_skipped() -> None:
    connection = ServerConnection(max_frame_bytes=64)
    events = connection.receive_data(struct.pack(">I", 65) + b"x" * 10)
    assert len(events) == 1 and isinstance(events[0], BadRequest)
    error = events[0].error
    assert isinstance(error, kilndb.FrameTooLargeError)
    assert (error.size, error.limit) == (65, 64)
    # The rest of its body and its CRC are dropped as they arrive, never buffered.
    assert connection.receive_data(b"y" * 59) == []
    assert connection.buffered == 0
    request = one(connection, frame({"op": "ping", "request_id": 7}))
    assert isinstance(request, Request) and request.request_id == 7


@settings(max_examples=100)
@given(st.integers(1, 200), st.integers(65, 400))
def test_oversize_frames_keep_the_stream_in_step_however_it_is_split(chunk: int, size: int) -> None:
    ping = frame({"op": "ping"})
    big = encode_frame(b"x" * size)
    stream = ping + big + ping + big + big + ping
    connection = ServerConnection(max_frame_bytes=64)
    kinds = []
    for start in range(0, len(stream), chunk):
        for event in connection.receive_data(stream[start : start + chunk]):
            assert isinstance(event, Request | BadRequest)
            kinds.append("ping" if isinstance(event, Request) else event.error.error_code)
    assert kinds == [
        "ping",
        "frame_too_large",
        "ping",
        "frame_too_large",
        "frame_too_large",
        "ping",
    ]
    assert connection.requests == 6


def test_a_crc_mismatch_breaks_the_connection_after_the_good_frames() -> None:
    good = frame({"op": "ping", "request_id": 1})
    damaged = bytearray(frame({"op": "ping", "request_id": 2}))
    damaged[-1] ^= 0xFF
    events = ServerConnection().receive_data(good + bytes(damaged) + good)
    assert isinstance(events[0], Request)
    assert isinstance(events[1], ConnectionBroken)
    assert events[1].error.error_code == "protocol_error"
    assert len(events) == 2


def test_every_op_has_a_checker() -> None:
    igniter = {"write_fact", "replay", "write_snapshot", "subscribe", "ping", "stats"}
    assert igniter | {"server_status", "close", "hello"} <= set(OPS)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_garbage_never_escapes_as_an_exception(data: bytes, chunk: int) -> None:
    connection = ServerConnection(max_frame_bytes=1024)
    for start in range(0, len(data), chunk):
        for event in connection.receive_data(data[start : start + chunk]):
            assert isinstance(event, Request | BadRequest | ConnectionBroken)


@given(
    st.dictionaries(
        st.sampled_from(["op", "store", "key", "value", "after", "stores", "limit", "writes"]),
        st.none()
        | st.integers(-(2**63), 2**63 - 1)
        | st.text(max_size=5)
        | st.lists(st.integers(0, 100), max_size=3),
    )
)
def test_any_json_object_is_a_request_or_a_clear_error(message: dict[str, Any]) -> None:
    event = one(ServerConnection(), frame(message))
    if isinstance(event, BadRequest):
        assert event.error.error_code in {"bad_request", "unknown_op", "protocol_error"}
    else:
        assert isinstance(event, Request) and event.op in OPS

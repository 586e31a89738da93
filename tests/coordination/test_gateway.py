"""The gateway's encoding without a server: request bodies, replies with absent zero
fields, watch messages, and coordinator URLs."""

from __future__ import annotations

import base64
from typing import Any

import pytest

import kilndb
from kilndb.coordination import (
    Compare,
    DeleteOp,
    DeleteResult,
    GetOp,
    KeyValue,
    PutOp,
    PutResult,
    RangeResult,
    gateway,
    parse_coordinator_url,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"a", b"b"),
        (b"kiln/db/", b"kiln/db0"),
        (b"a\xff", b"b"),
        (b"a\xfe\xff\xff", b"a\xff"),
        (b"\xff\xff", b"\0"),
    ],
)
def test_prefix_end_covers_exactly_the_prefix(prefix: bytes, end: bytes) -> None:
    assert gateway.prefix_end(prefix) == end


def test_a_compare_encodes_etcd_enum_names_and_string_integers() -> None:
    absent = gateway.compare_body(Compare("leader", "create_revision", "=", 0))
    assert absent == {
        "key": b64("leader"),
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": "0",
    }
    assert gateway.compare_body(Compare("k", "value", "!=", b"n1")) == {
        "key": b64("k"),
        "target": "VALUE",
        "result": "NOT_EQUAL",
        "value": base64.b64encode(b"n1").decode(),
    }
    assert gateway.compare_body(Compare("k", "lease", ">", 7))["lease"] == "7"
    assert gateway.compare_body(Compare("k", "mod_revision", "<", 9))["result"] == "LESS"
    assert gateway.compare_body(Compare("k", "version", ">", 1))["target"] == "VERSION"


@pytest.mark.parametrize(
    "args",
    [
        ("k", "size", "=", 0),
        ("k", "version", "==", 0),
        ("k", "version", "=", b"0"),
        ("k", "value", "=", 0),
        ("k", "version", "=", True),
    ],
)
def test_a_malformed_compare_is_refused(args: tuple[Any, ...]) -> None:
    with pytest.raises(kilndb.InvalidArgumentError):
        Compare(*args)


def test_a_transaction_body_names_each_operation() -> None:
    body = gateway.txn_body(
        [Compare("a", "version", "=", 0)],
        [PutOp("a", b"1", lease=42), DeleteOp("p/", prefix=True)],
        [GetOp("a")],
    )
    assert body["success"] == [
        {"request_put": {"key": b64("a"), "value": b64("1"), "lease": "42"}},
        {"request_delete_range": {"key": b64("p/"), "range_end": b64("p0")}},
    ]
    assert body["failure"] == [{"request_range": {"key": b64("a")}}]


def test_empty_keys_and_str_values_are_refused() -> None:
    with pytest.raises(kilndb.InvalidArgumentError):
        gateway.range_body("")
    with pytest.raises(kilndb.InvalidArgumentError):
        gateway.put_body("k", "text")  # type: ignore[arg-type]


def test_absent_fields_read_as_zero() -> None:
    reply: dict[str, Any] = {
        "header": {"revision": "7"},
        "responses": [
            {"response_put": {"header": {"revision": "7"}}},
            {"response_delete_range": {"header": {"revision": "7"}}},
            {"response_range": {"header": {"revision": "7"}}},
        ],
    }
    result = gateway.txn_result(reply)
    assert not result.succeeded and result.revision == 7
    assert result.responses == [PutResult(7), DeleteResult(0, 7), RangeResult([])]
    assert gateway.key_value({"key": b64("k")}) == KeyValue("k", b"", 0, 0, 0, 0)
    assert gateway.revision_of({}) == 0


def test_watch_events_are_put_unless_named_delete() -> None:
    result = {
        "header": {"revision": "6"},
        "events": [
            {"kv": {"key": b64("a"), "create_revision": "4", "mod_revision": "4", "version": "1"}},
            {"type": "DELETE", "kv": {"key": b64("a"), "mod_revision": "5"}},
        ],
    }
    put, delete = gateway.watch_events(result)
    assert (put.type, put.revision, put.kv.version) == ("PUT", 4, 1)
    assert (delete.type, delete.revision, delete.kv.key) == ("DELETE", 5, "a")


def test_compacted_names_the_oldest_revision_left() -> None:
    error = gateway.compacted(2, 9, "watch 'p/'")
    assert isinstance(error, kilndb.CursorTooOldError)
    assert (error.cursor, error.oldest_available) == (2, 9)


def test_refusals_map_to_the_error_tree() -> None:
    assert isinstance(gateway.refusal(5, "lease not found", "put"), kilndb.NotFoundError)
    assert isinstance(gateway.refusal(3, "bad", "put"), kilndb.InvalidArgumentError)
    assert type(gateway.refusal(9, "odd", "put")) is kilndb.KilnError


@pytest.mark.parametrize(
    ("url", "endpoints"),
    [
        ("etcd://127.0.0.1:2379", ["http://127.0.0.1:2379"]),
        (
            "etcd://h1:2379,h2:2380,[::1]:2381",
            ["http://h1:2379", "http://h2:2380", "http://[::1]:2381"],
        ),
        ("etcd://h1:1,h1:1", ["http://h1:1"]),
    ],
)
def test_coordinator_urls_name_their_members(url: str, endpoints: list[str]) -> None:
    assert parse_coordinator_url(url) == endpoints


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:2379",
        "etcd://",
        "etcd://127.0.0.1",
        "etcd://:2379",
        "etcd://h:0",
        "etcd://h:65536",
        "etcd://h:port",
        "etcd://h1:2379,",
        "etcd://h1:2379/kiln",
        "etcd://user:pw@h1:2379",
        "etcd://::1:2379",
        "etcd://[::1]",
    ],
)
def test_bad_coordinator_urls_are_refused(url: str) -> None:
    with pytest.raises(kilndb.InvalidArgumentError, match=r"etcd://|member"):
        parse_coordinator_url(url)

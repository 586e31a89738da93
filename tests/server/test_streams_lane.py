"""Segment produce and consume over a socket: the replies are byte for byte those of
the general path (the wire forms of ``kilndb.streams`` encoded by orjson), refusals and
authorization are unchanged, and the client decodes them as it always did."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import kilndb
from kilndb import Record
from kilndb.errors import ConflictError, InvalidArgumentError
from kilndb.server import Server
from kilndb.server.auth import AuthConfig, create_token
from kilndb.streams import entry_from_fact, fact_to_entry_wire, produced_to_wire, record_to_wire
from tests.server.test_sockets import RawClient, tcp_address

SECRET = "a-test-secret-long-enough-for-every-hmac-algorithm-0123456789abcdef"
BATCH = [Record({"n": 1, "tags": ["a"]}), Record(b"\x00\xffraw", {"m": "v"}), Record("x", {})]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(data=tmp_path / "data", port=0) as running:
        yield running


def body_of(client: RawClient) -> bytes:
    while (body := client.decoder.next_frame()) is None:
        client.decoder.feed(client.sock.recv(65536))
    return body


def produce(request_id: int, records: list[Record], **extra: Any) -> dict[str, Any]:
    return {
        "op": "produce",
        "request_id": request_id,
        "space": "sp",
        "segment": "seg",
        "records": [record_to_wire(record) for record in records],
        **extra,
    }


def test_produce_and_consume_reply_byte_for_byte_as_the_general_path(server: Server) -> None:
    client = RawClient(tcp_address(server))
    client.send(produce(1, BATCH), produce(2, BATCH * 2, expected_seq=3))
    produced = [body_of(client), body_of(client)]
    client.send(
        {"op": "consume", "request_id": "c", "space": "sp", "segment": "seg", "limit": 4},
        {"op": "consume", "space": "sp", "segment": "seg", "min_seq": 3, "max_ts": 4e9},
    )
    consumed = [body_of(client), body_of(client)]
    with kilndb.connect(server.url) as db:
        facts = db.store("sp").history("seg")
    assert [fact.seq for fact in facts] == list(range(1, 10))

    def reply(request_id: Any = None, **result: Any) -> bytes:
        body: dict[str, Any] = {"ok": True, **result}
        if request_id is not None:
            body["request_id"] = request_id
        return orjson.dumps(body)

    def produced_of(chosen: list[kilndb.Fact]) -> list[dict[str, Any]]:
        return [produced_to_wire(entry_from_fact(fact)) for fact in chosen]

    assert produced == [
        reply(1, produced=produced_of(facts[:3])),
        reply(2, produced=produced_of(facts[3:])),
    ]
    assert consumed == [
        reply("c", entries=[fact_to_entry_wire(fact) for fact in facts[:4]]),
        reply(entries=[fact_to_entry_wire(fact) for fact in facts[2:]]),
    ]
    client.close()


def test_refusals_in_a_pipeline_are_answered_in_order_and_write_nothing(server: Server) -> None:
    client = RawClient(tcp_address(server))
    bad_record = {"metadata": {"kiln.payload": "x"}, "payload": 1}
    client.send(
        produce(1, BATCH),
        {**produce(2, BATCH), "records": [*produce(2, BATCH)["records"], bad_record]},
        produce(3, BATCH, expected_seq=0),  # conflict: the segment holds 3
        produce(4, BATCH, expected_seq=3),
    )
    answers = [orjson.loads(body_of(client)) for _ in range(4)]
    assert [a["ok"] for a in answers] == [True, False, False, True]
    assert answers[1]["error_code"] == "bad_request"
    assert (answers[2]["error_code"], answers[2]["expected"], answers[2]["actual"]) == (
        "conflict",
        0,
        3,
    )
    assert [p["sequence"] for p in answers[3]["produced"]] == [4, 5, 6]
    assert server.status()["metrics"]["facts_written"] == 6
    client.close()


def test_produce_and_consume_need_their_permissions(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0, auth=AuthConfig(secret=SECRET)) as server:
        writer, reader, other = (
            RawClient(tcp_address(server)),
            RawClient(tcp_address(server)),
            RawClient(tcp_address(server)),
        )
        for client, scope in (
            (writer, "kiln::default"),
            (reader, "kiln::default:read"),
            (other, "kiln::elsewhere"),
        ):
            client.send({"op": "hello", "token": create_token(SECRET, [scope])})
            assert (client.receive() or {})["ok"]
        consume = {"op": "consume", "space": "sp", "segment": "seg"}
        writer.send(produce(1, BATCH))
        assert (writer.receive() or {})["ok"]
        reader.send(produce(2, BATCH), consume)
        denied, allowed = reader.receive() or {}, reader.receive() or {}
        assert denied["error_code"] == "permission_denied"
        assert [e["sequence"] for e in allowed["entries"]] == [1, 2, 3]
        other.send(consume, produce(3, BATCH))
        assert [(other.receive() or {})["error_code"] for _ in range(2)] == [
            "permission_denied"
        ] * 2
        for client in (writer, reader, other):
            client.close()


def test_the_client_produces_and_consumes_as_embedded(server: Server, tmp_path: Path) -> None:
    embedded = kilndb.open(tmp_path / "embedded")
    with kilndb.connect(server.url) as db:
        remote = db.space("sp").segment("seg")
        local = embedded.space("sp").segment("seg")
        for segment in (remote, local):
            made = segment.produce([*BATCH, Record(bytearray(b"ba")), Record(memoryview(b"mv"))])
            assert [e.payload for e in made] == [r.payload for r in BATCH] + [b"ba", b"mv"]
            segment.produce([Record(i) for i in range(1000)], expected_seq=5)

        def shown(entries: list[kilndb.Entry]) -> list[tuple[Any, ...]]:
            return [(e.space, e.segment, e.sequence, e.payload, e.metadata) for e in entries]

        for args in [{}, {"min_seq": 4, "limit": 2}, {"min_seq": 6, "limit": 1000}]:
            assert shown(remote.consume(**args)) == shown(local.consume(**args))
        # A refused record in the middle of a batch: nothing is sent, nothing written.
        for bad in (Record(1, {"kiln.x": "y"}), Record({1, 2}), "not a record"):
            with pytest.raises(InvalidArgumentError) as from_remote:
                remote.produce([Record(1), bad, Record(2)])
            with pytest.raises(InvalidArgumentError) as from_local:
                local.produce([Record(1), bad, Record(2)])
            assert str(from_remote.value) == str(from_local.value)
        with pytest.raises(ConflictError) as conflict:
            remote.produce([Record(1)], expected_seq=2)
        assert (conflict.value.expected, conflict.value.actual) == (2, 1005)
        assert remote.status()["last_sequence"] == 1005
        with pytest.raises(InvalidArgumentError):
            remote.consume(limit=-1)
        with pytest.raises(InvalidArgumentError):  # refused by the server
            remote.consume(min_seq=-1)
        assert remote.produce([]) == []
    embedded.close()

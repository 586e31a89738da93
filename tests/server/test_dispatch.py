"""Requests run against databases: protocol frames in, reply frames out, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import kilndb
from kilndb.codec import FrameDecoder, encode_frame
from kilndb.protocol import BadRequest, Request, ServerConnection, WriteRun
from kilndb.protocol.ops import OPS
from kilndb.server import Dispatcher, NodeManager, ServerConfig
from kilndb.server.admin import ServerOps
from kilndb.server.auth import AuthConfig, Authenticator
from kilndb.server.following import Following
from kilndb.server.metrics import Metrics
from kilndb.server.session import Answer, Execute, Refuse, Session, Step
from kilndb.server.tasks import TaskOwner


class Harness:
    """A connection wired to a dispatcher and the server ops the way a server wires
    them: database ops to the one, server ops to the other."""

    def __init__(self, data_dir: Path) -> None:
        self.databases = NodeManager(data_dir)
        self.dispatcher = Dispatcher(self.databases)
        self.connection = ServerConnection()
        self.session = Session("tcp", Authenticator(AuthConfig()))
        self.loop = asyncio.new_event_loop()
        following = Following(
            ServerConfig(data=data_dir),
            self.databases,
            self.dispatcher,
            Metrics(),
            TaskOwner(self.loop),
        )
        self.server_ops = ServerOps(
            self.databases, following, lambda: {"status": "ready"}, lambda: {"cluster": None}
        )

    def execute(self, step: Step) -> dict[str, Any]:
        assert isinstance(step, Execute), step
        request = step.request
        if step.op.runs == "server":
            return self.server_ops.run(request)
        return self.dispatcher.execute(request, "default")

    def close(self) -> None:
        self.databases.close_all()
        self.loop.close()

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        (event,) = self.connection.receive_data(encode_frame(orjson.dumps(message)))
        if isinstance(event, WriteRun):  # a plain write: a run of one
            (event,) = event.requests()
        if isinstance(event, BadRequest):
            frame = ServerConnection.error(event.error, event.request_id)
        else:
            assert isinstance(event, Request)
            step = self.session.receive(event)
            try:
                if isinstance(step, Refuse):
                    raise step.error
                result = step.fields if isinstance(step, Answer) else self.execute(step)
                frame = ServerConnection.reply(event.request_id, **result)
            except kilndb.KilnError as exc:
                frame = ServerConnection.error(exc, event.request_id)
        decoder = FrameDecoder()
        decoder.feed(frame)
        body = decoder.next_frame()
        assert body is not None
        reply: dict[str, Any] = orjson.loads(body)
        return reply


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    made = Harness(tmp_path / "data")
    yield made
    made.close()


IGNITER_FACT = {
    "id": "0b7c7f0e-2f3a-4c55-9a51-6f1f3c9d2a10",
    "store": "tasks",
    "key": "t1",
    "value": {"title": "Hello"},
    "value_hash": "5c924960820d681cb4ac7c1dd76c1b56b963dbbf718faba003691dd26cce3e38",
    "causation": None,
    "transaction_time": 1.0,
    "valid_time": None,
    "schema_version": 1,
    "producer": None,
    "derivation": None,
}
IGNITER_FIELDS = set(IGNITER_FACT)


def test_igniter_write_fact_then_replay(harness: Harness) -> None:
    assert harness.call({"op": "write_fact", "fact": IGNITER_FACT})["ok"] is True
    reply = harness.call({"op": "replay"})
    assert reply["ok"] is True
    (fact,) = reply["facts"]
    assert set(fact) >= IGNITER_FIELDS
    assert (fact["id"], fact["key"], fact["value"]) == (
        IGNITER_FACT["id"],
        "t1",
        {"title": "Hello"},
    )
    assert fact["value_hash"] == IGNITER_FACT["value_hash"]  # checked against the value
    assert fact["metadata"] == {"kiln.origin_transaction_time": "1.0"}


def test_igniter_write_snapshot_skips_stored_ids(harness: Harness) -> None:
    harness.call({"op": "write_fact", "fact": IGNITER_FACT})
    other = {**IGNITER_FACT, "id": "second", "key": "t2"}
    reply = harness.call({"op": "write_snapshot", "facts": [IGNITER_FACT, other]})
    assert (reply["ok"], reply["written"], reply["skipped"]) == (True, 1, 1)
    assert [f["key"] for f in harness.call({"op": "replay"})["facts"]] == ["t1", "t2"]


def test_ping_and_request_id(harness: Harness) -> None:
    assert harness.call({"op": "ping", "request_id": 41}) == {
        "ok": True,
        "pong": True,
        "request_id": 41,
    }


def test_native_ops_mirror_the_python_api(harness: Harness) -> None:
    first = harness.call({"op": "write", "store": "s", "key": "k", "value": 1})["fact"]
    harness.call({"op": "write", "store": "s", "key": "k", "value": 2, "expected_seq": 1})
    read = harness.call({"op": "read", "store": "s", "key": "k"})["fact"]
    assert read["value"] == 2
    past = harness.call(
        {"op": "read", "store": "s", "key": "k", "as_of": first["transaction_time"]}
    )["fact"]
    assert past["value"] == 1
    history = harness.call({"op": "history", "store": "s", "key": "k", "since_seq": 2})
    assert [f["seq"] for f in history["facts"]] == [2]
    batch = harness.call(
        {
            "op": "write_many",
            "writes": [
                {"store": "s", "key": "a", "value": "x"},
                {"store": "s", "key": "k", "deleted": True},
            ],
        }
    )
    assert [f["deleted"] for f in batch["facts"]] == [False, True]
    assert harness.call({"op": "keys", "store": "s"})["keys"] == ["a"]
    assert harness.call({"op": "read", "store": "s", "key": "k"})["fact"] is None
    assert harness.call({"op": "stores"})["stores"] == ["s"]
    page = harness.call({"op": "replay", "after": 1, "limit": 2})
    assert [f["position"] for f in page["facts"]] == [2, 3] and page["next_after"] == 3
    assert harness.call({"op": "stats"})["stats"]["last_position"] == 4
    retention = harness.call({"op": "set_retention", "store": "s", "keep": "latest"})
    assert retention["retention"] == {"keep": "latest", "max_age": None}
    assert harness.call({"op": "compact"})["ok"] is True
    assert harness.call({"op": "sync"})["ok"] is True


def test_databases_are_selected_per_request(harness: Harness) -> None:
    harness.call({"op": "write", "database": "billing", "store": "s", "key": "k", "value": 1})
    harness.call({"op": "write", "store": "t", "key": "k", "value": 1})
    assert harness.call({"op": "stores"})["stores"] == ["t"]
    assert harness.call({"op": "stores", "database": "billing"})["stores"] == ["s"]
    assert harness.databases.names() == ["billing", "default"]


@pytest.mark.parametrize(
    "message",
    [
        {"op": "stats"},
        {"op": "stores"},
        {"op": "read", "store": "s", "key": "k"},
        {"op": "history", "store": "s", "key": "k"},
        {"op": "replay"},
        {"op": "keys", "store": "s"},
        {"op": "consume", "space": "s", "segment": "g"},
        {"op": "compact"},
        {"op": "renew_lease", "key": "l", "token": 1, "holder": "h", "ttl": 5},
    ],
)
def test_reads_of_a_database_that_does_not_exist_never_create_it(
    harness: Harness, message: dict[str, Any]
) -> None:
    reply = harness.call({**message, "database": "typo"})
    assert (reply["ok"], reply["error_code"]) == (False, "not_found")
    assert "database 'typo' does not exist" in reply["error"]
    assert harness.databases.on_disk() == [] and harness.databases.names() == []


def test_writes_and_create_database_create_it(harness: Harness) -> None:
    assert harness.call({"op": "create_database", "name": "empty"}) == {
        "ok": True,
        "database": "empty",
        "created": True,
    }
    assert harness.call({"op": "create_database", "name": "empty"})["created"] is False
    assert harness.call({"op": "stats", "database": "empty"})["stats"]["last_position"] == 0
    produced = harness.call(
        {"op": "produce", "database": "streams", "space": "s", "segment": "g", "records": []}
    )
    assert produced["ok"] is True
    assert harness.databases.on_disk() == ["empty", "streams"]


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"op": "write", "store": "s", "key": "k", "value": 1, "expected_seq": 5}, "conflict"),
        ({"op": "delete", "store": "s", "key": "never"}, "not_found"),
        ({"op": "write", "store": "bad name", "key": "k", "value": 1}, "bad_request"),
        ({"op": "write", "store": "s", "key": "", "value": 1}, "bad_request"),
        ({"op": "set_retention", "store": "s", "keep": "some"}, "bad_request"),
        ({"op": "frobnicate"}, "unknown_op"),
    ],
)
def test_errors_become_error_replies(harness: Harness, message: dict[str, Any], code: str) -> None:
    reply = harness.call({**message, "request_id": "r"})
    assert reply["ok"] is False
    assert reply["error_code"] == code
    assert reply["request_id"] == "r"
    db = harness.databases.peek("default")  # a refused write may have created it, empty
    assert db is None or db.stats()["last_position"] == 0


def test_the_dispatcher_handles_exactly_the_database_ops_of_the_table(harness: Harness) -> None:
    for op in OPS.values():
        assert Dispatcher.handles(op.name) == (op.runs == "database"), op.name
    request = Request("server_status", {}, "r", "default")
    with pytest.raises(kilndb.KilnError) as refused:
        harness.dispatcher.execute(request, "default")
    assert refused.value.error_code == "protocol_error"


def test_a_removed_database_reopens_on_demand_and_close_refuses_more(harness: Harness) -> None:
    harness.call({"op": "write", "store": "s", "key": "k", "value": 1})
    assert harness.call({"op": "remove_database", "name": "default"}) == {
        "ok": True,
        "database": "default",
        "deleted": False,
    }
    assert harness.call({"op": "read", "store": "s", "key": "k"})["fact"]["value"] == 1
    harness.databases.close()
    reply = harness.call({"op": "read", "store": "s", "key": "k"})
    assert reply["error_code"] == "unavailable"


def test_stream_ops_on_the_wire(harness: Harness) -> None:
    produced = harness.call(
        {
            "op": "produce",
            "space": "orders",
            "segment": "o-1",
            "records": [{"payload_base64": "AP8="}, {"payload": {"a": 1}, "metadata": {"m": "x"}}],
            "expected_seq": 0,
        }
    )
    assert [e["sequence"] for e in produced["produced"]] == [1, 2]
    assert set(produced["produced"][0]) == {"sequence", "timestamp", "position", "id"}
    first = harness.call({"op": "consume", "space": "orders", "segment": "o-1", "limit": 1})
    assert first["entries"][0]["payload_base64"] == "AP8="  # byte-exact
    consumed = harness.call({"op": "consume", "space": "orders", "segment": "o-1", "min_seq": 2})
    assert consumed["entries"][0]["payload"] == {"a": 1}
    assert consumed["entries"][0]["metadata"] == {"m": "x"}
    peek = harness.call({"op": "peek", "space": "orders", "segment": "o-1"})
    assert peek["entry"]["sequence"] == 2
    status = harness.call({"op": "segment_status", "space": "orders", "segment": "o-1"})
    assert status["status"]["last_sequence"] == 2
    assert harness.call({"op": "spaces"})["spaces"] == ["orders"]
    assert harness.call({"op": "segments", "space": "orders"})["segments"] == ["o-1"]
    assert len(harness.call({"op": "space_consume", "space": "orders"})["entries"]) == 2
    conflict = harness.call(
        {
            "op": "produce",
            "space": "orders",
            "segment": "o-1",
            "records": [{"payload": 1}],
            "expected_seq": 0,
        }
    )
    assert conflict["error_code"] == "conflict" and "expected sequence 0" in conflict["error"]


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"op": "produce", "space": "s", "segment": "g"}, "records"),
        ({"op": "produce", "space": "s", "segment": "g", "records": [1]}, "records[0]"),
        ({"op": "produce", "space": "s", "segment": "g", "records": [{}]}, "payload"),
        (
            {"op": "produce", "space": "s", "segment": "g", "records": [{"payload_base64": "@@"}]},
            "base64",
        ),
        ({"op": "consume", "space": "s"}, "segment"),
        ({"op": "consume", "space": "s", "segment": "g", "limit": -1}, "limit"),
        ({"op": "subscribe_status", "segment": "g"}, "space"),
    ],
)
def test_bad_stream_requests(harness: Harness, message: dict[str, Any], fragment: str) -> None:
    reply = harness.call(message)
    assert reply["ok"] is False and reply["error_code"] == "bad_request", reply
    assert fragment in reply["error"]

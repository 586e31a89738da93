"""The plain-write lane: runs of plain write requests are recognised by the core exactly
as the protocol's checker reads each of them, and their replies framed byte for byte as
:meth:`ServerConnection.reply` frames them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilndb import _core
from kilndb.codec import encode_frame
from kilndb.protocol import (
    BadRequest,
    ConnectionBroken,
    Request,
    ServerConnection,
    WriteRun,
    parse_request,
)
from tests.protocol.test_connection import frame


def write(i: Any, **extra: Any) -> dict[str, Any]:
    return {"op": "write", "request_id": i, "store": "s", "key": f"k{i}", "value": i, **extra}


def test_runs_of_plain_writes_become_one_event_each() -> None:
    stream = b"".join(
        [
            *(frame(write(i)) for i in range(3)),
            frame({"op": "read", "request_id": 3, "store": "s", "key": "k0"}),
            frame(write(4)),  # a run of one
            encode_frame(b"{not json"),
            *(frame(write(i)) for i in (6, 7)),
            frame(write(8, expected_seq=0)),  # an option: checked field by field
            frame(write(9, database="other")),  # a database of its own
        ]
    )
    connection = ServerConnection(write_runs=True)
    events = connection.receive_data(stream)
    kinds = [type(event).__name__ for event in events]
    assert kinds == [
        "WriteRun",
        "Request",
        "WriteRun",
        "BadRequest",
        "WriteRun",
        "Request",
        "Request",
    ]
    first, second = events[0], events[4]
    assert isinstance(first, WriteRun) and isinstance(second, WriteRun)
    assert [e["request_id"] for e in first.envelopes] == [0, 1, 2]
    assert [r.request_id for r in second.requests()] == [6, 7]
    assert connection.requests == 10


def test_a_run_is_cut_by_a_broken_stream_after_its_good_frames() -> None:
    damaged = bytearray(frame(write(2)))
    damaged[-1] ^= 0xFF
    events = ServerConnection(write_runs=True).receive_data(
        frame(write(0)) + frame(write(1)) + bytes(damaged)
    )
    assert isinstance(events[0], WriteRun) and len(events[0].envelopes) == 2
    assert isinstance(events[1], ConnectionBroken) and len(events) == 2


def _as_checked(body: bytes) -> Request | BadRequest:
    return parse_request(body)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
#: Write options whose null the checker reads as their default.
NULL_OPTIONS = {
    "expected_seq",
    "id",
    "causation",
    "valid_time",
    "producer",
    "derivation",
    "metadata",
    "fence",
    "replicas",
}
fields = st.sampled_from(
    [
        "op",
        "request_id",
        "store",
        "key",
        "value",
        "database",
        "schema_version",
        "x",
        *sorted(NULL_OPTIONS),
    ]
)


@settings(max_examples=400)
@given(st.dictionaries(fields, json_values | st.none(), max_size=7), st.booleans())
def test_the_core_takes_a_write_as_plain_only_when_the_checker_would(
    envelope: dict[str, Any], make_write: bool
) -> None:
    if make_write:  # most random envelopes would not even be writes
        envelope = {"op": "write", "store": "s", "key": "k", "value": None, **envelope}
    body = orjson.dumps(envelope)
    envelopes, end = _core.plain_write_run([body, body], 0)
    checked = _as_checked(body)
    plain = (
        envelope.get("op") == "write"
        and type(envelope.get("store")) is str
        and type(envelope.get("key")) is str
        and "value" in envelope
        and all(
            name in {"op", "request_id", "store", "key", "value"}
            or (name in NULL_OPTIONS and field is None)
            for name, field in envelope.items()
        )
    )
    assert (end == 2) == plain
    if plain:
        assert envelopes == [envelope, envelope]
        assert isinstance(checked, Request)
        assert WriteRun(envelopes).requests()[0] == checked


@settings(max_examples=300)
@given(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text() | st.floats(),
    st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(), max_size=4),
)
def test_run_replies_are_the_replies_of_each_write(request_id: Any, fact: dict[str, Any]) -> None:
    body = orjson.dumps(fact)
    run = WriteRun([write(0) | {"request_id": request_id}, write(1)])
    replies = ServerConnection.write_replies(run, [body, body])
    expected = b"".join(
        ServerConnection.reply(request.request_id, fact=orjson.Fragment(body))
        for request in run.requests()
    )
    assert replies == expected


def test_a_run_with_an_outcome_that_is_not_a_fact_is_left_to_the_caller() -> None:
    run = WriteRun([write(0), write(1)])
    assert ServerConnection.write_replies(run, [b"{}", {"not": "bytes"}]) is None
    huge = WriteRun([write(0) | {"request_id": 2**64}, write(1)])  # cannot be echoed
    assert ServerConnection.write_replies(huge, [b"{}", b"{}"]) is None
    with pytest.raises(ValueError, match="one outcome per envelope"):
        _core.write_replies(run.envelopes, [b"{}"])


def test_without_write_runs_every_plain_write_is_a_request() -> None:
    events = ServerConnection().receive_data(frame(write(0)) + frame(write(1)))
    assert [type(e) for e in events] == [Request, Request]
    assert [e.request_id for e in events if isinstance(e, Request)] == [0, 1]


def test_facts_are_built_only_for_a_plain_class() -> None:
    with pytest.raises(TypeError, match="plain Python class"):
        _core.facts_from_dicts([{}], int)
    with pytest.raises(TypeError, match="plain Python class"):
        _core.facts_from_dicts([{}], dict)

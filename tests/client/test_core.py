"""The client core, bytes and decisions only: no socket, no loop, no clock."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import kilndb
from kilndb import Write
from kilndb.client import calls
from kilndb.client.core import (
    Ready,
    Reconnect,
    Request,
    leader_for,
    leader_to_read_from,
    lost_reply,
    repeatable,
)
from kilndb.codec import decode_frame


def _sent(request: Request[Any]) -> dict[str, object]:
    message: dict[str, object] = orjson.loads(decode_frame(request.frame))
    return message


def _reply(**fields: object) -> bytes:
    return orjson.dumps({"ok": True, **fields})


FACT = {
    "id": "f1",
    "store": "s",
    "key": "k",
    "seq": 1,
    "position": 1,
    "value": 1,
    "value_hash": "x",
    "transaction_time": 1.0,
    "valid_time": None,
    "causation": None,
    "schema_version": 1,
    "producer": None,
    "derivation": None,
    "metadata": {},
    "deleted": False,
}


@pytest.mark.parametrize(
    ("request_", "again"),
    [
        (calls.read("s", "k", None), True),
        (calls.keys("s", "", None, None), True),
        (calls.simple("compact", "result"), True),
        (calls.acquire_lease("job", "w1", 5), True),
        (calls.write("s", "k", 1, {"id": "cmd-1"}), True),
        (calls.write("s", "k", 1, {}), False),
        (calls.delete("s", "k", {"id": "d"}), True),
        (calls.delete("s", "k", {}), False),
        (calls.release_lease(kilndb.Lease("job", "w1", 1, 0.0)), False),
    ],
)
def test_what_is_sent_again_after_a_lost_reply(request_: Request[Any], again: bool) -> None:
    assert request_.repeatable is again
    lost = kilndb.ConnectionLostError("the server closed the connection")
    error = lost_reply(request_, "tcp://h:1", lost)
    if again:
        assert error is None
    else:
        assert isinstance(error, kilndb.WriteOutcomeUnknownError)
        assert (error.op, error.url) == (request_.op, "tcp://h:1")
        assert "may or may not have been applied" in error.message


def test_a_batch_is_repeatable_only_if_every_write_has_an_id() -> None:
    both = calls.write_many([Write("s", "a", 1, id="1"), Write("s", "b", 2, id="2")], None, None)
    one = calls.write_many([Write("s", "a", 1, id="1"), Write("s", "b", 2)], None, None)
    assert isinstance(both, Request) and both.repeatable
    assert isinstance(one, Request) and not one.repeatable
    assert repeatable("write_many", {"writes": []})
    assert calls.write_many([], None, None) == Ready([])


def test_a_timed_out_reply_is_not_waited_for_again() -> None:
    try:
        raise kilndb.ConnectionLostError("no reply") from TimeoutError()
    except kilndb.ConnectionLostError as lost:
        timed_out = lost
    assert lost_reply(calls.read("s", "k", None), "u", timed_out) is timed_out
    assert isinstance(
        lost_reply(calls.write("s", "k", 1, {}), "u", timed_out), kilndb.WriteOutcomeUnknownError
    )


def test_requests_carry_the_call_and_decode_the_reply() -> None:
    write = calls.write("s", "k", {"a": 1}, {"id": "c", "expected_seq": 0})
    assert _sent(write) == {
        "op": "write",
        "store": "s",
        "key": "k",
        "value": {"a": 1},
        "fence": None,
        "replicas": None,
        "id": "c",
        "expected_seq": 0,
    }
    fact = write.decode(_reply(fact=FACT))
    assert isinstance(fact, kilndb.Fact) and fact.id == "f1"
    assert calls.read("s", "k", None).decode(_reply(fact=None)) is None
    refused = orjson.dumps({"ok": False, "error": "x", "error_code": "conflict", "actual": 3})
    with pytest.raises(kilndb.ConflictError):
        write.decode(refused)
    lease = calls.acquire_lease("job", "w1", 10**9).decode(
        _reply(lease={"key": "job", "holder": "w1", "token": 2, "expires_at": 5.0})
    )
    assert lease == kilndb.Lease("job", "w1", 2, 5.0)
    assert _sent(calls.acquire_lease("job", "w1", 10**9))["ttl"] == 24 * 3600.0


@pytest.mark.parametrize(
    "build",
    [
        lambda: calls.write("s", "k", float("nan"), {}),
        lambda: calls.write("s", "k", 1, {"bogus": 1}),
        lambda: calls.write("s", "k", 1, {"replicas": -1}),
        lambda: calls.write("s", "k", 1, {"fence": "job"}),
        lambda: calls.write_many(["not a write"], None, None),  # type: ignore[list-item]
        lambda: calls.Replay(-1, None, None),
        lambda: calls.Replay(0, "tasks", None),
        lambda: calls.Replay(0, ["bad name!"], None),
        lambda: calls.acquire_lease("job", "w1", 0),
        lambda: calls.consume("s", "g", 1, None, "yesterday", None, None),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(build: object) -> None:
    with pytest.raises(kilndb.InvalidArgumentError):
        build()  # type: ignore[operator]


def test_replay_pages_until_a_short_page_or_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calls, "REPLAY_PAGE", 2)
    pages = calls.Replay(after=0, stores=["s"], limit=3)
    taken: list[int] = []
    for position in (1, 3):
        request = pages.request()
        assert request is not None
        sent = _sent(request)
        assert (sent["after"], sent["stores"], sent["limit"]) == (
            position - 1,
            ["s"],
            2 if position == 1 else 1,
        )
        wanted = 2 if position == 1 else 1
        facts = [{**FACT, "position": p} for p in range(position, position + wanted)]
        reply = request.decode(_reply(facts=facts, next_after=position + wanted - 1))
        taken += [f.position for f in pages.take(reply)]
    assert taken == [1, 2, 3] and pages.request() is None
    short = calls.Replay(after=0, stores=None, limit=None)
    request = short.request()
    assert request is not None
    short.take(request.decode(_reply(facts=[FACT], next_after=1)))
    assert short.request() is None
    assert calls.Replay(after=0, stores=None, limit=0).request() is None


def test_the_reconnect_schedule_backs_off_within_its_budget() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    waits = []
    for wait in Reconnect(timeout=1.0, first_delay=0.1, max_delay=0.3).waits(clock):
        waits.append(wait)
        now[0] += wait + 0.01  # the attempt itself takes a moment
    assert waits[:4] == [0.0, 0.1, 0.2, 0.3]
    assert all(w <= 0.3 for w in waits) and sum(waits) <= 1.0
    assert list(Reconnect(timeout=0).waits(clock)) == []
    for bad in (-1, True, "5"):
        with pytest.raises(kilndb.InvalidArgumentError):
            Reconnect.make(bad)


def test_routing_decisions() -> None:
    refused = kilndb.ReadOnlyReplicaError("tcp://leader:1")
    assert leader_for(refused, follow_leader=True) == "tcp://leader:1"
    assert leader_for(refused, follow_leader=False) is None
    assert leader_for(kilndb.ReadOnlyReplicaError(None), follow_leader=True) is None
    follower = {"role": "follower", "leader": "tcp://leader:1"}
    assert leader_to_read_from("tcp://f:1", follower, "any", None) is None
    assert leader_to_read_from("tcp://f:1", follower, "leader", None) == "tcp://leader:1"
    elsewhere = {"role": "elsewhere", "leader": "tcp://leader:1"}
    assert leader_to_read_from("tcp://f:1", elsewhere, "any", None) == "tcp://leader:1"
    assert leader_to_read_from("tcp://f:1", elsewhere, "any", False) is None
    with pytest.raises(kilndb.UnavailableError):
        leader_to_read_from("tcp://f:1", {"role": "follower"}, "leader", None)

"""Where two leader epoch histories part, and what a follower must cut."""

from __future__ import annotations

from typing import Any

from kilndb.replication.protocol import divergence_point, sync_request

GENESIS = {"epoch": 0, "start_position": 1}


def _epoch(number: int, start: int, ident: str) -> dict[str, Any]:
    return {"epoch": number, "start_position": start, "id": ident}


def test_a_follower_in_step_with_its_leader_keeps_everything() -> None:
    history = [GENESIS, _epoch(1, 40, "a")]
    assert divergence_point(history, history, 100) is None
    assert divergence_point(history, [GENESIS], 39) is None  # behind, not diverged


def test_records_written_after_a_later_epoch_began_are_cut() -> None:
    leader = [GENESIS, _epoch(1, 40, "a")]
    # A former leader that went on writing in epoch 0 after the promotion at 40.
    assert divergence_point(leader, [GENESIS], 55) == 39
    assert divergence_point(leader, [GENESIS], 40) == 39


def test_two_promotions_to_the_same_epoch_number_are_told_apart() -> None:
    # Two followers of one leader, both promoted (split brain): numbers match, ids do
    # not; the one re-pointed at the other keeps only what they had in common.
    b = [GENESIS, _epoch(1, 40, "b")]
    c = [GENESIS, _epoch(1, 38, "c")]
    assert divergence_point(b, c, 60) == 37
    assert divergence_point(c, b, 60) == 37
    assert divergence_point(b, c, 37) is None  # nothing written after the split


def test_a_follower_that_led_an_epoch_its_leader_never_had() -> None:
    leader = [GENESIS, _epoch(1, 40, "a"), _epoch(2, 90, "d")]
    follower = [GENESIS, _epoch(1, 40, "a"), _epoch(2, 70, "x")]
    assert divergence_point(leader, follower, 80) == 69


def test_sync_request_carries_the_history_and_its_last_epoch() -> None:
    request = sync_request("db", [GENESIS, _epoch(3, 9, "z")], 12)
    assert request["leader_epoch"] == 3 and request["epochs"][1]["id"] == "z"
    assert request["position"] == 12 and request["protocol_version"] == 1

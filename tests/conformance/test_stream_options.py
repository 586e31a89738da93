"""Conformance: status-subscription heartbeats (0: none) and stream channel ids."""

from __future__ import annotations

import pytest

import kilndb
from kilndb import Record


def test_heartbeat_zero_sends_no_heartbeats(db: kilndb.Database) -> None:
    space = db.space("q")
    space.segment("a").produce([Record(1)])
    with space.subscribe_status(heartbeat=0, channel="status-1") as quiet:
        assert quiet.heartbeat == 0 and quiet.channel_id == "status-1"
        assert quiet.get(timeout=5)["type"] == "status"  # type: ignore[index]
        space.segment("a").produce([Record(2)])
        assert quiet.get(timeout=5)["type"] == "change"  # type: ignore[index]
        assert quiet.get(timeout=1.2) is None  # a 1 s heartbeat would have come by now
    with space.subscribe_status(heartbeat=0.01) as beating:  # non-zero: clamped to 1 s
        assert beating.heartbeat == 1.0
        assert beating.get(timeout=5)["type"] == "status"  # type: ignore[index]
        assert beating.get(timeout=5)["type"] == "heartbeat"  # type: ignore[index]


@pytest.mark.parametrize("heartbeat", [-1, -0.5, float("nan"), "30", True])
def test_a_negative_or_non_number_heartbeat_is_refused(
    db: kilndb.Database, heartbeat: object
) -> None:
    with pytest.raises(kilndb.InvalidArgumentError, match="heartbeat"):
        db.space("q").subscribe_status(heartbeat=heartbeat)  # type: ignore[arg-type]


def test_streams_carry_a_channel_id(db: kilndb.Database) -> None:
    with db.subscribe(channel="feed-1") as named, db.subscribe() as assigned:
        assert named.channel_id == "feed-1"
        assert assigned.channel_id is not None and len(assigned.channel_id) == 36
    with db.space("q").subscribe_status() as status:
        assert status.channel_id is not None and len(status.channel_id) == 36
    for bad in ("", "x" * 129, "has space", "new\nline"):
        with pytest.raises(kilndb.InvalidArgumentError, match="channel"):
            db.subscribe(channel=bad)
        with pytest.raises(kilndb.InvalidArgumentError, match="channel"):
            db.space("q").subscribe_status(channel=bad)

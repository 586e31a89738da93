"""armdb's reconnect backoff (``RECONNECT_BASE_MS = 1000``, ``RECONNECT_MAX_MS = 30_000``,
doubling) in a follower, computed without waiting: the follower's waits are recorded by
a stand-in for its stop event."""

from __future__ import annotations

import inspect
import random
import time
from pathlib import Path
from typing import Any

import pytest

import kilndb
from kilndb.client.endpoint import Endpoint
from kilndb.errors import ConnectionLostError
from kilndb.replication import Follower
from kilndb.replication.follower import StreamFollower
from kilndb.server import Server, ServerConfig


class _RecordingStop:
    """Stands in for a follower's stop event: records each wait, stops after ``rounds``."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return len(self.waits) >= self.rounds

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return self.is_set()


def _follower(**options: Any) -> StreamFollower:
    def nothing_local(database_id: str | None) -> None:
        return None

    return StreamFollower(
        Endpoint.make("tcp://127.0.0.1:9"),
        "default",
        nothing_local,
        lambda position: [],
        lambda: 0,
        **options,
    )


def _waits(follower: StreamFollower, rounds: int, attempt: Any) -> list[float]:
    stop = _RecordingStop(rounds)
    follower._stop = stop  # type: ignore[assignment]
    follower._follow = attempt  # type: ignore[method-assign]
    follower._follow_with_backoff()
    return stop.waits


def _unreachable() -> None:
    raise ConnectionLostError("cannot reach the leader")


def test_the_backoff_defaults_are_armdbs() -> None:
    assert ServerConfig().replication_backoff == (1.0, 30.0)
    defaults = inspect.signature(StreamFollower).parameters
    assert defaults["backoff_min"].default == 1.0
    assert defaults["backoff_max"].default == 30.0


def test_the_servers_backoff_reaches_its_followers(tmp_path: Path) -> None:
    with Server(
        data=tmp_path / "data", port=0, replica_of="127.0.0.1:9", replication_backoff=(0.25, 2.0)
    ) as server:
        (follower,) = server.following.followers
        assert (follower.backoff_min, follower.backoff_max) == (0.25, 2.0)


def test_reconnects_back_off_from_1_s_doubling_to_a_30_s_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    follower = _follower()
    assert _waits(follower, 8, _unreachable) == [1, 2, 4, 8, 16, 30, 30, 30]
    assert follower.reconnects == 8
    assert follower.state == "retrying"
    assert follower.last_error == "cannot reach the leader"


def test_the_jitter_only_shortens_a_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    assert _waits(_follower(), 7, _unreachable) == [0.5, 1, 2, 4, 8, 15, 15]
    # With the real jitter: each wait within [delay / 2, delay].
    monkeypatch.undo()
    waits = _waits(_follower(), 7, _unreachable)
    for wait, delay in zip(waits, [1, 2, 4, 8, 16, 30, 30], strict=True):
        assert delay / 2 <= wait <= delay


def test_the_backoff_restarts_at_its_base_after_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    follower = _follower(backoff_min=0.5, backoff_max=3.0)
    attempts = 0

    def progress_on_the_fourth() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 4:
            follower.position += 10  # applied some of the leader's log, then lost it
        raise ConnectionLostError("the leader went away")

    assert _waits(follower, 7, progress_on_the_fourth) == [0.5, 1, 2, 0.5, 1, 2, 3]


def test_heartbeats_keep_an_idle_link_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """armdb's heartbeat: an idle stream is kept open by heartbeats and their acks, so
    neither side takes it for a dead peer, however long no fact is written."""
    from kilndb.replication import follower as follower_module
    from kilndb.server import replication

    monkeypatch.setattr(replication, "SILENCE_SECONDS", 0.6)
    monkeypatch.setattr(replication, "HEARTBEAT_SECONDS", 0.1)
    monkeypatch.setattr(follower_module, "SILENCE_SECONDS", 0.6)
    with Server(data=tmp_path / "leader", port=0) as leader:
        with kilndb.connect(leader.url) as db:
            db.store("s").write("k", 1)
        with Follower(leader.url, tmp_path / "replica") as follower:
            follower.wait_for(timeout=10)
            time.sleep(2.0)  # idle for more than three silences
            assert follower.reconnects == 0 and follower.last_error is None
            events = [e["event"] for e in leader.recent_events]
            assert "follower_dropped" not in events
            with kilndb.connect(leader.url) as db:
                position = db.store("s").write("k", 2).position
            follower.wait_for(position, timeout=10)
            assert follower.reconnects == 0

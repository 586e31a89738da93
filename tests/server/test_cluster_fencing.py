"""Fencing through gossip, without a coordinator: a leader that sees another member lead
its database at a newer epoch stops taking writes at once, and a restarted old leader
takes none before it has heard the cluster."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

import kilndb
from kilndb.server import Server
from tests.cli.runner import kiln
from tests.processes import reap
from tests.server.test_cluster import Members, _cluster, _eventually, _replayed


def _http(url: str) -> str:
    with kilndb.connect(url, follow_leader=False) as db:
        addresses = db._call("server_status")["addresses"]
    return str(next(a for a in addresses if a.startswith("http")))


def _recent(url: str) -> list[dict[str, Any]]:
    import urllib.request

    with urllib.request.urlopen(_http(url) + "/v1/events/recent", timeout=10) as reply:
        events: list[dict[str, Any]] = json.loads(reply.read())
    return events


def _leader_of(url: str) -> str | None:
    leader = _cluster(url)["leaders"].get("default")
    return None if leader is None else str(leader["node"])


def _address(url: str) -> str:
    return url.removeprefix("tcp://")


#: What a member that does not take writes for a database answers.
REFUSALS = (kilndb.ReadOnlyReplicaError, kilndb.StaleEpochError, kilndb.UnavailableError)


class Writer:
    """Writes to one member (never sent on to a leader), each write with an id; keeps
    the acknowledged ones and the last refusal."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acknowledged: list[str] = []
        self.refusal: kilndb.KilnError | None = None

    def attempt(self) -> kilndb.KilnError | None:
        write_id = uuid.uuid4().hex
        try:
            with kilndb.connect(self.url, follow_leader=False) as db:
                db.store("s").write(f"w-{write_id}", 1, id=write_id)
        except (
            kilndb.ReadOnlyReplicaError,
            kilndb.StaleEpochError,
            kilndb.UnavailableError,
        ) as exc:
            self.refusal = exc
            return exc
        self.acknowledged.append(write_id)
        return None


def _kill(members: Members, name: str) -> None:
    process = members.processes[name]
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    reap(process)


@pytest.mark.integration
def test_a_restarted_old_leader_takes_no_write_once_another_member_leads(
    members: Members, tmp_path: Path
) -> None:
    n1, n2, n3 = members.led_and_followed("n1", "n2", "n3", writes=30)

    # n1 dies hard; an operator promotes n2; n3 follows it.
    _kill(members, "n1")
    promoted = kiln(tmp_path, "--url", n2, "promote")
    assert promoted.exit_code == 0, promoted.stderr
    _eventually(lambda: _leader_of(n3) == "n2", 20)
    with kilndb.connect(n2) as db:
        db.store("s").write("on-n2", 1)

    # n1 comes back as it was started — no --follow, not re-pointed — joining the
    # cluster through a live member.
    members.seed = _cluster(n2)["gossip"]
    n1 = members.start("n1")
    writer = Writer(n1)
    _eventually(lambda: isinstance(writer.attempt(), kilndb.ReadOnlyReplicaError), 20)
    assert isinstance(writer.refusal, kilndb.ReadOnlyReplicaError)
    assert writer.refusal.leader == n2  # the client is told where writes go now
    # It took no write at all: before it had heard the cluster it held the database,
    # and then it knew.
    assert writer.acknowledged == []
    fenced = [e for e in _recent(n1) if e["event"] == "fenced"]
    assert fenced and fenced[0]["newer_epoch"] == 1 and fenced[0]["leader"] == n2

    def published_by_n1() -> dict[str, Any]:
        members_seen = {m["name"]: m for m in _cluster(n2)["members"]}
        return dict(members_seen["n1"]["databases"]["default"])

    _eventually(lambda: published_by_n1().get("fenced") is True, 10)
    assert published_by_n1()["role"] == "follower"
    assert _leader_of(n3) == "n2"

    # Pointed at n2 by hand, n1 converges; n2 holds everything n1 ever acknowledged.
    pointed = kiln(tmp_path, "--url", n1, "replicate", "--from", _address(n2))
    assert pointed.exit_code == 0, pointed.stderr
    _eventually(lambda: _replayed(n1) == _replayed(n2), 20)
    with kilndb.connect(n2) as db:
        assert all(db.store("s").read(f"w-{i}") is not None for i in writer.acknowledged)
        assert db.store("s").read("on-n2") is not None


@pytest.mark.integration
def test_a_live_leader_fences_itself_when_another_member_is_promoted(
    members: Members, tmp_path: Path
) -> None:
    a, b = members.led_and_followed("a", "b", writes=10)

    # A promotion by mistake (or a partition healed): b leads at epoch 1 while a, at
    # epoch 0, still runs. a hears it through gossip and stops taking writes.
    promoted = kiln(tmp_path, "--url", b, "promote")
    assert promoted.exit_code == 0, promoted.stderr
    writer = Writer(a)
    _eventually(lambda: isinstance(writer.attempt(), kilndb.ReadOnlyReplicaError), 20)
    assert isinstance(writer.refusal, kilndb.ReadOnlyReplicaError)
    assert writer.refusal.leader == b
    _eventually(lambda: _leader_of(a) == "b", 10)
    with kilndb.connect(a) as db:  # a client of a is sent to the new leader
        written = db.store("s").write("through-a", 1)
    with kilndb.connect(b) as db:
        assert db.store("s").read("through-a") == written
    # The new leader ignores the stale claimant: it keeps leading.
    assert not [e for e in _recent(b) if e["event"] == "fenced"]


def test_a_member_restarted_with_join_holds_what_it_led_until_it_hears_the_cluster(
    tmp_path: Path,
) -> None:
    with kilndb.open(tmp_path / "data", "default") as local:  # led here before
        local.store("s").write("k", 1)
    # Its seed is gone: nobody answers, and after the grace period it leads again.
    probe = 2.0  # a grace period of 5 probe intervals: far longer than the first write
    with Server(
        data=tmp_path / "data",
        port=0,
        gossip_port=0,
        node_name="m",
        probe_interval=probe,
        join=("127.0.0.1:9",),
    ) as server:
        with kilndb.connect(server.url, follow_leader=False) as db:
            with pytest.raises(kilndb.UnavailableError, match="heard the cluster"):
                db.store("s").write("early", 1)
            assert db.store("s").read("k") is not None  # reads are served meanwhile
        _eventually(lambda: not server.following.settling, 30)
        with kilndb.connect(server.url, follow_leader=False) as db:
            db.store("s").write("later", 1)
        events = [e["event"] for e in server.recent_events]
        assert "leading_after_restart" in events and "fenced" not in events

"""Changefeed fan-out: many subscribers, one reader of the log, no gap and no duplicate."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

import kilndb
from kilndb.server import Server, fanout
from tests.server.test_sockets import RawClient, tcp_address


def _events(client: RawClient, count: int) -> list[dict[str, Any]]:
    facts: list[dict[str, Any]] = []
    while len(facts) < count:
        message = client.receive()
        assert message is not None, f"closed after {len(facts)} of {count} facts"
        assert message.get("event") == "fact_written", message
        facts.append(message["fact"])
    return facts


def test_subscribers_joining_at_any_point_see_every_fact_once_in_order(
    tmp_path: Path,
) -> None:
    stores = ["a", "b", "c"]
    total = 3000
    with Server(data=tmp_path / "data", port=0) as server:
        writer = kilndb.connect(server.url)
        subscribers: list[tuple[RawClient, int, list[str] | None]] = []

        def subscribe(after: int | None, follow: list[str] | None) -> None:
            client = RawClient(tcp_address(server))
            request: dict[str, Any] = {"op": "subscribe", "after": after}
            if follow is not None:
                request["stores"] = follow
            client.send(request)
            reply = client.receive()
            assert reply is not None and reply["ok"], reply
            subscribers.append((client, reply["position"], follow))

        subscribe(0, None)  # from the start, before anything is written
        subscribe(None, ["a"])  # live only, one store
        done = threading.Event()

        def write() -> None:
            for i in range(0, total, 50):
                writer.write_many(
                    [kilndb.Write(stores[j % 3], f"k{j % 17}", j) for j in range(i, i + 50)]
                )
            done.set()

        thread = threading.Thread(target=write)
        thread.start()
        while not done.is_set():  # join while the feed is moving: catch-up, then live
            subscribe(0, None)
            subscribe(None, ["b", "c"])
            subscribe(max(0, writer.stats()["last_position"] - 100), ["c"])
            if len(subscribers) > 30:
                break
        thread.join()
        written = list(writer.replay())
        for client, start, follow in subscribers:
            expected = [
                f.position
                for f in written
                if f.position > start and (follow is None or f.store in follow)
            ]
            got = [fact["position"] for fact in _events(client, len(expected))]
            assert got == expected
            client.close()
        writer.close()


def test_an_idle_hub_stops_and_a_new_subscriber_starts_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "IDLE_SECONDS", 0.0)
    with Server(data=tmp_path / "data", port=0) as server, kilndb.connect(server.url) as writer:
        writer.store("s").write("k", 1)
        first = RawClient(tcp_address(server))
        first.send({"op": "subscribe", "after": 0})
        assert first.receive() == {"ok": True, "position": 0, "channel_id": ANY}
        assert [f["value"] for f in _events(first, 1)] == [1]
        first.send({"op": "close"})
        assert first.receive() == {"ok": True}
        first.close()
        for _ in range(100):  # the hub retires within a poll or two
            if not server.fanout._hubs:
                break
            threading.Event().wait(0.05)
        assert not server.fanout._hubs
        writer.store("s").write("k", 2)
        second = RawClient(tcp_address(server))
        second.send({"op": "subscribe", "after": 0})
        assert second.receive() == {"ok": True, "position": 0, "channel_id": ANY}
        writer.store("s").write("k", 3)
        assert [f["value"] for f in _events(second, 3)] == [1, 2, 3]
        second.close()


def test_a_compacted_cursor_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0) as server:
        with kilndb.connect(server.url) as db:
            db.set_retention("s", keep="latest")
            for i in range(5):
                db.store("s").write("k", i)
            db.store("t").write("k", "kept")
            db.compact()
        client = RawClient(tcp_address(server))
        client.send({"op": "subscribe", "after": 1})
        reply = client.receive()
        assert reply is not None and reply["error_code"] == "cursor_too_old"
        assert (reply["cursor"], reply["store"], reply["oldest"]) == (1, "s", 4)
        assert reply["oldest_available"] == 5
        assert "for store 's'" in reply["error"]
        client.send({"op": "subscribe", "stores": ["s", "t"], "after": 3})
        reply = client.receive()
        assert reply is not None and reply["error_code"] == "cursor_too_old"
        client.send({"op": "subscribe", "stores": ["bad name!"]})
        reply = client.receive()
        assert reply is not None and reply["error_code"] == "bad_request"
        client.send({"op": "subscribe", "after": 0})  # the connection can still subscribe
        reply = client.receive()
        assert reply is not None and reply["ok"]
        assert [f["value"] for f in _events(client, 2)] == [4, "kept"]
        client.close()
        # Compacting "s" leaves a cursor on "t" alone.
        other = RawClient(tcp_address(server))
        other.send({"op": "subscribe", "stores": ["t"], "after": 1})
        assert other.receive() == {"ok": True, "position": 1, "channel_id": ANY}
        assert [f["value"] for f in _events(other, 1)] == ["kept"]
        other.close()

"""A remote subscription survives a server restart: no gap, no duplicate."""

from __future__ import annotations

import time
from pathlib import Path

import kilndb
from kilndb.server import Server


def test_a_subscription_reconnects_and_resumes_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = Server(data=data, port=0).start()
    port = int(server.url.rsplit(":", 1)[1])
    writer = kilndb.connect(server.url)
    for i in range(5):
        writer.store("s").write(f"k{i}", i)
    reader = kilndb.connect(server.url)
    sub = reader.subscribe(after=0)
    received = [sub.get(timeout=5) for _ in range(3)]
    writer.close()
    server.stop()  # the subscription's connection breaks here
    server = Server(data=data, port=port).start()
    try:
        with kilndb.connect(server.url) as again:
            for i in range(5, 8):
                again.store("s").write(f"k{i}", i)
        deadline = time.monotonic() + 20
        while len(received) < 8 and time.monotonic() < deadline:
            fact = sub.get(timeout=1)
            if fact is not None:
                received.append(fact)
        assert [f.position for f in received if f] == list(range(1, 9))
        assert sub.reconnects >= 1
    finally:
        reader.close()  # closes the subscription too
        assert sub.closed
        server.stop()


def test_a_subscription_ends_with_the_server_error(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0) as server, kilndb.connect(server.url) as db:
        for i in range(4):
            db.store("s").write("k", i)
        db.set_retention("s", keep="latest")
        db.compact()
        try:
            db.subscribe(after=1)
        except kilndb.CursorTooOldError as exc:
            assert exc.cursor == 1
        else:
            raise AssertionError("a compacted cursor must be refused")

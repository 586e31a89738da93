"""Faults against a live server: garbage from clients, and a server killed mid-write."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kilndb
from kilndb.codec import encode_frame
from kilndb.server import Server
from tests.processes import reap, start_server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[int]]]:
    data = tmp_path_factory.mktemp("garbage")
    with Server(data=data, port=0, max_frame_bytes=4096) as server:
        yield server, []


def _address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    chunks=st.lists(
        st.binary(max_size=300)
        | st.builds(encode_frame, st.binary(max_size=200))
        | st.builds(lambda b: encode_frame(b'{"op":' + b), st.binary(max_size=50)),
        max_size=6,
    )
)
def test_garbage_never_breaks_the_server(
    live: tuple[Server, list[int]], chunks: list[bytes]
) -> None:
    server, acknowledged = live
    with kilndb.connect(server.url) as writer:
        acknowledged.append(writer.store("s").write("k", len(acknowledged)).position)
    sock = socket.create_connection(_address(server), timeout=5)
    try:
        for chunk in chunks:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass  # whatever it answers, until it closes
    except OSError:
        pass  # the server may reset a connection it gave up on
    finally:
        sock.close()
    with kilndb.connect(server.url) as db:
        assert db._call("ping")["pong"] is True
        stored = [f.position for f in db.store("s").history("k")]
        assert stored == acknowledged


@pytest.mark.integration
def test_sigkill_during_pipelined_writes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    acknowledged: list[tuple[str, str]] = []
    lock = threading.Lock()
    for cycle in range(3):
        process, url = start_server(data, "--http-port", "0", "--log-level", "warning")
        stop = threading.Event()

        def write(
            worker: int, url: str = url, stop: threading.Event = stop, cycle: int = cycle
        ) -> None:
            try:
                with kilndb.connect(url) as db:
                    i = 0
                    while not stop.is_set():
                        key = f"c{cycle}-w{worker}-{i}"
                        fact = db.store("s").write(key, i)
                        with lock:
                            acknowledged.append((key, fact.id))
                        i += 1
            except kilndb.KilnError:
                pass  # the server died under us: the last write was never acknowledged

        writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if len(acknowledged) >= 40 * (cycle + 1):
                    break
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        stop.set()
        for writer in writers:
            writer.join(10)
        reap(process)
    with kilndb.open(data) as db:
        store = db.store("s")
        for key, fact_id in acknowledged:
            fact = store.read(key)
            assert fact is not None and fact.id == fact_id, key
        positions = [f.position for f in db.replay()]
        assert positions == sorted(set(positions))

"""The node manager: lazy open, idle eviction, the open-database cap, the circuit breaker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import kilndb
from kilndb.engine.database import Database
from kilndb.errors import DatabaseLockedError, NotFoundError, UnavailableError
from kilndb.server import Server
from kilndb.server.nodes import NodeConfig, NodeManager


def test_idle_databases_are_evicted_and_reopened_transparently_under_load(
    tmp_path: Path,
) -> None:
    nodes = NodeConfig(idle_evict_after=0.05, idle_check_interval=0.01)
    with Server(data=tmp_path / "data", port=0, nodes=nodes) as server:
        written: dict[str, list[int]] = {f"t{n}": [] for n in range(4)}
        errors: list[BaseException] = []

        def client(name: str) -> None:
            try:
                with kilndb.connect(server.url, name) as db:
                    for i in range(40):
                        db.store("s").write("k", i)
                        written[name].append(i)
                        if i % 8 == 7:
                            time.sleep(0.12)  # long enough to be evicted meanwhile
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(name,)) for name in written]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        status = server.status()
        assert status["nodes"]["evicted_total"] >= 4
        assert status["metrics"]["evicted_databases_total"] == status["nodes"]["evicted_total"]
        for name, values in written.items():
            with kilndb.connect(server.url, name) as db:
                assert [f.value for f in db.store("s").history("k")] == values


def test_a_subscribed_database_is_never_idle(tmp_path: Path) -> None:
    nodes = NodeConfig(idle_evict_after=0.05, idle_check_interval=0.01)
    with Server(data=tmp_path / "data", port=0, nodes=nodes) as server:
        db = kilndb.connect(server.url)
        db.store("s").write("k", 1)
        with db.subscribe(after=0) as sub:
            assert sub.get(timeout=5) is not None
            time.sleep(0.3)
            assert "default" in server.status()["nodes"]["open"]
            db.store("s").write("k", 2)
            fact = sub.get(timeout=5)
            assert fact is not None and fact.value == 2
        db.close()


def test_reopening_waits_for_an_eviction_still_closing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle database is closed outside the manager's lock; a request arriving while
    that close is still flushing waits for it instead of finding the files in use."""
    manager = NodeManager(tmp_path, nodes=NodeConfig(idle_evict_after=0.01))
    try:
        with manager.use("t") as db:
            db.store("s").write("k", 1)
        closing = threading.Event()
        release = threading.Event()
        real_close = Database.close

        def slow_close(self: Database) -> None:
            closing.set()
            release.wait(5)
            real_close(self)

        monkeypatch.setattr(Database, "close", slow_close)
        evictor = threading.Thread(target=manager.evict_idle, args=(time.monotonic() + 1,))
        evictor.start()
        assert closing.wait(5)
        monkeypatch.setattr(Database, "close", real_close)
        opened: list[Database] = []
        opener = threading.Thread(target=lambda: opened.append(manager.get_or_create("t")))
        opener.start()
        opener.join(0.2)
        assert opener.is_alive()  # waiting for the close, not failing with "already open"
        release.set()
        evictor.join(5)
        opener.join(5)
        fact = opened[0].store("s").read("k")
        assert fact is not None and fact.value == 1
    finally:
        release.set()
        manager.close()


def test_the_cap_evicts_the_least_recently_used_idle_database(tmp_path: Path) -> None:
    manager = NodeManager(tmp_path, nodes=NodeConfig(max_open_databases=2))
    try:
        for name in ("a", "b"):
            with manager.use(name) as db:
                db.store("s").write("k", name)
        manager.get_or_create("a")  # a is now more recent than b
        with manager.use("c") as c:
            c.store("s").write("k", "c")
        assert manager.names() == ["a", "c"]
        # Every open database busy: a fourth is refused rather than evicting one in use.
        with manager.use("a"), manager.use("c"), pytest.raises(UnavailableError, match="busy"):
            manager.get_or_create("d")
        with manager.use("b") as b:  # reopened, with its facts
            fact = b.store("s").read("k")
            assert fact is not None and fact.value == "b"
    finally:
        manager.close()


def test_the_circuit_breaker_fails_fast_and_resets_after_a_success(tmp_path: Path) -> None:
    holder = kilndb.open(tmp_path, "locked")  # another holder: opening it fails
    manager = NodeManager(tmp_path, nodes=NodeConfig(breaker_cooldown=0.3))
    try:
        for _ in range(3):
            with pytest.raises(DatabaseLockedError):
                manager.get_or_create("locked")
        started = time.monotonic()
        with pytest.raises(UnavailableError, match="3 failures") as refused:
            manager.get_or_create("locked")
        assert time.monotonic() - started < 0.1  # fast: no attempt to open
        assert "locked" in str(refused.value)
        failing = manager.status()["failing"]["locked"]
        assert failing["failures"] == 3 and failing["retry_in_seconds"] > 0
        manager.get_or_create("other")  # other databases are unaffected
        time.sleep(0.35)
        with pytest.raises(DatabaseLockedError):  # half open: one more try, still failing
            manager.get_or_create("locked")
        with pytest.raises(UnavailableError):
            manager.get_or_create("locked")
        holder.close()
        time.sleep(0.35)
        manager.get_or_create("locked").store("s").write("k", 1)
        assert manager.status()["failing"] == {}
    finally:
        holder.close()
        manager.close()


def test_the_breaker_shows_on_the_wire_as_unavailable(tmp_path: Path) -> None:
    holder = kilndb.open(tmp_path / "data", "locked")
    try:
        with Server(data=tmp_path / "data", port=0) as server:
            db = kilndb.connect(server.url, "locked")
            for _ in range(3):
                with pytest.raises(kilndb.KilnError):
                    db.store("s").read("k")
            with pytest.raises(UnavailableError):
                db.store("s").read("k")
            status = server.status()
            assert status["metrics"]["failing_databases"] == 1
            db.close()
    finally:
        holder.close()


def test_remove_closes_and_delete_removes_files(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0) as server:
        with kilndb.connect(server.url, "gone") as db:
            db.store("s").write("k", 1)
        with kilndb.connect(server.url) as admin:
            reply = admin._call("remove_database", name="gone", delete=True)
            assert reply["deleted"] is True
            assert not (tmp_path / "data" / "gone").exists()
            with pytest.raises(NotFoundError):
                admin._call("remove_database", name="gone")
            with pytest.raises(kilndb.InvalidArgumentError):
                admin._call("remove_database", name="../etc")
        with kilndb.connect(server.url, "gone") as db:
            with pytest.raises(NotFoundError):  # gone: reads do not bring it back
                db.store("s").read("k")
            assert db.store("s").write("k", 2).position == 1  # a write creates it anew


def test_the_breaker_cause_does_not_show_server_paths(tmp_path: Path) -> None:
    holder = kilndb.open(tmp_path, "locked")
    manager = NodeManager(tmp_path, nodes=NodeConfig(breaker_cooldown=30))
    try:
        for _ in range(3):
            with pytest.raises(DatabaseLockedError):
                manager.get_or_create("locked")
        with pytest.raises(UnavailableError) as refused:
            manager.get_or_create("locked")
        assert str(tmp_path) not in str(refused.value)
        assert "DatabaseLockedError" in str(refused.value)
    finally:
        holder.close()
        manager.close()


def test_subscribers_of_a_removed_database_are_told_not_left_hanging(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0) as server:
        with kilndb.connect(server.url, "gone") as db:
            db.store("s").write("k", 1)
            subscription = db.subscribe(after=0)
            assert subscription.get(timeout=10) is not None  # caught up, then live
            with kilndb.connect(server.url) as admin:
                admin._call("remove_database", name="gone", delete=False)
            deadline = time.monotonic() + 10
            while subscription.error is None and time.monotonic() < deadline:
                subscription.get(timeout=0.1)
            assert isinstance(subscription.error, kilndb.UnavailableError)
            assert "closed under it" in str(subscription.error)
            subscription.close()
        events = [e["event"] for e in server.recent_events]
        assert "subscription_ended" in events


def test_requests_wait_out_a_removal_and_new_ones_are_refused(tmp_path: Path) -> None:
    manager = NodeManager(tmp_path, nodes=NodeConfig())
    try:
        manager.get_or_create("busy")
        entered, release = threading.Event(), threading.Event()

        def request() -> None:
            with manager.use("busy") as db:
                entered.set()
                release.wait(10)
                db.store("s").write("k", 1)  # still open: the removal waited

        worker = threading.Thread(target=request)
        worker.start()
        assert entered.wait(10)
        removing = threading.Thread(target=manager.remove, args=("busy",))
        removing.start()
        deadline = time.monotonic() + 10
        while "busy" not in manager._removing and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(UnavailableError), manager.use("busy"):
            pass
        release.set()
        worker.join(10)
        removing.join(10)
        assert not removing.is_alive() and not manager.is_open("busy")
    finally:
        manager.close()

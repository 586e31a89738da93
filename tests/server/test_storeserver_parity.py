"""What Igniter's StoreServer offers, on :class:`kilndb.server.Server`: alerts on metric
thresholds and changefeed delivery, keyword arguments over a config, drain, the ready and
draining predicates, the foreground run with signals, the pid file, and the health and
status snapshots with their server, storage and changefeed sections."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kilndb
from kilndb.errors import InvalidArgumentError
from kilndb.server import Server, ServerConfig
from kilndb.server.metrics import THRESHOLD_METRICS
from tests.server.test_http import call
from tests.server.test_op_table import over_http, over_tcp, over_ws, shape
from tests.server.test_sockets import RawClient, tcp_address


def eventually(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
    return result


def alert_events(server: Server) -> list[dict[str, Any]]:
    return [e for e in server.recent_events if e["event"] == "alert"]


def subscriber(server: Server, stores: list[str] | None = None) -> RawClient:
    """A raw TCP changefeed subscriber, its subscription acknowledged."""
    client = RawClient(tcp_address(server))
    stores_field = {} if stores is None else {"stores": stores}
    client.send({"op": "subscribe", "after": 0, **stores_field})
    reply = client.receive()
    assert reply is not None and reply["ok"], reply
    return client


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(data=tmp_path / "data", port=0, http_port=0, unix=tmp_path / "k.sock") as running:
        yield running


# -- metrics_thresholds and alerts -----------------------------------------------------


def test_config_refuses_unknown_threshold_metrics_and_bad_values() -> None:
    with pytest.raises(InvalidArgumentError, match="nope"):
        ServerConfig(metrics_thresholds={"nope": 1.0, "error_rate": 0.5})
    for bad in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(InvalidArgumentError, match="error_rate"):
            ServerConfig(metrics_thresholds={"error_rate": bad})  # type: ignore[dict-item]
    given = {"active_connections": 3}
    config = ServerConfig(metrics_thresholds=given)
    given["active_connections"] = 99  # the config kept a copy
    assert config.metrics_thresholds == {"active_connections": 3.0}
    assert "subscriber_lag" in THRESHOLD_METRICS and "error_rate" in THRESHOLD_METRICS


def test_without_thresholds_no_alert_fires(server: Server) -> None:
    client = RawClient(tcp_address(server))
    client.send({"op": "nope"})
    assert (client.receive() or {})["error_code"] == "unknown_op"
    status = server.status()
    assert status["alerts"] == [] and status["changefeed"]["alerts"] == []
    assert alert_events(server) == []
    client.close()


def test_a_metric_above_its_threshold_fires_until_it_falls_back(tmp_path: Path) -> None:
    thresholds = {"active_connections": 0, "error_rate": 0.4, "slow_ops_total": 5}
    with Server(data=tmp_path / "data", port=0, metrics_thresholds=thresholds) as server:
        client = RawClient(tcp_address(server))
        client.send({"op": "ping"})
        assert (client.receive() or {})["pong"] is True
        (alert,) = server.status()["alerts"]
        assert alert["type"] == "threshold" and alert["metric"] == "active_connections"
        assert alert["value"] == 1 and alert["threshold"] == 0 and alert["at"] <= time.time()
        conflict = {"op": "write", "store": "s", "key": "k", "value": 1, "expected_seq": 5}
        client.send(conflict, conflict)  # 2 errors of 3 requests
        assert (client.receive() or {})["error_code"] == "conflict"
        assert client.receive()
        alerts = {a["metric"]: a for a in server.status()["alerts"]}
        assert set(alerts) == {"active_connections", "error_rate"}
        assert alerts["active_connections"]["at"] == alert["at"]  # still the same alert
        assert alerts["error_rate"]["value"] == pytest.approx(2 / 3)
        # Each recorded once, when it began to fire.
        events = alert_events(server)
        assert [e["metric"] for e in events] == ["active_connections", "error_rate"]
        assert events[0]["threshold"] == 0 and events[0]["type"] == "threshold"
        client.close()
        eventually(lambda: server.status()["metrics"]["active_connections"] == 0)
        assert [a["metric"] for a in server.status()["alerts"]] == ["error_rate"]


def test_an_alert_begins_without_anyone_asking_for_the_status(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0, metrics_thresholds={"errors_total": 0}) as server:
        client = RawClient(tcp_address(server))
        client.send({"op": "nope"})
        assert client.receive()
        client.close()
        (event,) = eventually(lambda: alert_events(server))  # the once-a-second check
        assert event["metric"] == "errors_total" and event["value"] == 1


def test_a_connection_refused_by_max_connections_records_an_alert_event(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0, max_connections=1) as server:
        first = RawClient(tcp_address(server))
        first.send({"op": "ping"})
        assert first.receive()
        second = RawClient(tcp_address(server))
        refused = second.receive()
        assert refused is not None and refused["error_code"] == "unavailable"
        assert second.receive() is None  # closed
        (event,) = alert_events(server)
        assert event["type"] == "max_connections"
        assert event["active"] == 1 and event["max"] == 1
        assert server.counters["rejected_connections_total"] == 1
        first.close()
        second.close()


def test_a_subscriber_cut_off_for_overflow_is_a_changefeed_alert(tmp_path: Path) -> None:
    limit = 64 * 1024
    with Server(data=tmp_path / "data", port=0, max_subscriber_buffer=limit) as server:
        slow = RawClient(tcp_address(server), receive_buffer=4096)
        slow.send({"op": "subscribe", "after": 0})
        assert (slow.receive() or {}).items() >= {"ok": True, "position": 0}.items()
        with kilndb.connect(server.url) as writer:
            for batch in range(60):
                writer.write_many(
                    [kilndb.Write("s", f"k{batch}-{i}", "x" * 300) for i in range(500)]
                )
                if server.status()["changefeed"]["overflows_total"]:
                    break
        changefeed = eventually(
            lambda: (c := server.status()["changefeed"])["overflows_total"] == 1 and c
        )
        (alert,) = changefeed["alerts"]
        assert alert["type"] == "subscriber_overflow"
        assert alert["metric"] == "subscriber_backlog_bytes" and alert["threshold"] == limit
        assert alert["database"] == "default" and alert["position"] >= 0 and alert["at"] > 0
        assert alert in server.status()["alerts"]  # the top-level list has it too
        assert changefeed["subscribers"] == 0
        assert any(e.get("type") == "subscriber_overflow" for e in alert_events(server))
        slow.close()


def test_a_subscriber_over_the_backlog_threshold_is_a_changefeed_alert(tmp_path: Path) -> None:
    thresholds = {"subscriber_backlog_bytes": 32 * 1024}
    with Server(data=tmp_path / "data", port=0, metrics_thresholds=thresholds) as server:
        slow = RawClient(tcp_address(server), receive_buffer=4096)
        slow.send({"op": "subscribe", "after": 0})
        assert (slow.receive() or {}).items() >= {"ok": True, "position": 0}.items()

        def backlogged() -> list[dict[str, Any]]:
            alerts = server.status()["changefeed"]["alerts"]
            return [a for a in alerts if a["type"] == "subscriber_backlog"]

        found: list[dict[str, Any]] = []
        with kilndb.connect(server.url) as writer:
            # Until the kernel's socket buffers are full and the rest waits in the server
            # (below max_subscriber_buffer, 8 MiB, where the subscriber would be cut off).
            for batch in range(60):
                writer.write_many(
                    [kilndb.Write("s", f"k{batch}-{i}", "x" * 300) for i in range(500)]
                )
                if found := backlogged():
                    break
        (alert,) = found
        assert alert["metric"] == "subscriber_backlog_bytes"
        assert alert["value"] > alert["threshold"] == 32 * 1024
        assert alert["database"] == "default" and alert["subscriber"] >= 1
        slow.close()  # the subscriber goes: so does its alert
        eventually(lambda: not backlogged())


def test_a_subscriber_behind_the_log_by_more_than_the_threshold_is_an_alert(
    tmp_path: Path,
) -> None:
    thresholds = {"subscriber_lag": 10}
    with Server(data=tmp_path / "data", port=0, workers=1, metrics_thresholds=thresholds) as server:
        with kilndb.connect(server.url) as writer:
            writer.write_many([kilndb.Write("s", f"k{i}", i) for i in range(50)])
        # The only worker busy: the subscriber's catch-up cannot read the log yet.
        busy = threading.Event()
        server.executor.submit(busy.wait, 30)
        try:
            client = subscriber(server)
            (alert,) = eventually(lambda: server.status()["changefeed"]["alerts"])
            assert alert["type"] == "subscriber_lag" and alert["metric"] == "subscriber_lag"
            assert alert["value"] == 50 and alert["threshold"] == 10
            assert alert in server.status()["alerts"]
            assert [e["type"] for e in alert_events(server)] == ["subscriber_lag"]
        finally:
            busy.set()
        facts = [client.receive() for _ in range(50)]  # caught up
        assert [m["fact"]["position"] for m in facts if m] == list(range(1, 51))
        eventually(lambda: server.status()["alerts"] == [])
        client.close()


# -- per-store subscription counts -------------------------------------------------------


def test_subscription_counts_per_store_and_database(server: Server) -> None:
    assert server.subscription_count("a") == 0
    only_a = subscriber(server, ["a"])
    a_and_b = subscriber(server, ["a", "b"])
    every = subscriber(server)
    eventually(lambda: server.subscription_count("a") == 3)
    assert server.subscription_count("b") == 2
    assert server.subscription_count("c") == 1  # the subscriber of every store
    assert server.subscription_count("a", database="other") == 0
    changefeed = server.status()["changefeed"]
    assert changefeed["subscribers"] == 3
    assert changefeed["by_database"] == {
        "default": {"subscribers": 3, "stores": {"a": 2, "b": 1, "*": 1}}
    }
    only_a.send({"op": "close"})
    assert only_a.receive() == {"ok": True}
    eventually(lambda: server.subscription_count("a") == 2)
    for client in (only_a, a_and_b, every):
        client.close()
    eventually(lambda: server.status()["changefeed"]["subscribers"] == 0)


# -- keyword arguments over a config -------------------------------------------------


def test_keyword_arguments_take_precedence_over_the_config(tmp_path: Path) -> None:
    config = ServerConfig(data=tmp_path / "data", port=7400, drain_timeout=9.0)
    server = Server(config, port=0, slow_op_ms=1.0)
    assert server.config.port == 0 and server.config.slow_op_ms == 1.0
    assert server.config.drain_timeout == 9.0 and server.config.data == tmp_path / "data"
    assert config.port == 7400  # the given config is left as it was
    with server:
        assert not server.url.endswith(":7400")
    assert Server(config=config).config is config


def test_unknown_keyword_arguments_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="bogus, prot"):
        Server(ServerConfig(data=tmp_path), prot=0, bogus=1)
    with pytest.raises(TypeError, match="prot"):
        Server(data=tmp_path, prot=0)
    with pytest.raises(InvalidArgumentError, match="nope"):
        Server(ServerConfig(data=tmp_path), metrics_thresholds={"nope": 1})


# -- drain, ready, draining, stop(timeout) and wait_until_ready ----------------------------


def test_drain_refuses_new_connections_and_lets_open_ones_finish(server: Server) -> None:
    assert server.ready and not server.draining
    held = RawClient(tcp_address(server))
    held.send({"op": "ping"})
    assert held.receive()
    assert server.drain(timeout=0) is server  # returns at once: one connection is open
    assert server.draining and not server.ready
    assert call(server, "GET", "/v1/ready") == (503, {"status": "draining"})
    assert call(server, "GET", "/v1/health")[1]["status"] == "draining"
    refused = RawClient(tcp_address(server))
    assert (refused.receive() or {})["error_code"] == "unavailable"
    refused.close()
    unix = RawClient(str(server.config.unix))
    assert (unix.receive() or {})["error_code"] == "unavailable"
    unix.close()
    assert server.counters["rejected_connections_total"] == 2
    held.send({"op": "write", "store": "s", "key": "k", "value": 1})  # still served
    assert (held.receive() or {})["ok"] is True
    held.close()
    assert server.drain(timeout=30) is server  # returns once the last one has closed
    assert server.status()["metrics"]["active_connections"] == 0
    server.stop()
    assert not server.ready and not server.draining and server.state == "stopped"
    draining = [e for e in server.recent_events if e["event"] == "server_draining"]
    assert len(draining) == 1 and draining[0]["timeout"] == 0


def test_drain_and_stop_on_a_server_not_started_do_nothing(tmp_path: Path) -> None:
    server = Server(data=tmp_path / "data", port=0)
    assert server.drain() is server and not server.draining and not server.ready
    server.stop()
    assert server.state == "starting"


def test_stop_timeout_overrides_drain_timeout(tmp_path: Path) -> None:
    server = Server(data=tmp_path / "data", port=0, drain_timeout=30.0).start()
    server.drain().stop(timeout=0.25)  # no connection: drain returns at once
    events = [e for e in server.recent_events if e["event"] == "server_draining"]
    assert [e["timeout"] for e in events] == [30.0]
    other = Server(data=tmp_path / "other", port=0, drain_timeout=30.0).start()
    other.stop(timeout=0.25)
    events = [e for e in other.recent_events if e["event"] == "server_draining"]
    assert [e["timeout"] for e in events] == [0.25]


def test_wait_until_ready(tmp_path: Path) -> None:
    assert inspect.signature(Server.wait_until_ready).parameters["timeout"].default == 2.0
    server = Server(data=tmp_path / "data", port=0)
    with pytest.raises(TimeoutError, match=r"within 0\.01 s"):
        server.wait_until_ready(timeout=0.01)  # never started
    with server:
        assert server.wait_until_ready() is server


# -- start_foreground and signals -------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGQUIT, signal.SIGTERM, signal.SIGINT])
def test_start_foreground_stops_gracefully_on_a_signal(tmp_path: Path, signum: int) -> None:
    pid_file = tmp_path / "kiln.pid"
    before = signal.getsignal(signum)
    seen: list[str] = []

    def on_start(server: Server) -> None:
        seen.append(pid_file.read_text().strip())
        with kilndb.connect(server.url) as db:
            db.store("s").write("k", "acknowledged")
        os.kill(os.getpid(), signum)  # handled by the server, not by Python's default

    server = Server(data=tmp_path / "data", port=0, pid_file=pid_file)
    server.start_foreground(on_start)
    assert seen == [str(os.getpid())]
    assert server.state == "stopped" and not pid_file.exists()
    assert signal.getsignal(signum) == before  # the previous handler is back
    received = [e for e in server.recent_events if e["event"] == "signal_received"]
    assert [e["signal"] for e in received] == [signal.Signals(signum).name]
    with kilndb.open(tmp_path / "data") as db:
        fact = db.store("s").read("k")
        assert fact is not None and fact.value == "acknowledged"


def test_start_foreground_returns_when_stopped_from_another_thread(tmp_path: Path) -> None:
    server = Server(data=tmp_path / "data", port=0)
    stopper: list[threading.Thread] = []

    def on_start(running: Server) -> None:
        stopper.append(threading.Thread(target=running.stop))
        stopper[0].start()

    server.start_foreground(on_start)
    stopper[0].join(30)
    assert server.state == "stopped"


def test_start_foreground_outside_the_main_thread_is_refused(tmp_path: Path) -> None:
    server = Server(data=tmp_path / "data", port=0)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.start_foreground()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    (error,) = errors
    assert isinstance(error, RuntimeError) and "main thread" in str(error)
    assert server.state == "starting"  # nothing was started


# -- the pid file -----------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_pid_file_is_written_at_start_and_removed_at_stop(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "kiln.pid"
    pid_file.parent.mkdir()
    with Server(data=tmp_path / "data", port=0, pid_file=pid_file):
        assert pid_file.read_text() == f"{os.getpid()}\n"
    assert not pid_file.exists()
    assert list(pid_file.parent.iterdir()) == []  # no partial file left either


@pytest.mark.parametrize("stale", ["dead", "garbage", "empty"])
def test_a_stale_pid_file_does_not_block_a_start(tmp_path: Path, stale: str) -> None:
    pid_file = tmp_path / "kiln.pid"
    pid_file.write_text({"dead": f"{dead_pid()}\n", "garbage": "not a pid", "empty": ""}[stale])
    with Server(data=tmp_path / "data", port=0, pid_file=pid_file):
        assert pid_file.read_text().strip() == str(os.getpid())
    assert not pid_file.exists()


def test_a_pid_file_naming_another_running_process_is_refused(tmp_path: Path) -> None:
    pid_file = tmp_path / "kiln.pid"
    other = os.getppid()  # running, and not this process
    pid_file.write_text(f"{other}\n")
    server = Server(data=tmp_path / "data", port=0, pid_file=pid_file)
    with pytest.raises(InvalidArgumentError, match=f"names process {other}, which is running"):
        server.start()
    assert pid_file.read_text() == f"{other}\n"  # left alone
    # Nothing is held: the same data directory starts with another pid file.
    with Server(data=tmp_path / "data", port=0, pid_file=tmp_path / "other.pid") as again:
        assert again.ready


def test_stop_leaves_a_pid_file_another_process_took_over(tmp_path: Path) -> None:
    pid_file = tmp_path / "kiln.pid"
    with Server(data=tmp_path / "data", port=0, pid_file=pid_file):
        pid_file.write_text("12345\n")  # e.g. a server started after this one's file went
    assert pid_file.read_text() == "12345\n"


# -- health and status --------------------------------------------------------------------


def test_health_names_backend_transports_addresses_and_the_last_error(server: Server) -> None:
    status, health = call(server, "GET", "/v1/health")
    assert status == 200
    host, port = tcp_address(server)
    assert health == {
        "schema_version": 1,
        "status": "ready",
        "uptime_ms": health["uptime_ms"],
        "pid": os.getpid(),
        "backend": "file",
        "transport": "tcp",
        "transports": ["tcp", "unix", "http"],
        "bind_address": f"{host}:{port}",
        "bind_addresses": [
            f"{host}:{port}",
            str(server.config.unix),
            server.http_url.removeprefix("http://"),
        ],
        "active_connections": 0,
        "subscriptions": 0,
        "last_error": None,
    }
    assert isinstance(health["uptime_ms"], int) and health["uptime_ms"] >= 0
    client = subscriber(server)
    with kilndb.connect(server.url) as db, pytest.raises(kilndb.ConflictError):
        db.store("s").write("k", 1, expected_seq=5)
    health = eventually(
        lambda: (h := call(server, "GET", "/v1/health")[1])["active_connections"] == 1 and h
    )
    assert health["subscriptions"] == 1
    last = health["last_error"]
    assert last["error_code"] == "conflict" and last["op"] == "write"
    assert last["error"] and last["at"] <= time.time()
    assert server.health()["last_error"] == last
    client.close()


def test_health_says_memory_for_a_memory_server(tmp_path: Path) -> None:
    with Server(data=tmp_path / "data", port=0, memory=True) as server:
        assert server.health()["backend"] == "memory"
        assert server.status()["server"]["backend"] == "memory"


def test_status_has_storage_server_and_changefeed_sections(server: Server) -> None:
    with kilndb.connect(server.url) as db:
        db.write_many([kilndb.Write("s", f"k{i}", i) for i in range(5)])
        db.store("s").write("k0", "again")
    status = server.status()
    for kept in ("schema_version", "generated_at", "status", "uptime_ms", "pid", "addresses"):
        assert kept in status
    for kept in ("databases", "nodes", "replication", "metrics"):
        assert kept in status
    storage = status["storage"]["default"]
    assert storage["last_position"] == storage["durable_position"] == 6
    assert storage["facts"] == 6 and storage["keys"] == 5 and storage["stores"] == 1
    assert storage["data_bytes"] > 0 and storage["files"] >= 1 and storage["fsyncs"] >= 1
    assert storage["sync"] == "always" and storage["dead_bytes"] >= 0
    assert status["server"] == {k: v for k, v in server.health().items() if k in status["server"]}
    assert set(status["server"]) == {
        "backend",
        "transport",
        "transports",
        "bind_address",
        "bind_addresses",
        "last_error",
    }
    assert status["changefeed"] == {
        "subscribers": 0,
        "by_database": {},
        "overflows_total": 0,
        "alerts": [],
    }
    assert status["alerts"] == []


def test_status_is_the_same_shape_on_every_transport(tmp_path: Path) -> None:
    thresholds = {"active_connections": 0}  # one alert firing on every transport
    with Server(
        data=tmp_path / "data", port=0, http_port=0, metrics_thresholds=thresholds
    ) as server:
        client = subscriber(server, ["s"])  # a changefeed section with content
        message = {"op": "server_status", "request_id": 1}
        replies = {
            "tcp": over_tcp(server, "", "default", message),
            "ws": asyncio.run(over_ws(server, "", "default", message)),
            "http": asyncio.run(over_http(server, "", "default", message)),
        }
        plain = call(server, "GET", "/v1/status")[1]
        shapes = {t: shape({k: v for k, v in r.items() if k != "ok"}) for t, r in replies.items()}
        shapes["/v1/status"] = shape(plain)
        assert len({repr(s) for s in shapes.values()}) == 1, shapes
        assert replies["tcp"]["alerts"][0]["metric"] == "active_connections"
        assert set(plain["changefeed"]["by_database"]["default"]["stores"]) == {"s"}
        client.close()


def test_prometheus_shows_the_alerts_firing(tmp_path: Path) -> None:
    with Server(
        data=tmp_path / "data", port=0, http_port=0, metrics_thresholds={"errors_total": 0}
    ) as server:
        assert "kiln_alerts_firing{" not in call(server, "GET", "/metrics")[1]
        call(server, "POST", "/v1/dispatch", {"op": "nope"})
        text = call(server, "GET", "/metrics")[1]
        assert 'kiln_alerts_firing{metric="errors_total",type="threshold"} 1.0' in text


def test_the_legacy_address_keyword_names_host_and_port(tmp_path: Path) -> None:
    server = Server(data=tmp_path / "a", address="127.0.0.1:0")
    assert (server.config.host, server.config.port) == ("127.0.0.1", 0)
    with server, kilndb.connect(server.url) as db:
        assert db.store("s").write("k", 1).seq == 1
    # host and port given as well win over address, as in Igniter.
    server = Server(data=tmp_path / "b", address="127.0.0.1:7999", port=0)
    assert (server.config.host, server.config.port) == ("127.0.0.1", 0)
    assert Server(data=tmp_path / "c", address="[::1]:7400").config.host == "::1"
    for bad in ("7400", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", ":7400"):
        with pytest.raises(InvalidArgumentError, match="HOST:PORT"):
            Server(data=tmp_path / "d", address=bad)


def test_active_connections_and_bind_address_on_the_server(tmp_path: Path) -> None:
    server = Server(data=tmp_path / "d", port=0)
    assert server.bind_address is None and server.active_connections == 0
    with server:
        host, port = tcp_address(server)
        assert server.bind_address == f"{host}:{port}"
        client = RawClient((host, port))
        client.send({"op": "ping"})
        assert client.receive() == {"ok": True, "pong": True}
        assert server.active_connections == 1
        client.sock.close()
        deadline = time.monotonic() + 5
        while server.active_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.active_connections == 0
    assert server.bind_address == f"{host}:{port}"  # kept after stop, as Igniter's

"""kiln demo: runs, and runs again on the same data directory."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

import kilndb
from kilndb.cli import demo as demo_module
from kilndb.cli.context import CliSettings
from kilndb.cli.demo import DEMO_STORES, run_demo
from tests.cli.runner import kiln


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_module, "LIVE_PAUSE_SECONDS", 0.0)


def test_demo_command_tours_every_feature_and_is_rerunnable(tmp_path: Path) -> None:
    first = kiln(tmp_path, "demo")
    assert first.exit_code == 0, first.stdout + first.stderr
    for step in (
        "Write",
        "ConflictError",
        "Read",
        "History",
        "Time travel",
        "Idempotent retry",
        "Atomic batch",
        "Replay",
        "Live subscription",
        "Delete",
        "Stats",
    ):
        assert step in first.stdout, step
    assert "the subscriber received 3 of the 3 live writes: all of them, in order" in first.stdout
    assert "A fresh database" in first.stdout
    assert first.stderr == ""

    second = kiln(tmp_path, "demo")
    assert second.exit_code == 0, second.stdout + second.stderr
    assert "already holds" in second.stdout
    with kilndb.open(tmp_path) as db:
        assert set(db.stores()) == set(DEMO_STORES)
        assert db.stats()["last_position"] == 20


def test_run_demo_writes_what_it_shows(tmp_path: Path) -> None:
    settings = CliSettings(tmp_path, "tour", "none")
    text = io.StringIO()
    out = Console(file=text, width=200)
    result = run_demo(settings, out, run="r1", pause=0)
    again = run_demo(settings, out, run="r2", pause=0)
    assert result.live_received == result.live_written
    assert len(result.live_written) == 3
    assert again.facts_written == result.facts_written == 10
    with kilndb.open(tmp_path, "tour") as db:
        tasks = db.store("demo_tasks")
        assert tasks.read(result.key) is None  # deleted at the end of the tour
        history = tasks.history(result.key)
        assert [f.seq for f in history] == [1, 2, 3]
        assert history[-1].deleted
        assert tasks.read("ship-r1") is not None
        assert [f.value["event"] for f in db.store("demo_events").history("order-r2")] == [
            "placed",
            "paid",
            "packed",
            "shipped",
            "delivered",
        ]
    assert "run r2" in text.getvalue()

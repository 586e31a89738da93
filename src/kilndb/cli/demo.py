"""``kiln demo``: a guided tour of the embedded API on a real data directory.

The tour writes, reads, walks a history, travels in time, commits an atomic batch,
replays the log, follows a live subscription from another thread, deletes a key and shows
the database's counters, printing each call and its result. It writes under per-run keys
(``task-<run>`` …) of the ``demo_tasks`` and ``demo_events`` stores, so it can run again
and again on the same directory; each run also says how many facts earlier runs left.

With ``--url`` the same tour runs against a server. Run without it on a data directory
that a server holds, it says so and how to run it against that server instead.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

import kilndb
from kilndb.cli.context import CliSettings, open_database, pass_settings, program_name
from kilndb.cli.errors import EXIT_UNAVAILABLE, CliError
from kilndb.cli.output import console as make_console
from kilndb.storage.lockfile import SERVER_LOCK

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["DEMO_STORES", "DemoResult", "demo", "run_demo"]

TASKS = "demo_tasks"
EVENTS = "demo_events"
DEMO_STORES = (TASKS, EVENTS)

#: Pause between the live writes, so that the subscriber's echoes are visibly live.
LIVE_PAUSE_SECONDS = 0.15
#: The longest the tour waits for its subscriber to see a fact before giving up.
DELIVERY_DEADLINE_SECONDS = 10.0


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _ago(then: float, now: float) -> str:
    return f"{(now - then) * 1000:.1f} ms ago"


class _Tour:
    """Prints numbered steps, the code each one runs and what came back."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.step = 0

    def section(self, title: str, explanation: str) -> None:
        self.step += 1
        self.out.print()
        self.out.print(f"[bold cyan]{self.step}. {title}[/]")
        self.out.print(f"   [dim]{explanation}[/]")

    def code(self, text: str) -> None:
        from rich.markup import escape

        self.out.print(f"   [green]>>>[/] {escape(text)}")

    def said(self, text: str) -> None:
        self.out.print(f"   {text}")

    def fact(self, fact: kilndb.Fact, extra: str = "") -> None:
        tail = f"  {extra}" if extra else ""
        self.out.print(
            f"   [yellow]Fact[/] seq={fact.seq} position={fact.position}"
            f" value={_json(fact.value)}{tail}",
            highlight=False,
        )


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What one run of the tour did."""

    run: str
    #: The task key written, updated and deleted.
    key: str
    #: Positions of the facts written during the live step.
    live_written: list[int]
    #: Positions the subscriber thread received, in order.
    live_received: list[int]
    #: Facts the run added.
    facts_written: int


def run_demo(
    settings: CliSettings, out: Console, run: str | None = None, pause: float | None = None
) -> DemoResult:
    """Run the tour on ``settings``' database; return what it did.

    ``run`` names this run's keys (random by default); ``pause`` is the pause between
    live writes (default :data:`LIVE_PAUSE_SECONDS`).
    """
    run = run or secrets.token_hex(3)
    pause = LIVE_PAUSE_SECONDS if pause is None else pause
    tour = _Tour(out)
    key = f"task-{run}"
    where = f"on [bold]{settings.url}[/]" if settings.url else f"in [bold]{settings.data}[/]"
    out.print(
        f"[bold]KilnDB guided tour[/] — database [bold]{settings.database!r}[/]"
        f" {where} (sync={settings.sync!r}), run [bold]{run}[/]"
    )
    with open_database(settings, create=True) as db:
        before = db.stats()
        if before["last_position"]:
            out.print(
                f"[dim]This database already holds {before['facts']:,} facts"
                f" (last position {before['last_position']:,}), still there after reopening;"
                " this run adds its own keys.[/]"
            )
        else:
            out.print(
                "[dim]A fresh database: the directory and its first data file were created.[/]"
            )
        tasks = db.store(TASKS)

        tour.section("Write", "A write appends an immutable fact and returns once it is durable.")
        tour.code(f'tasks = db.store("{TASKS}")')
        tour.code(f'tasks.write("{key}", {{"title": "Try KilnDB", "done": False}})')
        first = tasks.write(key, {"title": "Try KilnDB", "done": False})
        tour.fact(first, f"id={first.id}")

        tour.section(
            "Update with optimistic concurrency", "expected_seq must match the latest seq."
        )
        tour.code(
            f'tasks.write("{key}", {{"title": "Try KilnDB", "done": True}},'
            f" expected_seq={first.seq})"
        )
        second = tasks.write(key, {"title": "Try KilnDB", "done": True}, expected_seq=first.seq)
        tour.fact(second)
        tour.code(f'tasks.write("{key}", {{...}}, expected_seq={first.seq})   # stale')
        try:
            tasks.write(key, {"title": "stale"}, expected_seq=first.seq)
        except kilndb.ConflictError as exc:
            tour.said(f"[red]ConflictError[/]: expected {exc.expected}, actual {exc.actual}")

        tour.section("Read", "The latest value of a key.")
        tour.code(f'tasks.read("{key}")')
        latest = tasks.read(key)
        assert latest is not None
        tour.fact(latest)

        tour.section("History", "Every fact of a key, by seq.")
        tour.code(f'tasks.history("{key}")')
        for fact in tasks.history(key):
            tour.fact(fact, _ago(fact.transaction_time, time.time()))

        tour.section("Time travel", "Read a key as it was at a past transaction time.")
        tour.code(f'tasks.read("{key}", as_of={first.transaction_time!r})')
        then = tasks.read(key, as_of=first.transaction_time)
        assert then is not None
        tour.fact(then, "(the value before the update)")

        tour.section(
            "Idempotent retry", "Writing an id the database holds returns the stored fact."
        )
        command_id = f"demo-cmd-{run}"
        tour.code(f'tasks.write("note-{run}", "hello", id="{command_id}")   # twice')
        once = tasks.write(f"note-{run}", "hello", id=command_id)
        again = tasks.write(f"note-{run}", "hello", id=command_id)
        tour.said(f"same fact both times: position {once.position} == {again.position}")

        tour.section("Atomic batch", "write_many commits every write or none, also across a crash.")
        tour.code(f'db.write_many([kilndb.Write("{EVENTS}", "order-{run}", {{...}}), ...])')
        mark = db.stats()["last_position"]
        batch = db.write_many(
            [
                kilndb.Write(EVENTS, f"order-{run}", {"event": "placed", "total": 42}),
                kilndb.Write(EVENTS, f"order-{run}", {"event": "paid"}, causation=f"order-{run}"),
                kilndb.Write(TASKS, f"ship-{run}", {"title": "Ship the order", "done": False}),
            ]
        )
        tour.said(f"{len(batch)} facts at positions {batch[0].position}…{batch[-1].position}")

        tour.section("Replay", "Every fact in commit order, from any position (a cursor).")
        tour.code(f'db.replay(after={mark}, stores=["{EVENTS}"])')
        for fact in db.replay(after=mark, stores=[EVENTS]):
            tour.said(f"position {fact.position}: {fact.store}/{fact.key} {_json(fact.value)}")

        tour.section(
            "Live subscription",
            "A subscriber thread follows the changefeed while this thread writes.",
        )
        live = _live_subscription(db, tour, run, pause)

        tour.section("Delete", "A delete is a tombstone fact: the value is gone, history stays.")
        tour.code(f'tasks.delete("{key}")')
        tombstone = tasks.delete(key)
        tour.said(f"tombstone seq={tombstone.seq} position={tombstone.position}")
        tour.code(f'tasks.read("{key}")')
        tour.said(repr(tasks.read(key)))
        tour.said(f"history still holds {len(tasks.history(key))} facts")

        tour.section("Stats", "Counters of the database.")
        after = db.stats()
        _stats_table(out, after)

    out.print()
    out.print(
        f"[bold green]Done.[/] {after['last_position'] - before['last_position']} facts written"
        " this run. Look around with the CLI:"
    )
    for line in (
        settings.command_line("get", TASKS, f"ship-{run}"),
        settings.command_line("history", TASKS, key),
        settings.command_line("replay", "--after", str(mark), "--store", EVENTS),
        settings.command_line("stats"),
    ):
        out.print(f"   {line}", markup=False, highlight=False)
    return DemoResult(
        run=run,
        key=key,
        live_written=live[0],
        live_received=live[1],
        facts_written=after["last_position"] - before["last_position"],
    )


def _live_subscription(
    db: kilndb.Database | kilndb.RemoteDatabase, tour: _Tour, run: str, pause: float
) -> tuple[list[int], list[int]]:
    received: list[kilndb.Fact] = []
    arrived = threading.Condition()
    start = db.stats()["last_position"]
    subscription = db.subscribe(stores=[EVENTS], after=start)
    tour.code(f'sub = db.subscribe(stores=["{EVENTS}"], after={start})')

    def listen() -> None:
        for fact in subscription:  # ends when the subscription is closed
            tour.said(f"[magenta]  subscriber ←[/] position {fact.position}: {_json(fact.value)}")
            with arrived:
                received.append(fact)
                arrived.notify_all()

    listener = threading.Thread(target=listen, name="kiln-demo-subscriber", daemon=True)
    listener.start()
    written: list[int] = []
    try:
        for step in ("packed", "shipped", "delivered"):
            fact = db.store(EVENTS).write(f"order-{run}", {"event": step})
            written.append(fact.position)
            tour.said(f"[blue]writer →[/]     position {fact.position}: {_json(fact.value)}")
            _wait_until(arrived, lambda: len(received) >= len(written))
            if pause:
                time.sleep(pause)  # only so that a person can watch it happen
    finally:
        subscription.close()
        listener.join(DELIVERY_DEADLINE_SECONDS)
    got = [fact.position for fact in received]
    verdict = "all of them, in order" if got == written else f"positions {got}"
    tour.said(f"the subscriber received {len(got)} of the {len(written)} live writes: {verdict}")
    return written, got


def _wait_until(cond: threading.Condition, predicate: Callable[[], bool]) -> None:
    with cond:
        if not cond.wait_for(predicate, timeout=DELIVERY_DEADLINE_SECONDS):
            raise kilndb.UnavailableError("the demo subscriber did not receive a fact in time")


def _stats_table(out: Console, stats: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(show_header=False)
    table.add_column("counter", style="bold")
    table.add_column("value", justify="right")
    for name in ("last_position", "facts", "keys", "stores", "files", "data_bytes", "fsyncs"):
        table.add_row(name.replace("_", " "), f"{stats[name]:,}")
    out.print(table)


#: Where ``kiln serve`` listens unless told otherwise (and ``make run`` starts it).
DEFAULT_SERVER_URL = "tcp://127.0.0.1:7400"


def server_holding(data: Path) -> int | None:
    """The pid of the ``kiln serve`` holding the data directory ``data``, or None.

    Looks at the server's lock without taking it (nor creating its file)."""
    try:
        fd = os.open(data / SERVER_LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else 0
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def locked_message(settings: CliSettings, error: kilndb.DatabaseLockedError) -> str:
    """What to tell someone whose demo found the database held by another process."""
    pid = server_holding(settings.data)
    if pid is None:
        return f"{error.message}; stop it, or give the demo another --data"
    server = f"a kiln server (pid {pid})" if pid else "a kiln server"
    return (
        f"{server} holds {settings.data}: run the demo against it with"
        f" '{program_name()} --url {DEFAULT_SERVER_URL} demo' (the URL 'kiln serve' printed),"
        " or 'make demo', which finds it"
    )


@click.command()
@pass_settings
def demo(settings: CliSettings) -> None:
    """A guided tour: write, read, history, time travel, batch, replay, live feed, delete."""
    try:
        run_demo(settings, make_console(soft_wrap=True))
    except kilndb.DatabaseLockedError as exc:
        if settings.url is not None:
            raise
        raise CliError(locked_message(settings, exc), EXIT_UNAVAILABLE) from exc

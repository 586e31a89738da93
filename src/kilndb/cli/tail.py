"""``kiln tail``: follow the live changefeed, printing facts as they commit.

:func:`follow` is the loop itself, independent of click so that it can run on a thread
with a stop event. The command stops cleanly on Ctrl-C or SIGTERM (exit status 0).

With ``--url`` it follows a server's changefeed, which every client's writes reach. An
embedded database is open in one process at a time, so without ``--url`` ``kiln tail``
follows the writes made while it holds the database — its catch-up (``--after``) shows
everything committed before.

Written to a file or a pipe with ``--after``, it shows the catch-up's progress on
standard error when that is a terminal, until it reaches the position that was last
when it started; then it follows quietly.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType

import click

from kilndb.cli.context import CliSettings, open_database, pass_settings
from kilndb.cli.output import JsonLines, Progress, progress, stdout_is_terminal
from kilndb.client import RemoteDatabase
from kilndb.engine import Database
from kilndb.model import Fact

__all__ = ["follow", "stop_on_signals", "tail"]

#: How often a blocked wait wakes up to look at the stop event.
POLL_SECONDS = 0.25


def follow(
    db: Database | RemoteDatabase,
    emit: Callable[[Fact], None],
    *,
    after: int,
    stores: Iterable[str] | None = None,
    stop: threading.Event | None = None,
    poll_seconds: float = POLL_SECONDS,
    on_idle: Callable[[], None] | None = None,
) -> int:
    """Pass every fact with position > ``after`` to ``emit``, live, until stopped.

    ``on_idle`` is called whenever no fact came for ``poll_seconds`` (the feed has caught
    up with everything committed so far).

    Returns the number of facts emitted when ``stop`` is set, the database is closed or
    the caller is interrupted (KeyboardInterrupt propagates).
    """
    count = 0
    with db.subscribe(stores=stores, after=after) as subscription:
        while stop is None or not stop.is_set():
            fact = subscription.get(timeout=poll_seconds)
            if fact is None:
                if subscription.closed:
                    break
                if on_idle is not None:
                    on_idle()
                continue
            emit(fact)
            count += 1
    return count


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Let Ctrl-C (SIGINT) and SIGTERM end the follow as a KeyboardInterrupt.

    SIGINT gets Python's default handler even if the process started with it ignored (as
    a background job of a script does), so that ``kill -INT`` always stops ``kiln tail``.
    Signal handlers can only be set on the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


@click.command()
@click.option(
    "--after",
    type=click.IntRange(min=0),
    help="Start after position N (0: everything). Default: only facts committed from now on.",
)
@click.option("--store", "stores", multiple=True, help="Only this store (repeatable).")
@pass_settings
def tail(settings: CliSettings, after: int | None, stores: tuple[str, ...]) -> None:
    """Follow the changefeed: print each fact as it commits, until Ctrl-C."""
    out = JsonLines(flush_each=True)
    try:
        with stop_on_signals(), open_database(settings) as db, ExitStack() as catching_up:
            last = db.stats()["last_position"]
            start = last if after is None else after
            emit: Callable[[Fact], None] = out.fact
            if last > start and not stdout_is_terminal():
                bar = catching_up.enter_context(progress("catching up", last - start))
                emit = _showing_catch_up(out.fact, bar, start, last, catching_up.close)
            follow(db, emit, after=start, stores=list(stores) or None, on_idle=catching_up.close)
    except KeyboardInterrupt:
        pass  # the user is done watching (the database is closed by now): a normal end


def _showing_catch_up(
    emit: Callable[[Fact], None], bar: Progress, start: int, last: int, done: Callable[[], None]
) -> Callable[[Fact], None]:
    """``emit`` that also moves ``bar`` from ``start`` to ``last``, and calls ``done``
    once a fact at or past ``last`` was emitted (the catch-up is over)."""
    reached = start

    def emit_and_show(fact: Fact) -> None:
        nonlocal reached
        emit(fact)
        if reached < last:
            bar.advance(min(fact.position, last) - reached)
            reached = fact.position
            if reached >= last:
                done()

    return emit_and_show

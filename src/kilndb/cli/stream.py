"""``kiln stream``: the streams view — produce to, consume and watch ordered segments.

Entries print as JSON lines (:func:`kilndb.streams.entry_to_wire`: a bytes payload as
``payload_base64``); ``consume`` and ``status`` print a table on a terminal instead
(``--json``/``--table`` choose).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kilndb.cli.context import CliSettings, open_database, pass_settings
from kilndb.cli.errors import CliError, iso_time
from kilndb.cli.output import JsonLines, format_option, print_listing, short_json
from kilndb.cli.params import JSON_VALUE, META_ITEM, TIMESTAMP
from kilndb.cli.tail import POLL_SECONDS, stop_on_signals
from kilndb.streams import Entry, Record, entry_to_wire

__all__ = ["stream"]


def _print(entries: list[Entry]) -> None:
    out = JsonLines()
    for entry in entries:
        out.write(entry_to_wire(entry))
    out.flush()


def _time(seconds: float | None) -> str | None:
    return None if seconds is None else iso_time(seconds)


def _entry_row(wire: dict[str, Any]) -> tuple[Any, ...]:
    payload = wire["payload"] if "payload" in wire else f"({len(wire['payload_base64'])} base64)"
    return (wire["sequence"], _time(wire["timestamp"]), wire["position"], short_json(payload))


def _status_row(status: dict[str, Any]) -> tuple[Any, ...]:
    return (
        status["segment"],
        status["first_sequence"],
        _time(status["first_timestamp"]),
        status["last_sequence"],
        _time(status["last_timestamp"]),
    )


@click.group()
def stream() -> None:
    """Ordered segments: a space is a store, a segment a key, an entry a fact."""


@stream.command()
@click.argument("space")
@click.argument("segment")
@click.argument("payloads", metavar="[JSON]...", nargs=-1, type=JSON_VALUE)
@click.option(
    "--file",
    "files",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="A binary payload: the file's bytes, kept exactly (repeatable).",
)
@click.option(
    "--expected-seq",
    type=click.IntRange(min=0),
    help="Produce only if the segment's last sequence is N (0: only if it is empty).",
)
@click.option("--meta", "meta", type=META_ITEM, multiple=True, help="Metadata name=value.")
@pass_settings
def produce(
    settings: CliSettings,
    space: str,
    segment: str,
    payloads: tuple[Any, ...],
    files: tuple[Path, ...],
    expected_seq: int | None,
    meta: tuple[tuple[str, str], ...],
) -> None:
    """Append the JSON payloads (then the --file ones) as one atomic batch."""
    metadata = dict(meta) or None
    records = [Record(payload, metadata) for payload in payloads]
    records += [Record(path.read_bytes(), metadata) for path in files]
    if not records:
        raise CliError("nothing to produce: give JSON payloads or --file")
    with open_database(settings, create=True) as db:
        _print(db.space(space).segment(segment).produce(records, expected_seq=expected_seq))


@stream.command()
@click.argument("space")
@click.argument("segment")
@click.option("--min-seq", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-seq", type=click.IntRange(min=1))
@click.option("--min-ts", type=TIMESTAMP, help="Epoch seconds or ISO 8601.")
@click.option("--max-ts", type=TIMESTAMP, help="Epoch seconds or ISO 8601.")
@click.option("--limit", type=click.IntRange(min=0), help="At most N entries.")
@format_option
@pass_settings
def consume(
    settings: CliSettings,
    space: str,
    segment: str,
    min_seq: int,
    max_seq: int | None,
    min_ts: float | None,
    max_ts: float | None,
    limit: int | None,
    as_json: bool | None,
) -> None:
    """Print a segment's entries in sequence order (a table on a terminal, else JSON
    Lines)."""
    with open_database(settings) as db:
        entries = db.space(space).segment(segment).consume(min_seq, max_seq, min_ts, max_ts, limit)
    print_listing(
        f"{space}/{segment}",
        ("sequence", "timestamp (UTC)", "position", "payload"),
        (entry_to_wire(entry) for entry in entries),
        _entry_row,
        as_json,
        "no entries",
    )


@stream.command()
@click.argument("space")
@click.argument("segment", required=False)
@format_option
@pass_settings
def status(settings: CliSettings, space: str, segment: str | None, as_json: bool | None) -> None:
    """Print a segment's status, or every segment's of SPACE (a table on a terminal,
    else one JSON line per segment)."""
    with open_database(settings) as db:
        chosen = db.space(space)
        names = [segment] if segment is not None else chosen.segments()
        statuses = [chosen.segment(name).status() for name in names]
    print_listing(
        f"segments of {space}",
        ("segment", "first sequence", "first (UTC)", "last sequence", "last (UTC)"),
        statuses,
        _status_row,
        as_json,
        "no segments",
    )


@stream.command()
@click.argument("space")
@click.option("--segment", default="*", show_default=True, help="One segment, or * for all.")
@click.option(
    "--heartbeat",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds of quiet before a heartbeat line (clamped to 1 to 300; 0: none).",
)
@pass_settings
def tail(settings: CliSettings, space: str, segment: str, heartbeat: float) -> None:
    """Print the segments' status, then a line per change and heartbeats, until Ctrl-C."""
    out = JsonLines(flush_each=True)
    try:
        with (
            stop_on_signals(),
            open_database(settings) as db,
            db.space(space).subscribe_status(segment, heartbeat) as statuses,
        ):
            while True:
                message = statuses.get(timeout=POLL_SECONDS)
                if message is not None:
                    out.write(message)
                elif statuses.closed:
                    break
    except KeyboardInterrupt:
        pass

"""Commands that write and read facts: put, get, history, delete, keys, replay.

``put``, ``get`` and ``delete`` print one fact as a JSON line (:meth:`kilndb.Fact.to_dict`).
The listings — ``history``, ``keys``, ``replay`` — print a table on a terminal and JSON
Lines otherwise (``--json``/``--table`` choose).
"""

from __future__ import annotations

from typing import Any

import click

from kilndb.cli.context import CliSettings, open_database, pass_settings
from kilndb.cli.errors import EXIT_USAGE, CliError, iso_time
from kilndb.cli.output import (
    JsonLines,
    format_option,
    print_facts,
    print_json,
    print_listing,
    progress,
    stdout_is_terminal,
    wants_json,
)
from kilndb.cli.params import JSON_VALUE, META_ITEM, TIMESTAMP

__all__ = ["delete", "get", "history", "keys", "put", "replay"]

_LIMIT = click.IntRange(min=0)
_POSITION = click.IntRange(min=0)


@click.command()
@click.argument("store")
@click.argument("key")
@click.argument("value", metavar="JSON", type=JSON_VALUE)
@click.option(
    "--expected-seq",
    type=click.IntRange(min=0),
    help="Write only if the key's latest seq is N (0: only if the key does not exist).",
)
@click.option("--id", "fact_id", help="Fact id; writing an id the database holds is a no-op.")
@click.option("--causation", help="Id of the fact or command that caused this one.")
@click.option("--valid-time", type=TIMESTAMP, help="Domain time: epoch seconds or ISO 8601.")
@click.option(
    "--meta",
    "meta",
    type=META_ITEM,
    multiple=True,
    help="Metadata entry name=value (repeatable).",
)
@click.option("--schema-version", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--producer", type=JSON_VALUE, help="Who produced the fact (JSON).")
@click.option("--derivation", type=JSON_VALUE, help="How the fact was derived (JSON).")
@click.option(
    "--replicas",
    type=click.IntRange(min=0),
    help="With --url: answer only once N followers have the fact durably (default: the"
    " server's --min-insync-replicas).",
)
@pass_settings
def put(
    settings: CliSettings,
    store: str,
    key: str,
    value: Any,
    expected_seq: int | None,
    fact_id: str | None,
    causation: str | None,
    valid_time: float | None,
    meta: tuple[tuple[str, str], ...],
    schema_version: int,
    producer: Any,
    derivation: Any,
    replicas: int | None,
) -> None:
    """Write JSON as the new value of KEY in STORE; print the fact.

    JSON is any JSON document ('-' reads it from stdin): '{"title": "Hi"}', '42',
    '"a string"'. The fact is durable when printed (with the default --sync always).
    """
    options: dict[str, Any] = {
        "expected_seq": expected_seq,
        "id": fact_id,
        "causation": causation,
        "valid_time": valid_time,
        "schema_version": schema_version,
        "producer": producer,
        "derivation": derivation,
        "metadata": dict(meta),
    }
    if replicas is not None:
        if settings.url is None:
            raise CliError("--replicas waits for a server's followers: give --url", EXIT_USAGE)
        options["replicas"] = replicas
    with open_database(settings, create=True) as db:
        fact = db.store(store).write(key, value, **options)
    print_json(fact.to_dict())


@click.command()
@click.argument("store")
@click.argument("key")
@click.option("--as-of", type=TIMESTAMP, help="Time travel: the value as of this time.")
@click.option("--value", "value_only", is_flag=True, help="Print only the value.")
@pass_settings
def get(settings: CliSettings, store: str, key: str, as_of: float | None, value_only: bool) -> None:
    """Print the latest fact of KEY in STORE (exit status 1 if it has no value)."""
    with open_database(settings) as db:
        fact = db.store(store).read(key, as_of=as_of)
    if fact is None:
        when = "" if as_of is None else f" as of {iso_time(as_of)}"
        raise CliError(f"{store}/{key} has no value{when}")
    print_json(fact.value if value_only else fact.to_dict())


@click.command()
@click.argument("store")
@click.argument("key")
@click.option("--since-seq", type=_POSITION, default=1, show_default=True)
@click.option("--until-seq", type=_POSITION, help="Last seq to print (default: the latest).")
@click.option("--limit", type=_LIMIT, help="Print at most N facts.")
@format_option
@pass_settings
def history(
    settings: CliSettings,
    store: str,
    key: str,
    since_seq: int,
    until_seq: int | None,
    limit: int | None,
    as_json: bool | None,
) -> None:
    """Print the retained facts of KEY in STORE by seq.

    A table on a terminal, else one JSON line per fact (--json/--table choose).
    """
    with open_database(settings) as db:
        facts = db.store(store).history(key, since_seq=since_seq, until_seq=until_seq, limit=limit)
    print_facts(f"history of {store}/{key}", facts, as_json)


@click.command()
@click.argument("store")
@click.argument("key")
@click.option("--expected-seq", type=_POSITION, help="Delete only if the latest seq is N.")
@click.option("--id", "fact_id", help="Id of the tombstone fact (idempotent retry).")
@click.option("--causation", help="Id of the fact or command that caused the delete.")
@click.option("--meta", "meta", type=META_ITEM, multiple=True, help="Metadata name=value.")
@pass_settings
def delete(
    settings: CliSettings,
    store: str,
    key: str,
    expected_seq: int | None,
    fact_id: str | None,
    causation: str | None,
    meta: tuple[tuple[str, str], ...],
) -> None:
    """Delete KEY in STORE by writing a tombstone fact; print it.

    The key's history stays; exit status 1 if the key has no value to delete.
    """
    with open_database(settings) as db:
        fact = db.store(store).delete(
            key,
            expected_seq=expected_seq,
            id=fact_id,
            causation=causation,
            metadata=dict(meta),
        )
    print_json(fact.to_dict())


@click.command()
@click.argument("store")
@click.option("--prefix", default="", help="Only keys starting with P.")
@click.option("--limit", type=_LIMIT, help="Print at most N keys.")
@format_option
@pass_settings
def keys(
    settings: CliSettings, store: str, prefix: str, limit: int | None, as_json: bool | None
) -> None:
    """Print the keys of STORE that have a value, sorted.

    A table on a terminal, else one JSON string per line (--json/--table choose).
    """
    with open_database(settings) as db:
        found = db.store(store).keys(prefix=prefix, limit=limit)
    print_listing(f"keys of {store}", ("key",), found, lambda key: (key,), as_json, "no keys")


@click.command()
@click.option("--after", type=_POSITION, default=0, show_default=True, help="Start after N.")
@click.option("--store", "stores", multiple=True, help="Only this store (repeatable).")
@click.option("--limit", type=_LIMIT, help="Print at most N facts.")
@format_option
@pass_settings
def replay(
    settings: CliSettings,
    after: int,
    stores: tuple[str, ...],
    limit: int | None,
    as_json: bool | None,
) -> None:
    """Print retained facts with position > N in commit order.

    A table on a terminal, else one JSON line per fact (--json/--table choose). Written
    to a file or a pipe, it shows its progress on stderr when that is a terminal.
    """
    with open_database(settings) as db:
        facts = db.replay(after=after, stores=list(stores) or None, limit=limit)
        if not wants_json(as_json):
            print_facts("replay", facts, as_json)
            return
        last = db.stats()["last_position"]
        out = JsonLines()
        with progress("replaying", max(last - after, 0), show=not stdout_is_terminal()) as bar:
            reached = after
            for fact in facts:
                out.fact(fact)
                bar.advance(fact.position - reached)
                reached = fact.position
        out.flush()

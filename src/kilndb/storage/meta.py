"""``META``: the database's identity and durable settings, as one JSON document.

Fields: ``format`` (on-disk format version, currently 1), ``database_id`` (UUID, fixed
at creation; replication keeps it equal on leader and followers), ``created_at`` (epoch
seconds), ``epochs`` (leader epoch history, a list of ``{"epoch", "start_position",
"id"}``; each promotion adds one with a fresh random ``id``),
``retention`` (per-store retention policies), ``compacted_through`` (the highest
position compaction has removed from the log, whatever its store: a replication position
below it is too old), ``compacted_through_by_store`` (``{store: position}``, the highest
position compaction has removed from each store: a changefeed cursor below the watermark
of a store it follows is too old) and, after a ``kiln check --fix`` that dropped facts,
``position_floor`` (positions up to it were handed out once and are never reused).

A ``META`` without ``compacted_through_by_store`` (written before it existed, or rebuilt
by ``kiln check --fix``) gets one when the database opens: ``compacted_through`` for
every store the database holds, since nothing tells which of them lost facts.

``META`` is replaced atomically: written to ``META.tmp``, fsynced, renamed, and the
directory fsynced.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from kilndb.errors import StorageError
from kilndb.storage.datafile import DATA_SUFFIX, HINT_SUFFIX, fsync_directory, write_durably

__all__ = [
    "BY_STORE",
    "FORMAT_VERSION",
    "attribute_compacted",
    "finish_discard",
    "load_or_create_meta",
    "raise_watermarks",
    "watermark_covering",
    "write_meta",
]

#: The ``META`` field of the per-store compaction watermarks.
BY_STORE = "compacted_through_by_store"

FORMAT_VERSION = 1


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    path = directory / "META"
    temporary = directory / "META.tmp"
    data = orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    write_durably(temporary, [data])
    os.replace(temporary, path)
    fsync_directory(directory)


def finish_discard(directory: Path, meta: dict[str, Any]) -> None:
    """Empty a replica copy whose ``META`` says ``discarding`` (a full resync, possibly
    interrupted by a crash): hints, then data files, then the flag."""
    for suffix in (HINT_SUFFIX, DATA_SUFFIX):
        for path in sorted(directory.glob(f"*{suffix}")):
            if path.name.removesuffix(suffix).isdigit():
                path.unlink()
    fsync_directory(directory)
    meta.pop("discarding", None)
    write_meta(directory, meta)


def load_or_create_meta(directory: Path, database_id: str | None = None) -> dict[str, Any]:
    """Read ``META`` (creating it for a new database, with ``database_id`` if given)."""
    path = directory / "META"
    try:
        meta: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        meta = {
            "format": FORMAT_VERSION,
            "database_id": database_id or str(uuid.uuid4()),
            "created_at": time.time(),
            "epochs": [{"epoch": 0, "start_position": 1}],
            "retention": {},
            "compacted_through": 0,
            BY_STORE: {},
        }
        write_meta(directory, meta)
        return meta
    except (OSError, orjson.JSONDecodeError) as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise StorageError(
            f"{path}: on-disk format {meta.get('format')!r} is not supported"
            f" (this KilnDB reads format {FORMAT_VERSION})"
        )
    if database_id is not None and meta.get("database_id") != database_id:
        raise StorageError(
            f"{path}: database id {meta.get('database_id')} is not {database_id}"
            " (a replica must hold its leader's database)"
        )
    meta.setdefault("retention", {})
    meta.setdefault("compacted_through", 0)
    if meta.get("discarding"):
        finish_discard(directory, meta)
    return meta


def attribute_compacted(meta: dict[str, Any], stores: Iterable[str]) -> bool:
    """Give a ``META`` without per-store watermarks one: the database-wide watermark
    for each of ``stores`` (the stores the database holds). True if ``meta`` changed."""
    if BY_STORE in meta:
        return False
    compacted = int(meta.get("compacted_through", 0))
    meta[BY_STORE] = dict.fromkeys(stores, compacted) if compacted else {}
    return True


def raise_watermarks(meta: dict[str, Any], position: int, by_store: dict[str, int]) -> bool:
    """Raise the database-wide watermark to ``position`` and each store's to its value
    in ``by_store`` (watermarks never go down). True if ``meta`` changed.

    The per-store map is replaced, not changed in place: readers look it up without
    the lock that writers hold."""
    changed = False
    if position > int(meta.get("compacted_through", 0)):
        meta["compacted_through"] = position
        changed = True
    current: dict[str, int] = meta.get(BY_STORE, {})
    higher = {s: p for s, p in by_store.items() if p > current.get(s, 0)}
    if higher:
        meta[BY_STORE] = {**current, **higher}
        changed = True
    return changed


def watermark_covering(
    meta: dict[str, Any], after: int, stores: frozenset[str] | None
) -> tuple[str, int] | None:
    """The store (among ``stores``, or any if None) with the highest watermark above
    ``after`` and that watermark: facts after ``after`` it held were compacted away.
    None if a changefeed from ``after`` misses nothing (``after=0`` means "from the
    oldest retained fact" and misses nothing)."""
    if after <= 0:
        return None
    watermarks: dict[str, int] = meta.get(BY_STORE, {})
    chosen = watermarks.items() if stores is None else ((s, watermarks.get(s, 0)) for s in stores)
    store, highest = max(chosen, key=lambda item: (item[1], item[0]), default=("", 0))
    return (store, highest) if highest > after else None

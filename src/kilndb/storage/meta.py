"""``META``: the database's identity and durable settings, as one JSON document.

Fields: ``format`` (on-disk format version, currently 1), ``database_id`` (UUID, fixed
at creation; replication keeps it equal on leader and followers), ``created_at`` (epoch
seconds), ``epochs`` (leader epoch history, a list of ``{"epoch", "start_position",
"id"}``; each promotion adds one with a fresh random ``id``),
``retention`` (per-store retention policies), ``compacted_through`` (the highest
position compaction has removed; cursors below it are too old for a changefeed) and,
after a ``kiln check --fix`` that dropped facts, ``position_floor`` (positions up to it
were handed out once and are never reused).

``META`` is replaced atomically: written to ``META.tmp``, fsynced, renamed, and the
directory fsynced.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from kilndb.errors import StorageError
from kilndb.storage.datafile import DATA_SUFFIX, HINT_SUFFIX, fsync_directory, write_durably

__all__ = ["FORMAT_VERSION", "finish_discard", "load_or_create_meta", "write_meta"]

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

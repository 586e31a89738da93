"""Record bodies inside data files.

Every frame body in a data file is a JSON object of one of three kinds, told apart by
its first key:

``{"file": N, "first_position": P, "database_id": "…"}``
    The *file header*, the first frame of every data file. ``P`` is the position the
    file's first fact has (or would have). It keeps positions from ever being reused,
    even when compaction has removed every fact of a file.

``{"batch": n, "first": P}``
    A *batch header*: the next ``n`` frames are the facts ``P … P+n-1`` of one atomic
    ``write_many``. Recovery applies all of them or, if the log ends before the ``n``-th,
    none (the batch is cut off with the torn tail). Batches never span data files.

``{"id": …, "store": …, "key": …, "seq": …, "position": …, …}``
    A *fact*: exactly :meth:`kilndb.Fact.to_dict`, in :data:`kilndb.model.FACT_FIELDS`
    order. A fact written alone needs no header: its single frame is atomic.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "BATCH_PREFIX",
    "FACT_PREFIX",
    "FILE_PREFIX",
    "batch_header",
    "file_header",
    "parse_body",
]

FACT_PREFIX = b'{"id":'
BATCH_PREFIX = b'{"batch":'
FILE_PREFIX = b'{"file":'


def file_header(file_id: int, first_position: int, database_id: str) -> bytes:
    return orjson.dumps(
        {"file": file_id, "first_position": first_position, "database_id": database_id}
    )


def batch_header(count: int, first_position: int) -> bytes:
    return orjson.dumps({"batch": count, "first": first_position})


def parse_body(body: bytes) -> dict[str, Any]:
    """Parse a record body; raises ``ValueError`` if it is not a JSON object."""
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise ValueError("record body is not a JSON object")
    return data

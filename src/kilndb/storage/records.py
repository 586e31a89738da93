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

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "BATCH_PREFIX",
    "PreparedWrite",
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


@dataclass(slots=True)
class PreparedWrite:
    """A write whose arguments are valid and whose value is serialised and hashed."""

    store: str
    key: str
    value: Any
    value_json: bytes
    value_hash: str
    expected_seq: int | None
    id: str | None
    causation: str | None
    valid_time: float | None
    schema_version: int
    producer: Any
    derivation: Any
    metadata: dict[str, str]
    deleted: bool

    def record(
        self, fact_id: str, seq: int, position: int, transaction_time: float
    ) -> dict[str, Any]:
        """The fact record, in :data:`FACT_FIELDS` order, with the value pre-serialised."""
        return {
            "id": fact_id,
            "store": self.store,
            "key": self.key,
            "seq": seq,
            "position": position,
            "value": orjson.Fragment(self.value_json),
            "value_hash": self.value_hash,
            "transaction_time": transaction_time,
            "valid_time": self.valid_time,
            "causation": self.causation,
            "schema_version": self.schema_version,
            "producer": self.producer,
            "derivation": self.derivation,
            "metadata": self.metadata,
            "deleted": self.deleted,
        }

    def stored_value(self) -> Any:
        """The value as a reader will see it: a private copy, never the caller's object."""
        value = self.value
        if value is None or type(value) in _IMMUTABLE:
            return value
        return orjson.loads(self.value_json)


_IMMUTABLE = frozenset({str, int, float, bool})

"""Validation of one write, before it goes anywhere near the log lock.

Everything that can be checked without the database's state is checked here, so that a
bad argument raises :class:`InvalidArgumentError` and writes nothing, and so that the
expensive parts (serialising and hashing the value) happen outside the lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from kilndb.errors import InvalidArgumentError
from kilndb.model import (
    MAX_ID_LENGTH,
    canonical_json,
    validate_key,
    validate_store_name,
    value_hash,
)

__all__ = ["PreparedWrite", "prepare_write"]

_NULL_HASH = value_hash(b"null")


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    store: str
    key: str
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


def _optional_str(name: str, value: object, max_length: int = MAX_ID_LENGTH) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name} must be a string or None, not {type(value).__name__}")
    if not value:
        raise InvalidArgumentError(f"{name} must not be empty")
    if len(value) > max_length:
        raise InvalidArgumentError(f"{name} is longer than {max_length} characters")
    return value


def _json_field(name: str, value: Any) -> Any:
    if value is None:
        return None
    try:
        canonical_json(value)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{name}: {exc.message}") from exc
    return value


def prepare_write(
    store: object,
    key: object,
    value: Any,
    *,
    expected_seq: object = None,
    id: object = None,
    causation: object = None,
    valid_time: object = None,
    schema_version: object = 1,
    producer: Any = None,
    derivation: Any = None,
    metadata: object = None,
    deleted: bool = False,
) -> PreparedWrite:
    """Check every argument of a write; raise InvalidArgumentError on the first bad one."""
    store = validate_store_name(store)
    key = validate_key(key)
    if deleted:
        value_json, hashed = b"null", _NULL_HASH
    else:
        value_json = canonical_json(value)
        hashed = value_hash(value_json)
    if expected_seq is not None and (type(expected_seq) is not int or expected_seq < 0):
        raise InvalidArgumentError("expected_seq must be a non-negative integer or None")
    if valid_time is not None:
        if isinstance(valid_time, bool) or not isinstance(valid_time, int | float):
            raise InvalidArgumentError("valid_time must be a number (epoch seconds) or None")
        if not math.isfinite(valid_time):
            raise InvalidArgumentError("valid_time must be finite")
        valid_time = float(valid_time)
    if type(schema_version) is not int or schema_version < 1:
        raise InvalidArgumentError("schema_version must be a positive integer")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidArgumentError("metadata must be a dict of strings to strings")
    else:
        metadata = dict(metadata)
    return PreparedWrite(
        store=store,
        key=key,
        value_json=value_json,
        value_hash=hashed,
        expected_seq=expected_seq,
        id=_optional_str("id", id),
        causation=_optional_str("causation", causation),
        valid_time=valid_time,
        schema_version=schema_version,
        producer=_json_field("producer", producer),
        derivation=_json_field("derivation", derivation),
        metadata=metadata,
        deleted=bool(deleted),
    )

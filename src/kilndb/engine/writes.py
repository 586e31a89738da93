"""Validation of one write, before it goes anywhere near the log lock.

Everything that can be checked without the database's state is checked here, so that a
bad argument raises :class:`InvalidArgumentError` and writes nothing, and so that the
expensive parts (serialising and hashing the value) happen outside the lock.
"""

from __future__ import annotations

import math
from typing import Any

from kilndb.errors import InvalidArgumentError
from kilndb.model import (
    MAX_ID_LENGTH,
    MAX_KEY_LENGTH,
    canonical_json,
    validate_key,
    validate_store_name,
    value_hash,
)
from kilndb.storage.records import PreparedWrite

__all__ = ["PreparedWrite", "prepare_write"]

_NULL_HASH = value_hash(b"null")


def _optional_str(name: str, value: object) -> str | None:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name} must be a string or None, not {type(value).__name__}")
    if not value:
        raise InvalidArgumentError(f"{name} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgumentError(f"{name} is longer than {MAX_ID_LENGTH} characters")
    return value


def _json_field(name: str, value: Any) -> Any:
    try:
        canonical_json(value)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{name}: {exc.message}") from exc
    return value


def _valid_time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError("valid_time must be a number (epoch seconds) or None")
    if not math.isfinite(value):
        raise InvalidArgumentError("valid_time must be finite")
    return float(value)


def _metadata(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidArgumentError("metadata must be a dict of strings to strings")
    return dict(value)


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
    store_checked: bool = False,
) -> PreparedWrite:
    """Check every argument of a write; raise InvalidArgumentError on the first bad one.

    ``store_checked`` skips re-validating a store name that a :class:`Store` already
    validated when it was created. The common case — only a key and a value — costs
    little beyond serialising and hashing the value.
    """
    if not store_checked:
        store = validate_store_name(store)
    if type(deleted) is not bool:
        raise InvalidArgumentError("deleted must be True or False")
    if type(key) is not str or not key or len(key) > MAX_KEY_LENGTH:
        key = validate_key(key)
    if deleted:
        value, value_json, hashed = None, b"null", _NULL_HASH
    else:
        value_json = canonical_json(value)
        hashed = value_hash(value_json)
    if expected_seq is not None and (type(expected_seq) is not int or expected_seq < 0):
        raise InvalidArgumentError("expected_seq must be a non-negative integer or None")
    if type(schema_version) is not int or schema_version < 1:
        raise InvalidArgumentError("schema_version must be a positive integer")
    return PreparedWrite(
        store,  # type: ignore[arg-type]
        key,
        value,
        value_json,
        hashed,
        expected_seq,
        None if id is None else _optional_str("id", id),
        None if causation is None else _optional_str("causation", causation),
        None if valid_time is None else _valid_time(valid_time),
        schema_version,
        None if producer is None else _json_field("producer", producer),
        None if derivation is None else _json_field("derivation", derivation),
        {} if metadata is None else _metadata(metadata),
        deleted,
    )

"""Validation of one write, before it goes anywhere near the log lock.

Everything that can be checked without the database's state is checked here, so that a
bad argument raises :class:`InvalidArgumentError` and writes nothing, and so that the
expensive parts (serialising and hashing the value) happen outside the lock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from kilndb.errors import InvalidArgumentError
from kilndb.model import (
    MAX_ID_LENGTH,
    MAX_KEY_LENGTH,
    ORIGIN_TIME_KEY,
    Fact,
    canonical_json,
    validate_key,
    validate_store_name,
    value_hash,
)
from kilndb.storage.records import PreparedWrite

__all__ = ["ORIGIN_TIME_KEY", "PreparedWrite", "fact_write", "prepare_write", "snapshot_facts"]

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


def snapshot_facts(facts: object) -> list[Any]:
    """The facts of a ``write_snapshot`` (any iterable but a string or a mapping)."""
    if isinstance(facts, str | bytes | Mapping) or not isinstance(facts, Iterable):
        raise InvalidArgumentError("write_snapshot takes a list of facts")
    return list(facts)


#: The fields of a whole fact that become a write's arguments of the same name.
_KEPT = ("id", "causation", "valid_time", "schema_version", "producer", "derivation")


def fact_write(fact: object) -> dict[str, Any]:
    """The write that stores a whole fact (a :class:`~kilndb.Fact` read elsewhere, or
    Igniter's fact hash), as the fields of :class:`~kilndb.Write` by name.

    Kept: ``store``, ``key``, ``value``, ``id`` (a fact the database holds already is
    not written again), ``causation``, ``valid_time``, ``schema_version``, ``producer``,
    ``derivation``, ``metadata`` and ``deleted`` (a tombstone stays one); an
    ``expected_seq`` field is honoured as in a write. Assigned by this database, as
    for every write: ``seq``, ``position`` and ``transaction_time`` — the fact's own
    transaction time is kept in ``metadata["kiln.origin_transaction_time"]`` (as
    ``repr`` of the float; one it carries there already, from an earlier copy, is left
    as it is), so that a writer's clock can never move the database's
    non-decreasing transaction time, nor ``as_of`` reads out of position order.
    ``value_hash`` is checked, not copied: one that is not the SHA-256 of the value's
    canonical JSON is refused. Raises InvalidArgumentError naming the field.
    """
    if isinstance(fact, Fact):
        fields = fact.to_dict()
    elif isinstance(fact, Mapping):
        fields = dict(fact)
    else:
        raise InvalidArgumentError(f"expected a kilndb.Fact or a dict, not {type(fact).__name__}")
    for name in ("store", "key"):
        if name not in fields:
            raise InvalidArgumentError(f"missing field {name!r}")
    deleted = fields.get("deleted", False)
    if type(deleted) is not bool:
        raise InvalidArgumentError("field 'deleted' must be a boolean")
    if not deleted and "value" not in fields:
        raise InvalidArgumentError("missing field 'value'")
    value = None if deleted else fields["value"]
    claimed = fields.get("value_hash")
    if claimed is not None:
        actual = value_hash(canonical_json(value))
        if claimed != actual:
            raise InvalidArgumentError(
                f"value_hash {str(claimed)[:80]!r} does not match the value (its SHA-256 of"
                f" canonical JSON is {actual!r}): the fact was altered or hashed otherwise"
            )
    metadata = fields.get("metadata")
    origin = fields.get("transaction_time")
    if origin is not None:
        if isinstance(origin, bool) or not isinstance(origin, int | float):
            raise InvalidArgumentError("field 'transaction_time' must be a number or None")
        if not math.isfinite(origin):
            raise InvalidArgumentError("field 'transaction_time' must be finite")
        kept = {} if metadata is None else _metadata(metadata)
        kept.setdefault(ORIGIN_TIME_KEY, repr(float(origin)))
        metadata = kept
    write = {name: fields.get(name) for name in _KEPT}
    if write["schema_version"] is None:
        write["schema_version"] = 1
    return {
        "store": fields["store"],
        "key": fields["key"],
        "value": value,
        "expected_seq": fields.get("expected_seq"),
        **write,
        "metadata": metadata,
        "deleted": deleted,
    }

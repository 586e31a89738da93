"""The fact model: :class:`Fact`, :class:`Write` and the validation of their fields.

A fact's JSON form (:meth:`Fact.to_dict`) uses Igniter's field names plus ``seq``,
``position``, ``metadata`` and ``deleted``. That very dict, serialised with orjson, is the
body of the fact's record on disk and of the ``fact`` object on the wire, so the field
order below is part of the format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kilndb import _core
from kilndb.errors import InvalidArgumentError

__all__ = [
    "FACT_FIELDS",
    "ORIGIN_TIME_KEY",
    "Fact",
    "Write",
    "canonical_json",
    "fact_from_dict",
    "facts_from_dicts",
    "validate_database_name",
    "validate_key",
    "validate_store_name",
    "value_hash",
]

DATABASE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
STORE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")
MAX_KEY_LENGTH = 1024
MAX_ID_LENGTH = 256


@dataclass(frozen=True)
class Fact:
    """One immutable record: a value for a key in a store, with its provenance.

    ``Fact`` is frozen but deliberately not slotted: the core materialises facts from
    trusted records by setting each field straight from the parsed JSON into the
    instance's compact attribute storage (as ``object.__setattr__`` does, without running
    ``__init__``), which is what lets replay run at hundreds of thousands of facts per
    second.
    """

    id: str
    store: str
    key: str
    seq: int
    position: int
    value: Any
    value_hash: str
    transaction_time: float
    valid_time: float | None = None
    causation: str | None = None
    schema_version: int = 1
    producer: Any = None
    derivation: Any = None
    metadata: dict[str, str] = field(default_factory=dict)
    deleted: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The fact as a JSON-ready dict with Igniter's field names."""
        return dict(self.__dict__)


FACT_FIELDS: tuple[str, ...] = tuple(Fact.__dataclass_fields__)

_new_fact = object.__new__
_set_attribute = object.__setattr__


def facts_from_dicts(data: list[dict[str, Any]]) -> list[Fact]:
    """:func:`fact_from_dict` of each trusted record dict, in one call into the core."""
    facts: list[Fact] = _core.facts_from_dicts(data, Fact)
    return facts


def fact_from_dict(data: dict[str, Any]) -> Fact:
    """Make a trusted record dict (every field present) a :class:`Fact`.

    The dict becomes the fact's ``__dict__`` (no copy), so the caller hands it over.
    """
    fact: Fact = _new_fact(Fact)
    _set_attribute(fact, "__dict__", data)
    return fact


class Write(NamedTuple):
    """One write of an atomic :meth:`Database.write_many` batch.

    Takes the same arguments as :meth:`Store.write`; ``deleted=True`` makes it a tombstone.
    Immutable; a named tuple rather than a frozen dataclass because batches of thousands
    are built in hot loops and a tuple is several times cheaper to construct.
    """

    store: str
    key: str
    value: Any = None
    expected_seq: int | None = None
    id: str | None = None
    causation: str | None = None
    valid_time: float | None = None
    schema_version: int = 1
    producer: Any = None
    derivation: Any = None
    metadata: dict[str, str] | None = None
    deleted: bool = False


def validate_database_name(name: object) -> str:
    """Return ``name`` if it is a valid database name, else raise InvalidArgumentError."""
    if not isinstance(name, str) or not DATABASE_NAME.fullmatch(name):
        raise InvalidArgumentError(f"invalid database name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    if name in (".", ".."):
        raise InvalidArgumentError(f"invalid database name {name!r}")
    return name


_known_store_names: set[str] = set()

#: Stores whose names start with this belong to KilnDB itself (``kiln.leases``).
RESERVED_STORE_PREFIX = "kiln."

#: Metadata key under which a whole fact's own transaction time is kept when it is
#: written to a database that gives it a transaction time of its own.
ORIGIN_TIME_KEY = "kiln.origin_transaction_time"


def validate_store_name(name: object) -> str:
    """Return ``name`` if it is a valid store name, else raise InvalidArgumentError."""
    if type(name) is str and name in _known_store_names:
        return name
    if not isinstance(name, str) or not STORE_NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"invalid store name {name!r}: use 1-128 of A-Z a-z 0-9 _ . : -,"
            " starting with a letter, digit or _"
        )
    if name.startswith(RESERVED_STORE_PREFIX):
        raise InvalidArgumentError(
            f"store names starting with {RESERVED_STORE_PREFIX!r} are reserved ({name!r})"
        )
    if type(name) is str and len(_known_store_names) < 10_000:
        _known_store_names.add(name)
    return name


def validate_key(key: object) -> str:
    """Return ``key`` if it is a non-empty string of at most 1024 characters."""
    if not isinstance(key, str):
        raise InvalidArgumentError(f"key must be a string, not {type(key).__name__}")
    if not key:
        raise InvalidArgumentError("key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgumentError(f"key is longer than {MAX_KEY_LENGTH} characters")
    return key


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` as canonical JSON: sorted keys, no spaces, UTF-8 (the core's
    codec, byte for byte orjson's, which it falls back to for types it leaves alone).

    Raises InvalidArgumentError for anything that is not plain JSON: unsupported types,
    non-string object keys, integers beyond 64 bits, NaN and infinities.
    """
    return _core.canonical_json(value)


def value_hash(canonical: bytes) -> str:
    """SHA-256 hex digest of a value's canonical JSON."""
    return _core.value_hash(canonical)

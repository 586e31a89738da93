"""Bulk import into an embedded database: whole facts keep their transaction time.

Theory of operation
-------------------
:meth:`Database.write_fact` gives a copied fact a transaction time of its own (and keeps
the sender's in ``metadata["kiln.origin_transaction_time"]``), because a writer's clock
must never move the database's non-decreasing transaction time. An import of an export
can do better without breaking that rule: facts arrive in position order, so their
transaction times never decrease, and each one can be kept as it is whenever it is not
earlier than the database's last transaction time and not later than now. That holds
for every fact of an export imported into an empty database, which is what makes an
export → import round trip exact.

:func:`import_item` reads one line's JSON object cheaply: it checks its shape (a
mapping, known fields, store, key and value present, a ``deleted`` flag, a finite
``transaction_time``, string metadata) and builds the :class:`kilndb.Write` that stores
it, without serialising or hashing the value. :func:`import_batch` hands a batch to
:meth:`FactLog.commit_imported <kilndb.storage.facts.FactLog.commit_imported>`, the
write path of ``write_many``: under the log's lock it decides each fact's transaction
time, and the native stager checks every write, serialises and hashes its value, refuses
the batch if a fact's ``value_hash`` is not its value's, checks ``expected_seq`` and
tombstones against the keys' state, skips ids already stored (or repeated in the batch),
frames the records as one atomic batch and indexes each fact with its own time.

A fact whose transaction time cannot be kept (earlier than the database's last one,
or in the future) gets the database's time instead, and its own goes to
``metadata["kiln.origin_transaction_time"]`` exactly as :meth:`Database.write_fact`
does. A plain write (no transaction time of its own) gets the database's time.

The lines of an export take a shorter way: :func:`read_lines` hands a batch's raw lines
to the native core, which parses each one, checks it as :func:`import_item` and the
stager would, writes its value as canonical JSON and hashes it, all without a Python
object per line; :func:`import_lines` then stages them under the log's lock with the
same transaction times, records and skipped ids as :func:`import_batch` would. It is a
fast path that steps aside: a batch with any line it does not read as a whole fact as
exported (a plain write, an ``expected_seq``, anything :func:`import_item` or the
stager would refuse, a forged ``value_hash``), or one its staging refuses, is left to
the path above, which reads the lines and reports the precise error.

A batch refused with InvalidArgumentError does not say which item was at fault:
:func:`first_invalid` checks the items one by one, as a single write would be checked,
to name the first bad one and why (``kiln import`` reports its line, or skips it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from kilndb import _core
from kilndb.engine.writes import fact_write, prepare_write
from kilndb.errors import InvalidArgumentError
from kilndb.model import FACT_FIELDS, ORIGIN_TIME_KEY, Write

if TYPE_CHECKING:
    from kilndb.engine.database import Database

__all__ = [
    "ImportItem",
    "ImportLines",
    "ImportOutcome",
    "first_invalid",
    "import_batch",
    "import_item",
    "import_lines",
    "read_lines",
]

#: A batch's lines read natively (:func:`read_lines`).
ImportLines = _core.ImportLines

#: The fields a plain write may carry (those of :class:`kilndb.Write`).
WRITE_FIELDS = frozenset(Write._fields)
#: The fields a whole fact may carry: its own, and an ``expected_seq`` to check.
WHOLE_FACT_FIELDS = frozenset((*FACT_FIELDS, "expected_seq"))

#: The fields of a fact as exported, every one of them, in one call.
_exported = itemgetter(*FACT_FIELDS)
#: Builds a named tuple from a tuple of its fields (without the keyword handling of
#: its constructor: one item and one write are built per line).
_new = tuple.__new__


class ImportItem(NamedTuple):
    """One line of an import, its shape checked (a tuple: one is built per line)."""

    #: The write that stores the item.
    write: Write
    #: The transaction time a whole fact carries; None for a plain write.
    transaction_time: float | None
    #: The value hash a whole fact claims (checked when it is committed), or None.
    value_hash: str | None
    #: The line's fields, as parsed.
    fields: Mapping[str, Any]

    def as_write(self) -> Write:
        """The :class:`kilndb.Write` storing this item through the ordinary write path
        (a server): a whole fact's own time goes to its metadata, as in ``write_fact``."""
        write = self.write
        metadata = write.metadata
        if self.transaction_time is None or not (metadata is None or type(metadata) is dict):
            return write
        kept = dict(metadata or {})
        kept.setdefault(ORIGIN_TIME_KEY, repr(self.transaction_time))
        return write._replace(metadata=kept)


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What one committed batch did."""

    written: int
    #: Items whose id the database held already.
    skipped: int
    #: The last position the batch wrote (0 if it wrote nothing).
    last_position: int


def import_item(fields: object) -> ImportItem:
    """Read one import line's JSON object: a whole fact (it has a ``transaction_time``,
    as every exported fact does) or a plain write (the fields of :class:`kilndb.Write`).

    Checks its shape only; the rest of a write's checks, and a fact's ``value_hash``,
    come when its batch is committed (:func:`first_invalid` names the item a batch was
    refused for). Raises InvalidArgumentError naming the bad or unknown field, as
    :func:`first_invalid` would.
    """
    if type(fields) is dict and len(fields) == len(FACT_FIELDS):
        # The common line: a fact as exported, with every field and nothing else.
        try:
            got = _exported(fields)
        except KeyError:
            pass
        else:
            (id_, store, key, _, _, value, claimed, own, valid_time, causation, schema_version,
             producer, derivation, metadata, deleted) = got  # fmt: skip
            if (
                type(own) is float
                and own - own == 0.0  # finite
                and type(deleted) is bool
                and (claimed is None or type(claimed) is str)
                and (not metadata or _string_map(metadata))
            ):
                values = (
                    store,
                    key,
                    None if deleted else value,
                    None,
                    id_,
                    causation,
                    valid_time,
                    1 if schema_version is None else schema_version,
                    producer,
                    derivation,
                    metadata,
                    deleted,
                )
                return _new(ImportItem, (_new(Write, values), own, claimed, fields))
    if type(fields) is not dict:
        if not isinstance(fields, Mapping):
            raise InvalidArgumentError(f"expected a JSON object, not {type(fields).__name__}")
        fields = dict(fields)
    get = fields.get
    whole = "transaction_time" in fields
    if not fields.keys() <= (WHOLE_FACT_FIELDS if whole else WRITE_FIELDS):
        _refuse(fields)
    if "store" not in fields or "key" not in fields:
        _refuse(fields)
    deleted = get("deleted", False)
    metadata = get("metadata")
    if metadata and not _string_map(metadata):
        _refuse(fields)
    if not whole:
        if "value" not in fields and not deleted:
            _refuse(fields)
        return ImportItem(Write(**{"value": None, **fields}), None, None, fields)
    if type(deleted) is not bool or (not deleted and "value" not in fields):
        _refuse(fields)
    own = fields["transaction_time"]
    if own is not None:
        if isinstance(own, bool) or not isinstance(own, int | float):
            _refuse(fields)
        own = float(own)
        if not math.isfinite(own):
            _refuse(fields)
    claimed = get("value_hash")
    if claimed is not None and type(claimed) is not str:
        fact_write(fields)  # refuses it: only a string can match
        claimed = str(claimed)
    schema_version = get("schema_version")
    write = Write(
        fields["store"],
        fields["key"],
        None if deleted else fields["value"],
        get("expected_seq"),
        get("id"),
        get("causation"),
        get("valid_time"),
        1 if schema_version is None else schema_version,
        get("producer"),
        get("derivation"),
        metadata,
        deleted,
    )
    return ImportItem(write, own, claimed, fields)


def _string_map(metadata: object) -> bool:
    """Whether ``metadata`` is a dict of strings to strings."""
    return type(metadata) is dict and all(
        type(k) is str and type(v) is str for k, v in metadata.items()
    )


def _refuse(fields: Mapping[str, Any]) -> None:
    """Raise the InvalidArgumentError of an item whose shape is wrong."""
    _check(fields)
    raise InvalidArgumentError("not a fact nor a write")  # _check found it: not reached


def _check(fields: Mapping[str, Any]) -> None:
    """Check an item as a single write of it would be checked; raise InvalidArgumentError
    naming the first bad or unknown field."""
    if "transaction_time" in fields:
        unknown = sorted(set(fields) - WHOLE_FACT_FIELDS)
        if unknown:
            raise InvalidArgumentError(f"unknown field {unknown[0]!r} in a fact")
        # fact_write checks the time and the value hash; the time is kept apart here.
        write = fact_write(fields)
        write["metadata"] = fields.get("metadata")
        prepare_write(**write)
        return
    unknown = sorted(set(fields) - WRITE_FIELDS)
    if unknown:
        raise InvalidArgumentError(f"unknown field {unknown[0]!r} in a write")
    for name in ("store", "key"):
        if name not in fields:
            raise InvalidArgumentError(f"missing field {name!r}")
    if "value" not in fields and not fields.get("deleted"):
        raise InvalidArgumentError("missing field 'value'")
    prepare_write(**{"value": None, **fields})


def first_invalid(items: Sequence[ImportItem]) -> tuple[int, str] | None:
    """The index of the first item a single write would refuse, and why; None if every
    item passes those checks (a batch refused anyway was refused as a whole, e.g. over
    ``max_record_bytes``)."""
    for index, item in enumerate(items):
        try:
            _check(item.fields)
        except InvalidArgumentError as exc:
            return index, exc.message
    return None


def import_batch(db: Database, items: Sequence[ImportItem]) -> ImportOutcome:
    """Commit ``items`` to ``db`` as one atomic batch, durable when this returns.

    Items whose id the database holds (or an earlier item of the batch) are skipped, as
    in a write. Raises ConflictError (an ``expected_seq`` that does not match),
    NotFoundError (a tombstone for a key without a value), InvalidArgumentError (an item
    a write would refuse, a ``value_hash`` that is not its value's, a batch over
    ``max_record_bytes``) with nothing written.
    """
    if not items:
        return ImportOutcome(0, 0, 0)
    writes, own_times, hashes, _ = zip(*items, strict=True)
    return ImportOutcome(*db._log.commit_imported(writes, own_times, hashes))


def read_lines(lines: list[bytes]) -> ImportLines | None:
    """A batch's raw JSON Lines lines read natively, when each is blank or a whole fact
    as exported that the Python path would accept as it is; None otherwise (the lines
    are then read with :func:`import_item`)."""
    return _core.read_import_lines(lines)


def import_lines(db: Database, lines: ImportLines) -> ImportOutcome | None:
    """Commit a batch read by :func:`read_lines` to ``db`` as :func:`import_batch` would
    commit the items of the same lines, durable when this returns; it consumes the batch.
    None if the batch is refused, with nothing written (commit the items of its lines
    with :func:`import_batch` then, for the precise error)."""
    if not lines.count:
        return ImportOutcome(0, 0, 0)
    committed = db._log.commit_lines(lines)
    return None if committed is None else ImportOutcome(*committed)

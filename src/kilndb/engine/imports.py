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

:func:`import_batch` stages one batch itself — ids already stored are skipped, seqs and
``expected_seq`` are checked against the keys' state as a write would, each fact gets
the next position — and frames the records as one atomic batch (a batch header first).
It appends them with :meth:`~kilndb.storage.log.Log.append_shipment`, the path by which a
follower appends its leader's records verbatim, which indexes them (keydir, ids,
retention) and keeps each record's own transaction time. If another writer appended in
between, the shipment no longer follows the log and is refused whole; the batch is
staged again.

A fact whose transaction time cannot be kept (earlier than the database's last one,
or in the future) gets the database's time instead, and its own goes to
``metadata["kiln.origin_transaction_time"]`` exactly as :meth:`Database.write_fact`
does. A plain write (no transaction time of its own) gets the database's time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from kilndb.codec import encode_frame
from kilndb.engine.writes import ORIGIN_TIME_KEY, PreparedWrite, fact_write, prepare_write
from kilndb.errors import ConflictError, InvalidArgumentError, NotFoundError, ProtocolError
from kilndb.model import FACT_FIELDS, Write
from kilndb.storage.records import batch_header

if TYPE_CHECKING:
    from kilndb.engine.database import Database
    from kilndb.storage.facts import FactLog

__all__ = ["ImportItem", "ImportOutcome", "import_batch", "import_item"]

#: The fields a plain write may carry (those of :class:`kilndb.Write`).
WRITE_FIELDS = frozenset(Write._fields)
#: The fields a whole fact may carry: its own, and an ``expected_seq`` to check.
WHOLE_FACT_FIELDS = frozenset((*FACT_FIELDS, "expected_seq"))

#: How often a batch is staged again when other writers keep appending in between.
_ATTEMPTS = 20


@dataclass(frozen=True, slots=True)
class ImportItem:
    """One line of an import, checked: the write, and a whole fact's own time."""

    write: PreparedWrite
    #: The transaction time a whole fact carries; None for a plain write.
    transaction_time: float | None

    def as_write(self) -> Write:
        """The :class:`kilndb.Write` storing this item through the ordinary write path
        (a server): a whole fact's own time goes to its metadata, as in ``write_fact``."""
        w = self.write
        metadata = w.metadata
        if self.transaction_time is not None:
            metadata = {**metadata}
            metadata.setdefault(ORIGIN_TIME_KEY, repr(self.transaction_time))
        return Write(
            w.store,
            w.key,
            w.value,
            w.expected_seq,
            w.id,
            w.causation,
            w.valid_time,
            w.schema_version,
            w.producer,
            w.derivation,
            metadata,
            w.deleted,
        )


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What one committed batch did."""

    written: int
    #: Items whose id the database held already.
    skipped: int
    #: The last position the batch wrote (0 if it wrote nothing).
    last_position: int


def import_item(fields: object) -> ImportItem:
    """Check one import line's JSON object: a whole fact (it has a ``transaction_time``,
    as every exported fact does) or a plain write (the fields of :class:`kilndb.Write`).

    Raises InvalidArgumentError naming the bad or unknown field.
    """
    if not isinstance(fields, Mapping):
        raise InvalidArgumentError(f"expected a JSON object, not {type(fields).__name__}")
    if "transaction_time" in fields:
        unknown = sorted(set(fields) - WHOLE_FACT_FIELDS)
        if unknown:
            raise InvalidArgumentError(f"unknown field {unknown[0]!r} in a fact")
        own = fields["transaction_time"]
        # fact_write checks the time and the value hash; the time is kept apart here.
        write = fact_write(fields)
        write["metadata"] = fields.get("metadata")
        return ImportItem(prepare_write(**write), float(own))
    unknown = sorted(set(fields) - WRITE_FIELDS)
    if unknown:
        raise InvalidArgumentError(f"unknown field {unknown[0]!r} in a write")
    for name in ("store", "key"):
        if name not in fields:
            raise InvalidArgumentError(f"missing field {name!r}")
    if "value" not in fields and not fields.get("deleted"):
        raise InvalidArgumentError("missing field 'value'")
    return ImportItem(prepare_write(**{"value": None, **fields}), None)


def import_batch(db: Database, items: Sequence[ImportItem]) -> ImportOutcome:
    """Commit ``items`` to ``db`` as one atomic batch, durable when this returns.

    Items whose id the database holds (or an earlier item of the batch) are skipped, as
    in a write. Raises ConflictError (an ``expected_seq`` that does not match),
    NotFoundError (a tombstone for a key without a value), InvalidArgumentError (a batch
    over ``max_record_bytes``) with nothing written.
    """
    log: FactLog = db._log
    for _ in range(_ATTEMPTS):
        with log.lock:
            log.check_open()
            after = log.next_position - 1
            frames, written, stored = _stage(log, items, after)
        if not written:
            if stored:
                log.wait_durable(stored)
            return ImportOutcome(0, len(items), 0)
        try:
            last = log.append_shipment(frames, after)
        except ProtocolError:
            if log.next_position - 1 != after:
                continue  # another writer appended meanwhile: stage against the new state
            raise
        log.wait_durable(max(last, stored))
        return ImportOutcome(written, len(items) - written, last)
    raise InvalidArgumentError(
        f"could not import a batch in {_ATTEMPTS} attempts: other writers kept appending"
    )


def _stage(log: FactLog, items: Sequence[ImportItem], after: int) -> tuple[bytes, int, int]:
    """The frames of the batch at positions after ``after`` (hold the log lock), how
    many facts they hold, and the highest position of a skipped item's stored fact."""
    keydir = log.keydir
    states: dict[tuple[str, str], tuple[int, bool]] = {}
    seen: set[str] = set()
    bodies: list[bytes] = []
    position = after
    floor = log.last_ttime
    now = max(time.time(), floor)
    stored = 0
    for item in items:
        w = item.write
        if w.id is not None:
            if w.id in seen:
                continue
            at = log._stored_position(w.id)
            if at is not None:
                stored = max(stored, at)
                continue
            seen.add(w.id)
        slot = (w.store, w.key)
        state = states.get(slot)
        if state is None:
            latest = keydir.latest_state(w.store, w.key)
            state = (0, False) if latest is None else (latest[1], latest[2])
        current, is_deleted = state
        if w.expected_seq is not None and w.expected_seq != current:
            raise ConflictError(w.store, w.key, w.expected_seq, current)
        if w.deleted and (current == 0 or is_deleted):
            raise NotFoundError(f"{w.store}/{w.key} has no value to delete")
        position += 1
        states[slot] = (current + 1, w.deleted)
        ttime, metadata = _transaction_time(item, floor, now)
        floor = ttime
        record: dict[str, Any] = w.record(
            w.id if w.id is not None else log.ids_codec.generate(position),
            current + 1,
            position,
            ttime,
        )
        record["metadata"] = metadata
        bodies.append(orjson.dumps(record))
    if not bodies:
        return b"", 0, stored
    if len(bodies) > 1:
        bodies.insert(0, batch_header(len(bodies), after + 1))
    frames = b"".join(encode_frame(body) for body in bodies)
    if len(frames) > log.config.max_record_bytes:
        raise InvalidArgumentError(
            f"record of {len(frames)} bytes exceeds max_record_bytes"
            f" ({log.config.max_record_bytes})"
        )
    return frames, position - after, stored


def _transaction_time(item: ImportItem, floor: float, now: float) -> tuple[float, dict[str, str]]:
    """The transaction time an item is stored with, and its metadata."""
    own = item.transaction_time
    metadata = item.write.metadata
    if own is None:
        return now, metadata
    if floor <= own <= now:
        return own, metadata
    kept = dict(metadata)
    kept.setdefault(ORIGIN_TIME_KEY, repr(own))
    return max(now, floor), kept

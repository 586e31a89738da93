"""Fact ids the database generates, and how it recognises them.

A fact written without an ``id`` gets a UUID (version 8, RFC 9562) that encodes where it
lives::

    bits 127..80  database tag: the top 48 bits of the database's id (META)
    bits  79..76  version 8
    bits  75..64  zero
    bits  63..62  variant 0b10
    bits  61..0   the fact's position

So the id is unique (positions are never reused within a database, and databases have
random ids), and looking it up for an idempotent retry needs no index: the position is
in the id. Only client-supplied ids are kept in the in-memory id index, which keeps the
keydir small when clients let the database name their facts.
"""

from __future__ import annotations

import uuid

__all__ = ["IdCodec"]

_POSITION_BITS = 62
_POSITION_MASK = (1 << _POSITION_BITS) - 1
_VARIANT = 1 << 63


class IdCodec:
    __slots__ = ("prefix",)

    def __init__(self, database_id: str) -> None:
        tag = uuid.UUID(database_id).int >> 80
        self.prefix = f"{tag >> 16:08x}-{tag & 0xFFFF:04x}-8000-"

    def generate(self, position: int) -> str:
        low = _VARIANT | position
        return f"{self.prefix}{low >> 48:04x}-{low & 0xFFFFFFFFFFFF:012x}"

    def position_of(self, fact_id: str) -> int | None:
        """The position a generated id encodes, or ``None`` if it is not one of ours."""
        if len(fact_id) != 36 or not fact_id.startswith(self.prefix) or fact_id[23] != "-":
            return None
        try:
            low = int(fact_id[19:23] + fact_id[24:], 16)
        except ValueError:
            return None
        if low >> _POSITION_BITS != 2:
            return None
        return low & _POSITION_MASK

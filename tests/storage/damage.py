"""Helpers for tests that damage data files on purpose."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from kilndb.storage.datafile import FrameReader


def frames(path: Path) -> list[tuple[int, int, dict[str, Any]]]:
    """``(offset, frame size, record)`` of the intact frames of a data file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return [
            (offset, len(body) + 8, orjson.loads(body))
            for offset, body in FrameReader(fd, 0, os.fstat(fd).st_size)
        ]
    finally:
        os.close(fd)


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    """XOR the byte at ``offset`` of ``path`` with ``mask``."""
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ mask]))

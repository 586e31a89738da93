"""Typed configuration of an open database, with its documented defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kilndb.errors import InvalidArgumentError

__all__ = ["DatabaseConfig", "SyncMode"]

SyncMode = Literal["always", "interval", "none"]
_SYNC_MODES = ("always", "interval", "none")
#: The largest record (a fact, or a whole atomic batch) a database accepts by default.
DEFAULT_MAX_RECORD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """How one database stores and syncs its log.

    ``sync``: ``"always"`` (default) acknowledges a write only after fsync, concurrent
    writers sharing one fsync (group commit); ``"interval"`` fsyncs every
    ``sync_interval_ms`` and may lose the writes of that window on power loss (not on a
    process crash); ``"none"`` leaves flushing to the operating system.
    ``max_file_size``: data files are sealed and a new one started past this size.
    ``compaction_threshold``: dead bytes / bytes of the sealed files above which
    compaction runs by itself (if ``auto_compact``).
    ``max_record_bytes``: the largest record (a fact, or a whole atomic batch) accepted.
    """

    sync: SyncMode = "always"
    sync_interval_ms: int = 50
    max_file_size: int = 64 * 1024 * 1024
    compaction_threshold: float = 0.3
    auto_compact: bool = True
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES

    def __post_init__(self) -> None:
        if self.sync not in _SYNC_MODES:
            raise InvalidArgumentError(f"sync must be one of {', '.join(_SYNC_MODES)}")
        if not isinstance(self.sync_interval_ms, int) or self.sync_interval_ms < 1:
            raise InvalidArgumentError("sync_interval_ms must be a positive integer")
        if not isinstance(self.max_file_size, int) or self.max_file_size < 4096:
            raise InvalidArgumentError("max_file_size must be an integer >= 4096")
        if not 0.0 < self.compaction_threshold <= 1.0:
            raise InvalidArgumentError("compaction_threshold must be in (0, 1]")
        if not isinstance(self.max_record_bytes, int) or self.max_record_bytes < 1024:
            raise InvalidArgumentError("max_record_bytes must be an integer >= 1024")

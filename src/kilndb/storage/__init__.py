"""Storage: data files, frames, keydir, hints, compaction, recovery and fsync policy."""

from kilndb.storage.log import Log
from kilndb.storage.retention import Retention

__all__ = ["Log", "Retention"]

"""Per-store retention: which facts compaction may drop.

``keep="all"`` (default) keeps every fact. ``keep="latest"`` keeps only each key's
newest fact (a tombstone included, so a deleted key stays deleted). ``max_age`` (seconds)
drops facts whose transaction time is older than that, except each key's newest fact, so
the current state of every key is never aged out. Retention takes effect in the keydir at
once (reads, history and replay stop returning dropped facts) and on disk at the next
compaction of the file that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kilndb.errors import InvalidArgumentError

__all__ = ["Retention"]


@dataclass(frozen=True, slots=True)
class Retention:
    keep: str = "all"
    max_age: float | None = None

    def __post_init__(self) -> None:
        if self.keep not in ("all", "latest"):
            raise InvalidArgumentError('keep must be "all" or "latest"')
        if self.max_age is not None and (
            isinstance(self.max_age, bool)
            or not isinstance(self.max_age, int | float)
            or self.max_age <= 0
        ):
            raise InvalidArgumentError("max_age must be a positive number of seconds or None")

    @property
    def is_default(self) -> bool:
        return self.keep == "all" and self.max_age is None

    def to_dict(self) -> dict[str, Any]:
        return {"keep": self.keep, "max_age": self.max_age}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Retention:
        return cls(keep=data.get("keep", "all"), max_age=data.get("max_age"))

"""Parameter types of the ``kiln`` command: JSON values, ``k=v`` pairs and timestamps.

Each one turns a command-line string into the Python value the API takes, or fails with
a usage error (exit status 2) that says what was expected.
"""

from __future__ import annotations

import math
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click
import orjson

if TYPE_CHECKING:
    # click >= 8.4 makes ParamType generic; subscripting it at runtime would break 8.1-8.3.
    _ParamType = click.ParamType[Any]
else:
    _ParamType = click.ParamType

__all__ = ["JSON_VALUE", "META_ITEM", "TIMESTAMP", "JsonValue", "MetaItem", "Timestamp"]


class JsonValue(_ParamType):
    """A JSON document; ``-`` reads it from standard input."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # already converted (a default)
        text = sys.stdin.read() if value == "-" else value
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            hint = ""
            if text.strip() and text.strip()[0] not in '{["-0123456789tfn':
                hint = f"; to store a string, quote it: '\"{text.strip()}\"'"
            self.fail(f"{text!r} is not valid JSON ({exc}){hint}", param, ctx)


class MetaItem(_ParamType):
    """A metadata entry ``name=value`` (both strings; the value may contain ``=``)."""

    name = "name=value"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        name, sep, text = str(value).partition("=")
        if not sep or not name:
            self.fail(f"{value!r} is not of the form name=value", param, ctx)
        return name, text


class Timestamp(_ParamType):
    """A point in time: epoch seconds (``1717236000.5``) or ISO 8601.

    An ISO 8601 time without a UTC offset (``2024-06-01T10:00:00``) is local time;
    ``2024-06-01T10:00:00Z`` or ``+02:00`` say otherwise.
    """

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                seconds = datetime.fromisoformat(text).timestamp()
            except ValueError:
                self.fail(
                    f"{value!r} is neither epoch seconds nor an ISO 8601 time"
                    " (e.g. 1717236000 or 2024-06-01T10:00:00Z)",
                    param,
                    ctx,
                )
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite time", param, ctx)
        return seconds


JSON_VALUE = JsonValue()
META_ITEM = MetaItem()
TIMESTAMP = Timestamp()

"""The public surface: names exported, unknown error codes (the tree: test_errors.py)."""

from __future__ import annotations

import kilndb
from kilndb import errors


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(kilndb) if not name.startswith("_")}
    modules = {
        "codec",
        "config",
        "engine",
        "errors",
        "model",
        "storage",
        "cli",
        "protocol",
        "server",
        "client",
        "streams",
        "leases",
        "replication",
        "cluster",
    }
    assert set(kilndb.__all__) - {"__version__"} == public - modules
    for name in kilndb.__all__:
        assert hasattr(kilndb, name)


def test_unknown_code_becomes_a_plain_kiln_error() -> None:
    back = errors.error_from_wire({"ok": False, "error": "boom", "error_code": "mystery"})
    assert type(back) is kilndb.KilnError
    assert str(back) == "boom"


def test_invalid_argument_is_a_value_error() -> None:
    assert issubclass(kilndb.InvalidArgumentError, ValueError)

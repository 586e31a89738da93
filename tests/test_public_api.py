"""The public surface: names exported, the error tree and its wire form."""

from __future__ import annotations

import pytest

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
        "coordination",
    }
    assert set(kilndb.__all__) - {"__version__"} == public - modules
    for name in kilndb.__all__:
        assert hasattr(kilndb, name)


def test_every_error_is_a_kiln_error_with_a_unique_code() -> None:
    classes = [getattr(errors, name) for name in errors.__all__ if name.endswith("Error")]
    codes = [cls.error_code for cls in classes]
    assert len(codes) == len(set(codes))
    for cls in classes:
        assert issubclass(cls, kilndb.KilnError)


@pytest.mark.parametrize(
    "error",
    [
        kilndb.ConflictError("tasks", "t1", 1, 3),
        kilndb.CorruptRecordError("/data/default/00000001.log", 4096),
        kilndb.CursorTooOldError(5, 90),
        kilndb.CursorTooOldError(12, 40, store="tasks"),
        kilndb.FrameTooLargeError(20, 10),
        kilndb.ReadOnlyReplicaError("10.0.0.1:7400"),
        kilndb.SubscriberOverflowError(77),
        kilndb.NotFoundError("no such key"),
        kilndb.InvalidArgumentError("bad"),
        kilndb.LeaseHeldError("job", "worker-1", 1.7e9),
        kilndb.LeaseLostError("job", 3, 4, "a newer lease exists"),
    ],
)
def test_errors_survive_the_wire(error: kilndb.KilnError) -> None:
    wire = error.to_wire()
    assert wire["ok"] is False
    assert wire["error_code"] == error.error_code
    back = errors.error_from_wire(wire)
    assert type(back) is type(error)
    assert str(back) == str(error)
    for name in error.fields:
        assert getattr(back, name) == getattr(error, name)


def test_a_cursor_too_old_reply_from_an_older_server_still_rebuilds() -> None:
    wire = {"ok": False, "error": "too old", "error_code": "cursor_too_old"}
    back = errors.error_from_wire({**wire, "cursor": 5, "oldest": 90})
    assert isinstance(back, kilndb.CursorTooOldError)
    assert (back.cursor, back.oldest, back.store, back.oldest_available) == (5, 90, None, None)


def test_unknown_code_becomes_a_plain_kiln_error() -> None:
    back = errors.error_from_wire({"ok": False, "error": "boom", "error_code": "mystery"})
    assert type(back) is kilndb.KilnError
    assert str(back) == "boom"


def test_invalid_argument_is_a_value_error() -> None:
    assert issubclass(kilndb.InvalidArgumentError, ValueError)

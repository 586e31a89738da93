"""The error tree: each class names its wire code and HTTP status, and survives the wire."""

from __future__ import annotations

from typing import Any

import pytest

import kilndb
from kilndb import errors

#: One instance of every class of the tree, with its structured fields set.
EXAMPLES: dict[type[kilndb.KilnError], kilndb.KilnError] = {
    kilndb.KilnError: kilndb.KilnError("internal error: boom"),
    kilndb.InvalidArgumentError: kilndb.InvalidArgumentError("bad"),
    kilndb.ConflictError: kilndb.ConflictError("tasks", "t1", 1, 3),
    kilndb.NotFoundError: kilndb.NotFoundError("no such key"),
    kilndb.CursorTooOldError: kilndb.CursorTooOldError(5, 90, store="tasks"),
    kilndb.ClosedError: kilndb.ClosedError("closed"),
    kilndb.ProtocolError: kilndb.ProtocolError("not JSON"),
    kilndb.FrameTooLargeError: kilndb.FrameTooLargeError(20, 10),
    kilndb.UnknownOpError: kilndb.UnknownOpError("unknown op 'x'"),
    kilndb.StorageError: kilndb.StorageError("EIO"),
    kilndb.CorruptRecordError: kilndb.CorruptRecordError("/data/default/00000001.log", 4096),
    kilndb.DatabaseLockedError: kilndb.DatabaseLockedError("held by pid 7"),
    kilndb.DiskFullError: kilndb.DiskFullError("disk full"),
    kilndb.AuthenticationError: kilndb.AuthenticationError("no token"),
    kilndb.PermissionDeniedError: kilndb.PermissionDeniedError("read only"),
    kilndb.LeaseHeldError: kilndb.LeaseHeldError("job", "worker-1", 1.7e9),
    kilndb.LeaseLostError: kilndb.LeaseLostError("job", 3, 4, "a newer lease exists"),
    kilndb.ConnectionLostError: kilndb.ConnectionLostError("gone"),
    kilndb.WriteOutcomeUnknownError: kilndb.WriteOutcomeUnknownError("write", "tcp://h:1"),
    kilndb.ReadOnlyReplicaError: kilndb.ReadOnlyReplicaError("10.0.0.1:7400"),
    kilndb.StaleEpochError: kilndb.StaleEpochError("orders", 2, 3),
    kilndb.UnavailableError: kilndb.UnavailableError("busy"),
    kilndb.CoordinatorUnavailableError: kilndb.CoordinatorUnavailableError("no etcd member"),
    kilndb.SubscriberOverflowError: kilndb.SubscriberOverflowError(77),
    kilndb.ReplicationTimeoutError: kilndb.ReplicationTimeoutError("0 of 1 replicas"),
}


def test_every_class_declares_its_own_code_and_status() -> None:
    classes = errors.error_classes()
    assert set(classes) == set(EXAMPLES), "a new error class needs an example here"
    for cls in classes:
        assert "error_code" in vars(cls) and "http_status" in vars(cls), cls
        assert cls.error_code and 400 <= cls.http_status <= 599, cls
    codes = [cls.error_code for cls in classes]
    assert len(codes) == len(set(codes))


def test_the_public_tree_is_the_walked_tree() -> None:
    public = {getattr(errors, name) for name in errors.__all__ if name.endswith("Error")} | {
        kilndb.KilnError
    }
    assert public == set(errors.error_classes())


@pytest.mark.parametrize("error", list(EXAMPLES.values()), ids=lambda e: e.error_code)
def test_each_error_survives_the_wire(error: kilndb.KilnError) -> None:
    wire: dict[str, Any] = error.to_wire()
    assert wire["ok"] is False and wire["error_code"] == error.error_code
    back = errors.error_from_wire(wire)
    assert type(back) is type(error)
    assert back.message == error.message and str(back) == str(error)
    for name in error.fields:
        assert getattr(back, name) == getattr(error, name)


def test_client_mistakes_are_4xx_and_server_states_5xx() -> None:
    client = {
        "bad_request",
        "conflict",
        "not_found",
        "cursor_too_old",
        "protocol_error",
        "frame_too_large",
        "unknown_op",
        "unauthenticated",
        "permission_denied",
        "lease_held",
        "lease_lost",
        "read_only_replica",
        "stale_epoch",  # as read_only_replica: the write belongs on another node
    }
    for cls in errors.error_classes():
        assert (cls.http_status < 500) == (cls.error_code in client), cls

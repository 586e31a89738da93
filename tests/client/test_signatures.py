"""One API: the embedded database, the blocking client and the asyncio client have the
same methods with the same parameters and defaults (the asyncio ones as coroutines)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import kilndb
from kilndb import client
from kilndb.client.asyncio_pushed import AsyncStatusSubscription
from kilndb.engine import CallbackSubscription, Database, Store, Subscription
from kilndb.engine.streams import Segment, Space, StatusSubscription

#: (embedded, blocking client, asyncio client), and the API they share.
TRIPLES: list[tuple[type, type, type, tuple[str, ...]]] = [
    (
        Database,
        client.RemoteDatabase,
        client.AsyncRemoteDatabase,
        (
            "store",
            "space",
            "spaces",
            "stores",
            "write_many",
            "write_each",
            "write_fact",
            "write_snapshot",
            "replay",
            "subscribe",
            "stats",
            "compact",
            "set_retention",
            "retention",
            "sync",
            "close",
            "acquire_lease",
            "renew_lease",
            "release_lease",
            "leases",
            "lease",
            "closed",
        ),
    ),
    (
        Store,
        client.RemoteStore,
        client.AsyncRemoteStore,
        ("write", "delete", "read", "history", "keys"),
    ),
    (
        Space,
        client.RemoteSpace,
        client.AsyncRemoteSpace,
        ("segment", "segments", "consume", "subscribe_status"),
    ),
    (
        Segment,
        client.RemoteSegment,
        client.AsyncRemoteSegment,
        ("produce", "consume", "peek", "status"),
    ),
    (
        Subscription,
        client.RemoteSubscription,
        client.AsyncRemoteSubscription,
        ("get", "get_batch", "close", "closed", "covered"),
    ),
    (
        CallbackSubscription,
        CallbackSubscription,
        client.AsyncCallbackSubscription,
        ("close", "closed", "channel_id", "position", "error"),
    ),
    (
        StatusSubscription,
        client.RemoteStatusSubscription,
        AsyncStatusSubscription,
        ("get", "close", "closed"),
    ),
]

#: Keyword-only options a client has and the embedded database has not.
CLIENT_ONLY = {
    ("Store", "write"): {"replicas"},
    ("Store", "delete"): {"replicas"},
    ("Database", "write_many"): {"replicas"},
}

#: Asyncio methods that are not coroutines: they return at once something to use,
#: await or enter (a store, a space, a subscription, a lease keeper, an async iterator).
NOT_COROUTINES = {"store", "space", "segment", "subscribe", "subscribe_status", "lease", "replay"}


def _parameters(function: Any) -> list[tuple[str, Any, Any]]:
    signature = inspect.signature(function)
    return [(p.name, p.kind, p.default) for p in signature.parameters.values() if p.name != "self"]


def _public(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    }


@pytest.mark.parametrize(
    ("embedded", "remote", "remote_async", "api"), TRIPLES, ids=lambda x: getattr(x, "__name__", "")
)
def test_the_clients_have_the_embedded_api(
    embedded: type, remote: type, remote_async: type, api: tuple[str, ...]
) -> None:
    for name in api:
        ours = inspect.getattr_static(embedded, name)
        for cls in (remote, remote_async):
            theirs = inspect.getattr_static(cls, name, None)
            assert theirs is not None, f"{cls.__name__} lacks {name}"
            if isinstance(ours, property):
                assert isinstance(theirs, property), (cls.__name__, name)
                continue
            extra = CLIENT_ONLY.get((embedded.__name__, name), set())
            wanted = [p for p in _parameters(theirs) if p[0] not in extra]
            assert wanted == _parameters(ours), (cls.__name__, name)
            assert all(
                kind == inspect.Parameter.KEYWORD_ONLY
                for n, kind, _ in _parameters(theirs)
                if n in extra
            )


@pytest.mark.parametrize(
    ("embedded", "remote", "remote_async", "api"), TRIPLES, ids=lambda x: getattr(x, "__name__", "")
)
def test_the_asyncio_client_is_the_blocking_one_with_await(
    embedded: type, remote: type, remote_async: type, api: tuple[str, ...]
) -> None:
    blocking, asynchronous = _public(remote), _public(remote_async)
    assert set(blocking) <= set(asynchronous), set(blocking) - set(asynchronous)
    for name, member in blocking.items():
        twin = asynchronous[name]
        if isinstance(member, property):
            assert isinstance(twin, property), name
            continue
        assert _parameters(twin) == _parameters(member), (remote.__name__, name)
        assert inspect.iscoroutinefunction(twin) == (name not in NOT_COROUTINES), name
    for enter, exit_ in (("__enter__", "__exit__"), ("__iter__", "__next__")):
        if hasattr(remote, enter):
            twin_enter, twin_exit = enter.replace("__", "__a", 1), exit_.replace("__", "__a", 1)
            assert hasattr(remote_async, twin_enter) and hasattr(remote_async, twin_exit), enter


def test_connect_and_connect_async_take_the_same_options() -> None:
    assert _parameters(kilndb.connect) == _parameters(kilndb.connect_async)
    assert inspect.iscoroutinefunction(kilndb.connect_async)


def test_the_lease_keepers_match() -> None:
    blocking, asynchronous = _public(kilndb.LeaseKeeper), _public(client.AsyncLeaseKeeper)
    assert set(blocking) <= set(asynchronous)
    assert inspect.iscoroutinefunction(client.AsyncLeaseKeeper.release)

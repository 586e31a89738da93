"""The network client: the embedded API, served by a KilnDB server."""

from kilndb.client.asyncio_client import (
    AsyncRemoteDatabase,
    AsyncRemoteStore,
    AsyncRemoteSubscription,
    connect_async,
)
from kilndb.client.remote import RemoteDatabase, RemoteStore, RemoteSubscription, connect

__all__ = [
    "AsyncRemoteDatabase",
    "AsyncRemoteStore",
    "AsyncRemoteSubscription",
    "RemoteDatabase",
    "RemoteStore",
    "RemoteSubscription",
    "connect",
    "connect_async",
]

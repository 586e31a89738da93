"""The network client: the embedded API, served by a KilnDB server.

``connect`` (blocking) and ``connect_async`` (asyncio) are two thin shells over one
client core (:mod:`kilndb.client.core`, :mod:`kilndb.client.calls`): the same requests,
the same decoding, the same rules for reconnecting and for what is sent again.
"""

from kilndb.client.asyncio_client import (
    AsyncRemoteDatabase,
    AsyncRemoteStore,
    AsyncRemoteSubscription,
    connect_async,
)
from kilndb.client.asyncio_leases import AsyncLeaseKeeper
from kilndb.client.asyncio_pushed import AsyncCallbackSubscription, AsyncStatusSubscription
from kilndb.client.asyncio_streams import AsyncRemoteSegment, AsyncRemoteSpace
from kilndb.client.remote import RemoteDatabase, RemoteStore, RemoteSubscription, connect
from kilndb.client.streams import RemoteSegment, RemoteSpace, RemoteStatusSubscription

__all__ = [
    "AsyncCallbackSubscription",
    "AsyncLeaseKeeper",
    "AsyncRemoteDatabase",
    "AsyncRemoteSegment",
    "AsyncRemoteSpace",
    "AsyncRemoteStore",
    "AsyncRemoteSubscription",
    "AsyncStatusSubscription",
    "RemoteDatabase",
    "RemoteSegment",
    "RemoteSpace",
    "RemoteStatusSubscription",
    "RemoteStore",
    "RemoteSubscription",
    "connect",
    "connect_async",
]

"""The network client: the embedded API, served by a KilnDB server."""

from kilndb.client.remote import RemoteDatabase, RemoteStore, RemoteSubscription, connect

__all__ = ["RemoteDatabase", "RemoteStore", "RemoteSubscription", "connect"]

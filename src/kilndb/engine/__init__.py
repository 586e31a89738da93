"""The engine: facts, history, time travel, batches, replay, the changefeed, streams."""

from kilndb.engine.changefeed import CallbackSubscription, Subscription
from kilndb.engine.database import Database, Store
from kilndb.engine.streams import Segment, Space, StatusSubscription

__all__ = [
    "CallbackSubscription",
    "Database",
    "Segment",
    "Space",
    "StatusSubscription",
    "Store",
    "Subscription",
]

"""The engine: facts, history, time travel, batches, replay and the changefeed."""

from kilndb.engine.changefeed import Subscription
from kilndb.engine.database import Database, Store

__all__ = ["Database", "Store", "Subscription"]

"""Replication: followers that stream a leader's databases, record for record."""

from kilndb.replication.protocol import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]

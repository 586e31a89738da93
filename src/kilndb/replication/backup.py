"""Online backup: a follower that stops at a position.

:func:`backup_from_server` copies database ``name`` of a running server into
``DATA/name`` over the replication protocol, exactly as a follower does
(:class:`~kilndb.replication.Follower`): the leader ships its records verbatim, whole
and in position order, so the copy holds every retained fact up to the position it
stopped at, and nothing after it. It stops once it holds the leader's last durable
position as of the moment it connected (its ``shard_info``), whatever was written since.
Reading a database's replication stream takes the database's read scope
(``kiln::NAME:read``, ``kiln::NAME`` or ``kiln::*``) on a server with authentication.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kilndb.client.endpoint import Endpoint
from kilndb.config import DatabaseConfig
from kilndb.errors import KilnError, UnavailableError
from kilndb.replication.embedded import Follower
from kilndb.storage.backup import BackupReport
from kilndb.storage.log import Log

__all__ = ["backup_from_server"]

#: How often the copy's progress is looked at, in seconds.
POLL = 0.05
#: How often the copy is fsynced while it grows, in milliseconds.
BACKUP_SYNC_MS = 200


def backup_from_server(
    endpoint: Endpoint,
    name: str,
    data: Path,
    progress: Callable[[int, int], None] | None = None,
    connect_timeout: float = 5.0,
) -> BackupReport:
    """Copy database ``name`` of the server at ``endpoint`` into ``data/name``.

    ``progress(position, target)`` is called as the copy grows. Raises UnavailableError
    when the server cannot be reached, KilnError with the server's answer when it
    refuses (no such database, a missing scope) or the stream fails part way.
    """
    started = time.monotonic()
    # A copy is only a backup once it is whole: it is fsynced every interval (so its
    # acknowledgements stay true) and completely when the follower closes it, not after
    # every shipment.
    follower = Follower(
        endpoint.url,
        data,
        name=name,
        token=endpoint.token,
        connect_timeout=connect_timeout,
        config=DatabaseConfig(sync="interval", sync_interval_ms=BACKUP_SYNC_MS),
        replica=False,  # a copy that stops: never counted toward replicas=N
    )
    follower.leader = endpoint  # with its TLS context
    follower.start()
    try:
        # The leader's position when the stream opened is the backup's position.
        while follower.state not in ("catching_up", "streaming"):
            _raise_failure(follower)
            follower.wait_for(position=1 << 62, timeout=POLL)  # a poll: never reached
        target = follower.leader_position
        while not follower.wait_for(position=target, timeout=POLL):
            _raise_failure(follower)
            if progress is not None:
                progress(follower.position, target)
    finally:
        follower.stop()
    if progress is not None:
        progress(follower.position, target)
    copy = Log(data / name, DatabaseConfig(auto_compact=False))
    try:
        position, facts = copy.written, copy.keydir.facts
    finally:
        copy.close()
    (data / name / "LOCK").unlink(missing_ok=True)  # not part of a backup's layout
    files = list((data / name).iterdir())
    size = sum(p.stat().st_size for p in files)
    return BackupReport(name, position, facts, size, len(files), time.monotonic() - started)


def _raise_failure(follower: Follower) -> None:
    error = follower.last_error
    if error is None:
        return
    if follower.state == "retrying":  # the connection failed or broke
        raise UnavailableError(error)
    raise KilnError(error)

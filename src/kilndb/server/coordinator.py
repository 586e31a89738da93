"""The cluster's state in etcd: which keys KilnDB keeps there, and the transactions on them.

Every key lives under ``/kiln/{cluster}/``:

``members/{node}``
    ``{"node", "url"}``, bound to the node's lease: who is up.
``leaders/{database}``
    ``{"node", "url", "epoch"}``, bound to the leader's lease.
``epochs/{database}``
    the last epoch granted for the database, as decimal text; it only grows.
``offers/{database}/{node}``
    a candidate's log position during an election, bound to its lease.
``handover/{database}``
    during a planned switchover, the node the leader hands the database to: the only
    one that campaigns (bound to the old leader's lease).
``isr/{database}``
    ``{"leader", "epoch", "members"}``: the followers that hold every write the leader
    acknowledged. Only they (and that leader) may take the lead when it goes.

:meth:`Coordinator.campaign` is the one transaction that makes a leader: it succeeds
only if nobody holds ``leaders/{database}`` and nobody moved ``epochs/{database}`` since
it was read, and it writes both, so that two candidates never get the same epoch and an
epoch is never granted twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from kilndb.coordination import Compare, DeleteOp, Etcd, PutOp
from kilndb.errors import ProtocolError

__all__ = ["Coordinator", "LeaderRecord"]


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    """The leader of a database, as etcd says."""

    node: str
    url: str
    epoch: int


def _record(value: bytes) -> LeaderRecord:
    try:
        data: Any = orjson.loads(value)
        return LeaderRecord(str(data["node"]), str(data["url"]), int(data["epoch"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"a leader key in etcd is not KilnDB's: {value[:100]!r}") from exc


class Coordinator:
    """KilnDB's keys in one etcd cluster, under ``/kiln/{cluster}/``."""

    def __init__(self, etcd: Etcd, cluster: str = "kiln") -> None:
        self.etcd = etcd
        self.prefix = f"/kiln/{cluster}/"

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    async def grant(self, ttl: float) -> int:
        lease = await self.etcd.grant(max(1, round(ttl)))
        return lease.id

    async def keepalive(self, lease: int) -> int:
        """Seconds the lease has left after renewing it (0: it is gone)."""
        return await self.etcd.keepalive(lease)

    async def revoke(self, lease: int) -> None:
        await self.etcd.revoke(lease)

    async def register_member(self, node: str, url: str, lease: int) -> None:
        value = orjson.dumps({"node": node, "url": url})
        await self.etcd.put(self._key("members", node), value, lease=lease)

    async def leaders(self) -> tuple[dict[str, LeaderRecord | None], int]:
        """Every database's leader, and the revision they were read at."""
        found, revision = await self.etcd.get_prefix(self._key("leaders", ""))
        return {kv.key.rsplit("/", 1)[1]: _record(kv.value) for kv in found}, revision

    async def watch_leaders(
        self, start_revision: int
    ) -> AsyncIterator[tuple[str, LeaderRecord | None]]:
        """Each change of a leader key from ``start_revision`` on: the database and its
        new leader (None: the key was deleted or its lease expired)."""
        async for event in self.etcd.watch(self._key("leaders", ""), start_revision):
            database = event.kv.key.rsplit("/", 1)[1]
            yield database, None if event.type == "DELETE" else _record(event.kv.value)

    async def offer(self, database: str, node: str, position: int, lease: int) -> None:
        key = self._key("offers", database, node)
        await self.etcd.put(key, str(position).encode(), lease=lease)

    async def offers(self, database: str) -> dict[str, int]:
        found, _ = await self.etcd.get_prefix(self._key("offers", database, ""))
        return {kv.key.rsplit("/", 1)[1]: int(kv.value) for kv in found}

    async def campaign(
        self, database: str, node: str, url: str, local_epoch: int, lease: int
    ) -> int | None:
        """Take the lead of ``database`` if nobody holds it: the new epoch (above both
        the last one granted and ``local_epoch``), or None if another node got it."""
        leader_key = self._key("leaders", database)
        epoch_key = self._key("epochs", database)
        current = await self.etcd.get(epoch_key)
        granted = 0 if current is None else int(current.value)
        epoch = max(granted, local_epoch) + 1
        record = orjson.dumps({"node": node, "url": url, "epoch": epoch})
        moved = 0 if current is None else current.mod_revision
        result = await self.etcd.txn(
            compare=[
                Compare(leader_key, "create_revision", "=", 0),
                Compare(epoch_key, "mod_revision", "=", moved),
            ],
            success=[PutOp(leader_key, record, lease), PutOp(epoch_key, str(epoch).encode())],
            failure=[],
        )
        return epoch if result.succeeded else None

    async def isr(self, database: str) -> tuple[str, list[str]] | None:
        """The last published in-sync set of ``database``: its leader and members."""
        found = await self.etcd.get(self._key("isr", database))
        if found is None:
            return None
        data = orjson.loads(found.value)
        return str(data["leader"]), [str(m) for m in data["members"]]

    async def publish_isr(
        self, database: str, node: str, epoch: int, members: list[str], lease: int
    ) -> bool:
        """Publish ``members`` as the in-sync set of ``database`` — only while ``node``
        still holds its leader key under ``lease``; False if it does not."""
        value = orjson.dumps({"leader": node, "epoch": epoch, "members": sorted(members)})
        result = await self.etcd.txn(
            compare=[Compare(self._key("leaders", database), "lease", "=", lease)],
            success=[PutOp(self._key("isr", database), value)],
            failure=[],
        )
        return result.succeeded

    async def hand_over(self, database: str, node: str, to: str, lease: int) -> bool:
        """Give up the lead of ``database`` to ``to``: in one transaction, while this
        node still holds the key, name ``to`` as the only candidate (bound to this
        node's lease, so it lapses if the hand-over does) and delete the leader key."""
        result = await self.etcd.txn(
            compare=[Compare(self._key("leaders", database), "lease", "=", lease)],
            success=[
                PutOp(self._key("handover", database), to.encode(), lease),
                DeleteOp(self._key("leaders", database)),
            ],
            failure=[],
        )
        return result.succeeded

    async def handed_to(self, database: str) -> str | None:
        """The node a planned switchover names for ``database``, if one is under way."""
        found = await self.etcd.get(self._key("handover", database))
        return None if found is None else found.value.decode()

    async def close(self) -> None:
        await self.etcd.close()

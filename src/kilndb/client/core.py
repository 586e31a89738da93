"""The client core: how a client talks to a server, without sockets, threads or a loop.

Theory of operation
-------------------
Every call of the client API becomes one :class:`Request` (built in
:mod:`kilndb.client.calls`): the frame to send, a ``decode`` that turns the reply's body
into the API's value (a Fact, a Lease, entries …) or raises the server's error, and
whether the request is *repeatable* — whether sending it twice has the effect of
sending it once. The sync client (:mod:`~kilndb.client.remote`) and the asyncio client
(:mod:`~kilndb.client.asyncio_client`) are shells around this core: they write
``request.frame``, read one reply frame and hand its body to ``request.decode``. They
differ in how they wait, never in what they say or how they read the answer.

When a connection breaks, the shells ask the core what to do:

* a request that was **never sent** (the connection was known to be dead first) is sent
  on a new connection;
* a request that was sent but **whose reply never came** is sent again on a new
  connection if it is repeatable (:func:`repeatable`: reads, maintenance that converges,
  and writes carrying an ``id``, which the server applies once however often it gets
  them); otherwise the shell raises :class:`~kilndb.errors.WriteOutcomeUnknownError`
  (:func:`lost_reply`), because the server may or may not have applied it;
* a reply that did not come within the client's ``timeout`` is not waited for again:
  the request is not repeated, since a slow server is not a restarted one.

A new connection says ``hello`` (database, token) again. The shells reconnect on a
schedule drawn from :class:`Reconnect`: a first attempt at once, then backoff up to a
total budget, after which they raise :class:`~kilndb.errors.ConnectionLostError`.

Where to talk is decided here too: :func:`leader_to_read_from` reads a ``hello`` reply
and says whether the client must go to the database's leader instead, :func:`arrived`
checks the leader's own ``hello``, and :func:`leader_for` says whether a write a follower
refused goes on to its leader. A client given several servers chooses among them with
:class:`kilndb.client.hosts.Hosts`, the same way at connect time, after a broken
connection and after a refusal.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from kilndb import _core
from kilndb.codec import encode_frame
from kilndb.errors import (
    ConnectionLostError,
    InvalidArgumentError,
    KilnError,
    ProtocolError,
    ReadOnlyReplicaError,
    UnavailableError,
    WriteOutcomeUnknownError,
    error_from_wire,
)

__all__ = [
    "READ_FROM",
    "Attempts",
    "REPEATABLE_OPS",
    "Ready",
    "Reconnect",
    "Request",
    "arrived",
    "check_read_from",
    "follows_leader",
    "gave_up",
    "leader_for",
    "leader_to_read_from",
    "lost_reply",
    "message_of",
    "repeatable",
    "refused_writes",
    "reply_of",
]

T = TypeVar("T")

#: Ops that change nothing, or whose repetition has the effect of one call: reads,
#: maintenance that converges (``sync``, ``compact``, ``set_retention``), and leases the
#: same holder acquires or renews again (it extends its own lease, same token).
REPEATABLE_OPS = frozenset(
    {
        "hello",
        "ping",
        "read",
        "history",
        "keys",
        "replay",
        "stores",
        "stats",
        "retention",
        "cluster",
        "spaces",
        "segments",
        "consume",
        "space_consume",
        "peek",
        "segment_status",
        "leases",
        "acquire_lease",
        "renew_lease",
        "sync",
        "compact",
        "set_retention",
    }
)

#: What to do instead, named in a WriteOutcomeUnknownError, for ops an ``id`` cannot
#: make repeatable.
_ADVICE = {
    "produce": "consume the segment to see whether the records are there",
    "release_lease": "call leases() to see whether it is still held",
}


def repeatable(op: str, params: dict[str, Any]) -> bool:
    """Whether sending this request twice has the effect of sending it once."""
    if op in REPEATABLE_OPS:
        return True
    if op in ("write", "delete"):
        return params.get("id") is not None
    if op == "write_many":
        return all(write.get("id") is not None for write in params["writes"])
    if op == "write_fact":
        return params["fact"].get("id") is not None
    if op == "write_snapshot":  # facts whose ids are stored already are skipped
        return all(fact.get("id") is not None for fact in params["facts"])
    return False


def message_of(body: bytes) -> dict[str, Any]:
    message = _core.loads(body)
    if not isinstance(message, dict):
        raise ProtocolError("server sent a frame that is not a JSON object")
    return message


def reply_of(body: bytes) -> dict[str, Any]:
    """The successful reply whose body is ``body``; raise the server's error."""
    reply = message_of(body)
    if not reply.get("ok"):
        raise error_from_wire(reply)
    return reply


@dataclass(frozen=True, slots=True)
class Request(Generic[T]):
    """One request of the client API: what to send and how to read its reply."""

    op: str
    #: The request as a frame, ready for the socket.
    frame: bytes
    #: The reply's body → the API's value; raises the error the server sent.
    decode: Callable[[bytes], T]
    #: Sending it again after a lost reply is safe (see :func:`repeatable`).
    repeatable: bool

    @classmethod
    def make(
        cls, op: str, params: dict[str, Any], decode: Callable[[dict[str, Any]], T]
    ) -> Request[T]:
        """A request whose reply is decoded as JSON and then by ``decode``.

        Raises InvalidArgumentError if the parameters are not JSON-serialisable (nothing
        is sent)."""
        return cls.raw(op, params, lambda body: decode(reply_of(body)))

    @classmethod
    def raw(cls, op: str, params: dict[str, Any], decode: Callable[[bytes], T]) -> Request[T]:
        """A request whose ``decode`` reads the reply's body itself (a faster parser)."""
        try:
            body = orjson.dumps({"op": op, **params})
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise InvalidArgumentError(f"request is not JSON-serialisable: {exc}") from exc
        return cls(op, encode_frame(body), decode, repeatable(op, params))


@dataclass(frozen=True, slots=True)
class Ready(Generic[T]):
    """A call answered without asking the server (an empty batch, say)."""

    value: T


def lost_reply(request: Request[Any], url: str, lost: ConnectionLostError) -> KilnError | None:
    """The error to raise for ``request``, sent to ``url`` but never answered because
    the connection broke (``lost``); None: send it again on a new connection."""
    timed_out = isinstance(lost.__cause__, TimeoutError)
    if request.repeatable:
        return lost if timed_out else None
    advice = _ADVICE.get(request.op, "retry it with an id= so that the server applies it once")
    return WriteOutcomeUnknownError(
        request.op,
        url,
        f"{request.op} was sent to {url} but no reply came ({lost.message}): it may or may"
        f" not have been applied; {advice}",
    )


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How a client comes back after its connection breaks (a server restart, say).

    ``timeout`` is how long one call keeps trying, in seconds (0: it does not
    reconnect); the first attempt is immediate, then waits grow from ``first_delay`` by
    doubling up to ``max_delay``.
    """

    timeout: float = 5.0
    first_delay: float = 0.05
    max_delay: float = 1.0

    @classmethod
    def make(cls, timeout: object) -> Reconnect:
        """The policy of a ``reconnect_timeout=`` argument."""
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise InvalidArgumentError("reconnect_timeout must be a non-negative number")
        return cls(float(timeout))

    def waits(self, clock: Callable[[], float]) -> Iterator[float]:
        """Seconds to wait before each attempt, ending once the budget is spent
        (``clock`` is a monotonic clock, read when the schedule starts and at each step)."""
        deadline = clock() + self.timeout
        if self.timeout <= 0:
            return
        yield 0.0
        delays = (self.first_delay * 2**n for n in itertools.count())
        for delay in delays:
            wait = min(delay, self.max_delay)
            left = deadline - clock()
            if left <= 0:
                return
            yield min(wait, left)


class Attempts:
    """One call's reconnect schedule (:meth:`Reconnect.waits`), started the first time
    the call needs to connect again and shared by every reconnect and search it makes,
    so that a call gives up within one budget whatever happened on the way."""

    __slots__ = ("_clock", "_policy", "_waits")

    def __init__(self, policy: Reconnect, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._waits: Iterator[float] | None = None

    def waits(self) -> Iterator[float]:
        if self._waits is None:
            self._waits = self._policy.waits(self._clock)
        return self._waits


def gave_up(url: str, policy: Reconnect, last: KilnError | None) -> ConnectionLostError:
    """The error once reconnecting to ``url`` has used up its budget."""
    why = f": {last.message}" if last is not None else ""
    return ConnectionLostError(
        f"lost the connection to {url} and could not reconnect within {policy.timeout:g} s{why}"
    )


def leader_for(
    refused: ReadOnlyReplicaError, follow_leader: bool, several: bool = False
) -> str | None:
    """The leader a write a follower refused goes to (None: raise the refusal); for a
    client of several servers, ``""`` when the follower named none: the client looks
    for the leader among them (:mod:`kilndb.client.hosts`)."""
    if not follow_leader:
        return None
    if refused.leader:
        return refused.leader
    return "" if several else None


def refused_writes(
    outcomes: list[Any], follow_leader: bool, several: bool
) -> tuple[list[int], str | None]:
    """The ``write_each`` outcomes a follower refused (ReadOnlyReplicaError) and the
    leader to send those writes to, as :func:`leader_for` says (None: the refusals
    are the outcomes)."""
    refused = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, ReadOnlyReplicaError)]
    if not refused:
        return [], None
    return refused, leader_for(outcomes[refused[0]], follow_leader, several)


#: Where a client sends reads: any node it reached, or the database's leader.
READ_FROM = ("any", "leader")


def check_read_from(read_from: str) -> None:
    """Raises InvalidArgumentError unless ``read_from`` is ``"any"`` or ``"leader"``."""
    if read_from not in READ_FROM:
        raise InvalidArgumentError(f'read_from must be "any" or "leader", not {read_from!r}')


def leader_to_read_from(
    url: str, hello: dict[str, Any], read_from: str, follow_leader: bool | None
) -> str | None:
    """The leader's URL when the client must talk to it instead (None: stay): the
    server does not hold the database but knows the cluster member that leads it (unless
    ``follow_leader`` is False: the client stays where it connected), or reads must go
    to the leader and the server said hello as a follower. Raises UnavailableError when
    that follower knows no leader for it yet."""
    role = hello.get("role")
    if role == "elsewhere" and hello.get("leader") and follow_leader is not False:
        if url == hello["leader"]:  # sent back to where it already is
            raise UnavailableError(f"{url} says another member leads its database")
        return str(hello["leader"])
    if read_from != "leader" or role != "follower":
        return None
    leader = hello.get("leader")
    if not leader:
        raise UnavailableError(
            f"{url} holds a copy of {hello.get('database')!r} but knows no leader for it yet"
        )
    return str(leader)


def arrived(url: str, hello: dict[str, Any]) -> None:
    """After one redirect to a leader: raises UnavailableError if that server sends the
    client on again (members that disagree about the leader, while gossip converges)."""
    if hello.get("role") == "elsewhere":
        raise UnavailableError(
            f"{url} does not lead {hello.get('database')!r} either (the cluster"
            " is changing its mind; try again)"
        )


def follows_leader(
    hello: dict[str, Any], follow_leader: bool | None, several: bool = False
) -> bool:
    """Whether writes a follower refuses go on to its leader: by default, in a cluster
    or when the client was given several servers."""
    if follow_leader is not None:
        return follow_leader
    return several or hello.get("cluster") is not None

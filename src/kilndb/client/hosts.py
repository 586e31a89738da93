"""Which server a client talks to, among the hosts its URL lists: no sockets, no clock.

Theory of operation
-------------------
A client whose URL lists several servers (``tcp://h1:7400,h2:7400,h3:7400``) keeps one
:class:`Hosts` per connection it holds. Whenever that connection has to be made — at
connect time, after it broke, after its server refused a write because it no longer
leads the database — the I/O shell runs a *round*::

    hosts.begin()
    while (url := hosts.next()) is not None:
        try: hello = <connect to url and say hello>
        except ConnectionLostError as exc: hosts.failed(url, exc); continue
        if hosts.answered(url, hello): break          # use this connection
    else: error = hosts.unfound()                      # wait (Reconnect), begin again

A round asks, in this order and each server at most once: the leader a server last
named (a refusal's ``leader``, see :meth:`Hosts.refused`), the server in use before,
then the list in the order written (libpq's rule: hosts are tried in order; nothing is
shuffled). What a ``hello`` must say for the round to end depends on what the
connection is for (:data:`WANTS`):

* ``"leader"`` — writes, or reads with ``read_from="leader"``: only a server whose
  ``role`` is ``leader`` for the database will do;
* ``"holder"`` — reads with ``read_from="any"``: any server that holds the database
  (a leader or a follower), not one that says ``elsewhere``;
* ``"any"`` — a client of one server: whatever it says (the facade decides the rest).

A server that will not do but names the database's leader (a follower's ``leader``, a
cluster member's ``elsewhere``) sends the round there next, unless the round asked it
already. A round that ends without a server is an :meth:`~Hosts.unfound` error: the
shell waits on the :class:`~kilndb.client.core.Reconnect` schedule and begins another,
until the budget is spent. At connect time one round is all (as libpq tries each host
once).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

from kilndb.errors import ConnectionLostError, InvalidArgumentError, KilnError, UnavailableError

__all__ = ["WANTS", "Hosts", "Want", "reads_hosts"]

Want = Literal["leader", "holder", "any"]
#: What a connection needs its server to be (see the module's docstring).
WANTS: tuple[Want, ...] = ("leader", "holder", "any")


class Hosts:
    """The servers a connection may use, and the round that looks for one of them.

    ``hosts``: the URLs the client was given, in order; ``want``: what the server must
    be for ``database`` (``"leader"``, ``"holder"`` or ``"any"``); ``follow``: go to the
    leader a server names (False: stay on the list).
    """

    def __init__(
        self,
        hosts: Sequence[str],
        database: str,
        want: Want,
        follow: bool = True,
    ) -> None:
        if not hosts:
            raise InvalidArgumentError("a client needs at least one server URL")
        if want not in WANTS:
            raise InvalidArgumentError(f"want must be one of {WANTS}, not {want!r}")
        self.hosts = tuple(hosts)
        self.database = database
        self.want: Want = want
        self.follow = follow
        #: The server the connection uses now (None: none yet, or it was left).
        self.current: str | None = None
        #: The leader a server named last, asked first in the next round.
        self.hint: str | None = None
        self._queue: deque[str] = deque()
        self._asked: set[str] = set()
        self._failures: dict[str, KilnError] = {}
        self._refusals: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<Hosts {self.want} of {self.database!r} at {self.current or self.hosts[0]!r}>"

    # -- a round --------------------------------------------------------------------

    def begin(self) -> None:
        """Start a round: the leader last named, the server in use, then the list."""
        self._queue = deque()
        self._asked = set()
        self._failures = {}
        self._refusals = {}
        for url in (self.hint, self.current, *self.hosts):
            if url is not None and url not in self._queue:
                self._queue.append(url)

    def next(self) -> str | None:
        """The next server to ask in this round; None once every one was asked."""
        while self._queue:
            url = self._queue.popleft()
            if url not in self._asked:
                self._asked.add(url)
                return url
        return None

    def failed(self, url: str, error: KilnError) -> None:
        """Connecting to ``url`` (or its ``hello``) failed with ``error``."""
        self._failures[url] = error

    def answered(self, url: str, hello: dict[str, Any]) -> bool:
        """``url`` said ``hello``: True if the connection stays there (the round is
        over); False to close it and ask the next server."""
        role = hello.get("role", "leader")  # a server that says no role replicates nothing
        if self.want == "any" or role == "leader" or (self.want == "holder" and role == "follower"):
            self.current = url
            self.hint = None
            return True
        leader = hello.get("leader")
        if self.follow and isinstance(leader, str) and leader and leader not in self._asked:
            self._queue.appendleft(leader)  # the server it names comes next
        why = f"says {role or 'nothing'}"
        self._refusals[url] = f"{why}, leader {leader}" if leader else why
        return False

    def unfound(self) -> KilnError:
        """The error of a round that found no server: ConnectionLostError when none
        could be reached (the one error itself for a single server), UnavailableError
        when some answered but none would do (no leader for the database, say)."""
        if not self._refusals:
            failures = list(self._failures.items())
            if not failures:
                return ConnectionLostError(f"no server of {self.hosts} was asked")
            if len(failures) == 1:
                return failures[0][1]
            listed = "; ".join(_failure(url, error) for url, error in failures)
            return ConnectionLostError(f"cannot connect to any of the servers ({listed})")
        needed = "leads" if self.want == "leader" else "holds"
        said = "; ".join(f"{url} {why}" for url, why in self._refusals.items())
        failed = "".join(f"; {_failure(url, error)}" for url, error in self._failures.items())
        return UnavailableError(f"no server {needed} {self.database!r} now ({said}{failed})")

    # -- between rounds ---------------------------------------------------------------

    def named(self, leader: str | None) -> None:
        """A server named ``leader`` as the database's leader (a refusal): the next
        round asks it first, unless it is the server in use."""
        if leader and self.follow and leader != self.current:
            self.hint = leader

    def refused(self, leader: str | None) -> bool:
        """The server in use refused a write (ReadOnlyReplicaError naming ``leader``,
        or None): True if the connection should look for the leader again (the next
        round starts at ``leader``), False if the refusal is the caller's answer."""
        if self.want != "leader" or (len(self.hosts) < 2 and not leader):
            return False
        self.named(leader)
        self.current = None  # it no longer leads: not asked first again
        return True


def _failure(url: str, error: KilnError) -> str:
    """What went wrong with ``url``, naming it once."""
    return error.message if url in error.message else f"{url}: {error.message}"


def reads_hosts(
    hosts: Sequence[str], database: str, read_from: str, follow_leader: bool | None
) -> Hosts:
    """The hosts of a client's main connection (its reads, and its writes until a
    server refuses them): one server, whatever it says (the facade follows a single
    URL's redirects itself); of a list, the leader with ``read_from="leader"``, else the
    first that holds the database. ``follow_leader=False`` goes only where the list says."""
    if len(hosts) < 2:
        return Hosts(hosts, database, "any")
    want: Want = "leader" if read_from == "leader" else "holder"
    return Hosts(hosts, database, want, follow=follow_leader is not False)

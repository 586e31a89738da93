"""Choosing a server among several, without sockets: URL lists and the Hosts rounds."""

from __future__ import annotations

from typing import Any

import pytest

from kilndb.client.core import follows_leader, leader_for
from kilndb.client.endpoint import Endpoint, split_hosts
from kilndb.client.hosts import Hosts, reads_hosts
from kilndb.errors import (
    ConnectionLostError,
    InvalidArgumentError,
    ReadOnlyReplicaError,
    UnavailableError,
)

A, B, C = "tcp://a:1", "tcp://b:2", "tcp://c:3"
LEADER = {"ok": True, "role": "leader"}


def _follower(leader: str | None) -> dict[str, Any]:
    return {"ok": True, "role": "follower", "leader": leader}


def _elsewhere(leader: str) -> dict[str, Any]:
    return {"ok": True, "role": "elsewhere", "leader": leader}


def _lost(url: str) -> ConnectionLostError:
    return ConnectionLostError(f"cannot connect to {url}: refused")


def _round(hosts: Hosts, says: dict[str, dict[str, Any] | None]) -> list[str]:
    """Run one round against servers that say ``says[url]`` (None: unreachable);
    return the servers asked, in order (the last is the one chosen, if any)."""
    asked = []
    hosts.begin()
    while (url := hosts.next()) is not None:
        asked.append(url)
        hello = says.get(url)
        if hello is None:
            hosts.failed(url, _lost(url))
        elif hosts.answered(url, hello):
            return asked
    return asked


# -- URL lists ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("tcp://127.0.0.1:7400", ("tcp://127.0.0.1:7400",)),
        ("tcp://h1:1,h2:2,h3:3", ("tcp://h1:1", "tcp://h2:2", "tcp://h3:3")),
        ("tcp://h1:1,tcp://h2:2", ("tcp://h1:1", "tcp://h2:2")),
        ("tls://h1:1,h2:2", ("tls://h1:1", "tls://h2:2")),
        ("tcp://[::1]:1,[::1]:2", ("tcp://[::1]:1", "tcp://[::1]:2")),
        ("unix:///tmp/a,b.sock", ("unix:///tmp/a,b.sock",)),
    ],
)
def test_a_url_lists_its_servers_in_order(url: str, hosts: tuple[str, ...]) -> None:
    assert split_hosts(url) == hosts


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("tcp://h1:1,,h3:3", "server 2 of 'tcp://h1:1,,h3:3': empty"),
        ("tcp://h1:1,", "server 2 of 'tcp://h1:1,': empty"),
        ("tcp://:1", "':1' has no host"),
        ("tcp://h1:1,:2", "server 2 of 'tcp://h1:1,:2': ':2' has no host"),
        ("tcp://h1:1,h2", "server 2 of 'tcp://h1:1,h2': 'h2' has no port"),
        ("tcp://h1:x", "port 'x' is not a number from 1 to 65535"),
        ("tcp://h1:1,h2:70000", "port '70000' is not a number from 1 to 65535"),
        ("tcp://h1:0", "port '0' is not a number"),
        ("tcp://h1:1,tls://h2:2", "a list uses one scheme (tcp://), not tls://"),
        ("tcp://h1:1,unix:///s", "a list uses one scheme (tcp://), not unix://"),
        ("tcp://h1:1,h1:1", "a server is listed twice"),
        ("http://h1:1", "use tcp://HOST:PORT[,HOST:PORT…]"),
        ("h1:1,h2:2", "use tcp://HOST:PORT[,HOST:PORT…]"),
        ("unix://", "unix:///PATH needs a path"),
    ],
)
def test_a_bad_url_list_is_refused_saying_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        Endpoint.make(url)
    assert says in refused.value.message


def test_an_endpoint_of_a_list_reaches_each_server_with_its_token() -> None:
    endpoint = Endpoint.make("tcp://h1:1,h2:2", token="t")
    assert (endpoint.url, endpoint.hosts, endpoint.several) == (
        "tcp://h1:1",
        ("tcp://h1:1", "tcp://h2:2"),
        True,
    )
    other = endpoint.at("tcp://h9:9")
    assert (other.url, other.token, other.hosts) == ("tcp://h9:9", "t", endpoint.hosts)
    assert not Endpoint.make("tcp://h1:1").several


# -- rounds ---------------------------------------------------------------------------------


def test_hosts_are_tried_in_order_until_one_answers() -> None:
    hosts = Hosts((A, B, C), "default", "holder")
    assert _round(hosts, {A: None, B: _follower(C), C: LEADER}) == [A, B]
    assert hosts.current == B


def test_a_leader_search_goes_where_a_follower_points() -> None:
    hosts = Hosts((A, B, C), "default", "leader")
    assert _round(hosts, {A: _follower(C), B: LEADER, C: LEADER}) == [A, C]
    assert hosts.current == C


def test_a_leader_outside_the_list_is_followed_too() -> None:
    hosts = Hosts((A, B), "default", "leader")
    outside = "tcp://d:4"
    assert _round(hosts, {A: _elsewhere(outside), outside: LEADER}) == [A, outside]
    assert hosts.current == outside


def test_a_holder_search_skips_a_member_that_does_not_hold_the_database() -> None:
    hosts = Hosts((A, B), "default", "holder")
    assert _round(hosts, {A: _elsewhere(C), B: _follower(A), C: LEADER}) == [A, C]


def test_without_follow_only_the_list_is_asked() -> None:
    hosts = Hosts((A, B), "default", "leader", follow=False)
    assert _round(hosts, {A: _follower(C), B: LEADER, C: LEADER}) == [A, B]


def test_a_round_asks_each_server_once_even_when_followers_point_in_a_circle() -> None:
    hosts = Hosts((A, B), "default", "leader")
    assert _round(hosts, {A: _follower(B), B: _follower(A)}) == [A, B]
    error = hosts.unfound()
    assert isinstance(error, UnavailableError)
    assert "no server leads 'default' now" in error.message
    assert f"{A} says follower, leader {B}" in error.message


def test_a_round_where_nothing_answers_is_a_lost_connection_naming_every_server() -> None:
    hosts = Hosts((A, B), "default", "holder")
    assert _round(hosts, {}) == [A, B]
    error = hosts.unfound()
    assert isinstance(error, ConnectionLostError)
    assert A in error.message and B in error.message


def test_a_single_server_that_cannot_be_reached_is_its_own_error() -> None:
    hosts = Hosts((A,), "default", "any")
    _round(hosts, {})
    error = hosts.unfound()
    assert isinstance(error, ConnectionLostError) and error.message == _lost(A).message


def test_a_server_that_says_no_role_holds_and_leads_its_database() -> None:
    hosts = Hosts((A, B), "default", "leader")
    assert _round(hosts, {A: None, B: {"ok": True}}) == [A, B]


def test_a_single_server_is_taken_whatever_it_says() -> None:
    hosts = Hosts((A,), "default", "any")
    assert _round(hosts, {A: _elsewhere(B)}) == [A]


def test_the_next_round_starts_where_the_connection_was() -> None:
    hosts = Hosts((A, B, C), "default", "holder")
    _round(hosts, {A: None, B: None, C: _follower(A)})
    assert hosts.current == C
    assert _round(hosts, {A: _follower(B), C: None}) == [C, A]


def test_a_refusal_sends_the_next_round_to_the_leader_it_names() -> None:
    hosts = Hosts((A, B, C), "default", "leader")
    _round(hosts, {A: LEADER})
    assert hosts.refused(C)  # A was demoted; it says C leads now
    assert hosts.current is None
    assert _round(hosts, {A: _follower(C), C: LEADER}) == [C]
    assert hosts.hint is None


def test_a_refusal_naming_no_leader_searches_the_list_without_the_old_server_first() -> None:
    hosts = Hosts((A, B, C), "default", "leader")
    _round(hosts, {A: None, B: LEADER})
    assert hosts.refused(None)
    assert _round(hosts, {A: _follower(None), B: _follower(None), C: LEADER}) == [A, B, C]


def test_a_refusal_is_the_answer_unless_the_connection_needs_the_leader() -> None:
    assert not Hosts((A, B), "default", "holder").refused(C)
    assert not Hosts((A,), "default", "any").refused(C)
    assert not Hosts((A,), "default", "leader").refused(None)


def test_what_a_client_of_a_list_wants_from_its_main_connection() -> None:
    assert reads_hosts((A,), "db", "leader", None).want == "any"
    assert reads_hosts((A, B), "db", "any", None).want == "holder"
    leader = reads_hosts((A, B), "db", "leader", False)
    assert (leader.want, leader.follow) == ("leader", False)


def test_a_client_of_a_list_sends_refused_writes_to_the_leader_by_default() -> None:
    hello = {"ok": True, "role": "follower", "leader": A}
    assert follows_leader(hello, None, several=True)
    assert not follows_leader(hello, None)
    assert not follows_leader(hello, False, several=True)
    assert leader_for(ReadOnlyReplicaError(None), True, several=True) == ""
    assert leader_for(ReadOnlyReplicaError(None), True) is None
    assert leader_for(ReadOnlyReplicaError(B), True, several=True) == B
    assert leader_for(ReadOnlyReplicaError(B), False, several=True) is None


def test_hosts_refuse_nonsense() -> None:
    with pytest.raises(InvalidArgumentError):
        Hosts((), "default", "any")
    with pytest.raises(InvalidArgumentError):
        Hosts((A,), "default", "best")  # type: ignore[arg-type]

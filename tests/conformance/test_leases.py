"""Conformance: leases with fencing tokens, embedded and over the network."""

from __future__ import annotations

import time

import pytest

import kilndb
from kilndb import Record, Write
from tests.conformance.conftest import Backend


def test_acquire_hold_renew_release_and_tokens_that_only_grow(db: kilndb.Database) -> None:
    first = db.acquire_lease("job", "w1", 30)
    assert (first.key, first.holder, first.token) == ("job", "w1", 1)
    assert first.expires_at > time.time() + 25
    with pytest.raises(kilndb.LeaseHeldError) as held:
        db.acquire_lease("job", "w2", 30)
    assert (held.value.holder, held.value.expires_at) == ("w1", first.expires_at)
    again = db.acquire_lease("job", "w1", 60)  # the holder extends: same token
    assert again.token == 1 and again.expires_at > first.expires_at
    renewed = db.renew_lease(again, 5)
    assert renewed.token == 1 and renewed.expires_at < again.expires_at
    assert db.leases() == [renewed]
    assert db.release_lease(renewed) is True
    assert db.release_lease(renewed) is False  # not held any more
    assert db.leases() == []
    second = db.acquire_lease("job", "w2", 30)
    assert second.token == 2
    with pytest.raises(kilndb.LeaseLostError) as lost:
        db.renew_lease(renewed)
    assert (lost.value.token, lost.value.current_token) == (1, 2)


def test_an_expired_lease_frees_itself(db: kilndb.Database) -> None:
    short = db.acquire_lease("job", "w1", 0.2)
    time.sleep(0.3)
    with pytest.raises(kilndb.LeaseLostError, match="expired"):
        db.renew_lease(short)
    taken = db.acquire_lease("job", "w2", 30)
    assert taken.token == 2


def test_ttl_is_capped_at_a_day_and_arguments_are_checked(db: kilndb.Database) -> None:
    lease = db.acquire_lease("job", "w1", 10**9)
    assert lease.expires_at <= time.time() + 24 * 3600 + 1
    for bad in (0, -1, "10", True):
        with pytest.raises(kilndb.InvalidArgumentError):
            db.acquire_lease("other", "w1", bad)  # type: ignore[arg-type]
    with pytest.raises(kilndb.InvalidArgumentError):
        db.acquire_lease("other", "", 10)
    with pytest.raises(kilndb.InvalidArgumentError, match="reserved"):
        db.store("kiln.leases")
    assert db.stores() == []  # the lease store is KilnDB's own


def test_fenced_writes_are_refused_once_a_newer_lease_exists(db: kilndb.Database) -> None:
    old = db.acquire_lease("owner", "w1", 0.2)
    store = db.store("work")
    store.write("k", 1, fence=old)
    db.write_many([Write("work", "k", 2)], fence=old)
    db.space("work").segment("s").produce([Record(1)], fence=old)
    time.sleep(0.3)
    store.write("k", 3, fence=old)  # expired, but nobody took over: still the newest
    new = db.acquire_lease("owner", "w2", 30)
    for call in (
        lambda: store.write("k", 4, fence=old),
        lambda: store.delete("k", fence=old),
        lambda: db.write_many([Write("work", "k", 5)], fence=old),
        lambda: db.space("work").segment("s").produce([Record(2)], fence=old),
    ):
        with pytest.raises(kilndb.LeaseLostError) as lost:
            call()
        assert (lost.value.token, lost.value.current_token) == (1, 2)
    assert [f.value for f in store.history("k")] == [1, 2, 3]
    assert store.write("k", 6, fence=new).value == 6
    bogus = kilndb.Lease("owner", "w3", 99, time.time() + 10)
    with pytest.raises(kilndb.LeaseLostError, match="was ever granted"):
        store.write("k", 7, fence=bogus)
    with pytest.raises(kilndb.InvalidArgumentError):
        store.write("k", 8, fence="owner")


def test_tokens_keep_growing_across_a_restart(backend: Backend) -> None:
    db = backend.open()
    for holder in ("a", "b", "c"):
        db.release_lease(db.acquire_lease("job", holder, 30))
    db = backend.reopen(db)
    assert db.acquire_lease("job", "d", 30).token == 4


def test_the_lease_keeper_renews_and_notices_a_loss(db: kilndb.Database) -> None:
    with db.lease("job", holder="w1", ttl=0.4) as kept:
        time.sleep(0.9)  # two renewals
        assert not kept.lost
        assert db.store("work").write("k", 1, fence=kept).value == 1
        # Someone frees it behind the keeper's back and takes it over.
        db.release_lease(kept.lease)
        taken = db.acquire_lease("job", "w2", 30)
        deadline = time.time() + 5
        while not kept.lost and time.time() < deadline:
            time.sleep(0.05)
        assert kept.lost and kept.lost_reason
        with pytest.raises(kilndb.LeaseLostError):
            db.store("work").write("k", 2, fence=kept)
    assert db.leases() == [taken]  # leaving did not release the other holder's lease
    with db.lease("other", holder="w1", ttl=30) as kept:
        assert db.leases()[-1] == kept.lease
    assert [lease.key for lease in db.leases()] == ["job"]  # released on exit

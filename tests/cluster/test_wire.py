"""The wire codec: round trips, exact sizes, and every reason a packet is refused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kilndb.cluster import messages as m
from kilndb.cluster.wire import (
    HEADER_BYTES,
    MAC_BYTES,
    MAX_VALUE_DEPTH,
    REASONS,
    WIRE_VERSION,
    Codec,
    ReplayGuard,
    WireError,
    check_value,
    decode_payload,
    encode_payload,
    packet_size,
    update_size,
)

names = st.text(min_size=1, max_size=12)
counts = st.integers(min_value=0, max_value=2**53 - 1)
addresses = st.builds(lambda h, p: f"{h}:{p}", st.ip_addresses(v=4).map(str), st.integers(0, 65535))
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
alive = st.builds(m.Alive, names, addresses, counts)
digests = st.lists(st.builds(m.Digest, names, counts, counts), max_size=4).map(tuple)
deltas = st.builds(
    m.KeyDelta, names, counts, st.text(max_size=12), counts, json_values, st.booleans()
)
delta_lists = st.lists(deltas, max_size=4).map(tuple)
records = st.builds(
    m.MemberRecord, names, addresses, counts, st.sampled_from([s.value for s in m.MemberState])
)
updates = st.one_of(
    alive,
    st.builds(m.Suspect, names, counts, names),
    st.builds(m.Dead, names, counts, names),
    st.builds(m.Left, names, counts),
    deltas,
)
bodies = st.one_of(
    st.builds(m.Ping, counts, names),
    st.builds(m.PingReq, counts, names, addresses),
    st.builds(m.Ack, counts),
    st.builds(m.Nack, counts),
    st.just(m.Rumors()),
    st.builds(m.Hello, alive, digests),
    st.builds(m.Goodbye, names, counts),
    st.builds(
        m.PushPull,
        st.lists(records, max_size=4).map(tuple),
        digests,
        delta_lists,
        st.booleans(),
        st.booleans(),
    ),
    st.builds(m.Deltas, delta_lists, digests),
)
packets = st.builds(m.Packet, names, bodies, st.lists(updates, max_size=6).map(tuple), counts)


@given(packets)
def test_every_packet_round_trips_through_the_payload(packet: m.Packet) -> None:
    assert decode_payload(encode_payload(packet)) == packet


@given(packets, st.sampled_from(["udp", "tcp"]))
def test_sealed_packets_open_to_the_same_packet_with_the_computed_size(
    packet: m.Packet, channel: m.Channel
) -> None:
    sender, receiver = (
        Codec(b"key", 7, max_udp_bytes=65_000),
        Codec(b"key", 9, max_udp_bytes=65_000),
    )
    data = sender.seal(packet, channel)
    assert receiver.open(data, channel) == packet
    sizes = [update_size(u) for u in packet.updates]
    assert len(data) == packet_size(packet.sender, packet.incarnation, packet.body, sizes)


PING = m.Packet("n1", m.Ping(1, "n2"), (m.Alive("n1", "127.0.0.1:1", 0),))


def test_garbage_is_malformed() -> None:
    codec = Codec(None, 1)
    for data in (b"", b"x" * 10, bytes([WIRE_VERSION]) + b"\x00" * 60):
        with pytest.raises(WireError) as info:
            codec.open(data, "udp")
        assert info.value.reason in ("malformed", "bad_mac")
    assert isinstance(WireError("malformed"), Exception)


def test_a_valid_mac_over_a_non_packet_is_malformed() -> None:
    codec = Codec(b"k", 1)
    data = codec.seal(PING, "udp")
    import hashlib
    import hmac

    head = data[:HEADER_BYTES] + b'{"not": "a packet"}'
    forged = head + hmac.new(b"k", head, hashlib.sha256).digest()
    with pytest.raises(WireError) as info:
        codec.open(forged, "udp")
    assert info.value.reason == "malformed"


def test_wrong_key_and_missing_key_are_bad_mac() -> None:
    data = Codec(b"right", 1).seal(PING, "udp")
    for key in (b"wrong", None):
        with pytest.raises(WireError) as info:
            Codec(key, 2).open(data, "udp")
        assert info.value.reason == "bad_mac"


def test_flipped_byte_is_bad_mac() -> None:
    data = bytearray(Codec(b"k", 1).seal(PING, "udp"))
    data[HEADER_BYTES + 3] ^= 0x20
    with pytest.raises(WireError) as info:
        Codec(b"k", 2).open(bytes(data), "udp")
    assert info.value.reason == "bad_mac"


def test_other_version_is_refused() -> None:
    data = bytearray(Codec(b"k", 1).seal(PING, "udp"))
    data[0] = WIRE_VERSION + 1
    with pytest.raises(WireError) as info:
        Codec(b"k", 2).open(bytes(data), "udp")
    assert info.value.reason == "version"


def test_oversize_is_refused_both_ways() -> None:
    big = m.Packet("n1", m.Rumors(), tuple(m.Left(f"member-{i}", i) for i in range(200)))
    with pytest.raises(WireError) as info:
        Codec(b"k", 1).seal(big, "udp")
    assert info.value.reason == "oversize"
    data = Codec(b"k", 1, max_udp_bytes=65_000).seal(big, "udp")
    assert len(data) > 1400
    with pytest.raises(WireError) as info:
        Codec(b"k", 2).open(data, "udp")
    assert info.value.reason == "oversize"
    frame = Codec(b"k", 1).seal(big, "tcp")
    assert Codec(b"k", 2).open(frame, "tcp") == big  # TCP allows 4 MiB


def test_a_replayed_packet_is_refused_and_fresh_ones_still_pass() -> None:
    sender, receiver = Codec(b"k", 1), Codec(b"k", 2)
    first, second = sender.seal(PING, "udp"), sender.seal(PING, "udp")
    assert receiver.open(second, "udp") == PING
    assert receiver.open(first, "udp") == PING  # late but inside the window: fine
    for data in (first, second):
        with pytest.raises(WireError) as info:
            receiver.open(data, "udp")
        assert info.value.reason == "replay"
    assert receiver.open(sender.seal(PING, "udp"), "udp") == PING
    assert receiver.open(sender.seal(PING, "tcp"), "tcp") == PING  # channels count apart


def test_replay_window_edges_and_restarts() -> None:
    guard = ReplayGuard(window=8)
    assert guard.accept("a", "udp", 5, 100)
    assert not guard.accept("a", "udp", 5, 92)  # fell out of the window
    assert guard.accept("a", "udp", 5, 93)
    assert not guard.accept("a", "udp", 4, 1000)  # an older boot
    assert guard.accept("a", "udp", 6, 1)  # a restart starts over
    assert not guard.accept("a", "udp", 6, 1)
    assert guard.accept("a", "udp", 6, 50)  # a jump past the window resets it
    assert guard.accept("a", "udp", 6, 49)


def test_replay_guard_forgets_the_oldest_senders_beyond_its_cap() -> None:
    guard = ReplayGuard(max_senders=2)
    for sender in ("a", "b", "c"):
        assert guard.accept(sender, "udp", 1, 1)
    assert guard.accept("a", "udp", 1, 1)  # "a" was forgotten
    assert not guard.accept("c", "udp", 1, 1)


def test_sizes_of_the_parts_add_up() -> None:
    updates = (m.Alive("n1", "127.0.0.1:1", 3), m.Left("n2", 1))
    packet = m.Packet("n9", m.Ack(4), updates, 2)
    data = Codec(None, 1).seal(packet, "udp")
    assert len(data) == packet_size("n9", 2, m.Ack(4), [update_size(u) for u in updates])
    assert len(data) > HEADER_BYTES + MAC_BYTES


def _forge(key: bytes, head: bytes, payload: bytes) -> bytes:
    import hashlib
    import hmac

    data = head + payload
    return data + hmac.new(key, data, hashlib.sha256).digest()


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_a_datagram_replayed_as_a_tcp_frame_is_refused_and_spends_nothing() -> None:
    sender, receiver = Codec(b"k", 100), Codec(b"k", 1)
    for _ in range(3000):
        datagram = sender.seal(PING, "udp")
    assert receiver.open(datagram, "udp") == PING
    with pytest.raises(WireError) as info:
        receiver.open(datagram, "tcp")
    assert info.value.reason == "channel" and "channel" in REASONS
    # The genuine TCP frame (seq 1 on its channel) is still taken: the TCP window did
    # not move to seq 3000.
    goodbye = m.Packet("n1", m.Goodbye("n1", 0))
    assert receiver.open(sender.seal(goodbye, "tcp"), "tcp") == goodbye
    frame = sender.seal(goodbye, "tcp")
    with pytest.raises(WireError) as info:
        receiver.open(frame, "udp")
    assert info.value.reason == "channel"


def test_the_channel_byte_is_under_the_mac() -> None:
    data = bytearray(Codec(b"k", 1).seal(PING, "udp"))
    assert data[1] == 1  # udp
    data[1] = 2  # claim tcp
    with pytest.raises(WireError) as info:
        Codec(b"k", 2).open(bytes(data), "tcp")
    assert info.value.reason == "bad_mac"


@pytest.mark.parametrize(
    "payload",
    [
        b'["n1",9007199254740992,[1,1,"n2"],[]]',  # incarnation 2**53
        b'["n1",0,[1,18446744073709551615,"n2"],[]]',  # seq u64 max
        b'["n1",0,[5],[[21,"x",9007199254740992,"y"]]]',  # Suspect incarnation
        b'["n1",0,[5],[[24,"x",1,"k",9007199254740993,1,false]]]',  # KeyDelta version
        b'["n1",0,[9,[],[["x",9007199254740992,0]]]]',  # Digest generation
        b'["n1",0,[5],[[24,"x",1,"k",1,18446744073709551615,false]]]',  # value: big int
        b'["n1",0,[5],[[24,"x",1,"k",1,' + b"[" * 300 + b"]" * 300 + b",false]]]",
    ],
)
def test_values_that_decode_but_cannot_be_encoded_again_are_malformed(payload: bytes) -> None:
    with pytest.raises(WireError) as info:
        decode_payload(payload)
    assert info.value.reason == "malformed"
    receiver = Codec(b"k", 2)
    head = bytes([WIRE_VERSION, 1]) + (1).to_bytes(8, "big") + (1).to_bytes(8, "big")
    with pytest.raises(WireError) as info:
        receiver.open(_forge(b"k", head, payload), "udp")
    assert info.value.reason == "malformed"


def test_a_value_at_the_deepest_allowed_nesting_travels_in_every_position() -> None:
    value = _nested(MAX_VALUE_DEPTH)
    check_value(value)
    delta = m.KeyDelta("n1", 1, "k", 1, value, False)
    packets = [
        m.Packet("n1", m.Rumors(), (delta,)),
        m.Packet("n1", m.Deltas((delta,), ())),
        m.Packet("n1", m.PushPull((), (), (delta,), True, False)),
    ]
    sender, receiver = Codec(b"k", 1), Codec(b"k", 2)
    for packet in packets:
        assert receiver.open(sender.seal(packet, "tcp"), "tcp") == packet
        # what was taken in can be passed on, in any body
        for again in packets:
            sender.seal(again, "tcp")


@pytest.mark.parametrize(
    "value",
    [
        _nested(MAX_VALUE_DEPTH + 1),
        2**53,
        -(2**53),
        {"n": 2**63},
        [1, 2**64 - 1],
        float("nan"),
        {"a": [1.0, float("inf")]},
        (float("-inf"),),
    ],
)
def test_check_value_refuses_what_a_packet_could_not_carry(value: Any) -> None:
    with pytest.raises(TypeError):
        check_value(value)

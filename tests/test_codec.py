"""Frame codec: pinned vectors, round trips, incremental decoding and bad input."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kilndb.codec import FrameDecoder, decode_frame, encode_frame
from kilndb.errors import FrameTooLargeError, ProtocolError

PING = b'{"op":"ping"}'
# [u32 BE 13]["{"op":"ping"}"][u32 BE CRC-32 0xf369e448], byte for byte as Igniter frames it.
PING_FRAME = bytes.fromhex("0000000d") + PING + bytes.fromhex("f369e448")

bodies = st.lists(st.binary(min_size=1, max_size=300), max_size=20)


def test_pinned_ping_frame() -> None:
    assert encode_frame(PING) == PING_FRAME
    assert len(PING_FRAME) == 4 + 13 + 4
    assert struct.unpack(">I", PING_FRAME[-4:])[0] == zlib.crc32(PING) == 0xF369E448


def test_decode_pinned_frame() -> None:
    assert decode_frame(PING_FRAME) == PING
    decoder = FrameDecoder()
    decoder.feed(PING_FRAME)
    assert decoder.next_frame() == PING
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


@given(st.binary(max_size=2000))
def test_round_trip(body: bytes) -> None:
    assert decode_frame(encode_frame(body)) == body


@given(bodies, st.data())
def test_any_split_yields_the_same_frames(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(b) for b in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = FrameDecoder()
    received: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(stream[start:cut])
        start = cut
        received.extend(decoder.frames())
    assert received == frames
    assert decoder.buffered == 0


@given(bodies)
def test_byte_at_a_time(frames: list[bytes]) -> None:
    stream = b"".join(encode_frame(b) for b in frames)
    decoder = FrameDecoder()
    received: list[bytes] = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        received.extend(decoder.frames())
    assert received == frames


def test_short_input_waits_for_more() -> None:
    decoder = FrameDecoder()
    decoder.feed(PING_FRAME[:3])
    assert decoder.next_frame() is None
    decoder.feed(PING_FRAME[3:10])
    assert decoder.next_frame() is None
    decoder.feed(PING_FRAME[10:])
    assert decoder.next_frame() == PING


def test_oversize_frame_is_refused_before_its_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    decoder.feed(struct.pack(">I", 101))
    with pytest.raises(FrameTooLargeError) as info:
        decoder.next_frame()
    assert info.value.size == 101
    assert info.value.limit == 100
    assert info.value.error_code == "frame_too_large"
    # The stream has lost its framing: the decoder stays failed.
    with pytest.raises(FrameTooLargeError):
        decoder.feed(PING_FRAME)


def test_a_skipping_decoder_refuses_an_oversize_frame_once_and_goes_on() -> None:
    decoder = FrameDecoder(max_frame_bytes=100, skip_oversize=True)
    assert decoder.skip_oversize
    big = encode_frame(b"x" * 500)
    decoder.feed(PING_FRAME + big[:50])
    assert decoder.frames() == [PING]  # the refusal after a good frame comes next
    with pytest.raises(FrameTooLargeError) as info:
        decoder.frames()
    assert (info.value.size, info.value.limit) == (500, 100)
    assert decoder.buffered == 0 and decoder.skipping == 500 + 4 - 46
    decoder.feed(big[50:] + PING_FRAME)  # the rest is dropped as it arrives
    assert decoder.skipping == 0
    assert decoder.frames() == [PING]
    assert decoder.next_frame() is None


def test_frame_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_bytes=13)
    decoder.feed(PING_FRAME)
    assert decoder.next_frame() == PING


@given(st.integers(0, len(PING_FRAME) - 1), st.integers(1, 255))
def test_any_flipped_byte_is_detected(index: int, mask: int) -> None:
    damaged = bytearray(PING_FRAME)
    damaged[index] ^= mask
    decoder = FrameDecoder(max_frame_bytes=1 << 20)
    decoder.feed(bytes(damaged))
    try:
        frame = decoder.next_frame()
    except ProtocolError:
        return
    # A damaged length field may just make the decoder wait for more bytes.
    assert frame is None
    assert index < 4


def test_crc_mismatch_is_a_protocol_error() -> None:
    damaged = PING_FRAME[:-1] + bytes([PING_FRAME[-1] ^ 1])
    decoder = FrameDecoder()
    decoder.feed(damaged)
    with pytest.raises(ProtocolError, match="CRC"):
        decoder.next_frame()
    with pytest.raises(ProtocolError):
        decode_frame(damaged)


@pytest.mark.parametrize(
    "frame",
    [b"", b"\x00\x00\x00", PING_FRAME[:-1], PING_FRAME + b"x"],
    ids=["empty", "short-header", "short-crc", "trailing"],
)
def test_decode_frame_rejects_malformed(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_frame(frame)


def test_invalid_limit() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_bytes=0)

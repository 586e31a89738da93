"""The native frame codec against the pure-Python reference (tests/core/reference.py)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilndb import _core
from kilndb.errors import FrameTooLargeError, KilnError, ProtocolError, StorageError
from kilndb.storage.datafile import FrameReader
from tests.core import reference

bodies = st.lists(st.binary(min_size=1, max_size=200), max_size=15)


@given(st.binary(max_size=500))
def test_encode_matches_the_reference(body: bytes) -> None:
    assert _core.encode_frame(body) == reference.encode_frame(body)
    assert _core.crc32(body) == zlib.crc32(body)


@given(bodies)
def test_encode_frames_is_the_concatenation(items: list[bytes]) -> None:
    assert _core.encode_frames(items) == b"".join(map(reference.encode_frame, items))


@given(st.binary(max_size=600), st.data())
def test_decoder_agrees_with_the_reference_on_any_bytes_and_any_split(
    data: bytes, draw: st.DataObject
) -> None:
    limit = draw.draw(st.integers(1, 300))
    expected, failure = reference.decode_stream(data, limit)
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=8)))
    decoder = _core.FrameDecoder(limit)
    got: list[bytes] = []
    error: Exception | None = None
    start = 0
    try:
        for cut in [*cuts, len(data)]:
            decoder.feed(data[start:cut])
            start = cut
            while (body := decoder.next_frame()) is not None:
                got.append(body)
    except (FrameTooLargeError, ProtocolError) as exc:
        error = exc
    assert got == expected
    if failure == "too-large":
        assert isinstance(error, FrameTooLargeError)
    elif failure == "crc":
        assert type(error) is ProtocolError
    else:
        assert error is None


@given(bodies, st.data())
def test_decoder_frames_of_valid_streams(items: list[bytes], draw: st.DataObject) -> None:
    stream = b"".join(map(reference.encode_frame, items))
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = _core.FrameDecoder()
    got: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(stream[start:cut])
        start = cut
        got.extend(decoder.frames())
    assert got == items
    assert decoder.buffered == 0


def test_decoder_stays_failed() -> None:
    decoder = _core.FrameDecoder(4)
    decoder.feed(reference.encode_frame(b"hello"))
    with pytest.raises(FrameTooLargeError) as info:
        decoder.next_frame()
    assert (info.value.size, info.value.limit) == (5, 4)
    with pytest.raises(FrameTooLargeError):
        decoder.feed(b"more")
    with pytest.raises(ValueError):
        _core.FrameDecoder(0)


def _write(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "frames.log"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@settings(max_examples=60)
@given(bodies, st.binary(max_size=40), st.data())
def test_file_reader_agrees_with_the_reference(
    tmp_path_factory: pytest.TempPathFactory, items: list[bytes], tail: bytes, draw: st.DataObject
) -> None:
    data = b"".join(map(reference.encode_frame, items)) + tail
    if draw.draw(st.booleans()) and data:
        at = draw.draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]
    end = draw.draw(st.integers(0, len(data) + 10))
    fd = _write(tmp_path_factory.mktemp("r"), data)
    try:
        reader = FrameReader(fd, 0, end)
        got = list(reader)
        expected, stop_offset, reason = reference.read_frames(data, 0, end)
        assert got == expected
        assert (reader.stop_offset, reader.stop_reason) == (stop_offset, reason)
    finally:
        os.close(fd)


def test_file_reader_crosses_read_chunks(tmp_path: Path) -> None:
    # Frames larger than one read chunk (1 MiB) and many small ones around them.
    items = [b"a" * 10, b"b" * (3 << 20), *(bytes([i % 251 + 1]) * 100 for i in range(30000))]
    data = b"".join(map(reference.encode_frame, items)) + bytes(64)
    fd = _write(tmp_path, data)
    try:
        reader = FrameReader(fd, 0, len(data))
        assert [body for _, body in reader] == items
        assert reader.stop_reason == "end-marker"
        batches = list(FrameReader(fd, 0, len(data)).body_batches())
        assert len(batches) > 1 and [b for batch in batches for b in batch] == items
    finally:
        os.close(fd)


def test_a_failed_read_is_a_storage_error(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # pread fails with EISDIR
    try:
        with pytest.raises(StorageError, match=r"could not read frames\.log"):
            list(FrameReader(fd, 0, 9, "frames.log"))
    finally:
        os.close(fd)


def test_a_panic_in_the_core_is_a_kiln_error() -> None:
    with pytest.raises(KilnError, match=r"internal error in kilndb\._core"):
        _core._panic_for_tests("boom")
    # The process and the module are still fine afterwards.
    assert _core.encode_frame(b"x") == reference.encode_frame(b"x")

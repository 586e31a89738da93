"""A segment's produce and consume for transports (``Segment.produce_wire`` and
``consume_wire``, the core's streams functions) give byte for byte what the general
path gives — ``produce``/``consume_facts`` and the wire forms of ``kilndb.streams`` —
and refuse exactly what it refuses, with the same error, writing nothing."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kilndb
from kilndb import _core
from kilndb.errors import ConflictError, InvalidArgumentError, KilnError, LeaseLostError
from kilndb.streams import (
    Entry,
    Record,
    entry_from_fact,
    entry_from_produced,
    entry_from_wire,
    fact_to_entry_wire,
    produced_to_wire,
    record_from_wire,
    record_to_wire,
)
from tests.strategies import json_values

metadata = st.none() | st.dictionaries(
    st.text(max_size=6).filter(lambda k: not k.startswith("kiln.")), st.text(max_size=6)
)

records = st.builds(Record, json_values | st.binary(max_size=24), metadata)


def wire_of(record: Record) -> dict[str, Any]:
    """A record as a produce request carries it, decoded as the server decodes it."""
    wire: dict[str, Any] = orjson.loads(orjson.dumps(record_to_wire(record)))
    return wire


def general_produced(db: kilndb.Database, space: str, segment: str, count: int) -> bytes:
    """The ``produced`` array the general path writes for the last ``count`` entries."""
    facts = db.store(space).history(segment)[-count:] if count else []
    return orjson.dumps([produced_to_wire(entry_from_fact(fact)) for fact in facts])


def general_entries(segment: Any, *args: Any) -> bytes:
    return orjson.dumps([fact_to_entry_wire(fact) for fact in segment.consume_facts(*args)])


def stored(db: kilndb.Database, space: str, segment: str) -> list[dict[str, Any]]:
    """The facts of a segment without what differs between databases (time, ids)."""
    return [
        {k: v for k, v in fact.to_dict().items() if k not in ("id", "transaction_time")}
        for fact in db.store(space).history(segment)
    ]


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(records, max_size=5), min_size=1, max_size=4))
def test_produce_wire_writes_and_answers_as_produce_does(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[Record]]
) -> None:
    fast = kilndb.open(tmp_path_factory.mktemp("fast"))
    general = kilndb.open(tmp_path_factory.mktemp("general"))
    for batch in batches:
        wires = [wire_of(record) for record in batch]
        produced = fast.space("sp").segment("seg").produce_wire(wires)
        assert produced == general_produced(fast, "sp", "seg", len(batch))
        general.space("sp").segment("seg").produce([record_from_wire(w) for w in wires])
    # The same facts: values, hashes, metadata (with the bytes marker), sequences.
    assert stored(fast, "sp", "seg") == stored(general, "sp", "seg")
    fast.close()
    general.close()


@settings(max_examples=40, deadline=None)
@given(
    batch=st.lists(records, min_size=1, max_size=8),
    window=st.tuples(
        st.integers(0, 9), st.none() | st.integers(0, 9), st.none() | st.integers(0, 9)
    ),
)
def test_consume_wire_is_each_entrys_wire_form(
    tmp_path_factory: pytest.TempPathFactory,
    batch: list[Record],
    window: tuple[int, int | None, int | None],
) -> None:
    db = kilndb.open(tmp_path_factory.mktemp("consume"))
    segment = db.space("sp").segment("seg")
    segment.produce(batch)
    min_seq, max_seq, limit = window
    args = (min_seq, max_seq, None, None, limit)
    assert segment.consume_wire(*args) == general_entries(segment, *args)
    db.close()


def test_consume_wire_shows_every_kind_of_fact_as_the_general_path(tmp_path: Path) -> None:
    db = kilndb.open(tmp_path)
    segment = db.space("sp").segment("seg")
    segment.produce([Record(b"\x00raw"), Record({"a": 1}, {"m": "v"}), Record("text")])
    store = db.store("sp")
    # Written by plain writes: a marker over a value that is not base64, a marker over
    # base64, a tombstone, every option set.
    store.write("seg", "not base64!", metadata={"kiln.payload": "base64"})
    store.write("seg", "QUJD", metadata={"kiln.payload": "base64", "x": "y"})
    store.delete("seg")
    store.write(
        "seg",
        [1.5, "\u2028", {"z": None}],
        valid_time=3.25,
        causation="c-1",
        producer={"p": 1},
        derivation=[1, 2],
        schema_version=3,
        id="my-id",
    )
    for args in [(1, None, None, None, None), (2, 6, None, None, 3), (1, None, 0.0, 2e12, None)]:
        assert segment.consume_wire(*args) == general_entries(segment, *args)
    entries = orjson.loads(segment.consume_wire())
    assert entries[0]["payload_base64"] == base64.b64encode(b"\x00raw").decode()
    assert entries[3]["payload"] == "not base64!"
    assert entries[4]["payload_base64"] == "QUJD"
    db.close()


def test_consume_wire_checks_as_consume_does(tmp_path: Path) -> None:
    db = kilndb.open(tmp_path)
    segment = db.space("sp").segment("seg")
    bad: list[tuple[Any, ...]] = [(-1,), (1, -2), (1, None, "x"), (1, None, None, None, -1)]
    for args in [*bad, ("1",)]:
        with pytest.raises(InvalidArgumentError) as general:
            segment.consume_facts(*args)
        with pytest.raises(InvalidArgumentError) as fast:
            segment.consume_wire(*args)
        assert str(fast.value) == str(general.value)
    assert segment.consume_wire() == b"[]"
    db.close()
    with pytest.raises(KilnError):
        segment.consume_wire()


def refusal(call: Any) -> tuple[type[BaseException], str]:
    with pytest.raises(KilnError) as caught:
        call()
    return type(caught.value), str(caught.value)


GOOD = {"metadata": None, "payload": {"ok": 1}}


@pytest.mark.parametrize(
    "bad",
    [
        {"metadata": None},  # no payload
        {"metadata": None, "payload_base64": "not base64"},
        {"metadata": None, "payload_base64": 12},
        {"metadata": {"kiln.payload": "x"}, "payload": 1},  # reserved
        {"metadata": "m", "payload": 1},
        {"metadata": {"a": 1}, "payload": 1},
        {"metadata": {"a": "b"}, "payload_base64": "QQ="},
    ],
)
def test_a_bad_record_in_the_middle_refuses_the_batch_as_produce_does(
    tmp_path: Path, bad: dict[str, Any]
) -> None:
    db = kilndb.open(tmp_path)
    segment = db.space("sp").segment("seg")
    batch = [GOOD, GOOD, bad, GOOD]

    def general() -> Any:
        return segment.produce([record_from_wire(w) for w in batch])

    assert refusal(lambda: segment.produce_wire(batch)) == refusal(general)
    assert segment.status()["last_sequence"] is None  # nothing written
    db.close()


def test_base64_not_in_canonical_form_is_stored_as_produce_stores_it(tmp_path: Path) -> None:
    db = kilndb.open(tmp_path)
    segment = db.space("sp").segment("seg")
    # Accepted by b64decode(validate=True), but not what b64encode writes: normalised.
    assert segment.produce_wire([{"metadata": None, "payload_base64": "QR=="}]) == (
        general_produced(db, "sp", "seg", 1)
    )
    assert segment.peek() == entry_from_fact(db.store("sp").history("seg")[0])
    assert db.store("sp").read("seg").value == "QQ=="  # type: ignore[union-attr]
    db.close()


def test_produce_wire_conflicts_fences_and_limits_as_produce_does(tmp_path: Path) -> None:
    db = kilndb.open(tmp_path, max_record_bytes=2048)
    segment = db.space("sp").segment("seg")
    assert segment.produce_wire([GOOD, GOOD], expected_seq=0) == general_produced(
        db, "sp", "seg", 2
    )
    with pytest.raises(ConflictError) as conflict:
        segment.produce_wire([GOOD], expected_seq=1)
    assert (conflict.value.expected, conflict.value.actual) == (1, 2)
    assert "segment sp/seg: expected sequence 1, actual sequence 2" in str(conflict.value)
    with pytest.raises(ConflictError) as general:
        segment.produce([Record({"ok": 1})], expected_seq=1)
    assert str(conflict.value) == str(general.value)
    for expected in (-1, "2", True):
        assert refusal(lambda e=expected: segment.produce_wire([GOOD], expected_seq=e)) == (
            refusal(lambda e=expected: segment.produce([Record({"ok": 1})], expected_seq=e))
        )
    big = {"metadata": None, "payload": "x" * 1500}
    fast_class, fast_message = refusal(lambda: segment.produce_wire([GOOD, big]))
    general_class, general_message = refusal(
        lambda: segment.produce([Record({"ok": 1}), Record("x" * 1500)])
    )
    # The size counts the transaction time's digits, which differ from call to call.
    assert fast_class is general_class is InvalidArgumentError
    assert fast_message.endswith("bytes exceeds max_record_bytes (2048)")
    assert general_message.endswith("bytes exceeds max_record_bytes (2048)")
    lease = db.acquire_lease("job", holder="a", ttl=30)
    db.release_lease(lease)
    db.acquire_lease("job", holder="b", ttl=30)  # a newer fencing token
    assert refusal(lambda: segment.produce_wire([GOOD], fence=lease)) == refusal(
        lambda: segment.produce([Record({"ok": 1})], fence=lease)
    )
    with pytest.raises(LeaseLostError):
        segment.produce_wire([GOOD], fence=lease)
    assert segment.status()["last_sequence"] == 2  # nothing of the refused batches
    assert segment.produce_wire([]) == b"[]"
    db.close()


# -- the core's functions on their own -------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(batch=st.lists(records, max_size=6))
def test_produce_records_writes_what_orjson_writes(batch: list[Record]) -> None:
    assert _core.produce_records(batch, Record) == orjson.dumps(
        [record_to_wire(record) for record in batch]
    )


@pytest.mark.parametrize(
    "record",
    [
        Record({1: "non-str key"}),
        Record(float("nan")),
        Record({"a"}),
        Record(bytearray(b"x")),
        Record(memoryview(b"x")),
        Record(1, {"kiln.payload": "base64"}),
        Record(1, {"a": 1}),  # type: ignore[dict-item]
        Record(1, "m"),  # type: ignore[arg-type]
        (1, None),
        Record(Record(1)),  # a tuple subclass: left to orjson
    ],
)
def test_produce_records_leaves_the_rest_to_python(record: Any) -> None:
    assert _core.produce_records([Record(1), record], Record) is None


def test_produced_and_wire_entries_are_built_as_python_builds_them() -> None:
    batch = [Record(b"raw"), Record(bytearray(b"ba")), Record({"a": [1]}, {"m": "v"})]
    produced = [
        {"sequence": i, "timestamp": 1.5, "position": 9 + i, "id": f"i{i}"} for i in (1, 2, 3)
    ]
    built = _core.produced_entries("sp", "seg", batch, produced, Entry)
    pairs = zip(batch, produced, strict=True)
    assert built == [entry_from_produced("sp", "seg", r, w) for r, w in pairs]
    assert built[0].metadata is not batch[0].metadata
    with pytest.raises(ValueError):
        _core.produced_entries("sp", "seg", batch, produced[:2], Entry)
    with pytest.raises(KeyError):
        _core.produced_entries("sp", "seg", batch[:1], [{"sequence": 1}], Entry)
    wires = [
        {"space": "sp", "segment": "seg", "sequence": 1, "timestamp": 2.5, "position": 3,
         "id": "x", "metadata": {}, "payload": {"a": 1}},
        {"space": "sp", "segment": "seg", "sequence": 2, "timestamp": 2.5, "position": 4,
         "id": "y", "metadata": {"m": "v"}, "payload_base64": "AAE="},
    ]  # fmt: skip
    assert _core.entries_from_wire(wires, Entry, base64.b64decode) == [
        entry_from_wire(w) for w in wires
    ]


def test_consume_entries_parses_a_page_or_declines() -> None:
    entries = [
        {"space": "sp", "segment": "seg", "sequence": i, "timestamp": 1.25, "position": i,
         "id": f"i{i}", "metadata": {"k": "v"}, "payload": {"n": [i, None, "\u2028"]}}
        for i in range(3)
    ]  # fmt: skip
    for extra in ({}, {"request_id": 7}):
        body = orjson.dumps({"ok": True, "entries": entries, **extra})
        assert _core.consume_entries(body, Entry) == [entry_from_wire(w) for w in entries]
    assert _core.consume_entries(b'{"ok":true,"entries":[]}', Entry) == []
    bytes_entry = {**entries[0], "payload_base64": "AA=="}
    del bytes_entry["payload"]
    declined = [
        orjson.dumps({"ok": True, "entries": [*entries, bytes_entry]}),
        orjson.dumps({"ok": False, "error": "x", "error_code": "conflict"}),
        orjson.dumps({"ok": True, "entries": [{**entries[0], "extra": 1}]}),
        orjson.dumps({"ok": True, "entries": [{k: v for k, v in entries[0].items() if k != "id"}]}),
        b'{"ok":true,"entries":[{"space":"sp"',
        b'{"ok":true,"entries":[]',
    ]
    for body in declined:
        assert _core.consume_entries(body, Entry) is None, body


def test_produced_wire_declines_what_it_cannot_read() -> None:
    assert _core.produced_wire([b'{"batch":2,"first":1}']) is None
    assert _core.produced_wire([]) == b"[]"


def test_entries_wire_hands_what_it_cannot_read_to_the_fallback() -> None:
    seen: list[bytes] = []

    def fallback(body: bytes) -> bytes:
        seen.append(body)
        return b'"fallback"'

    assert _core.entries_wire([b"{}", b'{"id":1'], fallback) == b'["fallback","fallback"]'
    assert seen == [b"{}", b'{"id":1']


def test_stored_records_the_core_does_not_read_are_answered_from_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = kilndb.open(tmp_path)
    segment = db.space("sp").segment("seg")
    monkeypatch.setattr(_core, "produced_wire", lambda bodies: None)
    produced = segment.produce_wire([GOOD, {"metadata": None, "payload_base64": "AAE="}])
    assert produced == general_produced(db, "sp", "seg", 2)
    db.close()

"""The native staging of writes against the pure-Python reference of the record format:
random writes encode byte for byte as the pure-Python engine encoded them."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kilndb
from kilndb import Fact, Write, _core
from kilndb.engine.database import _prepare
from kilndb.engine.writes import fact_write
from kilndb.errors import ConflictError, InvalidArgumentError, KilnError, NotFoundError
from kilndb.storage.ids import IdCodec
from tests.core import reference

CODEC = IdCodec("0f1e2d3c-4b5a-4978-8877-665544332211")

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        | st.tuples(inner, inner)
    ),
    max_leaves=12,
)
texts = st.text(min_size=1, max_size=30)
writes = st.builds(
    Write,
    store=st.sampled_from(["tasks", "a.b:c-d", "_x"]),
    key=texts,
    value=json_values,
    expected_seq=st.none(),
    id=st.none() | texts,
    causation=st.none() | texts,
    valid_time=st.none()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(10**12), 10**12),
    schema_version=st.integers(1, 2**40),
    producer=st.none() | json_values,
    derivation=st.none() | json_values,
    metadata=st.none() | st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3),
    deleted=st.just(False),
)


class NoIds:
    """A log that holds no fact under a client-supplied id."""

    def _stored_position(self, fact_id: str) -> int | None:
        return None


def keydir_with(states: dict[str, tuple[int, bool]]) -> _core.KeyDir:
    """A keydir holding key ``k`` of store ``s`` at seq ``seq`` (a tombstone if deleted)."""
    keydir = _core.KeyDir(1)
    for position, (key, (seq, deleted)) in enumerate(states.items(), 1):
        keydir.add("s", key, position, 1, 100 * position, 50, seq, deleted, 1.0)
    return keydir


def stage(
    batch: list[Write],
    atomic: bool,
    keydir: _core.KeyDir | None = None,
    position: int = 7,
    ttimes: list[float] | None = None,
    hashes: list[str | None] | None = None,
) -> Any:
    stager = _core.Stager(Write, Fact, _prepare, CODEC.prefix)
    index = keydir if keydir is not None else _core.KeyDir(position)
    return stager.stage(
        batch,
        NoIds(),
        index,
        position,
        1733300000.25,
        atomic,
        False,
        1 << 30,
        ttimes=ttimes,
        hashes=hashes,
    )


def frames(data: bytes) -> list[bytes]:
    got, stop, reason = reference.read_frames(data, 0, len(data))
    assert (stop, reason) == (len(data), None)
    return [body for _, body in got]


@settings(max_examples=300)
@given(st.lists(writes, min_size=1, max_size=6, unique_by=lambda w: w.key))
def test_records_are_byte_identical_to_the_python_engine(batch: list[Write]) -> None:
    ids = [w.id for w in batch if w.id is not None]
    if len(ids) != len(set(ids)):
        return  # a repeated id is an idempotent retry within the batch: tested below
    staged = stage(batch, atomic=False)
    bodies = frames(staged.data)
    expected = [
        reference.fact_record(w, w.id or CODEC.generate(7 + i), 1, 7 + i, 1733300000.25)
        for i, w in enumerate(batch)
    ]
    assert bodies == expected
    for fact, body in zip(staged.results, bodies, strict=True):
        assert isinstance(fact, Fact)
        # The fact returned is the one a reader decodes from the record.
        assert orjson.dumps(fact.to_dict()) == body
        assert fact.to_dict() == orjson.loads(body)


@given(st.lists(writes, min_size=2, max_size=5, unique_by=lambda w: (w.key, w.id)))
def test_an_atomic_batch_is_framed_behind_its_header(batch: list[Write]) -> None:
    ids = [w.id for w in batch if w.id is not None]
    if len(ids) != len(set(ids)):
        return
    staged = stage(batch, atomic=True, position=40)
    bodies = frames(staged.data)
    assert bodies[0] == reference.batch_header(len(batch), 40)
    assert staged.header_len == 8 + len(bodies[0])
    assert (staged.count, staged.last) == (len(batch), 40 + len(batch) - 1)


def test_values_are_private_copies_in_canonical_order() -> None:
    inner: list[Any] = [1, (2, 3)]
    value = {"b": inner, "a": {"y": 1, "x": 2.5}}
    (fact,) = stage([Write("s", "k", value)], atomic=True).results
    assert fact.value == {"a": {"x": 2.5, "y": 1}, "b": [1, [2, 3]]}
    assert list(fact.value) == ["a", "b"] and list(fact.value["a"]) == ["x", "y"]
    inner.append(4)
    assert fact.value["b"] == [1, [2, 3]]


def test_refusals_raise_in_an_atomic_batch_and_are_outcomes_otherwise() -> None:
    log = keydir_with({"live": (3, False), "gone": (4, True)})
    batch = [
        Write("s", "live", 1, expected_seq=2),  # conflict: the key is at 3
        Write("s", "gone", None, deleted=True),  # nothing to delete
        Write("s", "", 1),  # invalid key
        Write("s", "live", math.nan),  # not JSON
        Write("s", "live", 2, expected_seq=3),  # fine
    ]
    with pytest.raises(InvalidArgumentError):  # every write is checked before staging
        stage(batch, atomic=True, keydir=log)
    with pytest.raises(ConflictError) as conflict:
        stage([batch[0], batch[4]], atomic=True, keydir=log)
    assert (conflict.value.expected, conflict.value.actual) == (2, 3)
    outcomes = stage(batch, atomic=False, keydir=log).results
    assert isinstance(outcomes[0], ConflictError)
    assert isinstance(outcomes[1], NotFoundError)
    assert isinstance(outcomes[2], InvalidArgumentError) and "key" in str(outcomes[2])
    assert isinstance(outcomes[3], InvalidArgumentError)
    assert isinstance(outcomes[4], Fact) and outcomes[4].seq == 4
    assert all(isinstance(o, KilnError) for o in outcomes[:4])


def test_exotic_values_take_the_python_path_and_keep_its_errors() -> None:
    import decimal
    import enum

    class Color(enum.Enum):
        RED = "red"

    (fact,) = stage([Write("s", "k", {"c": Color.RED})], atomic=True).results
    assert fact.value == {"c": "red"}  # as orjson serialises an enum
    with pytest.raises(InvalidArgumentError, match="not JSON-serialisable"):
        stage([Write("s", "k", decimal.Decimal(1))], atomic=True)
    with pytest.raises(InvalidArgumentError, match=r"expected a kilndb\.Write"):
        stage([("s", "k", 1)], atomic=True)  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError, match="reserved"):
        stage([Write("kiln.leases", "k", 1)], atomic=True)


def test_a_database_reads_back_what_the_core_encoded(tmp_path: Any) -> None:
    with kilndb.open(tmp_path) as db:
        value = {"text": 'quote " backslash \\ tab \t é 𝄞', "n": -(2**63), "f": 1e-7}
        written = db.store("s").write("k\n1", value, metadata={"by": "ann"}, valid_time=1e16)
    with kilndb.open(tmp_path) as db:
        read = db.store("s").read("k\n1")
    assert read == written and read is not None and read.value == value


def test_each_write_may_carry_its_own_transaction_time() -> None:
    staged = stage([Write("s", "a", 1), Write("s", "b", 2)], atomic=True, ttimes=[1.5, 2.5])
    assert [fact.transaction_time for fact in staged.results] == [1.5, 2.5]
    bodies = frames(staged.data)[1:]  # behind the batch header
    assert [orjson.loads(body)["transaction_time"] for body in bodies] == [1.5, 2.5]
    assert staged.written == [0, 1]


def test_a_claimed_value_hash_must_be_the_values() -> None:
    batch = [Write("s", "a", {"x": 1}), Write("s", "b", {"x": 1})]
    actual = kilndb.model.value_hash(kilndb.model.canonical_json({"x": 1}))
    claimed = 'it\'s "forged" ' + "f" * 100  # quotes, and longer than a message shows
    with pytest.raises(InvalidArgumentError) as refused:
        stage(batch, atomic=True, hashes=[actual, claimed])
    with pytest.raises(InvalidArgumentError) as expected:
        fact_write({"store": "s", "key": "b", "value": {"x": 1}, "value_hash": claimed})
    assert refused.value.message == expected.value.message
    outcomes = stage(batch, atomic=False, hashes=[None, claimed])
    assert isinstance(outcomes.results[1], InvalidArgumentError)
    assert outcomes.written == [0]


@pytest.mark.parametrize(
    ("ttimes", "hashes"), [([1.0], None), (None, [None]), ([1.0, 2.0], [None, None, None])]
)
def test_per_write_lists_must_have_one_entry_per_write(
    ttimes: list[float] | None, hashes: list[str | None] | None
) -> None:
    batch = [Write("s", "a", 1), Write("s", "b", 2)]
    with pytest.raises(InvalidArgumentError, match="entries for 2 writes"):
        stage(batch, atomic=True, ttimes=ttimes, hashes=hashes)


def test_outcomes_may_be_left_out() -> None:
    stager = _core.Stager(Write, Fact, _prepare, CODEC.prefix)
    keydir = _core.KeyDir(1)
    batch = [Write("s", "a", 1), Write("s", "a", 2)]
    staged = stager.stage(batch, NoIds(), keydir, 1, 1.0, True, False, 1 << 30, outcomes=False)
    assert (staged.results, staged.count, staged.written, staged.last) == ([], 2, [0, 1], 2)
    assert len(frames(staged.data)) == 3  # the batch header and both facts

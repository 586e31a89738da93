"""The native JSON codec (``kilndb._core``) against orjson, byte for byte.

``dumps`` must write what ``orjson.dumps`` writes with the passthrough options (or
return None for the types it leaves to orjson), ``canonical_json`` must behave as
``kilndb.model.canonical_json`` (same bytes, same errors, same messages) and ``loads``
must accept and refuse exactly what ``orjson.loads`` does, with the same values.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import hashlib
import json
import math
import uuid
from collections import OrderedDict
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kilndb import _core, model
from kilndb.errors import InvalidArgumentError

OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
SORTED = OPTIONS | orjson.OPT_SORT_KEYS
PREFIX = "value is not JSON-serialisable: "

# ---------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------

# Any character but the lone surrogates: astral ones, controls, U+2028, DEL, quotes.
characters = st.characters(exclude_categories=["Cs"])
texts = st.text(characters, max_size=30) | st.sampled_from(
    ["", "a", '"', "\\", "/", "\x00", "\x1f", "\x7f", "\u2028", "\u2029", "é", "😀", "\uffff"]
)
integers = (
    st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.integers(min_value=-(2**31), max_value=2**31)
    | st.sampled_from([0, -1, 2**53, 2**63 - 1, 2**63, -(2**63), 2**64 - 1])
)
floats = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | integers | floats | texts


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(children, max_size=6)
        | st.tuples(children, children)
        | st.dictionaries(texts, children, max_size=6)
    )


json_values = st.recursive(scalars, containers, max_leaves=30)
# What loads gives back: no tuples.
plain_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(texts, children, max_size=6),
    max_leaves=30,
)


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class Text(str):
    pass


class Number(int):
    pass


class Real(float):
    pass


class Mapping(dict[str, Any]):
    pass


class Sequence(list[Any]):
    pass


@dataclasses.dataclass
class Point:
    x: int


# Types dumps leaves to orjson (serialised, or refused, by orjson).
exotic_values = st.sampled_from(
    [
        Colour.RED,
        Level.HIGH,
        Text("sub"),
        Number(7),
        Real(1.5),
        Real(math.nan),
        Mapping(a=1),
        Sequence([1, 2]),
        OrderedDict(a=1),
        uuid.UUID(int=1),
        datetime.datetime(2024, 1, 2, 3, 4, 5),
        datetime.date(2024, 1, 2),
        Point(1),
        b"bytes",
        bytearray(b"x"),
        {1, 2},
        decimal.Decimal("1.5"),
        object(),
        orjson.Fragment(1),  # type: ignore[arg-type]  # refused: neither bytes nor str
    ]
)
# Values orjson refuses or writes as null.
bad_values = st.sampled_from(
    [
        math.nan,
        math.inf,
        -math.inf,
        2**64,
        -(2**63) - 1,
        2**100,
        "\ud800",
        "a\udfffb",
        {1: 2},
        {None: 1},
        {(1,): 1},
        {Text("k"): 1},
        {"\ud800": 1},
    ]
)
anything = st.recursive(
    scalars | exotic_values | bad_values,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(texts, children, max_size=4)
    ),
    max_leaves=12,
)

# ---------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types, dict order and float signs included (without
    recursion: documents may be 1024 levels deep)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            if repr(x) != repr(y):
                return False
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif isinstance(x, dict):
            if list(x) != list(y):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif x != y:
            return False
    return True


def is_exotic(value: Any) -> bool:
    """Does `value` hold a type dumps leaves to orjson (or a fragment orjson refuses)?"""
    plain = (type(None), bool, int, float, str, list, tuple, dict)
    if type(value) is orjson.Fragment:
        return outcome(orjson.dumps, value)[0] == "error"
    if type(value) not in plain:
        return True
    if isinstance(value, dict):
        return any(is_exotic(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(is_exotic(v) for v in value)
    return False


def has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_non_finite(v) for v in value)
    return False


def outcome(function: Any, *args: Any) -> tuple[str, Any]:
    """("ok", result) or ("error", (class, message))."""
    try:
        return ("ok", function(*args))
    except Exception as exc:
        return ("error", (type(exc), str(exc)))


def nested(depth: int, kind: str, inner: Any) -> Any:
    value = inner
    for _ in range(depth):
        if kind == "list":
            value = [value]
        elif kind == "tuple":
            value = (value,)
        else:
            value = {"a": value}
    return value


def check_dumps(value: Any, sort_keys: bool) -> None:
    """dumps(value) is orjson's text, None for an exotic value, or orjson's error."""
    try:
        expected: bytes | None = orjson.dumps(value, option=SORTED if sort_keys else OPTIONS)
        orjson_error = None
    except TypeError as exc:
        expected, orjson_error = None, str(exc)
    try:
        got = _core.dumps(value, sort_keys)
    except InvalidArgumentError as exc:
        message = str(exc)
        if orjson_error is not None:
            assert message == PREFIX + orjson_error
        else:
            # orjson wrote NaN or an infinity as null; we refuse it.
            assert has_non_finite(value)
            assert message == PREFIX + "NaN or infinity"
        return
    if got is None:
        assert is_exotic(value)
    else:
        assert orjson_error is None
        assert not has_non_finite(value)
        assert got == expected


# ---------------------------------------------------------------------------------
# dumps
# ---------------------------------------------------------------------------------


@given(json_values)
@settings(max_examples=400)
def test_dumps_is_orjsons_text(value: Any) -> None:
    assert _core.dumps(value) == orjson.dumps(value, option=OPTIONS)
    assert _core.dumps(value, sort_keys=True) == orjson.dumps(value, option=SORTED)
    assert _core.canonical_json(value) == model.canonical_json(value)


@given(floats)
@example(0.0)
@example(-0.0)
@example(1e16)
@example(1e-7)
@example(5e-324)
@example(1.7976931348623157e308)
@example(1700000000.123456)
@example(123456789012345680.0)
@example(1e15)
@example(1e-5)
@example(1e-6)
@example(0.1)
@example(-2.0)
@example(1733300000.123456)
@example(2.2250738585072014e-308)
def test_floats_as_orjson_writes_them(value: float) -> None:
    assert _core.dumps(value) == orjson.dumps(value)
    assert _core.dumps([value, {"f": value}]) == orjson.dumps([value, {"f": value}])


def test_many_floats_as_orjson_writes_them() -> None:
    # Random bit patterns and random short decimals, in bulk.
    import random
    import struct

    rng = random.Random(1234)
    values: list[float] = []
    while len(values) < 100_000:
        bits = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(bits):
            values.append(bits)
        digits = rng.randint(0, 10 ** rng.randint(1, 17))
        values.append(float(f"{digits}e{rng.randint(-330, 310)}"))
    values = [v for v in values if math.isfinite(v)]
    assert _core.dumps(values) == orjson.dumps(values)


@given(integers)
def test_integers_as_orjson_writes_them(value: int) -> None:
    assert _core.dumps(value) == orjson.dumps(value)


@given(st.text(characters))
def test_strings_as_orjson_escapes_them(value: str) -> None:
    assert _core.dumps(value) == orjson.dumps(value)
    assert _core.dumps({value: value}) == orjson.dumps({value: value})


def test_every_character_escaped_as_orjson() -> None:
    every = "".join(chr(c) for c in range(0x3000) if not 0xD800 <= c < 0xE000)
    assert _core.dumps(every) == orjson.dumps(every)
    for c in range(0x80):
        for padding in range(10):
            text = "x" * padding + chr(c) + "y" * padding
            assert _core.dumps(text) == orjson.dumps(text)


@given(st.dictionaries(texts, integers, max_size=20))
def test_sorted_keys_in_orjsons_order(value: dict[str, int]) -> None:
    # Code point order (which is UTF-8 byte order), not UTF-16 order.
    assert _core.dumps(value, sort_keys=True) == orjson.dumps(value, option=SORTED)


def test_sorted_keys_beyond_the_bmp() -> None:
    value = {"é": 1, "z": 2, "😀": 3, "\uffff": 4, "a": 5, "\ue000": 6}
    assert _core.dumps(value, sort_keys=True) == orjson.dumps(value, option=SORTED)
    assert _core.dumps(value, sort_keys=True) == (
        '{"a":5,"z":2,"é":1,"\ue000":6,"\uffff":4,"😀":3}'.encode()
    )


def test_same_key_objects_many_times() -> None:
    # The encoded keys are cached by object: many dicts, many keys, some evicted.
    keys = [f"key-{i}-{'x' * (i % 60)}" for i in range(3000)]
    for _ in range(3):
        for start in range(0, len(keys), 97):
            value = {k: i for i, k in enumerate(keys[start : start + 150])}
            assert _core.dumps(value) == orjson.dumps(value)
            assert _core.dumps(value, True) == orjson.dumps(value, option=SORTED)


def test_plain_values() -> None:
    value = {"a": [1, 2.5, None, True, False, "x\n"], "b": (1, ()), "c": {}, "d": []}
    assert _core.dumps(value) == b'{"a":[1,2.5,null,true,false,"x\\n"],"b":[1,[]],"c":{},"d":[]}'
    assert _core.dumps(()) == b"[]"


@given(exotic_values)
def test_exotic_types_are_left_to_orjson(value: Any) -> None:
    assert _core.dumps(value) is None
    assert _core.dumps([1, {"k": value}]) is None
    assert _core.dumps({"k": [value]}, sort_keys=True) is None
    assert outcome(_core.canonical_json, value) == outcome(model.canonical_json, value)


def test_fragments_copied_verbatim() -> None:
    value = [orjson.Fragment(b'{"x": [1, 2]}'), {"f": orjson.Fragment("é 1")}]
    assert _core.dumps(value) == orjson.dumps(value, option=OPTIONS)
    assert _core.dumps(value) == '[{"x": [1, 2]},{"f":é 1}]'.encode()
    assert _core.dumps(orjson.Fragment(b"")) == b""
    # Contents orjson refuses: left to orjson, which raises.
    assert _core.dumps([orjson.Fragment(1)]) is None  # type: ignore[arg-type]
    assert _core.dumps([orjson.Fragment("\ud800")]) is None


@given(anything, st.booleans())
@settings(max_examples=500)
def test_dumps_agrees_with_orjson_on_anything(value: Any, sort_keys: bool) -> None:
    check_dumps(value, sort_keys)


@given(anything)
@settings(max_examples=500)
def test_canonical_json_is_the_models(value: Any) -> None:
    # Same bytes, or InvalidArgumentError with the same message (orjson's first error
    # comes before NaN, exactly as in the Python model).
    assert outcome(_core.canonical_json, value) == outcome(model.canonical_json, value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (math.nan, "NaN or infinity"),
        ([1, {"a": -math.inf}], "NaN or infinity"),
        (2**64, "Integer exceeds 64-bit range"),
        (-(2**63) - 1, "Integer exceeds 64-bit range"),
        ("\ud800", "str is not valid UTF-8: surrogates not allowed"),
        ({"\udc00": 1}, "str is not valid UTF-8: surrogates not allowed"),
        ({1: 2}, "Dict key must be str"),
        ({"a": 1, None: 2}, "Dict key must be str"),
        ({Text("a"): 1}, "Dict key must be str"),
        ({"a": math.nan, "b": 2**64}, "Integer exceeds 64-bit range"),
    ],
)
def test_refusals(value: Any, reason: str) -> None:
    for sort_keys in (False, True):
        with pytest.raises(InvalidArgumentError) as raised:
            _core.dumps(value, sort_keys)
        assert str(raised.value) == PREFIX + reason
    with pytest.raises(InvalidArgumentError) as raised:
        _core.canonical_json(value)
    assert str(raised.value) == PREFIX + reason
    assert outcome(_core.canonical_json, value) == outcome(model.canonical_json, value)


def test_limits_of_integers() -> None:
    assert _core.dumps([2**64 - 1, -(2**63)]) == b"[18446744073709551615,-9223372036854775808]"


def test_sorted_keys_are_all_checked_before_any_value() -> None:
    # As orjson: with sorted keys the bad key wins over an earlier bad value.
    value = {"b": 2**70, 1: 2}
    with pytest.raises(InvalidArgumentError, match="Dict key must be str"):
        _core.dumps(value, sort_keys=True)
    with pytest.raises(InvalidArgumentError, match="Integer exceeds 64-bit range"):
        _core.dumps(value)


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("inner", [1, [], {}, (), [1], {"a": 1}])
def test_recursion_limit_as_orjson(kind: str, inner: Any) -> None:
    for depth in range(250, 258):
        check_dumps(nested(depth, kind, inner), sort_keys=False)
        check_dumps(nested(depth, kind, inner), sort_keys=True)
        assert outcome(_core.canonical_json, nested(depth, kind, inner)) == outcome(
            model.canonical_json, nested(depth, kind, inner)
        )


def test_deep_tuples_are_refused() -> None:
    # orjson never checks the depth of tuples (and crashes on very deep ones); the
    # codec refuses them like lists, at 255 levels.
    assert _core.dumps(nested(254, "tuple", 1)) == orjson.dumps(nested(254, "tuple", 1))
    for depth in (255, 300, 100_000):
        with pytest.raises(InvalidArgumentError, match="Recursion limit reached"):
            _core.dumps(nested(depth, "tuple", 1))
    # Empty tuples do not count, as in orjson.
    assert _core.dumps(nested(254, "list", ())) == orjson.dumps(nested(254, "list", ()))


def test_very_deep_lists_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="Recursion limit reached"):
        _core.dumps(nested(100_000, "list", 1))


def test_dumps_of_a_dataclass_with_nan_is_the_models() -> None:
    # An exotic type and a NaN: left to orjson, then refused as the model refuses it.
    value = [math.nan, uuid.UUID(int=5)]
    assert _core.dumps(value) is None
    assert outcome(_core.canonical_json, value) == outcome(model.canonical_json, value)
    value = [Real(math.inf), uuid.UUID(int=5)]
    assert outcome(_core.canonical_json, value) == outcome(model.canonical_json, value)


def test_fallback_error_has_orjsons_error_as_cause() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        _core.canonical_json({"t": datetime.time(1, 2)})
    assert str(raised.value) == PREFIX + "Type is not JSON serializable: datetime.time"
    assert isinstance(raised.value.__cause__, TypeError)


# ---------------------------------------------------------------------------------
# Hashes
# ---------------------------------------------------------------------------------


@given(st.binary())
def test_value_hash_is_sha256(data: bytes) -> None:
    assert _core.value_hash(data) == hashlib.sha256(data).hexdigest()
    assert _core.value_hash(data) == model.value_hash(data)


@given(json_values)
def test_hash_value(value: Any) -> None:
    canonical = model.canonical_json(value)
    assert _core.hash_value(value) == (canonical, hashlib.sha256(canonical).hexdigest())


def test_hash_value_refuses_what_canonical_json_refuses() -> None:
    with pytest.raises(InvalidArgumentError, match="NaN or infinity"):
        _core.hash_value({"x": math.nan})


# ---------------------------------------------------------------------------------
# loads
# ---------------------------------------------------------------------------------


def check_loads(data: bytes | str) -> None:
    """loads(data) gives orjson's value, or raises JSONDecodeError when orjson does."""
    try:
        expected = orjson.loads(data)
    except orjson.JSONDecodeError:
        with pytest.raises(orjson.JSONDecodeError):
            _core.loads(data)
        return
    assert same(_core.loads(data), expected)


@given(plain_values)
@settings(max_examples=400)
def test_loads_reads_orjsons_text(value: Any) -> None:
    text = orjson.dumps(value)
    assert same(_core.loads(text), orjson.loads(text))
    assert same(_core.loads(text), value)


@given(plain_values, st.booleans())
def test_loads_reads_indented_json(value: Any, ensure_ascii: bool) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=ensure_ascii)
    assert same(_core.loads(text.encode()), orjson.loads(text))
    assert same(_core.loads(text), orjson.loads(text))


@given(st.binary(max_size=40))
@settings(max_examples=1000)
def test_loads_of_any_bytes_behaves_as_orjson(data: bytes) -> None:
    check_loads(data)


json_alphabet = st.sampled_from(
    [
        *'[]{}",:0123456789.-+eE \t\n\rtruefalsn\\/ubfx',
        *["\\u", "\\ud800", "\\udc00", "\\ud83d\\ude00", "é", "😀", "\x00", "\x1f", "\x7f"],
    ]
)


@given(st.lists(json_alphabet, max_size=30).map("".join))
@settings(max_examples=2000)
def test_loads_of_json_like_text_behaves_as_orjson(text: str) -> None:
    check_loads(text.encode("utf-8", "surrogatepass"))


@given(plain_values, st.data())
@settings(max_examples=500)
def test_loads_of_damaged_json_behaves_as_orjson(value: Any, data: st.DataObject) -> None:
    text = bytearray(orjson.dumps(value))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.sampled_from(list(b'[]{}",:0-.e\\ \x00\xff')))
        if action == "insert":
            text.insert(at, byte)
        elif at < len(text):
            if action == "delete":
                del text[at]
            else:
                text[at] = byte
    check_loads(bytes(text))


@given(floats)
def test_loads_of_floats(value: float) -> None:
    for text in (repr(value), orjson.dumps(value).decode(), f"{value:.17e}", f"{value:.6e}"):
        check_loads(text.encode())


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_loads_of_integers_beyond_64_bits(value: int) -> None:
    check_loads(str(value).encode())
    check_loads(f"{value}.0".encode())
    check_loads(f"{value}e3".encode())


@pytest.mark.parametrize(
    "data",
    [
        b"18446744073709551615",
        b"18446744073709551616",
        b"99999999999999999999",
        b"100000000000000000000",
        b"-9223372036854775808",
        b"-9223372036854775809",
        b"123456789012345678901234567890",
        b'{"a":1,"a":2,"b":3,"a":4}',
        b"-0",
        b"-0.0",
        b"-0e1",
        b"0",
        b"1E400",
        b"-1e400",
        b"1e-400",
        b"1.7976931348623157e308",
        b"1.7976931348623158e308",
        b"1.7976931348623159e308",
        b"4.9e-324",
        b"2.4e-324",
        b"2.5e-324",
        b"1.0",
        b"1e2",
        b"1E+2",
        b"1e-2",
        b"01",
        b"-01",
        b"1.",
        b".5",
        b"-",
        b"+1",
        b"1e",
        b"1e+",
        b"0x1",
        b" \t\n\r1 \t\n\r",
        b"\x0c1",
        b"\x0b1",
        b'"\\ud800"',
        b'"\\ud800\\u0041"',
        b'"\\udc00\\ud800"',
        b'"\\ud83d\\ude00"',
        b'"\\uD83D\\uDE00"',
        b'"\xff"',
        b'"\xed\xa0\x80"',
        b'"\xc0\xaf"',
        b"1 2",
        b"[1]x",
        b"\xef\xbb\xbf1",
        b"",
        b" ",
        b"nul",
        b"null",
        b"nulll",
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b'"\x00"',
        b'"\x1f"',
        b'"\x7f"',
        b'"\\u00e9"',
        b'"\\/"',
        b'"\\x"',
        b'"\\u12"',
        b"[1,]",
        b'{"a":1,}',
        b"{1:2}",
        b'{"a"}',
        b'{"a":}',
        b'"abc',
        b"[",
        b"]",
        b"{",
        b"}",
        b"[1,2",
        b'{"a":1',
        b"true false",
        b"[]]",
        b"1\x00",
        b"[1 2]",
        b'{"a":1 "b":2}',
        b'{"a" 1}',
        b'["a":1]',
        "é".encode(),
        '"é😀"'.encode(),
    ],
)
def test_loads_edge_cases_as_orjson(data: bytes) -> None:
    check_loads(data)
    check_loads(data.decode("utf-8", "replace"))


def test_loads_depth_limit_as_orjson() -> None:
    for depth in (1023, 1024, 1025, 5000):
        check_loads(b"[" * depth + b"]" * depth)
        check_loads(b'{"a":' * depth + b"1" + b"}" * depth)
        check_loads(b'[{"a":' * (depth // 2) + b"[]" + b"}]" * (depth // 2))


def test_loads_takes_what_orjson_takes() -> None:
    assert _core.loads(b"[1]") == [1]
    assert _core.loads(bytearray(b"[2]")) == [2]
    assert _core.loads(memoryview(b"[3]")) == [3]
    assert _core.loads(memoryview(b"xx[4]")[2:]) == [4]
    assert _core.loads("[5]") == [5]
    for bad in (memoryview(b"[1,2,3,4]")[::2], 1, None, ["[1]"]):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(bad)  # type: ignore[arg-type]
        with pytest.raises(orjson.JSONDecodeError, match="Input must be bytes"):
            _core.loads(bad)  # type: ignore[arg-type]
    with pytest.raises(orjson.JSONDecodeError):
        _core.loads("\ud800")


def test_decode_errors_are_orjsons() -> None:
    with pytest.raises(orjson.JSONDecodeError) as raised:
        _core.loads(b'{"a": [1,\n  x]}')
    error = raised.value
    assert isinstance(error, ValueError)
    assert isinstance(error, json.JSONDecodeError)
    assert error.doc == '{"a": [1,\n  x]}'
    assert error.pos == 12
    assert (error.lineno, error.colno) == (2, 3)
    assert str(error).startswith("unexpected character")


def test_loads_keys_are_right_whatever_the_cache_holds() -> None:
    # Many distinct keys of every cached length (and longer), over and over: the key
    # cache evicts and reuses slots; the values must not change.
    keys = [("k" * (i % 70)) + str(i) for i in range(5000)]
    documents = [
        {k: i for i, k in enumerate(keys[start : start + 40])} for start in range(0, 5000, 37)
    ]
    for _ in range(2):
        for document in documents:
            assert same(_core.loads(orjson.dumps(document)), document)
    # Same shape, different keys at each place.
    for i in range(200):
        shaped: dict[str, Any] = {f"a{i}": 1, "b": {f"c{i % 3}": [None, True]}, f"d{i % 7}": "x"}
        assert same(_core.loads(orjson.dumps(shaped)), shaped)


def test_loads_many() -> None:
    bodies = [orjson.dumps({"n": i, "v": [i, str(i)]}) for i in range(100)]
    assert _core.loads_many(bodies) == [orjson.loads(b) for b in bodies]
    assert _core.loads_many([]) == []
    with pytest.raises(orjson.JSONDecodeError):
        _core.loads_many([b"[1]", b"[", b"[2]"])


def test_fact_record_round_trip() -> None:
    record = {
        "id": str(uuid.UUID(int=0x3F2A)),
        "store": "tasks",
        "key": "t123",
        "seq": 3,
        "position": 12345,
        "value": {"title": "Hello", "n": 42, "tags": ["a", "b"]},
        "value_hash": hashlib.sha256(b"x").hexdigest(),
        "transaction_time": 1733300000.123456,
        "valid_time": None,
        "causation": None,
        "schema_version": 1,
        "producer": None,
        "derivation": None,
        "metadata": {},
        "deleted": False,
    }
    body = _core.dumps(record)
    assert body == orjson.dumps(record)
    assert body is not None
    assert same(_core.loads(body), orjson.loads(body))
    assert same(_core.loads(body), record)

"""The wire forms transports send without re-encoding equal the facts' own JSON."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kilndb
from kilndb import Write
from tests.strategies import json_values


@settings(max_examples=30, deadline=None)
@given(values=st.lists(json_values, min_size=1, max_size=8))
def test_replay_wire_is_each_facts_json(
    tmp_path_factory: pytest.TempPathFactory, values: list[object]
) -> None:
    db = kilndb.open(tmp_path_factory.mktemp("wire"))
    s = db.store("s")
    for i, value in enumerate(values):
        s.write(
            f"k{i % 3}",
            value,
            valid_time=1.5 * i,
            causation="c" if i % 2 else None,
            metadata={"i": str(i)},
            producer={"name": "p"},
        )
    if len(values) > 1:
        s.delete("k0")
    facts = list(db.replay())
    wire = list(db.replay_wire())
    assert [p for p, _ in wire] == [f.position for f in facts]
    assert [body for _, body in wire] == [orjson.dumps(f.to_dict()) for f in facts]
    db.close()


def test_replay_wire_filters_and_limits_like_replay(tmp_path: Path) -> None:
    db = kilndb.open(tmp_path, max_file_size=4096)
    db.write_many([Write("ab"[i % 2], f"k{i}", {"i": i, "pad": "x" * 50}) for i in range(200)])
    db.set_retention("a", keep="latest")
    db.store("a").write("k0", "again")
    db.compact()
    for after, stores, limit in [(0, None, None), (7, ["a"], 5), (150, ["b"], None)]:
        expected = [orjson.dumps(f.to_dict()) for f in db.replay(after, stores, limit)]
        assert [body for _, body in db.replay_wire(after, stores, limit)] == expected
    db.close()


def test_write_each_wire_results_encode_like_facts(tmp_path: Path) -> None:
    db = kilndb.open(tmp_path)
    stored = db.store("s").write("k", {"v": 1}, id="known")
    written, retried = db.write_each_wire(
        [Write("s", "k", {"v": 2}), Write("s", "k", 0, id="known")]
    )
    # A written fact comes as its stored JSON, ready to embed; a retried one as a dict.
    assert isinstance(written, orjson.Fragment) and isinstance(retried, dict)
    latest = db.store("s").read("k")
    assert latest is not None and orjson.dumps(written) == orjson.dumps(latest.to_dict())
    assert retried == stored.to_dict()
    db.close()

"""The core holds the garbage collector off only while it builds a batch of facts or a
decoded document, and always leaves it as it found it."""

from __future__ import annotations

import gc
from pathlib import Path

import orjson
import pytest

import kilndb
from kilndb import Write, _core


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_left_as_it_was(tmp_path: Path, enabled: bool) -> None:
    with kilndb.open(tmp_path, sync="none") as db:
        (gc.enable if enabled else gc.disable)()
        try:
            db.write_many([Write("s", f"k{i}", {"i": i}) for i in range(100)])
            assert gc.isenabled() is enabled
            assert len(list(db.replay())) == 100
            assert gc.isenabled() is enabled
            assert len(db.store("s").history("k1")) == 1
            assert gc.isenabled() is enabled
            with pytest.raises(kilndb.InvalidArgumentError):
                db.write_many([Write("s", "", 1)])
            assert gc.isenabled() is enabled
            assert _core.loads(b'{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
            assert gc.isenabled() is enabled
            with pytest.raises(orjson.JSONDecodeError):
                _core.loads_many([b"[1]", b"{bad"])
            assert gc.isenabled() is enabled
        finally:
            gc.enable()

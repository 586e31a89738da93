"""``kiln export`` and ``kiln import``: every field out, the same facts back in."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import kilndb
from kilndb.cli import transfer
from kilndb.cli.transfer import CHECKPOINT_SUFFIX
from kilndb.engine.imports import import_lines
from kilndb.engine.writes import ORIGIN_TIME_KEY, fact_write
from kilndb.model import FACT_FIELDS
from tests.cli.runner import assert_one_error_line, json_lines, kiln
from tests.processes import KILN, reap, start_server, stop


def _fill(data: Path) -> list[dict[str, Any]]:
    """A database with every provenance field set, a batch and a tombstone; its facts."""
    with kilndb.open(data) as db:
        tasks = db.store("tasks")
        tasks.write(
            "t1",
            {"title": "Hello"},
            id="cmd-1",
            causation="cmd-0",
            valid_time=1.7e9,
            schema_version=2,
            producer={"app": "test"},
            derivation=["a", 1],
            metadata={"by": "ann"},
        )
        db.write_many([kilndb.Write("tasks", "t2", [1, 2]), kilndb.Write("notes", "n1", "text")])
        tasks.write("t1", {"title": "Hi"}, expected_seq=1)
        tasks.delete("t2")
        db.store("notes").write("n2", None)
        return [fact.to_dict() for fact in db.replay()]


def _facts(data: Path, database: str = "default") -> list[dict[str, Any]]:
    with kilndb.open(data, database) as db:
        return [fact.to_dict() for fact in db.replay()]


def _without(facts: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in fact.items() if k not in names} for fact in facts]


def _writes(count: int, start: int = 0) -> str:
    return "".join(
        json.dumps({"store": "w", "key": f"k{i}", "value": {"i": i}}) + "\n"
        for i in range(start, start + count)
    )


def test_export_writes_every_field_in_position_order(tmp_path: Path) -> None:
    facts = _fill(tmp_path / "data")
    result = kiln(tmp_path / "data", "export")
    assert result.exit_code == 0, result.stderr
    lines = json_lines(result.stdout)
    assert lines == facts
    assert [list(line) for line in lines] == [list(FACT_FIELDS)] * len(facts)
    assert [line["position"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert result.stderr == ""


def test_export_filters_by_store_and_position_range(tmp_path: Path) -> None:
    facts = _fill(tmp_path / "data")
    result = kiln(tmp_path / "data", "export", "--store", "tasks", "--after", "1", "--until", "4")
    assert result.exit_code == 0, result.stderr
    expected = [f for f in facts if f["store"] == "tasks" and 1 < f["position"] <= 4]
    assert json_lines(result.stdout) == expected
    both = kiln(tmp_path / "data", "export", "--store", "tasks", "--store", "notes")
    assert json_lines(both.stdout) == facts
    assert kiln(tmp_path / "data", "export", "--after", "6").stdout == ""


def test_export_to_a_file_reports_and_leaves_no_partial_file(tmp_path: Path) -> None:
    facts = _fill(tmp_path / "data")
    out = tmp_path / "facts.jsonl"
    result = kiln(tmp_path / "data", "export", "--output", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["facts"] == len(facts)
    assert report["bytes"] == out.stat().st_size
    assert report["last_position"] == 6
    assert json_lines(out.read_text()) == facts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "facts.jsonl"]


def test_export_of_a_missing_database_is_an_error(tmp_path: Path) -> None:
    result = kiln(tmp_path / "nothing", "export")
    assert_one_error_line(result, 1, "no database 'default'")


def test_round_trip_embedded_reproduces_every_field(tmp_path: Path) -> None:
    facts = _fill(tmp_path / "source")
    exported = tmp_path / "facts.jsonl"
    assert kiln(tmp_path / "source", "export", "-o", str(exported)).exit_code == 0
    result = kiln(tmp_path / "target", "import", str(exported), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["facts_written"] == len(facts)
    assert report["lines"] == len(facts)
    # Into an empty database, even the positions and transaction times are the same.
    assert _facts(tmp_path / "target") == facts
    assert (tmp_path / "target" / "default").is_dir()
    assert not Path(str(exported) + CHECKPOINT_SUFFIX).exists()
    # Reopened (recovered from the log), the copy reads the same, and as of a past time.
    with kilndb.open(tmp_path / "target") as db:
        assert db.store("tasks").read("t1", as_of=facts[0]["transaction_time"]) is not None
        assert db.store("tasks").read("t2") is None
        assert db.store("tasks").write("t3", 1).position == len(facts) + 1


def test_import_twice_skips_the_ids_it_holds(tmp_path: Path) -> None:
    facts = _fill(tmp_path / "source")
    exported = tmp_path / "facts.jsonl"
    kiln(tmp_path / "source", "export", "-o", str(exported))
    kiln(tmp_path / "target", "import", str(exported))
    again = kiln(tmp_path / "target", "import", str(exported), "--json")
    assert json.loads(again.stdout)["skipped"] == len(facts)
    assert json.loads(again.stdout)["facts_written"] == 0
    assert _facts(tmp_path / "target") == facts


def test_import_into_a_database_with_later_facts_keeps_the_origin_time(tmp_path: Path) -> None:
    facts = _fill(tmp_path / "source")
    exported = tmp_path / "facts.jsonl"
    kiln(tmp_path / "source", "export", "-o", str(exported))
    kiln(tmp_path / "target", "put", "other", "k", "1")
    assert kiln(tmp_path / "target", "import", str(exported)).exit_code == 0
    copied = _facts(tmp_path / "target")[1:]
    assert _without(copied, "position", "transaction_time", "metadata") == _without(
        facts, "position", "transaction_time", "metadata"
    )
    for copy, fact in zip(copied, facts, strict=True):
        assert copy["metadata"] == {
            **fact["metadata"],
            ORIGIN_TIME_KEY: repr(fact["transaction_time"]),
        }
        assert copy["position"] == fact["position"] + 1  # the target's own positions


def test_import_of_plain_writes_from_stdin(tmp_path: Path) -> None:
    lines = (
        _writes(2)
        + "\n"
        + json.dumps(
            {
                "store": "w",
                "key": "k0",
                "value": 5,
                "expected_seq": 1,
                "id": "x-1",
                "causation": "c",
                "valid_time": 12.5,
                "metadata": {"m": "v"},
            }
        )
        + "\n"
        + json.dumps({"store": "w", "key": "k1", "deleted": True})
        + "\n"
    )
    result = kiln(tmp_path / "data", "import", "-", "--json", input=lines)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "lines": 5,
        "facts_written": 4,
        "skipped": 0,
        "invalid": 0,
        "batches": 1,
        "resumed_after": 0,
        "seconds": json.loads(result.stdout)["seconds"],
    }
    facts = _facts(tmp_path / "data")
    assert [(f["key"], f["seq"], f["value"], f["deleted"]) for f in facts] == [
        ("k0", 1, {"i": 0}, False),
        ("k1", 1, {"i": 1}, False),
        ("k0", 2, 5, False),
        ("k1", 2, None, True),
    ]
    assert facts[2]["id"] == "x-1"
    assert (facts[2]["causation"], facts[2]["valid_time"], facts[2]["metadata"]) == (
        "c",
        12.5,
        {"m": "v"},
    )


def test_a_bad_line_stops_the_import_before_its_batch(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(_writes(5) + '{"store": "w", "key": "bad"}\n' + _writes(3, start=5))
    result = kiln(tmp_path / "data", "import", str(source), "--batch", "3")
    line = assert_one_error_line(result, 1, "line 6: missing field 'value'")
    assert "lines 1-3 are imported" in line
    # The first batch (lines 1-3) is kept; lines 4-5 shared the bad line's batch.
    assert [f["key"] for f in _facts(tmp_path / "data")] == ["k0", "k1", "k2"]
    # Fixed, the import goes on after line 3.
    source.write_text(_writes(5) + '{"store": "w", "key": "bad", "value": 0}\n' + _writes(3, 5))
    again = kiln(tmp_path / "data", "import", str(source), "--batch", "3", "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["resumed_after"] == 3
    assert [f["key"] for f in _facts(tmp_path / "data")] == [
        "k0", "k1", "k2", "k3", "k4", "bad", "k5", "k6", "k7"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "line 2: not JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        ('{"store": "w", "key": "k", "value": 1, "colour": 1}', "unknown field 'colour'"),
        ('{"store": "kiln.leases", "key": "k", "value": 1}', "reserved"),
    ],
)
def test_invalid_lines_name_their_number(tmp_path: Path, line: str, reason: str) -> None:
    result = kiln(tmp_path / "data", "import", "-", input=_writes(1) + line + "\n")
    assert_one_error_line(result, 1, reason)
    assert not (tmp_path / "data" / "default" / "META").exists() or _facts(tmp_path / "data") == []


def test_a_fact_whose_hash_does_not_match_is_invalid(tmp_path: Path) -> None:
    facts = _fill(tmp_path / "source")
    altered = {**facts[0], "value": {"title": "forged"}}
    result = kiln(tmp_path / "target", "import", "-", input=json.dumps(altered) + "\n")
    assert_one_error_line(result, 1, "line 1: value_hash")


def test_skip_invalid_goes_on_and_counts(tmp_path: Path) -> None:
    text = _writes(2) + "oops\n" + _writes(1, start=2)
    result = kiln(tmp_path / "data", "import", "-", "--skip-invalid", "--json", input=text)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["invalid"] == 1
    assert result.stderr.startswith("warning: skipped line 3: not JSON")
    assert len(_facts(tmp_path / "data")) == 3


def test_a_refused_batch_writes_nothing_of_itself(tmp_path: Path) -> None:
    conflict = json.dumps({"store": "w", "key": "k0", "value": 9, "expected_seq": 5})
    text = _writes(2) + _writes(1, start=2) + conflict + "\n"
    result = kiln(tmp_path / "data", "import", "-", "--batch", "2", input=text)
    assert_one_error_line(result, 1, "conflict on w/k0: expected seq 5, actual seq 1")
    assert [f["key"] for f in _facts(tmp_path / "data")] == ["k0", "k1"]


def test_round_trip_in_small_batches_keeps_each_facts_time(tmp_path: Path) -> None:
    facts = _fill(tmp_path / "source")
    exported = tmp_path / "facts.jsonl"
    kiln(tmp_path / "source", "export", "-o", str(exported))
    result = kiln(tmp_path / "target", "import", str(exported), "--batch", "2", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["batches"] == 3
    assert _facts(tmp_path / "target") == facts
    with kilndb.open(tmp_path / "target") as db:  # recovered: each fact at its own time
        for fact in facts:
            found = db.store(fact["store"]).read(fact["key"], as_of=fact["transaction_time"])
            expected = None if fact["deleted"] else fact["value"]
            assert (found.value if found is not None else None) == expected


def test_a_forged_hash_names_its_line_or_is_skipped(tmp_path: Path) -> None:
    facts = _fill(tmp_path / "source")
    forged = {**facts[0], "value": {"title": "forged"}}
    with pytest.raises(kilndb.InvalidArgumentError) as refusal:
        fact_write(forged)
    text = _writes(2) + json.dumps(forged) + "\n" + _writes(1, start=2)
    result = kiln(tmp_path / "target", "import", "-", input=text)
    assert_one_error_line(result, 1, f"line 3: {refusal.value.message} (nothing of its batch")
    assert not (tmp_path / "target" / "default" / "META").exists() or not _facts(
        tmp_path / "target"
    )
    result = kiln(tmp_path / "target", "import", "-", "--skip-invalid", "--json", input=text)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"warning: skipped line 3: {refusal.value.message}\n"
    assert (json.loads(result.stdout)["invalid"], json.loads(result.stdout)["facts_written"]) == (
        1,
        3,
    )
    assert [f["key"] for f in _facts(tmp_path / "target")] == ["k0", "k1", "k2"]


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ({"schema_version": "x"}, "schema_version must be a positive integer"),
        ({"metadata": {"a": 1}}, "metadata must be a dict of strings to strings"),
        ({"valid_time": "soon"}, "valid_time must be a number"),
    ],
)
def test_a_line_of_the_wrong_type_is_named_or_skipped_from_its_batch(
    tmp_path: Path, field: dict[str, Any], reason: str
) -> None:
    source = tmp_path / "in.jsonl"
    bad = json.dumps({"store": "w", "key": "bad", "value": 1, **field})
    source.write_text(_writes(2) + "\n" + bad + "\n" + _writes(2, start=2))
    result = kiln(tmp_path / "data", "import", str(source), "--batch", "4")
    line = assert_one_error_line(result, 1, f"line 4: {reason}")
    assert "(nothing of its batch was written; lines 1-0 are imported" in line
    assert not (tmp_path / "data" / "default" / "META").exists() or not _facts(tmp_path / "data")
    skipping = ("import", str(source), "--batch", "4", "--skip-invalid", "--json")
    result = kiln(tmp_path / "data", *skipping)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith(f"warning: skipped line 4: {reason}")
    report = json.loads(result.stdout)
    assert (report["lines"], report["invalid"], report["facts_written"]) == (6, 1, 4)
    assert [f["key"] for f in _facts(tmp_path / "data")] == ["k0", "k1", "k2", "k3"]
    assert not Path(str(source) + CHECKPOINT_SUFFIX).exists()


def _exported(tmp_path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The facts of :func:`_fill` and their lines as ``kiln export`` writes them."""
    facts = _fill(tmp_path / "source")
    exported = tmp_path / "facts.jsonl"
    assert kiln(tmp_path / "source", "export", "-o", str(exported)).exit_code == 0
    return facts, exported.read_text().splitlines(keepends=True)


def _python_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every batch take the Python path: no line is read natively."""
    monkeypatch.setattr(transfer, "read_lines", lambda lines: None)


def test_an_export_is_imported_natively(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    facts, lines = _exported(tmp_path)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(lines[:3]) + "\n" + "".join(lines[3:]))

    def refused(*args: Any) -> None:
        raise AssertionError("an exported line took the Python path")

    monkeypatch.setattr(transfer, "import_item", refused)
    result = kiln(tmp_path / "target", "import", str(source), "--batch", "4", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["lines"], report["facts_written"], report["batches"]) == (7, 6, 2)
    assert _facts(tmp_path / "target") == facts


@pytest.mark.parametrize("skip", [False, True])
def test_a_bad_fact_among_exported_ones_is_named_as_by_the_python_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skip: bool
) -> None:
    facts, lines = _exported(tmp_path)
    forged = {**facts[0], "id": "forged", "value": {"title": "forged"}}
    with pytest.raises(kilndb.InvalidArgumentError) as refusal:
        fact_write(forged)
    wrong_type = {**facts[1], "id": "wrong", "metadata": {"n": 1}}
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(lines[:2]) + json.dumps(forged) + "\n" + json.dumps(wrong_type) + "\n"
    )
    options = ("--skip-invalid", "--json") if skip else ()
    native = kiln(tmp_path / "native", "import", str(source), *options)
    _python_path_only(monkeypatch)
    python = kiln(tmp_path / "python", "import", str(source), *options)
    assert (native.exit_code, native.stderr) == (python.exit_code, python.stderr)
    if skip:
        assert _without(json_lines(native.stdout), "seconds") == _without(
            json_lines(python.stdout), "seconds"
        )
    assert _facts(tmp_path / "native") == _facts(tmp_path / "python")
    # A line of the wrong shape is found as the batch is read, a forged hash when it is
    # committed.
    wrong = "line 4: metadata must be a dict of strings to strings"
    if skip:
        assert native.stderr.splitlines() == [
            f"warning: skipped {wrong}",
            f"warning: skipped line 3: {refusal.value.message}",
        ]
        assert _facts(tmp_path / "native") == facts[:2]
    else:
        assert_one_error_line(native, 1, f"{wrong} (nothing of its batch was written")
        assert not _facts(tmp_path / "native")
    source.write_text("".join(lines[:2]) + json.dumps(forged) + "\n")
    again = kiln(tmp_path / "again", "import", str(source))
    assert_one_error_line(again, 1, f"line 3: {refusal.value.message} (nothing of its")


def test_a_batch_refused_when_staged_is_refused_as_by_the_python_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    facts, lines = _exported(tmp_path)
    tombstone = next(i for i, fact in enumerate(facts) if fact["deleted"])
    source = tmp_path / "in.jsonl"
    source.write_text(lines[tombstone])  # a tombstone for a key without a value
    native = kiln(tmp_path / "native", "import", str(source))
    _python_path_only(monkeypatch)
    python = kiln(tmp_path / "python", "import", str(source))
    assert_one_error_line(native, 1, "tasks/t2 has no value to delete")
    assert (native.exit_code, native.stderr) == (python.exit_code, python.stderr)


def test_facts_without_an_id_are_checkpointed_before_their_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    facts, _ = _exported(tmp_path)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({**fact, "id": None}) + "\n" for fact in facts))
    checkpoint = Path(str(source) + CHECKPOINT_SUFFIX)
    seen: list[Any] = []

    def noted(db: kilndb.Database, lines: Any) -> Any:
        seen.append(orjson.loads(checkpoint.read_bytes())["pending"])
        return import_lines(db, lines)

    monkeypatch.setattr(transfer, "import_lines", noted)
    result = kiln(tmp_path / "target", "import", str(source), "--batch", "4", "--json")
    assert result.exit_code == 0, result.stderr
    assert seen == [[4, 0], [6, 4]]  # each batch's last line, and the position before it
    assert _without(_facts(tmp_path / "target"), "id") == _without(facts, "id")
    assert not checkpoint.exists()


def test_import_of_a_missing_file_is_an_error(tmp_path: Path) -> None:
    result = kiln(tmp_path / "data", "import", str(tmp_path / "absent.jsonl"))
    assert_one_error_line(result, 1, "no such file")


def test_a_checkpoint_of_another_database_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(_writes(3))
    checkpoint = Path(str(source) + CHECKPOINT_SUFFIX)
    checkpoint.write_bytes(orjson.dumps({"target": "/elsewhere", "line": 1, "pending": None}))
    result = kiln(tmp_path / "data", "import", str(source))
    assert_one_error_line(result, 1, "unfinished import into /elsewhere")


@pytest.mark.parametrize("landed", [True, False])
def test_a_batch_in_flight_when_killed_is_found_or_sent_again(tmp_path: Path, landed: bool) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(_writes(6))
    if landed:  # lines 3-4 were committed, then the import died before noting it
        kiln(tmp_path / "data", "import", "-", input=_writes(4))
    else:
        kiln(tmp_path / "data", "import", "-", input=_writes(2))
    target = str((tmp_path / "data" / "default").resolve())
    Path(str(source) + CHECKPOINT_SUFFIX).write_bytes(
        orjson.dumps({"target": target, "line": 2, "pending": [4, 2]})
    )
    result = kiln(tmp_path / "data", "import", str(source), "--batch", "10", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["resumed_after"] == 2
    assert report["skipped"] == (2 if landed else 0)
    keys = [f["key"] for f in _facts(tmp_path / "data")]
    assert keys == [f"k{i}" for i in range(6)]


def test_resume_after_sigkill_imports_each_line_once(tmp_path: Path) -> None:
    count = 20_000
    source = tmp_path / "in.jsonl"
    source.write_text(_writes(count))
    checkpoint = Path(str(source) + CHECKPOINT_SUFFIX)
    data = tmp_path / "data"
    command = [str(KILN), "--data", str(data), "import", str(source), "--batch", "200"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.exists() and orjson.loads(checkpoint.read_bytes())["line"] >= 2000:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, "the import finished before it was killed"
    stopped_at = orjson.loads(checkpoint.read_bytes())["line"]
    assert 0 < stopped_at < count
    again = subprocess.run([*command, "--json"], capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["resumed_after"] == stopped_at
    with kilndb.open(data) as db:
        keys = [(f.key, f.seq) for f in db.replay()]
    assert sorted(keys) == sorted((f"k{i}", 1) for i in range(count))
    assert not checkpoint.exists()


def _pipe_shell(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
    )


def test_export_into_head_exits_quietly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    kiln(data, "import", "-", input=_writes(30_000))
    result = _pipe_shell(f"'{KILN}' --data '{data}' export | head -1")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout)["key"] == "k0"


def test_export_piped_into_import(tmp_path: Path) -> None:
    facts = _fill(tmp_path / "source")
    result = _pipe_shell(
        f"'{KILN}' --data '{tmp_path / 'source'}' export"
        f" | '{KILN}' --data '{tmp_path / 'target'}' import -"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["facts_written"] == len(facts)
    assert _facts(tmp_path / "target") == facts


def _on_a_terminal(*args: str) -> tuple[bytes, bytes]:
    """Run ``kiln ARGS`` with stderr on a pseudo-terminal: its stdout and what the
    terminal showed."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(KILN), *args],
        stdout=subprocess.PIPE,
        stderr=terminal,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(terminal)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break  # the process closed the terminal
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
        stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0, seen
    return stdout, seen


def test_progress_is_shown_on_a_terminal(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(_writes(2000))
    data = str(tmp_path / "data")
    stdout, seen = _on_a_terminal("--data", data, "import", str(source), "--json")
    assert b"import" in seen and b"bytes" in seen
    assert json.loads(stdout)["facts_written"] == 2000
    out = str(tmp_path / "out.jsonl")
    stdout, seen = _on_a_terminal("--data", data, "export", "--output", out, "--json")
    assert b"export" in seen and b"positions" in seen
    assert json.loads(stdout)["facts"] == 2000


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    process, url = start_server(tmp_path / "served")
    try:
        yield url
    finally:
        stop(process)
        reap(process)


def test_round_trip_through_a_server(tmp_path: Path, served: str) -> None:
    facts = _fill(tmp_path / "source")
    exported = tmp_path / "facts.jsonl"
    kiln(tmp_path / "source", "export", "-o", str(exported))
    imported = kiln(tmp_path, "--url", served, "import", str(exported), "--batch", "2", "--json")
    assert imported.exit_code == 0, imported.stderr
    assert json.loads(imported.stdout)["facts_written"] == len(facts)
    result = kiln(tmp_path, "--url", served, "export")
    assert result.exit_code == 0, result.stderr
    copied = json_lines(result.stdout)
    # A server gives each fact its own transaction time; the exported one is kept in
    # the metadata. Everything else is the same.
    assert _without(copied, "transaction_time", "metadata") == _without(
        facts, "transaction_time", "metadata"
    )
    for copy, fact in zip(copied, facts, strict=True):
        assert copy["metadata"] == {
            **fact["metadata"],
            ORIGIN_TIME_KEY: repr(fact["transaction_time"]),
        }
    # Exported from the server and imported embedded, the copy is the server's, exactly.
    served_export = tmp_path / "served.jsonl"
    assert kiln(tmp_path, "--url", served, "export", "-o", str(served_export)).exit_code == 0
    assert kiln(tmp_path / "copy", "import", str(served_export)).exit_code == 0
    assert _facts(tmp_path / "copy") == copied
    # A resumed import against the server writes nothing twice.
    again = kiln(tmp_path, "--url", served, "import", str(exported), "--json")
    assert json.loads(again.stdout)["skipped"] == len(facts)


def test_the_import_and_export_sample_of_the_docs_runs(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    start = text.index("\n## Import and export")
    sample = text[start:].split("```sh\n", 1)[1].split("```", 1)[0]
    assert "kiln export --output facts.jsonl" in sample
    path = f"{KILN.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", sample],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": path},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # The last command prints the copied fact: the same as the original, field for field.
    copied = json.loads(result.stdout.splitlines()[-1])
    assert copied == _facts(tmp_path / "data")[0]
    assert copied["value"] == {"title": "Hello"}


def test_a_failed_export_leaves_no_file(tmp_path: Path) -> None:
    _fill(tmp_path / "data")
    out = tmp_path / "facts.jsonl"
    result = kiln(tmp_path / "data", "export", "--store", "kiln.bad name", "-o", str(out))
    assert_one_error_line(result, 1, "invalid store name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]

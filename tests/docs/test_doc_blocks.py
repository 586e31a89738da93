"""Every command in README.md and docs/*.md runs, as written, against a fresh directory.

Each ``##`` section of a page with a block to run is one test (tests/docs/session.py says
how it runs); every other block must say what it is (tests/docs/blocks.py lists the info
strings and the ``<!-- doc-test: ... -->`` directives). Blocks skipped are reported one
by one, by page and line, with their reasons, and there must stay few of them.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from tests.docs.blocks import COMMAND_KINDS, DATA_KINDS, ROOT, Block, Section, doc_pages, sections
from tests.docs.session import (
    console_commands,
    output_matches,
    rewrite_ports,
    run_section,
    shell_lines,
)

#: The most blocks that may be skipped (each with its reason): cluster walk-throughs with
#: failures between commands, TLS with certificates, and the project's own make targets.
MAX_SKIPPED = 6

SECTIONS = [section for page in doc_pages() for section in sections(page)]
BLOCKS = [block for section in SECTIONS for block in section.blocks]


def _runnable(section: Section) -> bool:
    return any(
        block.runs_here or (block.serve_config and block.skip is None) for block in section.blocks
    )


@pytest.mark.parametrize(
    "section", [s for s in SECTIONS if _runnable(s)], ids=lambda section: section.name
)
def test_section_runs(section: Section, tmp_path: Path) -> None:
    outcome = run_section(section, tmp_path)
    assert outcome.returncode == 0 and not outcome.problems, outcome.report()


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.skip is not None], ids=lambda block: block.where
)
def test_skipped_block(block: Block) -> None:
    """Reports a skipped block, with its reason, by page and line."""
    pytest.skip(f"{block.where}: {block.skip}")


def test_every_block_says_what_it_is() -> None:
    wrong = [
        f"{block.where}: info string {block.info!r} is neither a command"
        f" ({', '.join(sorted(COMMAND_KINDS))}) nor data ({', '.join(sorted(DATA_KINDS))})"
        for block in BLOCKS
        if block.info not in COMMAND_KINDS | DATA_KINDS
    ]
    wrong += [f"{block.where}: {problem}" for block in BLOCKS for problem in block.problems]
    wrong += [
        f"{block.where}: only a TOML block is a kiln serve configuration"
        for block in BLOCKS
        if block.serve_config and block.info != "toml"
    ]
    assert not wrong, "\n".join(wrong)


def test_every_command_block_runs_or_says_why_not() -> None:
    skipped = [block for block in BLOCKS if block.skip is not None]
    assert len(skipped) <= MAX_SKIPPED, "\n".join(f"{b.where}: {b.skip}" for b in skipped)
    for block in BLOCKS:
        if block.info in COMMAND_KINDS:
            assert block.runs_here or block.skip or block.run_by, block.where


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.run_by is not None], ids=lambda block: block.where
)
def test_blocks_run_elsewhere_are_run_there(block: Block) -> None:
    """A block run by another test names a test file that reads this page."""
    assert block.run_by is not None
    test = ROOT / block.run_by
    assert test.is_file() and test.name.startswith("test_"), block.run_by
    assert block.page in test.read_text(), f"{block.run_by} does not read {block.page}"


def test_data_blocks_parse() -> None:
    for block in BLOCKS:
        if block.info == "json":
            json.loads(block.text)
        elif block.info == "jsonl":
            for line in block.text.splitlines():
                if line.strip():
                    json.loads(line)
        elif block.info == "toml":
            tomllib.loads(block.text)


# The harness itself.


def test_output_matching() -> None:
    assert output_matches(["a", "b"], ["a", "b", ""])
    assert not output_matches(["a"], ["a", "b"])
    assert output_matches(["put tasks t1 at ..."], ["put tasks t1 at 17"])
    assert output_matches(["first", "...", "last"], ["first", "x", "y", "last"])
    assert output_matches(["first", "…", "last"], ["first", "last"])
    assert not output_matches(["first", "...", "last"], ["first", "x"])
    assert not output_matches(["(a)"], ["a"])  # the expected text is literal, not a regex


def test_console_blocks_split_commands_from_output() -> None:
    block = Block("docs/x.md", 10, "console", "")
    text = "$ kiln put tasks t1 \\\n>   '1'\n1\n$ kiln get tasks t1\n{\n  'v': 1\n}\n"
    commands = console_commands(block, text)
    assert [c.command for c in commands] == ["kiln put tasks t1 \\\n  '1'", "kiln get tasks t1"]
    assert [c.expected for c in commands] == [["1"], ["{", "  'v': 1", "}"]]
    assert [c.where for c in commands] == ["docs/x.md:11", "docs/x.md:14"]


def test_servers_go_to_the_background_and_are_waited_for() -> None:
    script = shell_lines(
        "kiln --data ./n1 serve --port 7400 \\\n    --http-port 7300   # leader\n"
        "sleep 1 &\nkiln put tasks t1 1 && echo ok\n"
    )
    lines = script.splitlines()
    assert lines[0] == "kiln --data ./n1 serve --port 7400 --http-port 7300 &"
    assert lines[1] == "doctest_wait $! 7400 7300"
    assert lines[2:] == ["sleep 1 &", "doctest_wait $! ", "kiln put tasks t1 1 && echo ok"]


def test_well_known_ports_are_rewritten() -> None:
    ports = {7400: 50001, 7300: 50002}
    text = "tcp://127.0.0.1:7400 --http-port 7300 17400 74001 10.0.7400"
    assert (
        rewrite_ports(text, ports)
        == "tcp://127.0.0.1:50001 --http-port 50002 17400 74001 10.0.7400"
    )


def test_a_failing_block_fails_its_section(tmp_path: Path) -> None:
    page = Section(
        "docs/x.md",
        "Broken",
        (
            Block(
                "docs/x.md", 3, "sh", "kiln serve --port 7400 &\necho started\nfalse\necho never\n"
            ),
        ),
    )
    outcome = run_section(page, tmp_path)
    assert outcome.returncode != 0 and outcome.current == "docs/x.md:3"
    assert "started" in outcome.output and "never" not in outcome.output
    assert re.search(r"\d", (tmp_path / "harness" / "section.sh").read_text())


def test_console_output_that_differs_is_a_problem(tmp_path: Path) -> None:
    page = Section(
        "docs/x.md", "Console", (Block("docs/x.md", 1, "console", "$ echo one\ntwo\n$ false\n"),)
    )
    outcome = run_section(page, tmp_path)
    assert outcome.returncode == 0
    assert len(outcome.problems) == 2
    assert outcome.problems[0].startswith("docs/x.md:2: `echo one` printed")
    assert outcome.problems[1].startswith("docs/x.md:4: `false` failed")


def test_curl_lines_check_the_status_the_docs_give() -> None:
    script = shell_lines("curl -s 'http://h/x?a=1#frag' -d '{}'   # 409\ncurl -s http://h/y\n")
    assert script.splitlines() == [
        "doctest_http 409 curl -s 'http://h/x?a=1#frag' -d '{}'",
        "curl -s http://h/y",
    ]


def test_a_kiln_serve_config_block_is_served(tmp_path: Path) -> None:
    """A TOML block marked ``kiln serve --config`` must start a server; a wrong one fails."""

    def config(text: str) -> Section:
        return Section(
            "docs/x.md", "Config", (Block("docs/x.md", 5, "toml", text, serve_config=True),)
        )

    good = run_section(config("port = 7400\nmax_connections = 10\n"), tmp_path / "good")
    assert good.returncode == 0, good.report()
    bad = run_section(config('port = 7400\nmax_connections = "many"\n'), tmp_path / "bad")
    assert bad.returncode != 0 and "many" in bad.output, bad.report()
    assert "exited before" in bad.output

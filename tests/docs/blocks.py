"""The fenced code blocks of README.md and docs/*.md, and what the doc test does with each.

A block's info string says what it is:

- ``sh``, ``bash``, ``shell``: shell commands, run line by line;
- ``console``: ``$ command`` lines (continued with ``\\`` and ``> ``) followed by the
  command's output, which must match what the command prints (stdout and stderr; a line
  ``...`` stands for any lines, ``...`` inside a line for any text);
- ``python``: a Python program;
- ``text``, ``toml``, ``json``, ``jsonl``: not commands. JSON and TOML blocks must parse;
  a TOML block marked ``kiln serve --config`` is a configuration ``kiln serve`` must
  accept.

A block without an info string, or with another one, fails the test: it must say what it
is. HTML comments on the lines just before a fence (invisible when the page is rendered,
visible in its source) tell the doc test more, one directive each::

    <!-- doc-test: skip (REASON) -->        not run; REASON is required and reported
    <!-- doc-test: run by tests/PATH.py --> run, step by step, by that test instead
    <!-- doc-test: server -->               `kiln serve` is running, as after `make run`
    <!-- doc-test: setup: CODE -->          CODE (one line) runs first, in the same language
    <!-- doc-test: kiln serve --config -->  a TOML block: a configuration file of kiln serve
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "COMMAND_KINDS",
    "DATA_KINDS",
    "ROOT",
    "Block",
    "Section",
    "doc_pages",
    "sections",
]

ROOT = Path(__file__).parents[2]
#: Info strings of blocks the doc test runs.
COMMAND_KINDS = frozenset({"sh", "bash", "shell", "console", "python"})
#: Info strings of blocks that are not commands: samples of output, files and formats.
DATA_KINDS = frozenset({"text", "toml", "json", "jsonl"})

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`\s]*)[^`]*$")
_HEADING = re.compile(r"^(?P<level>#{1,6})\s+(?P<title>.+?)\s*#*\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<text>.*?)\s*-->\s*$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced block: where it is, what it says it is, its text and its directives."""

    page: str
    line: int
    info: str
    text: str
    skip: str | None = None
    run_by: str | None = None
    server: bool = False
    setup: tuple[str, ...] = ()
    serve_config: bool = False
    problems: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs_here(self) -> bool:
        """Whether this test runs the block (a command, neither skipped nor run elsewhere)."""
        return self.info in COMMAND_KINDS and self.skip is None and self.run_by is None


@dataclass(frozen=True, slots=True)
class Section:
    """The blocks under one ``##`` heading of a page: they run in order, in one shell, in
    one fresh directory, so a block may use what an earlier one started or wrote."""

    page: str
    title: str
    blocks: tuple[Block, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return f"{self.page}#{self.title}"


def doc_pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(slots=True)
class _Directives:
    skip: str | None = None
    run_by: str | None = None
    server: bool = False
    setup: list[str] = field(default_factory=list)
    serve_config: bool = False
    problems: list[str] = field(default_factory=list)


def _directives(lines: list[str], fence: int) -> _Directives:
    """The ``doc-test`` comments on the lines just before line index ``fence``."""
    found = _Directives()
    index = fence - 1
    texts: list[str] = []
    while index >= 0 and (match := _DIRECTIVE.match(lines[index])):
        texts.insert(0, match["text"])
        index -= 1
    for text in texts:
        if text.startswith("skip"):
            reason = re.fullmatch(r"skip\s*\((.+)\)", text)
            if reason is None or not reason[1].strip():
                found.problems.append(f"{text!r}: a skip must give its reason, as skip (REASON)")
            else:
                found.skip = reason[1].strip()
        elif text.startswith("needs "):
            found.skip = text
        elif text.startswith("run by "):
            found.run_by = text.removeprefix("run by ").strip()
        elif text == "server":
            found.server = True
        elif text.startswith("setup:"):
            found.setup.append(text.removeprefix("setup:").strip())
        elif text == "kiln serve --config":
            found.serve_config = True
        else:
            found.problems.append(f"unknown doc-test directive {text!r}")
    return found


def _block(page: str, lines: list[str], start: int, end: int, info: str, indent: int) -> Block:
    body = "\n".join(
        line[indent:] if line[:indent].isspace() else line for line in lines[start + 1 : end]
    )
    found = _directives(lines, start)
    return Block(
        page=page,
        line=start + 1,
        info=info,
        text=body + "\n",
        skip=found.skip,
        run_by=found.run_by,
        server=found.server,
        setup=tuple(found.setup),
        serve_config=found.serve_config,
        problems=tuple(found.problems),
    )


def sections(path: Path) -> list[Section]:
    """The sections of the page at ``path`` that hold at least one block, in page order.
    Blocks before the first ``##`` heading form a section named after the page's title."""
    page = path.relative_to(ROOT).as_posix()
    lines = path.read_text().splitlines()
    found: list[Section] = []
    title, blocks = "(top)", list[Block]()
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = _FENCE.match(line)
        if fence is not None:
            end = index + 1
            while end < len(lines) and not lines[end].strip().startswith("```"):
                end += 1
            if end == len(lines):
                raise AssertionError(f"{page}:{index + 1}: the block is never closed")
            indent = len(fence["indent"])
            blocks.append(_block(page, lines, index, end, fence["info"].lower(), indent))
            index = end + 1
            continue
        heading = _HEADING.match(line)
        if heading is not None and len(heading["level"]) <= 2:
            if blocks:
                found.append(Section(page, title, tuple(blocks)))
            title, blocks = heading["title"], []
        index += 1
    if blocks:
        found.append(Section(page, title, tuple(blocks)))
    return found

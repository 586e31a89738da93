"""docs/parity.md stays honest: every seed has its section, every table is well formed,
and every test a row names exists (found with ``ast``, not by grepping).

A row's Test cell holds one or more backticked references, ``tests/FILE.py::test_name``
or ``tests/FILE.py::Class::test_name``, separated by commas; or ``—`` when its KilnDB
column says why there is no test, as ``(no test: REASON)``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARITY = ROOT / "docs" / "parity.md"

#: The seed documents (in /work/shared/seeds); each has a section named after its file.
SEEDS = (
    "igniter-store-server.txt",
    "igniter-network-backend.txt",
    "streamkit-server-guide.txt",
    "armdb-replication-client.txt",
    "pokan-gossip-server.txt",
)
HEADER = ["Seed feature", "KilnDB equivalent", "Test"]
NO_TEST_CELL = "—"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:::(\w+))?`")
NO_TEST_REASON = re.compile(r"\(no test: ([^)]*)\)")
SEPARATOR_CELL = re.compile(r":?-{3,}:?")


@dataclass(frozen=True, slots=True)
class Row:
    """One table row of a seed section."""

    seed: str
    line: int
    feature: str
    equivalent: str
    tests: str


def cells(line: str) -> list[str]:
    """The cells of a Markdown table line (``\\|`` is a pipe inside a cell)."""
    inner = line.strip()
    inner = inner.removeprefix("|").removesuffix("|")
    parts = re.split(r"(?<!\\)\|", inner)
    return [part.strip().replace("\\|", "|") for part in parts]


def parse(text: str) -> tuple[dict[str, list[Row]], list[str]]:
    """The rows of each seed section, and what is malformed."""
    sections: dict[str, list[Row]] = {}
    problems: list[str] = []
    seed: str | None = None
    table: list[tuple[int, str]] = []

    def close_table() -> None:
        if not table:
            return
        first_line = table[0][0]
        if seed is None:
            problems.append(f"line {first_line}: a table outside a seed section")
        elif len(table) < 2 or cells(table[0][1]) != HEADER:
            problems.append(f"line {first_line}: a table must start with | {' | '.join(HEADER)} |")
        elif not all(SEPARATOR_CELL.fullmatch(c) for c in cells(table[1][1])) or (
            len(cells(table[1][1])) != len(HEADER)
        ):
            problems.append(f"line {table[1][0]}: the header's separator row is malformed")
        else:
            for number, line in table[2:]:
                row = cells(line)
                if len(row) != len(HEADER):
                    problems.append(f"line {number}: {len(row)} cells, expected {len(HEADER)}")
                    continue
                sections[seed].append(Row(seed, number, *row))
        table.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("|"):
            table.append((number, line))
            continue
        close_table()
        if line.startswith("## "):
            named = [s for s in SEEDS if s in line]
            seed = named[0] if len(named) == 1 else None
            if seed is not None:
                if seed in sections:
                    problems.append(f"line {number}: a second section for {seed}")
                sections.setdefault(seed, [])
    close_table()
    return sections, problems


@cache
def defined_tests(path: Path) -> frozenset[str]:
    """``name`` for each module-level test function, ``Class::name`` for each method."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, functions):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(f"{node.name}::{n.name}" for n in node.body if isinstance(n, functions))
    return frozenset(names)


def reference_problem(root: Path, path: str, first: str, second: str | None) -> str | None:
    """Why ``path::first[::second]`` names no test under ``root``, or None if it does."""
    name = first if second is None else f"{first}::{second}"
    test_name = first if second is None else second
    if not test_name.startswith("test"):
        return f"{path}::{name} is not a test (names start with 'test')"
    file = (root / path).resolve()
    tests_dir = (root / "tests").resolve()
    if tests_dir not in file.parents or not file.is_file():
        return f"{path} is not a file under tests/"
    if name not in defined_tests(file):
        return f"{path} defines no {name}"
    return None


def row_problems(row: Row, root: Path) -> list[str]:
    """What is wrong with one row: empty cells, a bad Test cell, missing tests."""
    where = f"line {row.line} ({row.seed})"
    found: list[str] = []
    if not row.feature:
        found.append(f"{where}: the seed feature is empty")
    if not row.equivalent:
        found.append(f"{where}: the KilnDB equivalent is empty")
    if any("pending" in cell.lower() for cell in (row.feature, row.equivalent, row.tests)):
        found.append(f"{where}: a row says 'pending'; it belongs in the table once it is done")
    if row.tests == NO_TEST_CELL:
        reason = NO_TEST_REASON.search(row.equivalent)
        if reason is None or not reason.group(1).strip():
            found.append(f"{where}: no test, and no '(no test: REASON)' saying why")
        return found
    references = REFERENCE.findall(row.tests)
    leftover = REFERENCE.sub("", row.tests).replace(",", "").strip()
    if not references:
        found.append(f"{where}: the Test cell names no test")
    elif leftover:
        found.append(f"{where}: the Test cell has more than test references: {leftover!r}")
    for path, first, second in references:
        problem = reference_problem(root, path, first, second or None)
        if problem is not None:
            found.append(f"{where}: {problem}")
    return found


def check(text: str, root: Path = ROOT) -> list[str]:
    """Every problem of a parity page: missing sections, malformed tables, bad rows."""
    sections, found = parse(text)
    for seed in SEEDS:
        if seed not in sections:
            found.append(f"no section for {seed}")
        elif not sections[seed]:
            found.append(f"the section for {seed} has no rows")
    for rows in sections.values():
        for row in rows:
            found.extend(row_problems(row, root))
    return found


# -- the page itself -------------------------------------------------------------------


def test_every_row_of_the_parity_page_names_tests_that_exist() -> None:
    assert check(PARITY.read_text(encoding="utf-8")) == []


def test_the_readme_links_the_parity_page() -> None:
    assert "docs/parity.md" in (ROOT / "README.md").read_text(encoding="utf-8")


# -- the checker catches what it should -------------------------------------------------

FAKE_TESTS = """
def test_real() -> None:
    pass


class TestGroup:
    def test_method(self) -> None:
        pass


def helper() -> None:
    pass
"""


GOOD_ROW = "| a | b | `tests/test_fake.py::test_real` |"


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_fake.py").write_text(FAKE_TESTS)
    return tmp_path


def page(*rows: str, drop: str | None = None) -> str:
    """A parity page with every seed section; ``rows`` go in the first one."""
    parts = ["# Seed parity", ""]
    for n, seed in enumerate(SEEDS):
        if seed == drop:
            continue
        parts += [f"## A seed ({seed})", "", "| Seed feature | KilnDB equivalent | Test |"]
        parts.append("|---|---|---|")
        parts += rows if n == 0 else [GOOD_ROW]
        parts.append("")
    return "\n".join(parts)


def test_a_page_of_existing_tests_passes(fake_root: Path) -> None:
    text = page(
        "| a | b | `tests/test_fake.py::test_real`, `tests/test_fake.py::TestGroup::test_method` |",
        "| a | b, escaped \\| pipe (no test: nothing runs here) | — |",
    )
    assert check(text, fake_root) == []


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ("| a | b | `tests/test_fake.py::test_gone` |", "defines no test_gone"),
        (
            "| a | b | `tests/test_fake.py::TestGroup::test_gone` |",
            "defines no TestGroup::test_gone",
        ),
        ("| a | b | `tests/test_fake.py::TestOther::test_method` |", "defines no TestOther"),
        ("| a | b | `tests/test_missing.py::test_real` |", "not a file under tests/"),
        ("| a | b | `tests/test_fake.py::helper` |", "is not a test"),
        ("| a | b |  |", "names no test"),
        ("| a | b | see the suite |", "names no test"),
        ("| a | b | `tests/test_fake.py::test_real` and more |", "more than test references"),
        ("| a | b | — |", "no '(no test: REASON)'"),
        ("| a | b (no test:  ) | — |", "no '(no test: REASON)'"),
        ("|  | b | `tests/test_fake.py::test_real` |", "seed feature is empty"),
        ("| a |  | `tests/test_fake.py::test_real` |", "equivalent is empty"),
        ("| a | pending | `tests/test_fake.py::test_real` |", "says 'pending'"),
        ("| a | `tests/test_fake.py::test_real` |", "2 cells, expected 3"),
    ],
)
def test_the_checker_catches_a_bad_row(fake_root: Path, row: str, says: str) -> None:
    found = check(page(GOOD_ROW, row), fake_root)
    assert len(found) == 1 and says in found[0], found


def test_the_checker_catches_a_missing_section_and_a_malformed_table(fake_root: Path) -> None:
    assert check(page(GOOD_ROW, drop=SEEDS[2]), fake_root) == [f"no section for {SEEDS[2]}"]
    headless = page(GOOD_ROW).replace(
        "| Seed feature | KilnDB equivalent | Test |\n|---|---|---|\n| a |", "| a |", 1
    )
    found = check(headless, fake_root)
    assert any("must start with" in p for p in found) and any("has no rows" in p for p in found)
    no_separator = page(GOOD_ROW).replace("|---|---|---|", "| x | y | z |", 1)
    assert any("separator row" in p for p in check(no_separator, fake_root))

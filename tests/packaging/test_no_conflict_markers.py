"""No file of the project carries the markers of an unresolved merge."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]
MARKER = re.compile(rb"^(<{7} |>{7} |={7}$)", re.MULTILINE)


def test_no_tracked_file_has_conflict_markers() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    damaged = []
    for name in filter(None, listed.decode().split("\0")):
        path = ROOT / name
        if path.is_file() and MARKER.search(path.read_bytes()):
            damaged.append(name)
    assert not damaged, damaged


def test_no_document_repeats_a_section() -> None:
    """A merge that took both sides leaves a section twice: each heading is unique."""
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        headings = [line for line in doc.read_text().splitlines() if line.startswith("## ")]
        repeated = {h for h in headings if headings.count(h) > 1}
        assert not repeated, (doc.name, repeated)

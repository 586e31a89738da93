"""Helpers shared by the CLI tests: run ``kiln`` in-process and read its output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from kilndb.cli import cli

__all__ = ["assert_one_error_line", "json_lines", "kiln"]


def kiln(data: Path, *args: str, input: str | None = None, **env: str) -> Result:
    """Run ``kiln --data DATA ARGS...`` in-process; never raises."""
    runner = CliRunner()
    return runner.invoke(
        cli,
        ["--data", str(data), *args],
        input=input,
        env={"KILN_DATABASE": None, "KILN_SYNC": None, "KILN_DEBUG": None, **env},
        catch_exceptions=True,
    )


def json_lines(text: str) -> list[Any]:
    """Parse JSON-lines output (every non-empty line must be one JSON document)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_one_error_line(result: Result, exit_code: int, contains: str) -> str:
    """Assert ``result`` failed cleanly: one ``error: ...`` line on stderr, no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert contains in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]

"""``kiln check [--fix]``: verify every record of a database and repair damage.

The work is done by :func:`kilndb.storage.check.check_database`; this module runs it on
``DATA/<database>`` and prints its :class:`CheckReport` for people (or as JSON). It is
imported when the command runs, so the rest of the CLI does not depend on it. The check
takes the database's ``LOCK`` itself: a database open in another process is an error.

Exit status: 0 when the database is sound (or was repaired), 1 when problems remain.
It reads files, so it refuses ``--url`` (exit 2): there is no check over the network.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import click

from kilndb.cli.context import CliSettings, pass_settings
from kilndb.cli.errors import EXIT_USAGE, CliError
from kilndb.cli.output import print_json, progress
from kilndb.model import validate_database_name

__all__ = ["CheckReportLike", "ProblemLike", "check", "render_report"]

CHECK_MODULE = "kilndb.storage.check"


class ProblemLike(Protocol):
    """One damaged spot, as :mod:`kilndb.storage.check` reports it."""

    path: str
    offset: int
    kind: str
    detail: str


class CheckReportLike(Protocol):
    """What :func:`kilndb.storage.check.check_database` returns."""

    files_checked: int
    records_ok: int
    problems: Sequence[ProblemLike]
    fixed: bool
    records_recovered: int
    bytes_quarantined: int

    @property
    def ok(self) -> bool: ...


CheckFunction = Callable[[Path, bool], CheckReportLike]


def _load_checker() -> CheckFunction:
    try:
        module = importlib.import_module(CHECK_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != CHECK_MODULE:
            raise
        raise CliError("kiln check is not available in this build of KilnDB") from exc
    checker = cast(Callable[..., CheckReportLike], module.check_database)
    return lambda directory, fix: checker(directory, fix=fix)


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def render_report(
    report: CheckReportLike, fix: bool, fix_command: str
) -> tuple[list[str], str | None]:
    """The report as lines for stdout, and the error line for stderr if problems remain."""
    lines = [
        f"checked {_plural(report.files_checked, 'file')}:"
        f" {_plural(report.records_ok, 'record')} ok,"
        f" {_plural(len(report.problems), 'problem')}"
    ]
    for problem in report.problems:
        lines.append(
            f"  {problem.kind:<12} {Path(problem.path).name} at offset {problem.offset:,}:"
            f" {problem.detail}"
        )
    if report.fixed:
        lines.append(
            f"repaired: {_plural(report.records_recovered, 'record')} recovered,"
            f" {_plural(report.bytes_quarantined, 'byte')} quarantined"
        )
    if report.ok:
        lines.append("database is sound" if not report.problems else "database repaired")
        return lines, None
    if fix:
        return lines, f"{_plural(len(report.problems), 'problem')} could not be repaired"
    return lines, (
        f"{_plural(len(report.problems), 'problem')} found;"
        f" run '{fix_command}' to repair (damaged bytes are kept aside, not destroyed)"
    )


def _report_dict(report: CheckReportLike) -> dict[str, Any]:
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        data = dataclasses.asdict(report)
    else:
        data = {
            "files_checked": report.files_checked,
            "records_ok": report.records_ok,
            "problems": [
                {"path": p.path, "offset": p.offset, "kind": p.kind, "detail": p.detail}
                for p in report.problems
            ],
            "fixed": report.fixed,
            "records_recovered": report.records_recovered,
            "bytes_quarantined": report.bytes_quarantined,
        }
    data["ok"] = report.ok
    return data


@click.command()
@click.option("--fix", is_flag=True, help="Repair: keep every intact record, set damage aside.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_settings
def check(settings: CliSettings, fix: bool, as_json: bool) -> None:
    """Verify every record of the database (CRCs, framing, order); --fix repairs."""
    if settings.url is not None:
        raise CliError(
            f"kiln check reads a database's files and cannot check through --url {settings.url}:"
            " run it on the server's host with --data DIR, while the server is stopped"
            " (unset KILN_URL)",
            EXIT_USAGE,
        )
    validate_database_name(settings.database)
    if not settings.directory.is_dir():
        # Not require_existing(): a database whose META is lost is exactly what to check.
        raise CliError(f"no database {settings.database!r} in {settings.data}")
    checker = _load_checker()
    with progress(f"{'checking and repairing' if fix else 'checking'} {settings.directory}"):
        report = checker(settings.directory, fix)
    lines, failure = render_report(report, fix, settings.command_line("check", "--fix"))
    if as_json:
        print_json(_report_dict(report))
    else:
        for line in lines:
            click.echo(line)
    if failure is not None:
        raise CliError(failure)

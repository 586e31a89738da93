"""Results of a benchmark run and the plain-text table they print as.

A run collects :class:`Line` objects — one benchmark row against one peer, KilnDB's
:class:`Measure` beside the peer's — in a :class:`Report`, together with
:class:`Target` verdicts. :func:`render` prints the report as one fixed-width table that
needs no terminal; :meth:`Report.to_json` is the same data for ``--json``.

The ratio column is always "how many times better KilnDB is" (> 1: KilnDB ahead):
KilnDB / peer for throughputs, peer / KilnDB for times and sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ISSUE",
    "LOWER_IS_BETTER",
    "ROW_ORDER",
    "Line",
    "Measure",
    "Report",
    "Target",
    "fmt",
    "fmt_ratio",
    "render",
    "render_targets",
]

# -- results -------------------------------------------------------------------------

#: The order rows are printed in (they are measured in another order).
ROW_ORDER = (
    "write_none",
    "write_always_1",
    "raw_fsync",
    "write_always_8",
    "write_many",
    "load",
    "read",
    "history",
    "replay",
    "reopen",
    "reopen_cold",
    "keydir",
)

#: Units where a smaller number is better; for them the ratio is peer / KilnDB.
LOWER_IS_BETTER = frozenset({"s", "B/key"})


@dataclass
class Measure:
    value: float
    unit: str
    note: str = ""


@dataclass
class Line:
    """One line of the table: a row (benchmark) and one peer of it."""

    row: str  # benchmark id
    label: str  # benchmark description
    kiln: Measure
    peer: str = ""  # peer description; "" for rows without a peer
    peer_id: str = ""
    measure: Measure | None = None
    skipped: str = ""  # why the peer has no measure (e.g. "not installed")

    @property
    def ratio(self) -> float | None:
        """How many times better KilnDB is than the peer (> 1: KilnDB wins)."""
        if self.measure is None or not self.measure.value or not self.kiln.value:
            return None
        if self.kiln.unit in LOWER_IS_BETTER:
            return self.measure.value / self.kiln.value
        return self.kiln.value / self.measure.value


@dataclass
class Target:
    ok: bool
    text: str
    measured: str


@dataclass
class Report:
    meta: dict[str, Any]
    lines: list[Line] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def add(
        self,
        row: str,
        label: str,
        kiln: Measure,
        peers: Sequence[tuple[str, str, Measure | str]] = (),
    ) -> None:
        """Add a row; each peer is ``(peer id, description, measure or reason skipped)``."""
        if not peers:
            self.lines.append(Line(row, label, kiln))
        for peer_id, description, result in peers:
            if isinstance(result, Measure):
                self.lines.append(Line(row, label, kiln, description, peer_id, result))
            else:
                self.lines.append(Line(row, label, kiln, description, peer_id, skipped=result))

    def ordered(self) -> list[Line]:
        """Lines in the order of :data:`ROW_ORDER` (stable within a row)."""
        rank = {row: i for i, row in enumerate(ROW_ORDER)}
        return sorted(self.lines, key=lambda line: rank.get(line.row, len(rank)))

    def find(self, row: str, peer_id: str = "") -> Line | None:
        for line in self.lines:
            if line.row == row and (not peer_id or line.peer_id == peer_id):
                return line
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "rows": [{**asdict(line), "ratio": line.ratio} for line in self.ordered()],
            "targets": [asdict(t) for t in self.targets],
        }


def fmt(measure: Measure) -> str:
    value, unit = measure.value, measure.unit
    if unit == "s":
        return f"{value * 1000:,.1f} ms" if value < 1 else f"{value:,.2f} s"
    if unit == "B/key":
        return f"{value:,.0f} B/key"
    return f"{value:,.0f} {unit}"


def fmt_ratio(ratio: float) -> str:
    """Two decimals, or two significant digits for ratios too small for that."""
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def render(report: Report) -> str:
    header = ("benchmark", "KilnDB", "peer", "peer result", "KilnDB/peer", "notes")
    table: list[tuple[str, ...]] = []
    previous = ""
    lines = report.ordered()
    for line in lines:
        first = line.row != previous
        previous = line.row
        if line.measure is not None:
            peer_result = fmt(line.measure)
        else:
            peer_result = line.skipped or ("-" if not line.peer else "")
        ratio = line.ratio
        notes = [line.kiln.note] if first and line.kiln.note else []
        if line.measure is not None and line.measure.note:
            notes.append(f"peer: {line.measure.note}")
        table.append(
            (
                line.label if first else "",
                fmt(line.kiln) if first else "",
                line.peer or "-",
                peer_result,
                "-" if ratio is None else fmt_ratio(ratio),
                "; ".join(notes),
            )
        )
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    right = {1, 3, 4}

    def row_text(cells: tuple[str, ...]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return " | ".join(parts).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    out = [row_text(header), rule]
    previous = ""
    for line, cells in zip(lines, table, strict=True):
        if previous and line.row != previous:
            out.append(rule)
        previous = line.row
        out.append(row_text(cells))
    return "\n".join(out)


#: The issue whose targets the embedded benchmark judges.
ISSUE = "13"


def render_targets(targets: Sequence[Target], issue: str = ISSUE) -> str:
    width = max(len(t.text) for t in targets)
    out = [f"Targets (issue {issue}), judged from this run:"]
    for t in targets:
        out.append(f"  {'PASS' if t.ok else 'MISS'}  {t.text.ljust(width)}  measured {t.measured}")
    passed = sum(t.ok for t in targets)
    out.append(f"  {passed}/{len(targets)} targets met")
    return "\n".join(out)
